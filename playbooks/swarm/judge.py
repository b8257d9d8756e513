"""Judging what Swarm did to one changed service, per (host, service), from a manager's view. Pure.

Only what is seen counts: a host is committed when a task of the new digest runs there through
the monitor window, reverted when Swarm rolled back and a task of the old digest is seen running
there, and needs-operator when Swarm paused or fleetroll's wait ended first. A `replicas:` service
runs N tasks over its hosts: a host Swarm put none on is `noop` once N run elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.vocabulary import Outcome

from ..plan import CREATE, NOOP, REPLACE
from . import observe

NO_UPDATE_GRACE_S = 4.0  # a spec change that replaces no task (update settings only) starts no update
CREATE_FAILURES = 3  # a new service whose task failed this often on a host is not going to become healthy there


@dataclass
class Follow:
    """One changed service being followed."""

    service: str
    mode: str  # update (Swarm has a previous spec) | create | reconcile (same spec, tasks to be placed)
    hosts: list[str]
    new_tag: str
    new_digest: str
    old_tag: str
    old_digest: str
    started_before: str  # UpdateStatus.StartedAt before the deploy: a new update has another
    deadline: float
    want_hash: str = ""
    replicas: int = 0  # replicas: N over `hosts`; 0: one task on each host
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # host -> outcome dict
    first_running: float = 0.0
    running_ids: frozenset = frozenset()
    since: dict[str, tuple[str, float]] = field(default_factory=dict)  # host -> (task id, first seen running)
    # Once, when the wait ends while Swarm is still rolling the update back: that much longer to see how it ends
    # (a loaded node starts the previous spec's tasks slowly), rather than calling a rollback in progress unobserved.
    rollback_grace: float = 0.0
    # Swarm can mark an update completed although the new tasks failed their healthcheck (a task that fails before
    # Swarm's monitor watches it is not counted): `ask_rollback` is set, with why, for the follow loop to ask Swarm
    # for the rollback its own failure_action would have done; `rollback_asked` keeps that it was asked (once).
    ask_rollback: str = ""
    rollback_asked: str = ""
    # A rollback still moving (its tasks changed within ROLLBACK_PROGRESS_S) when the grace is spent is waited on, a
    # window at a time, up to ROLLBACK_MORE_MAX in all: only one that stopped moving is left to an operator.
    progress_sig: tuple = ()
    progress_at: float = float("-inf")
    extended: float = 0.0
    # host -> (task id, first seen running) of the previous release's tasks while Swarm's spec is it again (back_as_seen)
    old_since: dict[str, tuple[str, float]] = field(default_factory=dict)


def base(f: Follow, host: str, action: str) -> dict[str, Any]:
    return {"service": f.service, "action": action, "prev_ref": "", "prev_digest": "", "before_tag": f.old_tag,
            "before_digest": f.old_digest, "tried_tag": f.new_tag, "tried_digest": f.new_digest, "engine": "swarm"}


def _action(f: Follow) -> str:
    return CREATE if f.mode == "create" else REPLACE


def _evidence(view: observe.View, f: Follow, host: str) -> dict[str, Any]:
    """What a manager last saw of the new release's tasks on `host`, newest by Swarm's version index: the newest task
    that failed, was rejected or carries an error, else the newest at all, whatever its state (a task still
    `preparing` or `pending` when the wait ended says why no task became healthy). `restarts` counts only tasks that
    ran and failed (state `failed`); a task waiting with an error (no suitable node) is not one. {} when Swarm made no
    task of it there."""
    mine = [r for r in (observe.task_row(view, t) for t in view.tasks.get(f.service, []))
            if r["host"] == host and r["image"].endswith(f"@{f.new_digest}")]
    if not mine:
        return {}
    bad = [r for r in observe.failed(view, f.service, f.new_digest) if r["host"] == host]
    last = max(bad or mine, key=lambda r: r["index"])
    return {"status": last["state"], "exit_code": last["exit_code"], "restarts": sum(r["state"] == "failed" for r in bad),
            "error": last["error"], "message": last["message"], "task": last["id"][:12]}


def _commit(f: Follow, host: str, task: dict[str, Any], why: str) -> None:
    f.done[host] = {**base(f, host, _action(f)), "outcome": Outcome.COMMITTED, "check": "swarm",
                    "message": f"Swarm runs task {task['id'][:12]} of {f.new_tag} on {host}: {why}",
                    "after_tag": f.new_tag, "after_digest": f.new_digest,
                    "gate": {"ok": True, "reason": "Swarm's healthcheck passed (a task is running only once healthy)"}}


def _needs(f: Follow, view: observe.View, host: str, why: str) -> None:
    f.done[host] = {**base(f, host, _action(f)), "outcome": Outcome.NEEDS_OPERATOR, "check": "swarm", "message": why,
                    "after_tag": "", "after_digest": "", "details": _evidence(view, f, host)}


def _reverted(f: Follow, view: observe.View, host: str, task: dict[str, Any], message: str) -> None:
    f.done[host] = {**base(f, host, REPLACE), "outcome": Outcome.REVERTED, "check": "swarm-update",
                    "message": f"Swarm rolled the update back: {message or 'rollback completed'}",
                    "after_tag": f.old_tag, "after_digest": f.old_digest, "details": _evidence(view, f, host),
                    "revert_gate": {"ok": True, "reason": f"Swarm task {task['id'][:12]} runs {f.old_tag} on {host}, healthy by"
                                    " its healthcheck, after the rollback"}}


def _elsewhere(f: Follow, host: str, on: dict[str, dict[str, Any]], tag: str) -> None:
    """A replicas: host Swarm put no task on, once the N tasks run elsewhere: nothing changed here, observed."""
    f.done[host] = {**base(f, host, NOOP), "outcome": Outcome.NOOP, "check": "swarm", "after_tag": "", "after_digest": "",
                    "message": f"no task here: Swarm runs the {f.replicas} replica(s) of {tag} on {', '.join(sorted(on))}"}


def _placed(f: Follow, on: dict[str, dict[str, Any]]) -> bool:
    """Every task Swarm should run is running: one per host, or `replicas` of them over the hosts."""
    return len([h for h in f.hosts if h in on]) >= f.replicas if f.replicas else all(h in on for h in f.hosts)


def _each(f: Follow, view: observe.View, on: dict[str, dict[str, Any]], tag: str, seen, missing: str, timed_out: bool) -> None:
    """seen(host, task) where a task runs; `noop` where a replicas: service has none once placed; else wait, or needs."""
    for h in f.hosts:
        if h in on:
            seen(h, on[h])
        elif f.replicas and _placed(f, on):
            _elsewhere(f, h, on, tag)
        elif timed_out:
            _needs(f, view, h, missing.replace("{host}", h))


ROLLBACK_PROGRESS_S = 60.0
ROLLBACK_MORE_MAX = 300.0

# Swarm's rollback of a host-port service can stay rollback_started although the previous release already runs again
# on every host. When the failed task dies, Swarm's restart policy makes a replacement of the failed release on that
# node within milliseconds of the rollback's own task for it (and the global orchestrator can add a third): all want
# the node's one host port, and the scheduler gives it to one of them in no set order. swarmkit's updater then waits,
# with no timeout, for *its* task to run, and a stop-first task waits for the task it replaces to stop, which one that
# never got the port never does (a pending task that never reached its node keeps state pending for good; swarmkit
# gives up waiting after its fixed 1-minute old-task timeout). Seen in the lab: a task of the previous spec held
# desired=ready for 60 s beside a failed-release task pending desired=shutdown "host-mode port already in use".
# What serves is what is judged: the previous spec is Swarm's spec again, its task on every host has run healthy this
# long past Swarm's own monitor, and nothing of the failed release is wanted running: that is the rollback, done.
ROLLBACK_SETTLE_S = 15.0


def back_as_seen(f: Follow, view: observe.View, now: float, window: float, back: str, gone: str) -> dict[str, dict[str, Any]]:
    """{host: task} of digest `back` when the service is seen back on it, else {}: Swarm's spec of the service is
    `back`, no task of `gone` is desired running, a task of `back` runs on every host (or `replicas` are placed), each
    the same task seen running for `window` s or more (f.old_since keeps since when; another task id starts it again).
    The clock is kept only while the spec is `back`. A spec change of the same image (back == gone) is never seen
    back this way: its tasks cannot be told apart by image, so it is left to Swarm's own word or an operator."""
    if not back or observe.deployed(view.services.get(f.service))[1] != back:
        return {}
    on = {h: t for h, t in observe.running(view, f.service, back).items() if h in f.hosts}
    _seen_running(f.old_since, on, now)
    rows = [observe.task_row(view, t) for t in view.tasks.get(f.service, [])]
    if any(r["image"].endswith(f"@{gone}") and r["desired"] == "running" for r in rows):
        return {}
    if not _placed(f, on) or any(now - f.old_since[h][1] < window for h in on):
        return {}
    return on


def _rolled_back_as_seen(f: Follow, view: observe.View, now: float, min_healthy_time: float, message: str) -> bool:
    """rollback_started, but the previous release runs on every host through min_healthy_time + ROLLBACK_SETTLE_S, the
    service's spec is the previous release again, and no task of the failed release is desired running: reverted."""
    on_old = back_as_seen(f, view, now, min_healthy_time + ROLLBACK_SETTLE_S, f.old_digest, f.new_digest)
    if not on_old:
        return False
    rows = [observe.task_row(view, t) for t in view.tasks.get(f.service, [])]
    surplus = [r for r in rows if r["state"] == "pending" and r["desired"] in ("running", "ready")
               and r["image"].endswith(f"@{f.old_digest}") and r["id"] not in {t["id"] for t in on_old.values()}]
    why = (f"{message or 'rollback started'}; Swarm still says rollback_started, but the previous release runs again on"
           f" every host, the same healthy task for {min_healthy_time + ROLLBACK_SETTLE_S:g}s or more"
           + (f" (Swarm's updater waits on a surplus task of it, {surplus[0]['id'][:12]} on {surplus[0]['host']}, pending:"
              f" {surplus[0]['error'] or surplus[0]['message']})" if surplus else ""))
    _each(f, view, on_old, f.old_tag, lambda h, t: _reverted(f, view, h, t, why), "", True)
    return True


def _completed_over_rollback(f: Follow, view: observe.View, now: float, min_healthy_time: float) -> bool:
    """Swarm says `completed`, yet its spec is the previous release again: seen in the lab, Swarm's own failure_action
    rolled the update back and Swarm then wrote `completed` over `rollback_completed`. Reverted once seen as
    `_rolled_back_as_seen` sees it; until then nothing of the new release is committed (_judge_update waits, with the
    rollback grace once, then needs-operator). fleetroll does not ask Swarm for a rollback here: Swarm cleared the
    previous spec when it rolled back ("does not have a previous spec"), and a previous spec it had would be the
    failed release, so asking could only fail or go forward again.

    The window is min_healthy_time + ROLLBACK_SETTLE_S, as for rollback_started, not min_healthy_time alone: this
    `completed` is no word on the rollback (it is written over it) and Swarm has said `completed` of tasks that failed
    their healthcheck before (_failed_where_none_runs), so it adds no evidence; the judgement rests on what fleetroll
    saw run, at one bar for every rollback judged from its tasks. It costs ROLLBACK_SETTLE_S in a rare case, well
    inside the wait."""
    window = min_healthy_time + ROLLBACK_SETTLE_S
    on_old = back_as_seen(f, view, now, window, f.old_digest, f.new_digest)
    if not on_old:
        return False
    how = "by itself" if not f.rollback_asked else "by itself or as fleetroll asked"

    def seen(h: str, t: dict[str, Any]) -> None:
        _reverted(f, view, h, t, f"Swarm says the update completed, but it rolled back {how}: its spec is the previous"
                                 f" release ({f.old_tag}) again, no task of {f.new_tag} is wanted running, and task"
                                 f" {t['id'][:12]} runs {f.old_tag} on {h}, the same task for {window:g}s or more")
    _each(f, view, on_old, f.old_tag, seen, "", True)
    return True


def _moved(f: Follow, view: observe.View, now: float) -> None:
    """Note when the service's tasks last changed (ids, states, desired states); the first sight is not a change."""
    sig = tuple(sorted((t.get("ID", ""), (t.get("Status") or {}).get("State", ""), t.get("DesiredState", ""))
                       for t in view.tasks.get(f.service) or []))
    if f.progress_sig and sig != f.progress_sig:
        f.progress_at = now
    f.progress_sig = sig


def _judge_update(f: Follow, view: observe.View, timed_out: bool, now: float, min_healthy_time: float = 0.0) -> bool:
    """An update Swarm started: completed, rolled back, paused, or still going."""
    state, message, _started = observe.update_state(view.services.get(f.service))
    if state == "rollback_started":
        _moved(f, view, now)
        if _rolled_back_as_seen(f, view, now, min_healthy_time, message):
            return all(h in f.done for h in f.hosts)
    spec_old = (state == "completed" and f.old_digest != f.new_digest
                and observe.deployed(view.services.get(f.service))[1] == f.old_digest)
    if spec_old and _completed_over_rollback(f, view, now, min_healthy_time):
        return all(h in f.done for h in f.hosts)
    if timed_out and (state == "rollback_started" or spec_old) and f.rollback_grace > 0:
        f.deadline, f.rollback_grace = f.deadline + f.rollback_grace, 0.0
        return False
    if timed_out and state == "rollback_started" and now - f.progress_at < ROLLBACK_PROGRESS_S and f.extended < ROLLBACK_MORE_MAX:
        f.deadline, f.extended = now + ROLLBACK_PROGRESS_S, f.extended + ROLLBACK_PROGRESS_S  # seen in CI under load
        return False
    spec_hash = observe.deployed(view.services.get(f.service))[2]
    spec_other = state == "completed" and not spec_old and bool(f.want_hash) and spec_hash not in ("", f.want_hash)
    if state == "completed" and not spec_old and not spec_other and not f.rollback_asked and (
            why := _failed_where_none_runs(f, view)):
        f.ask_rollback = why
        return False
    if spec_other:  # e.g. `completed` over the rollback of a configuration change: the same digest, the earlier spec
        for h in f.hosts if timed_out else ():
            _needs(f, view, h, f"Swarm says the update completed, but its spec is no longer the one deployed (spec hash"
                               f" {spec_hash}, deployed {f.want_hash}): Swarm rolled it back, or another deploy changed it;"
                               " what runs is not this rollout's to judge; look: fab status, fab details")
    elif spec_old:  # Swarm's spec is the previous release: nothing of the new one is committed; wait, or needs-operator
        for h in f.hosts if timed_out else ():
            _needs(f, view, h, f"Swarm says the update completed, but its spec is the previous release ({f.old_tag}) again"
                               f" and its tasks were not seen running healthy on every host, nothing of {f.new_tag}"
                               " wanted running, by the end of fleetroll's wait; look: fab status")
    elif state == "completed":
        _each(f, view, observe.running(view, f.service, f.new_digest), f.new_tag,
              lambda h, t: _commit(f, h, t, "the update completed through its monitor window"),
              f"Swarm says the update completed but no task of {f.new_tag} runs on {{host}}; look: fab status", timed_out)
    elif state == "rollback_completed":
        _each(f, view, observe.running(view, f.service, f.old_digest), f.old_tag,
              lambda h, t: _reverted(f, view, h, t, message),
              f"Swarm rolled the update back ({message}) but no task of {f.old_tag} is seen running on {{host}}", timed_out)
    elif state in ("paused", "rollback_paused"):
        for h in f.hosts:
            _needs(f, view, h, _paused_words(f, view, state, message))
    elif timed_out:
        for h in f.hosts:
            _needs(f, view, h, f"Swarm's update is still {state or 'not started'} at the end of fleetroll's wait; Swarm carries"
                               " on: follow it with fab status")
    return all(h in f.done for h in f.hosts)


def _paused_words(f: Follow, view: observe.View, state: str, message: str) -> str:
    """What a paused update means and the one command that moves it on. A paused rollback has already put the previous
    release back in the spec and used up Swarm's previous spec, so `--rollback` there would fail: `--force` re-deploys
    the spec (the previous release) on every task instead."""
    name = ((view.services.get(f.service) or {}).get("Spec") or {}).get("Name") or f.service
    if state == "rollback_paused":
        return (f"Swarm paused its rollback to {f.old_tag} part way: {message}; its spec is {f.old_tag} again, but nothing"
                f" proves what serves on each node; look: fab status, then docker service update --force {name} on"
                f" a manager to put {f.old_tag} on every task, or roll out a fix")
    return (f"Swarm paused the update: {message}; nothing proves what serves; look: fab status, then docker service"
            f" rollback {name} on a manager, or roll out a fix")


def _failed_where_none_runs(f: Follow, view: observe.View) -> str:
    """Why Swarm should have rolled back: hosts where a task of the new release failed and none of it runs ("" if
    none). The stack says failure_action rollback with max_failure_ratio 0, so one such host is enough. Pure."""
    on = observe.running(view, f.service, f.new_digest)
    if f.replicas and _placed(f, on):
        return ""
    bad = [r for r in observe.failed(view, f.service, f.new_digest) if r["host"] in f.hosts and r["host"] not in on]
    if not bad:
        return ""
    hosts = sorted({r["host"] for r in bad})
    first = bad[0]
    error = first.get("error") or first.get("state") or "failed"
    return (f"Swarm marked the update of {f.service} completed, yet no task of {f.new_tag} runs on {', '.join(hosts)}: task"
            f" {first['id'][:12]} on {first['host']}: {error}; the stack's failure_action is rollback, so fleetroll asked"
            " Swarm for it (docker service rollback)")


def _seen_running(since: dict[str, tuple[str, float]], on: dict[str, dict[str, Any]], now: float) -> None:
    """Remember since when each host's task has been seen running: another task id (a restart) starts the clock again."""
    for h in list(since):
        if h not in on:
            del since[h]
    for h, t in on.items():
        if since.get(h, ("", 0.0))[0] != t["id"]:
            since[h] = (t["id"], now)


def _commit_proven(f: Follow, view: observe.View, on: dict[str, dict[str, Any]], now: float, min_healthy_time: float,
                   why: str) -> None:
    """Commit a host only where the same task was seen running for min_healthy_time (Swarm's `monitor`); a task that
    just started or keeps restarting proves nothing: needs-operator."""
    for h, t in on.items():
        if h not in f.hosts:
            continue
        held = now - f.since.get(h, (t["id"], now))[1]
        if held >= min_healthy_time:
            _commit(f, h, t, why)
        else:
            _needs(f, view, h, f"task {t['id'][:12]} of {f.new_tag} runs on {h} but was seen running for {held:.1f}s only,"
                               f" less than min_healthy_time {min_healthy_time:g}s; nothing proves it healthy: look with fab"
                               " status")


def _judge_tasks(f: Follow, view: observe.View, now: float, min_healthy_time: float, timed_out: bool) -> bool:
    """No update to read (a new service, a spec Swarm already had, settings that replace no task): the tasks say it."""
    on_new = observe.running(view, f.service, f.new_digest)
    _seen_running(f.since, on_new, now)
    if f.mode == "update" and timed_out:
        for h in f.hosts:
            _needs(f, view, h, f"Swarm started no update of {f.service} within fleetroll's wait; look: fab status")
        return True
    if _placed(f, on_new) and (f.mode != "update" or observe.deployed(view.services.get(f.service))[2] == f.want_hash):
        ids = frozenset(t["id"] for h, t in on_new.items() if h in f.hosts)
        if ids != f.running_ids or not f.first_running:
            f.running_ids, f.first_running = ids, now  # the same tasks must stay running through the window
        if now - f.first_running >= max(min_healthy_time, NO_UPDATE_GRACE_S if f.mode == "update" else 0):
            why = ("Swarm applied the new settings; no task needed replacing" if f.mode == "update"
                   else "healthy, and still the same task after min_healthy_time")
            _each(f, view, on_new, f.new_tag, lambda h, t: _commit(f, h, t, why), "", False)
            return True
        if not timed_out:
            return False  # at the deadline, tasks that keep being replaced are judged host by host below
    bad = [r["host"] for r in observe.failed(view, f.service, f.new_digest)]
    failing = {h for h in bad if bad.count(h) >= CREATE_FAILURES}
    if not timed_out and not (f.mode == "create" and failing - set(on_new)):
        return False
    _commit_proven(f, view, on_new, now, min_healthy_time, "running at the end of the wait, the same task through"
                   " min_healthy_time")
    for h in f.hosts:
        if h in on_new:
            continue
        if f.replicas and _placed(f, on_new):
            _elsewhere(f, h, on_new, f.new_tag)
        else:
            _needs(f, view, h, f"no task of {f.new_tag} became healthy on {h} within {f.service}'s wait")
    return True


def judge(f: Follow, view: observe.View, now: float, min_healthy_time: float) -> bool:
    """Fill f.done for every host whose end is observed; True when every host has one."""
    _state, _message, started = observe.update_state(view.services.get(f.service))
    timed_out = now >= f.deadline
    if f.mode == "update" and started and started != f.started_before:
        return _judge_update(f, view, timed_out, now, min_healthy_time)
    return _judge_tasks(f, view, now, min_healthy_time, timed_out)
