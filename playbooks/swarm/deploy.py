"""`fab rollout -p P` on a swarm phase: the SSH push's preflight, security gate, freezes and hooks, then Swarm.

Everything before a change is the SSH rollout's own code (rollout._decide, _stop_before_changing):
preflight on every host (NVML, arch, GPU memory, the image contract), the plan's digests as the
hosts resolved them, the Trivy gate bound to those digests, freezes, confirmation, the pre-rollout
hook. Then the stack, pinned to those digests, is deployed through a manager, and Swarm's update
is followed to its end. Each (host, service) is reported as Swarm left it, observed: committed,
reverted (Swarm rolled back, the previous spec runs again on that host), removed (a new service
that never became healthy, taken away), or needs-operator (paused, or nothing observed in time).
What Swarm was seen to roll back freezes the phase on those hosts, as the SSH push's revert does (freeze.py).
The ending is the SSH rollout's own (rollout._record -> ending.conclude): report, state, exit
code, ledger.
"""

from __future__ import annotations

import math
import time

from agent.vocabulary import Outcome, State

from .. import ledger, rollout, transport
from ..ending import Interrupted, RolloutReport
from ..errors import RolloutError
from ..inventory import Inventory
from ..plan import BLOCKED, CREATE, NOOP, REPLACE, Plan
from . import commands, freeze, handover, observe, render, secrets
from .judge import Follow, judge
from .judge import base as _base
from .remote import Host, SwarmCommandError, open_host

POLL_S = 0.5
FINE = (Outcome.COMMITTED, Outcome.NOOP)  # a replicas: host Swarm put no task on is noop, observed, not a failure
# What reading Swarm through the manager can raise: remote.Host turns the transport's errors into SwarmCommandError;
# an answer of another shape than Swarm's (KeyError, TypeError in observe.read) is no observation either.
UNREAD = (SwarmCommandError, OSError, EOFError, ValueError, KeyError, TypeError)
UNOBSERVED = "swarm-unobserved"  # the check of an outcome fleetroll did not see: nothing destructive follows from it


def open_manager(inv: Inventory) -> Host:
    """The first manager that answers and is one; the error says how to form the swarm when none is."""
    why = []
    for name in inv.fleet.swarm_managers():
        try:
            h = open_host(inv, name)
        except transport.TransportError as exc:
            why.append(str(exc))
            continue
        import json

        try:
            info = json.loads(h.run(commands.info())[1] or "{}") or {}
        except (SwarmCommandError, ValueError) as exc:
            why.append(str(exc))
            h.close()
            continue
        if info.get("LocalNodeState") == "active" and info.get("ControlAvailable"):
            return h
        why.append(f"{name}: not a swarm manager (swarm state {info.get('LocalNodeState') or 'unknown'!r})")
        h.close()
    raise RolloutError("no swarm manager answers: " + "; ".join(why) + "; fix: fab swarm.form (then fab rollout again)")


# --- the plan, in Swarm's terms (pure) ------------------------------------------------------


def swarm_plan(inv: Inventory, plan: Plan, rendered: render.Rendered, before: observe.View, facts: dict[str, dict]) -> None:
    """Rewrite the SSH plan's actions from what Swarm runs now (its digests stay: the hosts resolved them). Pure."""
    for st in plan.steps:
        if st.action == BLOCKED:
            continue
        svc = before.services.get(st.service)
        tag, digest, shash = observe.deployed(svc)
        want = rendered.doc["services"][st.service]["deploy"]["labels"][render.SPEC_LABEL]
        st.current_tag, st.current_digest, st.changes = tag, digest, []
        st.order, st.order_reason = rendered.orders[st.service]
        pushed = next((c for c in (facts.get(st.host) or {}).get("docker", {}).get("containers", [])
                       if c.get("name") == st.service and c.get("running")), None)
        if pushed is not None and not handover.behind_ssh_proxy(inv, st.service):
            st.action = BLOCKED
            st.reason = (f"a container {st.service} pushed over SSH runs on {st.host}; moving a phase to Swarm is done host by"
                         f" host and is not zero-downtime (docs/swarm.md): remove it first (fab remove -s {st.service} -H"
                         f" {st.host}), then roll the phase out again, or keep the phase on engine: ssh")
        elif svc is None:
            st.action, st.reason = CREATE, "not in the swarm yet"
        elif why := mode_change(svc, rendered.doc["services"][st.service]["deploy"], plan.phase):
            st.action, st.reason = BLOCKED, why
        elif shash == want and st.host in observe.running(before, st.service, digest):
            st.action, st.reason = NOOP, "Swarm already runs this digest with this configuration here"
        elif shash == want and len(observe.running(before, st.service, digest)) >= (inv.fleet.services[st.service].replicas or 1e9):
            st.action, st.reason = NOOP, "Swarm runs every replica of this digest and configuration, on other hosts"
        elif shash == want:
            st.action, st.reason = REPLACE, "Swarm's task here is not running; wait for Swarm to place it again"
        elif digest == st.new_digest:
            st.action, st.reason = REPLACE, "same image, configuration changed"
        else:
            st.action, st.reason = REPLACE, "new image"
        if st.action == NOOP and (unfinished := unfinished_update(svc, st.service)):
            st.reason += f"; {unfinished}"
        if pushed is not None and st.action != BLOCKED:
            st.reason += f"; then the SSH push's proxy hands {st.service} over from its SSH container (handover.py)"
        if st.action == REPLACE and digest != st.new_digest:
            st.changes.append(f"image: {tag or '?'}@{(digest or '?')[:19]} -> {st.new_tag}@{st.new_digest[:19]}")


def unfinished_update(svc: dict | None, name: str) -> str:
    """A note when Swarm's last update of the service did not finish, or "" (pure).

    Found by an exploratory run: after a node's dockerd restarted mid-update, Swarm left the update
    'updating'/'paused' and the next rollout called the service a no-op without a word.
    """
    state, message, _ = observe.update_state(svc)
    if state not in ("updating", "paused", "rollback_started", "rollback_paused"):
        return ""
    return (f"but Swarm's last update of it is {state.replace('_', ' ')}" + (f" ({message})" if message else "")
            + f": look with fab details -s {name}; fab rollback -s {name} goes back to its previous spec")


def mode_change(svc: dict, deploy: dict, phase: str) -> str:
    """Why the stack deploy would fail on this service's mode, or "" (pure).

    Found by an exploratory run: `hosts:` changed to `replicas:` passed the plan, and the deploy then
    failed with Docker's 'service mode change is not allowed' (nothing changed, but no fix was given).
    """
    was = "global" if "Global" in ((svc.get("Spec") or {}).get("Mode") or {}) else "replicated"
    now = deploy.get("mode", "replicated")
    if was == now:
        return ""
    words = {"global": "one task on each of its hosts (hosts: without replicas:)", "replicated": "replicated (host: or replicas:)"}
    return (f"Swarm runs it as {words[was]} and the inventory now makes it {words[now]}: Swarm cannot change a service's mode"
            f" in place ('service mode change is not allowed'). Take the stack down and deploy it again (downtime):"
            f" fab swarm.down -p {phase}, then fab rollout -p {phase}; or put the inventory's placement back")


def only_this(plan: Plan, service: str, phase: str) -> None:
    """A rollback --to changes one service: another the stack deploy would change too blocks it (nothing is changed). Pure."""
    for st in plan.changes:
        if st.service != service:
            st.action = BLOCKED
            st.reason = (f"fab rollback --to changes {service} only, but the stack would also change {st.service} ({st.reason}):"
                         f" the inventory differs from what Swarm runs; fab rollout -p {phase} first, or put the inventory back")


def own_ports_freed(facts: dict[str, dict], before: observe.View) -> dict[str, dict]:
    """Facts with the host ports the stack's own tasks hold taken out: the ports check must not call them someone else's."""
    held = observe.published_ports(before)
    return {h: {**f, "ports": [p for p in f.get("ports") or [] if p not in held.get(h, set())]} for h, f in facts.items()}


# --- doing it ---------------------------------------------------------------------------------


# Swarm's rollback of a host-port service can wait on a task it restarted for the failed release and could not place
# ("host-mode port already in use": desired Shutdown, stuck Pending) before it starts the previous spec's task there:
# watched on the lab, a 2-node rollback that takes 19 s took 75 s (Ready for a minute), and ended completed on its own.
# While Swarm says rollback_started at the end of the wait, fleetroll waits this much more (once) before needs-operator.
ROLLBACK_STALL_S = 90.0


def _follows(inv: Inventory, plan: Plan, rendered: render.Rendered, before: observe.View, t0: float) -> list[Follow]:
    out = []
    for name in dict.fromkeys(s.service for s in plan.changes):
        svc = inv.fleet.services[name]
        old = before.services.get(name)
        tag, digest, shash = observe.deployed(old)
        want = rendered.doc["services"][name]["deploy"]["labels"][render.SPEC_LABEL]
        mode = "create" if old is None else "reconcile" if shash == want else "update"
        hosts = inv.fleet.hosts_of(name)
        par = rendered.doc["services"][name]["deploy"]["update_config"]["parallelism"] or len(hosts)
        # Swarm's own clock: the start period, then its probes' verdict (render.probe_timing), the monitor window, slack.
        per_batch = (svc.health.healthy_deadline + render.judged_unhealthy_within(svc.health.interval)
                     + svc.health.min_healthy_time + 15)
        wait = per_batch * math.ceil(len(hosts) / par) * (2 if mode == "update" else 1) + 20
        out.append(Follow(name, mode, hosts, svc.tag, next(s.new_digest for s in plan.changes if s.service == name), tag, digest,
                          observe.update_state(old)[2], t0 + wait, want, svc.replicas or 0,
                          rollback_grace=per_batch * math.ceil(len(hosts) / par) + ROLLBACK_STALL_S))
    return out


def _unobserved(follows: list[Follow], why: str) -> None:
    """Every (host, service) still open needs an operator: not observed is neither committed nor reverted."""
    for f in follows:
        for h in f.hosts:
            f.done.setdefault(h, {**_base(f, h, CREATE if f.mode == "create" else REPLACE), "outcome": Outcome.NEEDS_OPERATOR,
                                  "check": UNOBSERVED, "message": why, "after_tag": "", "after_digest": ""})


def _deploy_failed(manager: Host, stack: str, follows: list[Follow], exc: SwarmCommandError) -> None:
    """What Swarm took before the error is read, not assumed: a service whose spec is still the old one was not touched.

    When the stack cannot be read either, nothing is claimed: every service is needs-operator.
    """
    try:
        view = observe.read(manager, stack)
    except UNREAD as lost:
        _unobserved(follows, f"docker stack deploy through {manager.name} failed ({exc}) and the stack could not be read"
                             f" after it ({lost}); Swarm may have taken part of it: look with fab status")
        return
    for f in follows:
        if observe.deployed(view.services.get(f.service))[2] != f.want_hash:
            for h in f.hosts:
                f.done[h] = {**_base(f, h, CREATE if f.mode == "create" else REPLACE), "outcome": Outcome.REFUSED,
                             "check": "swarm-deploy", "message": f"not deployed: {exc}", "after_tag": f.old_tag,
                             "after_digest": f.old_digest}


def _remove_failed_creations(manager: Host, stack: str, follows: list[Follow]) -> None:
    """A service new in this rollout that never became healthy has nothing to go back to: take it away, and see it gone.

    Only for a failure fleetroll saw: an outcome it did not see (the manager lost) removes nothing. Once the
    service is seen gone every host of it is `removed`, the healthy ones too (their task went with it); a removal
    not seen through leaves the healthy ones needs-operator, since what runs there is no longer known.
    """
    for f in follows:
        bad = [d for d in f.done.values() if d["outcome"] not in FINE]
        if f.mode != "create" or not bad or any(d["check"] == "swarm-deploy" for d in bad):
            continue  # all healthy, or never deployed: nothing to take away
        if any(d["check"] == UNOBSERVED for d in bad):
            for d in bad:
                d["message"] += "; the new service was left in place: fleetroll removes only what it saw fail"
            continue
        try:
            manager.run(commands.service_rm(f"{stack}_{f.service}"))
            gone = f.service not in observe.read(manager, stack).services
        except UNREAD as exc:
            gone, err = False, str(exc)
        else:
            err = "" if gone else "still listed after docker service rm"
        failed = ", ".join(sorted(h for h, d in f.done.items() if d["outcome"] not in FINE))
        for d in f.done.values():
            if gone:
                why = d["message"] if d["outcome"] not in FINE else f"{d['message']}, but the service failed on {failed}"
                d.pop("gate", None)
                d.update(outcome=Outcome.REMOVED, check="swarm-create", after_tag="", after_digest="", message=why +
                         "; it had no earlier version, so fleetroll removed the new service (seen gone)")
            elif d["outcome"] in FINE:
                d.pop("gate", None)
                d.update(outcome=Outcome.NEEDS_OPERATOR, check="swarm-create", after_tag="", after_digest="",
                         message=f"{d['message']}; but the service failed on {failed} and removing it was not seen"
                                 f" through ({err}): whether it still runs here is unknown; look with fab status")
            else:
                d["message"] += f"; removing it failed: {err}"


def _ask_rollback(manager: Host, stack: str, f: Follow, now: float, report: RolloutReport) -> None:
    """Swarm completed an update whose new tasks failed (judge._failed_where_none_runs): ask it for the rollback its
    failure_action says, once, and follow that as a Swarm rollback (its end decides reverted or needs-operator)."""
    from .rollback import service_rollback

    why, f.ask_rollback, f.rollback_asked = f.ask_rollback, "", f.ask_rollback
    try:
        manager.run(service_rollback(f"{stack}_{f.service}"), timeout=60)
    except SwarmCommandError as exc:
        if "does not have a previous spec" not in exc.err:
            report.messages.append(f"{why}; Swarm refused it: {exc}")
            return
        # Swarm's own rollback got there between our view and our request (it clears the previous spec): follow it as
        # asked; what it ends in is judged from what is then seen running, as any rollback.
        why += ("; Swarm answered that the service has no previous spec any more (it clears it when it rolls back by"
                " itself): fleetroll follows what it does")
    f.deadline = max(f.deadline, now + f.rollback_grace)
    report.messages.append(why)


def _results(follows: list[Follow]) -> dict[str, transport.CallResult]:
    by_host: dict[str, list[dict]] = {}
    for f in follows:
        for h in f.hosts:
            by_host.setdefault(h, []).append(f.done[h])
    return {h: transport.CallResult(host=h, ok=all(s["outcome"] in FINE for s in svcs),
                                    answer={"protocol": transport.PROTOCOL, "ok": True, "data": {"services": svcs}})
            for h, svcs in by_host.items()}


def _deploy_and_follow(ro, manager: Host, rendered: render.Rendered, before: observe.View) -> dict[str, transport.CallResult]:
    inv, plan, report = ro.inv, ro.plan, ro.report
    names, made = secrets.on_manager(inv, ro.pool, manager.name, sorted(set(rendered.secrets.values())), create=True)
    if names != rendered.secret_names:
        raise RolloutError(f"{manager.name}: a secret file changed between the plan and the deploy ({', '.join(sorted(names))});"
                           " nothing was deployed: run the rollout again")
    if made:
        report.messages.append(f"swarm secrets made on {manager.name} from its own secret files: {', '.join(made)}")
    ledger.append("started", **ro.common, manager=manager.name,
                  plan=plan.to_json(ledger.redaction_key()))
    t0 = time.monotonic()
    follows = _follows(inv, plan, rendered, before, t0)
    try:
        manager.run(commands.stack_deploy(rendered.stack), stdin=render.to_yaml(rendered).encode(), timeout=120)
    except SwarmCommandError as exc:
        report.messages.append(f"FAILED deploying stack {rendered.stack} through {manager.name}: {exc}")
        _deploy_failed(manager, rendered.stack, follows, exc)
    else:
        report.messages.append(f"stack {rendered.stack} deployed through {manager.name}; following Swarm's update")
    pending = [f for f in follows if not f.done]
    view = observe.View()
    while pending:
        try:
            view = observe.read(manager, rendered.stack)
        except UNREAD as exc:
            # Not observed is not reverted: every service still open needs an operator; Swarm carries on by itself.
            _unobserved(pending, f"lost the manager {manager.name} while following: {exc}; Swarm carries on: look with"
                                 " fab status")
            break
        now = time.monotonic()
        pending = [f for f in pending
                   if not judge(f, view, now, inv.fleet.services[f.service].health.min_healthy_time)]
        for f in pending:
            if f.ask_rollback:
                _ask_rollback(manager, rendered.stack, f, now, report)
        if pending:
            time.sleep(POLL_S)
    _remove_failed_creations(manager, rendered.stack, follows)
    return _results(follows)


def _noop(inv: Inventory, phase: str, ro, before: observe.View, facts: dict[str, dict], pool: transport.Pool) -> None:
    """Swarm runs it all: an unfinished update is said; an SSH container a move left still serving goes now."""
    ro.report.messages += [f"note: {n}: {w}" for n in dict.fromkeys(st.service for st in ro.plan.steps)
                           if (w := unfinished_update(before.services.get(n), n))]
    failed: list[tuple[str, str, str]] = []
    ro.report.messages += handover.leftovers(inv, phase, ro.plan, facts, pool, failed)
    if failed:  # nothing was deployed, but the move it finishes is still not done: not a clean no-op
        ro.report.state, ro.report.ok = State.NEEDS_OPERATOR, False
        ro.report.messages.append("NEEDS AN OPERATOR:\n  " + "\n  ".join(f"{h} {s}: {w}" for h, s, w in failed))


def rollout_swarm(inv: Inventory, phase: str, pool: transport.Pool, hosts: list[str] | None = None, dry_run: bool = False,
                  max_parallel: int | None = None, on_failure: str = "revert-phase", confirm=None, progress=None,
                  failpoint: dict | None = None, only: str | None = None, record: dict | None = None) -> RolloutReport:
    """One swarm phase: decide as the SSH rollout does, deploy the stack, follow Swarm, end as the SSH rollout does.

    only/record are `fab rollback --to`'s (swarm/rollback.py): only that service may change, and the records say rollback.
    """
    if hosts:
        raise RolloutError(f"phase {phase} runs on engine: swarm, deployed as one stack; --hosts does not apply to it")
    if failpoint:
        raise RolloutError("failpoints are the SSH engine's (its host transaction); a swarm phase has none")
    manager = open_manager(inv)
    try:
        stack = render.stack_name(phase)
        before = observe.read(manager, stack)
        ro = rollout._decide(inv, phase, pool, None, max_parallel, on_failure, progress)  # preflight: swarm/checks.py too
        pre = ro.report.preflight
        digests = {s.service: s.new_digest for s in ro.plan.steps if s.new_digest}
        try:
            names, _ = secrets.on_manager(inv, pool, manager.name, render.secret_refs(inv, phase), create=False)
            rendered = render.render(inv, phase, digests, names)
        except render.RenderError as exc:
            raise RolloutError(f"{inv.path}: {exc}") from None
        swarm_plan(inv, ro.plan, rendered, before, pre.facts)
        if only:
            only_this(ro.plan, only, phase)
        ro.report.messages += [f"swarm: {n}" for n in rendered.notes]
        ro.common.update(engine="swarm", stack=stack, **(record or {}))
        if rollout._stop_before_changing(ro, dry_run, confirm):
            if dry_run:
                ro.report.messages.append(f"swarm: stack {stack} would be deployed through {manager.name} (fab swarm.render -p"
                                          f" {phase} prints it)")
            elif ro.report.state == State.NOOP:
                _noop(inv, phase, ro, before, pre.facts, pool)
            ro.report.elapsed_s = time.monotonic() - ro.t0
            return ro.report
        try:
            moving = handover.plan(inv, phase)  # services behind the SSH push's proxy: it serves their tasks too
            if moving:
                ro.report.messages += handover.attach(inv, moving, pool)
            results = _deploy_and_follow(ro, manager, rendered, before)
            if moving:
                failed = []
                ro.report.messages += handover.to_swarm(inv, phase, ro.plan.rollout_id, moving, results, pre.facts, pool, failed)
                handover.unfinished(results, failed)  # a half-done move is needs-operator in the report, exit and ledger
            # As the SSH push's host transaction: freeze what Swarm was seen to roll back; a clean commit lifts that
            ro.report.messages += freeze.record(inv, ro.plan, results, pool)
            ro.report.messages += freeze.lift(inv, ro.plan, results, pre.facts, pool)
        except KeyboardInterrupt:
            ledger.append("interrupted", **ro.common, reason="the operator pressed Ctrl-C; Swarm carries on with the update",
                          hosts_busy=ro.plan.hosts)
            raise Interrupted(ro.plan.rollout_id, ro.plan.phase, ro.plan.hosts) from None
        return rollout._record(ro, results)
    finally:
        manager.close()
