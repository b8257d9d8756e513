"""Rolling a phase out: preflight, plan, security gate, prepare everywhere, host transactions, phase-wide revert.

It holds no rollout logic of its own beyond orchestration: the plan decides what changes,
the agent's transaction does it on the host, and this module moves plans and answers,
applies the phase-wide failure policy across hosts, and ends through ending.conclude.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.vocabulary import Outcome, State

from . import batches, freeze_spread, freezes, hooks, ledger, moved, targets, timings, transport
from .ending import Interrupted, RolloutReport, conclude, interrupted_all, services_of
from .errors import RolloutError
from .hostcalls import record_recoveries, recovered_notes, run_on_hosts, step_args
from .in_motion import in_motion
from .inventory import Inventory
from .plan import BLOCKED, CREATE, NOOP, REPLACE, Plan, Step, build_plan, gate_note, plan_text
from .runner import run_preflight

POLICIES = ("revert-phase", "revert-service", "stop")


def security_gate(inv: Inventory, plan: Plan) -> list:
    """Trivy HIGH/CRITICAL findings block a step unless an unexpired risk acceptance covers them (R4)."""
    from .images import security

    sec = inv.fleet.security
    verdicts: dict[tuple[str, str, str], Any] = {}  # one verdict per image and digest, however many services run it
    for step in plan.changes:
        svc = inv.fleet.services[step.service]
        key = (svc.image, step.new_tag, step.new_digest)
        if key not in verdicts:
            verdicts[key] = security.check(svc.image, step.new_tag, step.new_digest, inv.resolve(sec.artifacts),
                                           acceptances_path(inv), sec.missing_report, max_days=sec.max_acceptance_days)
        v = verdicts[key]
        if v.status == "refuse":
            step.action, step.reason = BLOCKED, "security gate: " + "; ".join(v.reasons)
    return list(verdicts.values())


def acceptances_path(inv: Inventory):
    """$FLEETROLL_ACCEPTANCES when set (the runbook's variable), else the inventory's security.acceptances."""
    from pathlib import Path

    env = os.environ.get("FLEETROLL_ACCEPTANCES")
    return Path(env).expanduser() if env else inv.resolve(inv.fleet.security.acceptances)


def rollout(inv: Inventory, phase: str, **kw) -> RolloutReport:
    """Roll one phase out over one SSH connection per host (preflight, transaction, revert)."""
    with transport.Pool() as pool:
        return _rollout(inv, phase, pool=pool, **kw)


@dataclass
class _Rollout:
    """What decide() hands to run() and record(): the plan, its report and the ledger's common fields."""

    inv: Inventory
    plan: Plan
    report: RolloutReport
    common: dict[str, Any]
    policy: str
    max_parallel: int | None
    progress: Any
    pool: transport.Pool
    t0: float
    failpoint: dict | None = None
    hosts: list[str] | None = None  # what --hosts named (None: the phase's every host)


def _rollout(
    inv: Inventory,
    phase: str,
    pool: transport.Pool,
    hosts: list[str] | None = None,
    dry_run: bool = False,
    max_parallel: int | None = None,
    on_failure: str = "revert-phase",
    confirm: Callable[[Plan], bool] | None = None,
    progress: Callable[[str, dict], None] | None = None,
    failpoint: dict | None = None,
    ahead: frozenset[tuple[str, str]] = frozenset(),
) -> RolloutReport:
    """failpoint (tests only): {"after": step, "service": name} makes the host transaction stop dead there.

    ahead: (phase, host) where a `--all` dry run's earlier phase would (re)start the proxy (it would run first).
    """
    if on_failure not in POLICIES:
        raise RolloutError(f"--on-failure must be one of {', '.join(POLICIES)}, not {on_failure!r}")
    targets.check(inv, phase, hosts)
    if inv.fleet.engine_of(inv.phase(phase)) == "swarm":  # Swarm runs the release; the same gates before it (docs/swarm.md)
        from .swarm.deploy import rollout_swarm

        return rollout_swarm(inv, phase, pool, hosts, dry_run, max_parallel, on_failure, confirm, progress, failpoint)
    ro = _decide(inv, phase, pool, hosts, max_parallel, on_failure, progress, ahead)
    ro.failpoint, ro.hosts = failpoint, hosts
    ro.report.timings = pool.times  # the pool's own dict: every later call of this command counts in it
    if dry_run or not ro.plan.changes or not ro.report.preflight.ok:
        ro.pool.finish()  # no host is called again: the agents end while the ledger and the report are written
    if _stop_before_changing(ro, dry_run, confirm):
        ro.report.elapsed_s = time.monotonic() - ro.t0
        return ro.report
    try:
        results = _run(ro)
    except KeyboardInterrupt:
        # Said honestly: not what the hosts did (not observed), only that the controller stopped watching.
        ledger.append("interrupted", **ro.common, reason="the operator pressed Ctrl-C; the hosts finish their transactions on"
                      " their own", hosts_busy=ro.plan.hosts)
        raise Interrupted(ro.plan.rollout_id, ro.plan.phase, ro.plan.hosts, ro.policy) from None
    try:
        return _record(ro, results)
    except KeyboardInterrupt:  # the hosts had answered; the report, the ledger's end or a hook was cut short
        ledger.append("interrupted", **ro.common, reason="the operator pressed Ctrl-C after the hosts had ended (report, hooks)")
        cut = Interrupted(ro.plan.rollout_id, ro.plan.phase, ro.plan.hosts)
        cut.args = (f"interrupted after the hosts of phase {phase} had ended their transactions, while the controller"
                    " wrote its report and ran its hooks; fab status shows how they ended",)
        raise cut from None


def _decide(inv: Inventory, phase: str, pool: transport.Pool, hosts, max_parallel, policy: str, progress,
            ahead: frozenset[tuple[str, str]] = frozenset()) -> _Rollout:
    """Preflight (which also recovers interrupted transactions on each host), plan, security gate."""
    t0 = time.monotonic()
    inv.phase(phase)
    git_sha = ledger.inventory_git_sha_later(inv.path)  # runs beside the preflight
    try:
        pre = run_preflight(inv, phase, hosts, max_parallel, pool=pool, ahead=ahead)
    except BaseException:
        git_sha()  # reaps the two git processes (Ctrl-C reaches them too); the ledger gets no entry
        raise
    plan = build_plan(inv, phase, pre.facts, hosts)
    report = RolloutReport(plan.rollout_id, phase, False, "refused", plan, pre, agent_calls=len(pre.hosts))
    report.messages += recovered_notes(pre.calls)
    record_recoveries(pre.calls)
    try:
        verdicts = security_gate(inv, plan)
    except ValueError as exc:
        raise RolloutError(str(exc)) from None
    report.messages += [f"security WARN: {r}" for v in verdicts if v.status == "warn" for r in v.reasons]
    report.messages += moved.notes(inv, plan) + moved.proxy_network_notes(inv, plan)
    common = {"rollout_id": plan.rollout_id, "phase": phase, "operator": plan.operator, "inventory": str(inv.path),
              "inventory_git_sha": git_sha(), "hosts": pre.hosts, "policy": policy,
              "security": [v.to_json() for v in verdicts if v.status != "pass"],
              "risk_acceptances": [a for v in verdicts for a in v.accepted], "acceptances_file": str(acceptances_path(inv))}
    return _Rollout(inv, plan, report, common, policy, max_parallel, progress, pool, t0)


def _frozen(ro: _Rollout) -> list[str]:
    """The freezes that stop this plan (its phase's, one under a name phases.yml lost, a failed release's in another
    phase; with --hosts, the phase's other hosts' too); a plan with nothing to change only names its phase's."""
    plan, facts, inventory = ro.plan, ro.report.preflight.facts, str(ro.inv.path)
    if not plan.changes:
        ro.report.messages += freezes.idle_notes(plan, facts, inventory)
        return []
    frozen = freezes.blocking(plan, facts, inventory, [p.name for p in ro.inv.phases])
    if ro.hosts:  # --hosts: a freeze on the phase's other hosts holds these too
        elsewhere, notes = freezes.on_other_hosts(ro.inv, plan.phase, list(facts), inventory, plan=plan)
        frozen, ro.report.messages = frozen + elsewhere, ro.report.messages + notes
    return frozen


def _stop_before_changing(ro: _Rollout, dry_run: bool, confirm) -> bool:
    """Every reason not to touch any host: failed preflight, blocked plan, dry run, no-op, no confirmation."""
    report, plan, pre = ro.report, ro.plan, ro.report.preflight
    moving = in_motion(plan, pre.facts)  # first: mid-swap, the other checks read containers and ports in motion too
    if moving and not dry_run:
        report.messages += moving
        ledger.append("refused", **ro.common, reason="host in the middle of another rollout", failures=moving)
        return True
    report.messages += [f"a real rollout would be refused now: {m}" for m in moving]
    report.frozen = bool(moving)
    if not pre.ok:
        failing = [f"{c.host} {c.check}: {c.detail}" + (f" (fix: {c.fix})" if c.fix else "") for c in pre.checks if c.status == "fail"]
        report.messages.append("preflight failed; nothing was changed:\n  " + "\n  ".join(failing))
        if not dry_run:
            ledger.append("refused", **ro.common, reason="preflight failed", failures=failing)
        return True
    frozen = _frozen(ro)
    if frozen and not dry_run:
        report.messages += frozen
        ledger.append("refused", **ro.common, reason="phase frozen", failures=frozen)
        return True
    report.messages += [f"a real rollout would be refused now: {m}" for m in frozen]
    report.frozen = report.frozen or bool(frozen)
    if plan.blocked:
        report.messages += [f"{s.host} {s.service}: blocked: {s.reason}" for s in plan.blocked]
        if not dry_run:
            ledger.append("refused", **ro.common, reason="plan blocked", failures=report.messages)
        return True
    if dry_run:
        report.ok, report.state = True, State.DRY_RUN
        report.messages.append(plan_text(plan))
        hook = hooks.path_of(ro.inv.path, "pre-rollout")
        if plan.changes and hook.exists():  # not run by a dry run (it may act); a real rollout is refused if it fails
            report.messages.append(f"a real rollout first runs {hook}; a dry run does not (it is refused if that hook fails)")
        update = ro.inv.update_for(plan.phase)
        order = batches.schedule(plan, update)
        if len(order) > 1:
            report.messages.append("order (each batch gated before the next):\n  " + "\n  ".join(batches.describe(order, update)))
        return True
    if not plan.changes:
        report.ok, report.state = True, State.NOOP
        report.messages.append(f"phase {plan.phase}: nothing to do; every service already runs its planned digest")
        report.messages += [f"{st.host} {st.service}: new {gate_note(st)}" for st in plan.steps if gate_note(st)]
        ledger.append("finished", **ro.common, final=State.NOOP, services=[s.record(ledger.redaction_key()) for s in plan.steps],
                      elapsed_s=round(time.monotonic() - ro.t0, 3), timings=timings.to_json(report.timings))
        return True
    if confirm is not None and getattr(confirm, "show", None):
        confirm.show(report)  # what the operator is about to say yes to: preflight, security warnings, then the plan
    if confirm is not None and not confirm(plan):
        report.messages.append("not confirmed; nothing was changed")
        return True
    pre_hook = hooks.run(ro.inv.path, "pre-rollout", _hook_payload(ro))
    if not pre_hook.ok:
        report.messages.append(f"pre-rollout hook {pre_hook.path} failed: {pre_hook.detail}; nothing was changed")
        ledger.append("refused", **ro.common, reason="pre-rollout hook failed", failures=[pre_hook.detail])
        return True
    return False


def _hook_payload(ro: _Rollout, **extra: Any) -> dict[str, Any]:
    """What hooks read on stdin: the rollout as the ledger records it (env values as keyed hashes)."""
    return {"rollout_id": ro.plan.rollout_id, "phase": ro.plan.phase, "operator": ro.plan.operator,
            "inventory": str(ro.inv.path), "plan": ro.plan.to_json(ledger.redaction_key()), **extra}


def _after_hooks(ro: _Rollout, report: RolloutReport) -> None:
    """post-rollout after every rollout that changed hosts; on-revert too when it ended reverted. They can only warn."""
    payload = _hook_payload(ro, state=report.state, hosts=report.hosts, pins=report.pins)
    for name in ("post-rollout", "on-revert") if report.state == State.REVERTED else ("post-rollout",):
        h = hooks.run(ro.inv.path, name, payload)
        if not h.ok:
            report.messages.append(f"WARN {name} hook {h.path} failed: {h.detail}")


def _run(ro: _Rollout) -> dict[str, transport.CallResult]:
    """Prepare everywhere, then the host transactions, then the phase-wide policy across hosts."""
    inv, plan, report = ro.inv, ro.plan, ro.report
    ledger.append("started", **ro.common, plan=plan.to_json(ledger.redaction_key()))
    busy = [h for h in plan.hosts if any(s.action not in (NOOP, BLOCKED) for s in plan.for_host(h))]
    # Every host pulls and checks its images by digest before any host stops anything.
    prepared = transport.on_hosts(inv, busy, "prepare", lambda h: step_args(plan, h, ro.policy, inv), max_parallel=ro.max_parallel,
                                  timeout=600, pool=ro.pool)
    report.agent_calls += len(busy)
    if any(not r.ok for r in prepared.values()):
        return _refused_by_prepare(plan, prepared, report)
    fp = ro.failpoint or {}

    def extra_for(h: str) -> dict:
        # Tests may aim a failpoint at some hosts only ({"hosts": [...]}); the others get none.
        aimed = fp and ("hosts" not in fp or h in fp["hosts"])
        return {"prepared": True, **({"failpoint": {k: v for k, v in fp.items() if k != "hosts"}} if aimed else {})}

    update = inv.update_for(plan.phase)
    order = batches.schedule(plan, update)
    lines = batches.describe(order, update)
    results: dict[str, transport.CallResult] = {}
    for i, batch in enumerate(order):
        if len(order) > 1:
            report.messages.append(f"batch {lines[i]}")
            if ro.progress:
                ro.progress("*", {"event": "batch", "message": lines[i]})
        results.update(run_on_hosts(inv, plan, batch, lambda h: {**step_args(plan, h, ro.policy, inv), **extra_for(h)}, ro.max_parallel,
                                     ro.progress, report, ro.pool))
        if any(not results[h].ok for h in batch):
            # A failed batch (the canary above all) stops the rollout: hosts not started yet stay as they are.
            for later in order[i + 1:]:
                results.update({h: _not_started(plan, h, f"not started: batch {lines[i]} failed") for h in later})
            break
    failed_hosts = [h for h, r in results.items() if not r.ok]
    if failed_hosts and ro.policy == "revert-phase":
        _revert_phase(ro, results, failed_hosts)
    if failed_hosts:  # a release that failed on its own is refused on the hosts it did not reach, too
        report.messages += freeze_spread.record(inv, plan, results, ro.pool)
    return results


def _untouched(st: Step, outcome: str, check: str, message: str) -> dict[str, Any]:
    """A service's outcome when its host changed nothing for it (refused, or never started)."""
    return {"service": st.service, "action": st.action, "prev_ref": "", "prev_digest": "", "outcome": outcome, "check": check,
            "message": message, "before_tag": st.current_tag, "after_tag": st.current_tag, "after_digest": st.current_digest,
            "tried_tag": st.new_tag, "tried_digest": st.new_digest}  # what it would have run: the row names it


def _not_started(plan: Plan, host: str, why: str) -> transport.CallResult:
    """A host a failed earlier batch kept from starting: each of its changes `skipped`, observed as nothing done."""
    services = [_untouched(s, "skipped", "batch", why) for s in plan.for_host(host) if s.action in ("create", "replace")]
    return transport.CallResult(host=host, ok=True, answer={"protocol": transport.PROTOCOL, "ok": True, "data": {"services": services}})


def _refused_by_prepare(plan: Plan, prepared: dict[str, transport.CallResult], report: RolloutReport) -> dict[str, transport.CallResult]:
    """Some host could not pull or verify its images: per service, what its host reported (refused), the rest skipped."""
    for h, r in prepared.items():
        if not r.ok:
            detail = "; ".join(f"{s['service']}: {s['message']}" for s in services_of(r) if not s.get("ok")) or r.error
            report.messages.append(f"REFUSED {h}: {detail}")
    report.messages.append("nothing was stopped on any host: every host must have every image, by its planned digest, before any swap")
    out = {}
    for h, r in prepared.items():
        said = {s["service"]: s for s in services_of(r)}
        services = []
        for st in plan.for_host(h):
            if st.action not in ("create", "replace"):
                continue
            s = said.get(st.service) or {"ok": False, "check": "prepare", "message": r.error}
            services.append(_untouched(st, "skipped" if s.get("ok") else "refused", s.get("check", ""),
                                       s.get("message") or "not started: another host could not prepare its images"))
        out[h] = transport.CallResult(host=h, ok=False, error=r.error or "prepare refused elsewhere",
                                      answer={"protocol": transport.PROTOCOL, "ok": False, "data": {"services": services}})
    return out


def _revert_phase(ro: _Rollout, results: dict[str, transport.CallResult], failed_hosts: list[str]) -> None:
    """A host failed: send the hosts that committed back to the configuration they had before this rollout."""
    inv, plan, report = ro.inv, ro.plan, ro.report
    to_revert = [h for h, r in results.items() if r.ok and any(s["outcome"] == Outcome.COMMITTED for s in services_of(r))]
    if not to_revert:
        return
    report.messages.append(f"reverting the phase on {', '.join(to_revert)} because {', '.join(failed_hosts)} failed")

    def revert_args(h: str) -> dict:
        done = {s["service"]: s for s in services_of(results[h]) if s["outcome"] == Outcome.COMMITTED}
        steps = [{**s.to_json(), "action": "revert", "phase_revert": True, "remove_if_no_prev": True,
                  "expect_rollout_id": plan.rollout_id}
                 for s in plan.for_host(h) if s.service in done]
        return {**step_args(plan, h, "revert-service", inv, ()), "rollout_id": f"{plan.rollout_id}-revert",
                "steps": steps, "reason": f"phase {plan.phase} failed on {', '.join(failed_hosts)}"}

    reverts = run_on_hosts(inv, plan, to_revert, revert_args, ro.max_parallel, ro.progress, report, ro.pool)
    for h, r in reverts.items():
        by_svc = {s["service"]: s for s in services_of(r)}
        for s in services_of(results[h]):
            back = by_svc.get(s["service"])
            if back:
                s.update(outcome=back["outcome"], prev_ref=back.get("prev_ref") or s.get("prev_ref"), check="phase-revert",
                         prev_digest=back.get("prev_digest") or s.get("prev_digest"), after_tag=back.get("after_tag"),
                         after_digest=back.get("after_digest"), revert_gate=back.get("revert_gate"),
                         message=back.get("message") or s.get("message"))
            elif s["outcome"] == Outcome.COMMITTED:
                # Asked to revert, no per-service answer: not observed, so not reverted.
                s.update(outcome=Outcome.NEEDS_OPERATOR, message=f"the phase revert gave no outcome for it: {r.error}")


def _record(ro: _Rollout, results: dict[str, transport.CallResult]) -> RolloutReport:
    """Report and ledger, both from what the hosts reported (ending.conclude), then the after-hooks."""
    ro.pool.finish()  # every host has answered for good: their agents exit while the report and ledger are written
    report = ro.report
    report.messages += recovered_notes(results)
    notes = swap_notes(ro.plan, [(h, s) for h, r in results.items() for s in services_of(r)])
    conclude("rollout", report, results, ro.common, ro.t0, str(ro.inv.path), notes)
    _after_hooks(ro, report)
    return report


def swap_notes(plan: Plan, reported: list[tuple[str, dict]]) -> list[str]:
    """How each committed swap was done (start-first or stop-first, and why), as its host reported it. Pure."""
    why = {(st.host, st.service): st.order_reason for st in plan.steps if "proxy" in st.spec}
    out = []
    for h, s in reported:
        if s.get("outcome") != Outcome.COMMITTED or s.get("action") != "replace" or not why.get((h, s["service"])):
            continue
        sw = s.get("switch") or {}
        line = f"{h} {s['service']}: {why[(h, s['service'])]}"
        if sw.get("switched"):
            line += f"; the proxy switched to it in {sw.get('switch_ms')} ms"
        out.append(line)
    return out


def rollout_all(inv: Inventory, **kw) -> list[RolloutReport]:
    """Every phase in order; a phase starts only when the one before succeeded."""
    reports: list[RolloutReport] = []
    ahead: frozenset[tuple[str, str]] = frozenset()
    for i, ph in enumerate(inv.phases):
        try:
            rep = rollout(inv, ph.name, **kw, ahead=ahead)
        except (Interrupted, KeyboardInterrupt) as exc:
            if not reports:
                raise  # the first phase: its own words are the whole story
            raise interrupted_all(exc, ph.name, reports, [p.name for p in inv.phases[i + 1:]]) from None
        if kw.get("dry_run") and rep.ok and not rep.frozen and rep.plan is not None and inv.fleet.reverse_proxy:
            # A dry run changes nothing: a later phase is judged knowing where an earlier one would (re)start the proxy.
            ahead |= {(ph.name, st.host) for st in rep.plan.steps
                      if st.service == inv.fleet.reverse_proxy.service and st.action in (CREATE, REPLACE)}
        reports.append(rep)
        if not rep.ok:
            rep.messages.append(f"later phases not started: {', '.join(p.name for p in inv.phases[len(reports):]) or '(none)'}")
            break
    return reports
