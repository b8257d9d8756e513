"""`fab rollback -p P [-s SVC] [--to TAG]` on a swarm phase.

Plain rollback is Swarm's own: `docker service rollback` through a manager puts the service's
previous spec back, and fleetroll follows it as it follows a rollout, reporting per (host,
service) only what Swarm was seen to do. `--to TAG` is a rollout of that tag: the swarm rollout
path itself (preflight, security gate bound to the digest, freezes, hooks), with the inventory's
tag of that one service overridden; nothing else of the phase may change with it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from agent.vocabulary import Outcome, State

from .. import ledger, transport
from ..ending import RolloutReport, conclude
from ..errors import RolloutError
from ..inventory import Inventory
from ..plan import Plan, Step, new_rollout_id, operator
from . import observe, render
from .judge import ROLLBACK_SETTLE_S, Follow, back_as_seen, base
from .remote import Host, SwarmCommandError

POLL_S = 0.5
REVERT = "revert"


def service_rollback(name: str) -> list[str]:
    """Swarm's rollback to the service's previous spec; --detach: fleetroll follows it itself (UpdateStatus, tasks)."""
    return ["docker", "service", "rollback", "--detach", "--quiet", name]


def refusal(name: str, svc: dict[str, Any] | None) -> str:
    """Why Swarm's previous spec is not a place to go back to, or '' when it is. Pure."""
    if svc is None:
        return f"{name} is not in the swarm: nothing to go back from"
    if not svc.get("PreviousSpec"):
        return (f"Swarm keeps no previous spec of {name} (it was deployed once, or a rollback, Swarm's own or fab's,"
                " has used it up): nothing to go back to; choose a version: fab rollback --to TAG")
    state = observe.update_state(svc)[0]
    if state.startswith("rollback_"):
        tag = observe.deployed(svc, previous=True)[0] or "?"
        return (f"Swarm already rolled {name} back ({state.replace('_', ' ')}): its previous spec is now the release it left"
                f" ({tag}), so going back would go forward again; choose a version: --to TAG (fab versions -s {name})")
    return ""


def unchanged(name: str, svc: dict[str, Any]) -> str:
    """Why going back to the previous spec would change nothing, or '' (pure).

    Found by an exploratory run: a phase rollback reported 'reverted T -> T' for a service whose previous
    spec was the very one it runs (the phase's release changed another service): it is skipped, said so.
    """
    cur, prev = observe.deployed(svc), observe.deployed(svc, previous=True)
    if cur[2] and cur == prev:
        return (f"Swarm's previous spec of {name} is the one it runs ({cur[0]}, same configuration): nothing to go back to;"
                f" left as it is")
    return ""


def follow_of(inv: Inventory, name: str, svc: dict[str, Any], now: float) -> Follow:
    """What to follow: the previous spec is the target (tried), the current one what runs before (pure but for the clock)."""
    cur_tag, cur_digest, _ = observe.deployed(svc)
    prev_tag, prev_digest, prev_hash = observe.deployed(svc, previous=True)
    s = inv.fleet.services[name]
    hosts = inv.fleet.hosts_of(name)
    par = ((svc.get("Spec") or {}).get("RollbackConfig") or {}).get("Parallelism") or len(hosts)
    wait = (s.health.healthy_deadline + s.health.min_healthy_time + 15) * math.ceil(len(hosts) / par) + 20
    return Follow(name, "update", hosts, prev_tag, prev_digest, cur_tag, cur_digest, observe.update_state(svc)[2], now + wait,
                  prev_hash, s.replicas or 0)


def _done(f: Follow, host: str, outcome: str, message: str, check: str = "swarm-rollback", **more: Any) -> None:
    f.done[host] = {**base(f, host, REVERT), "outcome": outcome, "check": check, "message": message, **more}


def _reverted_on(f: Follow, h: str, task: dict[str, Any], said: str) -> None:
    same_image = " (the same image, its earlier configuration)" if f.new_digest == f.old_digest else ""
    _done(f, h, Outcome.REVERTED, f"Swarm rolled {f.service} back to its previous spec{same_image}: {said}",
          after_tag=f.new_tag, after_digest=f.new_digest,
          revert_gate={"ok": True, "last": {"reason": f"Swarm task {task['id'][:12]} runs {f.new_tag} on {h}, healthy"
                                            " by its healthcheck, after Swarm's rollback"}})


def _elsewhere(f: Follow, h: str, on: dict[str, dict[str, Any]]) -> None:
    _done(f, h, Outcome.NOOP, f"no task here: Swarm runs the {f.replicas} replica(s) of {f.new_tag} on {', '.join(sorted(on))}",
          check="swarm", after_tag="", after_digest="")


def _back_as_seen(f: Follow, view: observe.View, now: float, min_healthy_time: float, state: str, message: str) -> bool:
    """Swarm's state after the rollback reads other than rollback_completed (Swarm can write `completed` over it), but
    its spec is the spec rolled back to (f.new_*: follow_of's target, digest and spec hash), nothing of the release it
    left (f.old_digest) is wanted running, and the target's same task ran on every host (or the replicas are placed)
    through min_healthy_time + ROLLBACK_SETTLE_S: reverted, as seen (judge.back_as_seen, the rollout's own rule).
    The settle as there: a state that is not rollback_completed is no word from Swarm that the rollback went through.
    A rollback to the same image (an earlier configuration) is not judged so: its tasks cannot be told apart."""
    if not f.want_hash or observe.deployed(view.services.get(f.service))[1:] != (f.new_digest, f.want_hash):
        return False
    window = min_healthy_time + ROLLBACK_SETTLE_S
    on = back_as_seen(f, view, now, window, f.new_digest, f.old_digest)
    if not on:
        return False
    for h in f.hosts:
        if h in on:
            _reverted_on(f, h, on[h], f"Swarm says {state or 'no state'} ({message or 'no message'}), not rollback_completed,"
                                      f" but its spec is the previous spec ({f.new_tag}) again, no task of {f.old_tag} is"
                                      f" wanted running, and task {on[h]['id'][:12]} runs {f.new_tag} on {h}, the same task"
                                      f" for {window:g}s or more")
        else:
            _elsewhere(f, h, on)
    return True


def judge_rollback(f: Follow, view: observe.View, now: float, min_healthy_time: float) -> bool:
    """Fill f.done from what Swarm shows after `docker service rollback`; True when every host has an end. Pure.

    min_healthy_time is the service's (inventory health): how long a task must be seen running to count when Swarm
    does not say rollback_completed (_back_as_seen)."""
    state, message, started = observe.update_state(view.services.get(f.service))
    timed_out = now >= f.deadline
    moved = bool(started) and started != f.started_before
    if moved and state == "rollback_completed":
        on = observe.running(view, f.service, f.new_digest)
        for h in f.hosts:
            if h in on:
                _reverted_on(f, h, on[h], message or "completed")
            elif f.replicas and len([x for x in f.hosts if x in on]) >= f.replicas:
                _elsewhere(f, h, on)
            elif timed_out:
                _done(f, h, Outcome.NEEDS_OPERATOR, f"Swarm says the rollback completed but no task of {f.new_tag} is seen"
                      f" running on {h}; look: fab status", after_tag="", after_digest="")
    elif moved and state == "rollback_paused":
        for h in f.hosts:
            _done(f, h, Outcome.NEEDS_OPERATOR, f"Swarm paused the rollback: {message}; nothing proves what serves; look: fab"
                  " status, fab logs", after_tag="", after_digest="")
    elif moved and _back_as_seen(f, view, now, min_healthy_time, state, message):
        pass
    elif timed_out:
        for h in f.hosts:
            _done(f, h, Outcome.NEEDS_OPERATOR, f"Swarm's rollback is {state or 'not started'} ({message or 'no message'}) at the"
                  " end of fleetroll's wait; Swarm carries on: follow it with fab status", after_tag="", after_digest="")
    return all(h in f.done for h in f.hosts)


def _results(follows: list[Follow]) -> dict[str, transport.CallResult]:
    by_host: dict[str, list[dict]] = {}
    for f in follows:
        for h in f.hosts:
            by_host.setdefault(h, []).append(f.done[h])
    return {h: transport.CallResult(host=h, ok=all(s["outcome"] in (Outcome.REVERTED, Outcome.NOOP, Outcome.SKIPPED) for s in svcs),
                                    answer={"protocol": transport.PROTOCOL, "ok": True, "data": {"services": svcs}})
            for h, svcs in by_host.items()}


def _start(manager: Host, stack: str, follows: list[Follow]) -> list[Follow]:
    """Ask Swarm to roll each service back; one whose request failed and whose update did not start is refused, seen so."""
    asked = []
    for f in follows:
        try:
            manager.run(service_rollback(f"{stack}_{f.service}"), timeout=60)
        except SwarmCommandError as exc:
            try:  # what Swarm took before the error is read, not assumed
                started = observe.update_state(observe.read(manager, stack).services.get(f.service))[2]
            except (SwarmCommandError, OSError, EOFError, ValueError) as again:
                for h in f.hosts:
                    _done(f, h, Outcome.NEEDS_OPERATOR, f"docker service rollback failed ({exc}) and the swarm could not be"
                          f" read after it ({again}); look: fab status", after_tag="", after_digest="")
                continue
            if started == f.started_before:
                for h in f.hosts:
                    _done(f, h, Outcome.REFUSED, f"not rolled back: {exc}", after_tag=f.old_tag, after_digest=f.old_digest)
                continue
        asked.append(f)
    return asked


def _follow(inv: Inventory, manager: Host, stack: str, follows: list[Follow]) -> None:
    pending = _start(manager, stack, follows)
    while pending:
        try:
            view = observe.read(manager, stack)
        except (SwarmCommandError, OSError, EOFError, ValueError) as exc:
            for f in pending:  # not observed is not reverted: Swarm carries on by itself
                for h in f.hosts:
                    f.done.setdefault(h, {**base(f, h, REVERT), "outcome": Outcome.NEEDS_OPERATOR, "check": "swarm",
                                          "message": f"lost the manager {manager.name} while following the rollback: {exc};"
                                          " Swarm carries on: look with fab status", "after_tag": "", "after_digest": ""})
            return
        now = time.monotonic()
        pending = [f for f in pending
                   if not judge_rollback(f, view, now, inv.fleet.services[f.service].health.min_healthy_time)]
        if pending:
            time.sleep(POLL_S)


def _previous_spec(inv: Inventory, phase: str, names: list[str], hosts: list[str] | None) -> RolloutReport:
    from .deploy import open_manager

    if hosts:
        raise RolloutError(f"phase {phase} runs on engine: swarm; Swarm rolls a service back on all its nodes: drop --hosts")
    t0 = time.monotonic()
    stack = render.stack_name(phase)
    manager = open_manager(inv)
    try:
        view = observe.read(manager, stack)
        now = time.monotonic()
        follows, refused = [], []
        for name in names:
            svc = view.services.get(name)
            why = refusal(name, svc)
            f = follow_of(inv, name, svc, now) if svc else Follow(name, "update", inv.fleet.hosts_of(name), "", "", "", "", "", now)
            (refused if why else follows).append(f)
            same = not why and unchanged(name, svc)
            for h in f.hosts if why or same else ():
                _done(f, h, Outcome.SKIPPED if same else Outcome.REFUSED, same or why, after_tag=f.old_tag, after_digest=f.old_digest)
            if same:
                follows.remove(f)
                refused.append(f)
        plan = Plan(new_rollout_id(phase, "rollback"), phase, operator(),
                    [Step(h, f.service, REVERT, f.old_tag, f.old_digest, f.new_tag, f.new_digest,
                          reason=next(iter(f.done.values()), {}).get("message") or "Swarm's previous spec")
                     for f in follows + refused for h in f.hosts])
        report = RolloutReport(plan.rollout_id, phase, False, State.FAILED, plan)
        common = {"rollout_id": plan.rollout_id, "phase": phase, "operator": plan.operator, "inventory": str(inv.path),
                  "inventory_git_sha": ledger.inventory_git_sha(inv.path), "rollback": True, "engine": "swarm", "stack": stack}
        ledger.append("started", **common, plan=plan.to_json(ledger.redaction_key()))
        if follows:
            report.messages.append(f"swarm: docker service rollback through {manager.name}; following Swarm's rollback")
            _follow(inv, manager, stack, follows)
    finally:
        manager.close()
    return conclude("rollback", report, _results(follows + refused), common, t0, str(inv.path))


def _to_tag(inv: Inventory, phase: str, service: str | None, tag: str, progress, confirm) -> RolloutReport:
    """The swarm rollout of `service` at `tag`: the same gates; every other service of the phase must stay as it is."""
    from .deploy import rollout_swarm

    if not service:
        raise RolloutError(f"--to {tag} names a version of one service: add -s SERVICE (phase {phase}: "
                           f"{', '.join(inv.phase(phase).services)})")
    svc = inv.fleet.services[service].model_copy(update={"tag": tag})
    at_tag = dataclasses.replace(inv, fleet=inv.fleet.model_copy(update={"services": {**inv.fleet.services, service: svc}}))
    with transport.Pool() as pool:
        return rollout_swarm(at_tag, phase, pool, progress=progress, confirm=confirm, only=service,
                             record={"rollback": True, "to_tag": tag})


def rollback_swarm(inv: Inventory, phase: str, service: str | None = None, hosts: list[str] | None = None,
                   progress=None, to_tag: str | None = None, confirm=None) -> RolloutReport:
    """Swarm's previous spec (plain), or a rollout of `to_tag` through every gate (--to)."""
    if to_tag:
        if hosts:
            raise RolloutError(f"phase {phase} runs on engine: swarm, deployed as one stack: drop --hosts")
        return _to_tag(inv, phase, service, to_tag, progress, confirm)
    return _previous_spec(inv, phase, [service] if service else inv.services_for(phase), hosts)
