"""The executor: preflight, plan, ship each host its part, collect, revert the phase on failure.

It holds no rollout logic of its own beyond orchestration: the plan decides what
changes, the agent's transaction does it on the host, and this module moves plans and
answers, applies the phase-wide failure policy across hosts, and writes the ledger.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.vocabulary import FAILED, Outcome, State, exit_code  # noqa: F401 - exit_code: the tasks' name for it

from . import batches, freezes, hooks, ledger, targets, transport
from . import order as swap_order
from .ending import conclude, derive_state, describe_failure, host_outcomes, services_of  # noqa: F401 - re-exported
from .errors import RolloutError
from .inventory import Inventory
from .plan import BLOCKED, NOOP, Plan, Step, build_plan, container_spec, new_rollout_id, operator, plan_text
from .progress import Progress  # noqa: F401 - the tasks' and tests' name for it
from .runner import PreflightReport, run_preflight

POLICIES = ("revert-phase", "revert-service", "stop")
LINK_SILENCE_S = 10.0  # the agent sends a heartbeat every 2 s, so this much silence means the link is gone


class Interrupted(Exception):
    """The operator pressed Ctrl-C after hosts were asked to change; they finish on their own."""

    def __init__(self, rollout_id: str, phase: str, hosts: list[str]):
        self.rollout_id, self.phase, self.hosts = rollout_id, phase, hosts
        super().__init__(f"interrupted: rollout {rollout_id} of {phase} was running on {', '.join(hosts) or '(no host yet)'};"
                         " each host finishes its transaction on its own (commit, or back to its last-known-good)."
                         " Re-attach with: fab status --follow")


@dataclass
class RolloutReport:
    rollout_id: str
    phase: str
    ok: bool
    state: str  # noop | committed | reverted | refused | failed | needs-operator | unknown | dry-run
    plan: Plan | None = None
    preflight: PreflightReport | None = None
    hosts: dict[str, dict] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    pins: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0
    agent_calls: int = 0
    frozen: bool = False  # a dry run found a freeze that would refuse the real rollout (exit 3)

    def to_json(self) -> dict:
        return {
            "rollout_id": self.rollout_id,
            "phase": self.phase,
            "ok": self.ok,
            "state": self.state,
            "elapsed_s": round(self.elapsed_s, 3),
            "agent_calls": self.agent_calls,
            "plan": self.plan.to_json(ledger.redaction_key()) if self.plan else None,
            "preflight": self.preflight.to_json() if self.preflight else None,
            "hosts": self.hosts,
            "pins": self.pins,
            "messages": self.messages,
        }


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
                                           acceptances_path(inv), sec.missing_report)
        v = verdicts[key]
        if v.status == "refuse":
            step.action, step.reason = BLOCKED, "security gate: " + "; ".join(v.reasons)
    return list(verdicts.values())


def acceptances_path(inv: Inventory):
    """$FLEETROLL_ACCEPTANCES when set (the runbook's variable), else the inventory's security.acceptances."""
    from pathlib import Path

    env = os.environ.get("FLEETROLL_ACCEPTANCES")
    return Path(env).expanduser() if env else inv.resolve(inv.fleet.security.acceptances)


def _step_args(plan: Plan, host: str, policy: str, inv: Inventory, actions=("create", "replace")) -> dict[str, Any]:
    return {
        "rollout_id": plan.rollout_id,
        "host": host,  # the inventory's name for it: the host's own messages can then say which `fab` command to run
        "operator": plan.operator,
        "phase": plan.phase,
        "on_failure": policy,
        "insecure_registry": inv.fleet.registry.insecure,
        "steps": [s.to_json() for s in plan.for_host(host) if s.action in actions],
    }


def _reattach(inv: Inventory, host: str, rid: str, on_event, pool: transport.Pool, budget_s: float = 120.0) -> transport.CallResult | None:
    """The link dropped mid-transaction: reconnect and wait for the host's own outcome."""
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        res = transport.on_hosts(inv, [host], "journal", lambda h: {"rollout_id": rid, "timeout": max(5, deadline - time.monotonic())},
                                 timeout=budget_s, on_event=on_event, pool=pool)[host]
        if res.answer is not None:
            return res
        time.sleep(2)
    return None


def _run_on_hosts(inv: Inventory, plan: Plan, hosts: list[str], args_for, max_parallel, progress, report: RolloutReport,
                  pool: transport.Pool) -> dict[str, transport.CallResult]:
    results = transport.on_hosts(inv, hosts, "rollout", args_for, max_parallel=max_parallel, timeout=LINK_SILENCE_S, on_event=progress,
                                 pool=pool)
    report.agent_calls += len(hosts)
    for h, res in list(results.items()):
        if res.answer is None and res.error_kind in ("timeout", "agent", "link-lost"):
            report.messages.append(f"{h}: lost contact during the transaction ({res.error}); the host finishes on its own — re-attaching")
            again = _reattach(inv, h, plan.rollout_id, progress, pool)
            report.agent_calls += 1
            if again is not None:
                results[h] = again
    return results


_services = services_of


def record_recoveries(calls: dict[str, transport.CallResult]) -> None:
    """A host finished an interrupted transaction during this call: the ledger learns how it ended."""
    for h, r in calls.items():
        for rec in (r.answer or {}).get("recovered") or []:
            if rec.get("rollout_id"):
                ledger.append("recovered", rollout_id=rec["rollout_id"].removesuffix("-revert"), host=h, host_rollout_id=rec["rollout_id"],
                              state=rec.get("state"), services=rec.get("services"), interrupted_after=rec.get("interrupted_after"),
                              by=operator())


def recovered_notes(calls: dict[str, transport.CallResult]) -> list[str]:
    """What hosts said they recovered (an interrupted transaction finished by this call)."""
    out = []
    for h, r in calls.items():
        done = (r.answer or {}).get("data") or {}
        if done.get("recovered"):
            svcs = ", ".join(f"{s['service']} {s['outcome']}" for s in done.get("services") or [])
            out.append(f"{h}: the transaction process died after step {done.get('interrupted_after')!r}; the host recovered it:"
                       f" {svcs or 'no service had changed'}; host state {done.get('state')}")
        for rec in (r.answer or {}).get("recovered") or []:
            if rec.get("error"):
                out.append(f"{h}: RECOVERY FAILED: {rec['error']} — run fab status --hosts {h} and look at the host")
                continue
            svcs = ", ".join(f"{s} {o}" for s, o in (rec.get("services") or {}).items()) or "no service had changed"
            out.append(f"{h}: recovered interrupted transaction {rec['rollout_id']} (stopped after {rec.get('interrupted_after')!r}):"
                       f" {svcs}; host state {rec.get('state')}")
    return out


def report_state(r: RolloutReport) -> str:
    """A dry run that plans changes is its own state for the exit code; one a freeze would refuse is `refused` (3)."""
    if r.state == State.DRY_RUN and r.frozen:
        return State.REFUSED
    return State.CHANGES_PLANNED if r.state == State.DRY_RUN and r.plan is not None and r.plan.changes else r.state


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
) -> RolloutReport:
    """failpoint (tests only): {"after": step, "service": name} makes the host transaction stop dead there."""
    if on_failure not in POLICIES:
        raise RolloutError(f"--on-failure must be one of {', '.join(POLICIES)}, not {on_failure!r}")
    targets.check(inv, phase, hosts)
    ro = _decide(inv, phase, pool, hosts, max_parallel, on_failure, progress)
    ro.failpoint = failpoint
    if _stop_before_changing(ro, dry_run, confirm):
        ro.report.elapsed_s = time.monotonic() - ro.t0
        return ro.report
    try:
        results = _run(ro)
    except KeyboardInterrupt:
        # Said honestly: not what the hosts did (not observed), only that the controller stopped watching.
        ledger.append("interrupted", **ro.common, reason="the operator pressed Ctrl-C; the hosts finish their transactions on"
                      " their own", hosts_busy=ro.plan.hosts)
        raise Interrupted(ro.plan.rollout_id, ro.plan.phase, ro.plan.hosts) from None
    return _record(ro, results)


def _decide(inv: Inventory, phase: str, pool: transport.Pool, hosts, max_parallel, policy: str, progress) -> _Rollout:
    """Preflight (which also recovers interrupted transactions on each host), plan, security gate."""
    t0 = time.monotonic()
    inv.phase(phase)
    pre = run_preflight(inv, phase, hosts, max_parallel, pool=pool)
    plan = build_plan(inv, phase, pre.facts, hosts)
    report = RolloutReport(plan.rollout_id, phase, False, "refused", plan, pre, agent_calls=len(pre.hosts))
    report.messages += recovered_notes(pre.calls)
    record_recoveries(pre.calls)
    try:
        verdicts = security_gate(inv, plan)
    except ValueError as exc:
        raise RolloutError(str(exc)) from None
    report.messages += [f"security WARN: {r}" for v in verdicts if v.status == "warn" for r in v.reasons]
    common = {"rollout_id": plan.rollout_id, "phase": phase, "operator": plan.operator, "inventory": str(inv.path),
              "inventory_git_sha": ledger.inventory_git_sha(inv.path), "hosts": pre.hosts, "policy": policy,
              "security": [v.to_json() for v in verdicts if v.status != "pass"],
              "risk_acceptances": [a for v in verdicts for a in v.accepted], "acceptances_file": str(acceptances_path(inv))}
    return _Rollout(inv, plan, report, common, policy, max_parallel, progress, pool, t0)


def _stop_before_changing(ro: _Rollout, dry_run: bool, confirm) -> bool:
    """Every reason not to touch any host: failed preflight, blocked plan, dry run, no-op, no confirmation."""
    report, plan, pre = ro.report, ro.plan, ro.report.preflight
    if not pre.ok:
        failing = [f"{c.host} {c.check}: {c.detail}" + (f" (fix: {c.fix})" if c.fix else "") for c in pre.checks if c.status == "fail"]
        report.messages.append("preflight failed; nothing was changed:\n  " + "\n  ".join(failing))
        if not dry_run:
            ledger.append("refused", **ro.common, reason="preflight failed", failures=failing)
        return True
    frozen = freezes.blocking(plan, pre.facts, str(ro.inv.path)) if plan.changes else []
    if frozen and not dry_run:
        report.messages += frozen
        ledger.append("refused", **ro.common, reason="phase frozen", failures=frozen)
        return True
    report.messages += [f"a real rollout would be refused now: {m}" for m in frozen]
    report.frozen = bool(frozen)
    if plan.blocked:
        report.messages += [f"{s.host} {s.service}: blocked: {s.reason}" for s in plan.blocked]
        if not dry_run:
            ledger.append("refused", **ro.common, reason="plan blocked", failures=report.messages)
        return True
    if dry_run:
        report.ok, report.state = True, State.DRY_RUN
        report.messages.append(plan_text(plan))
        update = ro.inv.update_for(plan.phase)
        order = batches.schedule(plan, update)
        if len(order) > 1:
            report.messages.append("order (each batch gated before the next):\n  " + "\n  ".join(batches.describe(order, update)))
        return True
    if not plan.changes:
        report.ok, report.state = True, State.NOOP
        report.messages.append(f"phase {plan.phase}: nothing to do; every service already runs its planned digest")
        ledger.append("finished", **ro.common, final=State.NOOP, services=[s.record(ledger.redaction_key()) for s in plan.steps])
        return True
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
    prepared = transport.on_hosts(inv, busy, "prepare", lambda h: _step_args(plan, h, ro.policy, inv), max_parallel=ro.max_parallel,
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
        results.update(_run_on_hosts(inv, plan, batch, lambda h: {**_step_args(plan, h, ro.policy, inv), **extra_for(h)}, ro.max_parallel,
                                     ro.progress, report, ro.pool))
        if any(not results[h].ok for h in batch):
            # A failed batch (the canary above all) stops the rollout: hosts not started yet stay as they are.
            for later in order[i + 1:]:
                results.update({h: _not_started(plan, h, f"not started: batch {lines[i]} failed") for h in later})
            break
    failed_hosts = [h for h, r in results.items() if not r.ok]
    if failed_hosts and ro.policy == "revert-phase":
        _revert_phase(ro, results, failed_hosts)
    return results


def _untouched(st: Step, outcome: str, check: str, message: str) -> dict[str, Any]:
    """A service's outcome when its host changed nothing for it (refused, or never started)."""
    return {"service": st.service, "action": st.action, "prev_ref": "", "prev_digest": "", "outcome": outcome, "check": check,
            "message": message, "before_tag": st.current_tag, "after_tag": st.current_tag, "after_digest": st.current_digest}


def _not_started(plan: Plan, host: str, why: str) -> transport.CallResult:
    """A host a failed earlier batch kept from starting: each of its changes `skipped`, observed as nothing done."""
    services = [_untouched(s, "skipped", "batch", why) for s in plan.for_host(host) if s.action in ("create", "replace")]
    return transport.CallResult(host=host, ok=True, answer={"protocol": transport.PROTOCOL, "ok": True, "data": {"services": services}})


def _refused_by_prepare(plan: Plan, prepared: dict[str, transport.CallResult], report: RolloutReport) -> dict[str, transport.CallResult]:
    """Some host could not pull or verify its images: per service, what its host reported (refused), the rest skipped."""
    for h, r in prepared.items():
        if not r.ok:
            detail = "; ".join(f"{s['service']}: {s['message']}" for s in _services(r) if not s.get("ok")) or r.error
            report.messages.append(f"REFUSED {h}: {detail}")
    report.messages.append("nothing was stopped on any host: every host must have every image, by its planned digest, before any swap")
    out = {}
    for h, r in prepared.items():
        said = {s["service"]: s for s in _services(r)}
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
    to_revert = [h for h, r in results.items() if r.ok and any(s["outcome"] == Outcome.COMMITTED for s in _services(r))]
    if not to_revert:
        return
    report.messages.append(f"reverting the phase on {', '.join(to_revert)} because {', '.join(failed_hosts)} failed")

    def revert_args(h: str) -> dict:
        done = {s["service"]: s for s in _services(results[h]) if s["outcome"] == Outcome.COMMITTED}
        steps = [{**s.to_json(), "action": "revert", "phase_revert": True, "remove_if_no_prev": True,
                  "expect_rollout_id": plan.rollout_id}
                 for s in plan.for_host(h) if s.service in done]
        return {**_step_args(plan, h, "revert-service", inv, ()), "rollout_id": f"{plan.rollout_id}-revert",
                "steps": steps, "reason": f"phase {plan.phase} failed on {', '.join(failed_hosts)}"}

    reverts = _run_on_hosts(inv, plan, to_revert, revert_args, ro.max_parallel, ro.progress, report, ro.pool)
    for h, r in reverts.items():
        by_svc = {s["service"]: s for s in _services(r)}
        for s in _services(results[h]):
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
    report = ro.report
    report.messages += recovered_notes(results)
    notes = swap_notes(ro.plan, [(h, s) for h, r in results.items() for s in _services(r)])
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
    reports = []
    for ph in inv.phases:
        rep = rollout(inv, ph.name, **kw)
        reports.append(rep)
        if not rep.ok:
            rep.messages.append(f"later phases not started: {', '.join(p.name for p in inv.phases[len(reports):]) or '(none)'}")
            break
    return reports


def rollback(inv: Inventory, phase: str, service: str | None = None, hosts: list[str] | None = None,
             max_parallel: int | None = None, progress=None, to_tag: str | None = None) -> RolloutReport:
    """Put services of a phase back on the exact container configuration they had before their running release.

    Which release runs is read from the host (the container's rollout label); what ran
    before it, the host finds in that rollout's journal (the old container's full create
    configuration), so the old env, ports and volumes come back, not today's inventory
    with an old image — and no env value ever travels back to the controller.
    """
    targets.check(inv, phase, hosts, service)
    t0 = time.monotonic()
    names = [service] if service else inv.services_for(phase, hosts)
    plan = build_plan(inv, phase, {}, hosts, rollout_id=new_rollout_id(phase, "rollback"), who=operator())
    plan.steps = [s for s in plan.steps if s.service in names]
    report = RolloutReport(plan.rollout_id, phase, False, State.FAILED, plan)
    common = {"rollout_id": plan.rollout_id, "phase": phase, "operator": plan.operator, "inventory": str(inv.path),
              "inventory_git_sha": ledger.inventory_git_sha(inv.path), "rollback": True}
    with transport.Pool() as pool:
        facts = transport.on_hosts(inv, plan.hosts, "facts", lambda h: {"gpu": False}, max_parallel=max_parallel, timeout=60, pool=pool)
        report.messages += recovered_notes(facts)
        record_recoveries(facts)
        targets_of: dict[tuple[str, str], dict] = {}
        for s in plan.steps:
            data = (facts[s.host].answer or {}).get("data") or {}
            running = next((c for c in (data.get("docker") or {}).get("containers", []) if c.get("name") == s.service), None)
            rid = (running or {}).get("rollout_id", "")
            s.action, s.spec = "revert", container_spec(inv, s.service, s.host)
            s.current_tag, s.current_digest = (running or {}).get("tag", ""), (running or {}).get("digest", "")
            s.reason = f"running release from rollout {rid or '(unknown)'}" + (f", back to {to_tag}" if to_tag else "")
            targets_of[(s.host, s.service)] = {"expect_rollout_id": rid, **({"to_tag": to_tag} if to_tag else {})}
        ledger.append("started", **common, plan=plan.to_json(ledger.redaction_key()))

        def args_for(h: str) -> dict:
            steps = [{**st.to_json(), **targets_of[(h, st.service)]} for st in plan.for_host(h)]
            return {**_step_args(plan, h, "revert-service", inv, ()), "steps": steps, "reason": "operator rollback"}

        results = _run_on_hosts(inv, plan, plan.hosts, args_for, max_parallel, progress, report, pool)
    return conclude("rollback", report, results, common, t0, str(inv.path))


def sha_drift(tag: str, report: dict | None, container_started: str) -> str:
    """Compare what a service reported at start-up with what its tag names (pure)."""
    if report is None:
        return "no start-up report"
    tag_sha = tag.rsplit("-", 1)[-1]
    got = str(report.get("git_sha", ""))
    # At least 7 hex digits, and at least as long as the tag's: a shorter report ("a", "") matches nothing.
    if not re.fullmatch(r"[0-9a-f]{7,40}", got) or not got.startswith(tag_sha):
        return f"reported git {got[:12] or '(none)'}, tag names {tag_sha}"
    try:
        reported = time.mktime(time.strptime(report["started_at"][:19], "%Y-%m-%dT%H:%M:%S"))
        started = time.mktime(time.strptime(container_started[:19], "%Y-%m-%dT%H:%M:%S"))
        if reported < started - 5:
            return f"stale report (from a start at {report['started_at']}, container started {container_started[:19]}Z)"
    except (KeyError, ValueError):
        pass
    return ""


CRASH_LOOP_S = 60  # a container that restarted and has been up for less than this is not (yet) healthy


def service_health(c: dict | None, probe: dict) -> tuple[bool, str]:
    """Healthy means the container runs (not restarting, not exited) *and* /health answered ok. Pure.

    A crash-looping container answers /health between crashes; the probe alone would call it healthy.
    """
    if c is None:
        return False, "not running (no container)"
    state = c.get("status") or "unknown"
    if not c.get("running") or state != "running":
        return False, f"container {state}" + (f" ({c.get('restart_count')} restarts)" if c.get("restart_count") else "")
    if not probe.get("ok"):
        return False, probe.get("reason") or "no /health answer"
    up = c.get("up_s")
    if c.get("restart_count") and up is not None and up < CRASH_LOOP_S:
        return False, f"restarted {c['restart_count']} times, up only {up:.0f}s (crash loop?)"
    return True, "healthy" + (f" ({c['restart_count']} restarts)" if c.get("restart_count") else "")


def proxy_route_view(view: dict | None, service: str, container: dict | None, network: str) -> str:
    """Which backend the host's proxy sends `service` to, in words (pure): the service's container, or what else."""
    if not view or not view.get("ok"):
        return f"proxy not answering: {(view or {}).get('error', 'not asked')}"
    be = (view.get("backends") or {}).get(service)
    if be is None:
        return "the proxy has no backend for it (roll out the proxy's phase)"
    serving = be.get("serving") or []
    if not serving:
        return "no ready server: requests fail"
    mine = ((container or {}).get("addresses") or {}).get(network, "")
    if len(serving) == 1 and mine and serving[0].split(":")[0] == mine:
        return f"-> {service} ({(container or {}).get('id', '')[:12]}) at {serving[0]}"
    return f"-> {', '.join(serving)}, which is not the running {service} container ({mine or 'no address'})"


def gpu_memory_view(inv: Inventory, host: str, nvml: dict | None) -> list[dict[str, Any]]:
    """Each GPU's memory as NVML reports it, beside the budgets of the GPU services placed on the host. Pure."""
    if not nvml or not nvml.get("ok"):
        return []
    budgets = inv.gpu_budgets(host)
    return [{"index": g["index"], "name": g["name"], "total_gb": round(g.get("memory_mib", 0) / 1024, 1),
             "used_gb": round(g.get("memory_used_mib", 0) / 1024, 1), "budgets_gb": budgets} for g in nvml.get("gpus") or []]


def status(inv: Inventory, hosts: list[str] | None = None, max_parallel: int | None = None) -> dict[str, Any]:
    targets = inv.select_hosts(hosts)
    coll = inv.fleet.observability.collector
    coll_host = inv.fleet.hosts_of(coll)[0] if coll else None

    def args(h: str) -> dict:
        a: dict[str, Any] = {"health": {s: inv.fleet.health_spec(s) for s in inv.services_for(None, [h])},
                             "gpu": inv.fleet.hosts[h].gpus is not None, "proxy": bool(inv.fleet.proxied_on(h))}
        if h == coll_host:
            a["collector_port"] = inv.fleet.services[coll].port_pairs()[0][0]
        return a

    if coll_host and coll_host not in targets:
        targets = [*targets, coll_host]
    results = transport.on_hosts(inv, targets, "status", args, max_parallel=max_parallel, timeout=30)
    reports: dict[tuple[str, str], dict] | None = None
    if coll_host and results[coll_host].answer:
        c = (results[coll_host].answer.get("data") or {}).get("collector") or {}
        if c.get("ok"):
            # A host's answer is untrusted input: a row without a host and service is dropped, not a KeyError.
            reports = {(r["host"], r["service"]): r for r in c.get("services") or []
                       if isinstance(r, dict) and r.get("host") and r.get("service")}
    out: dict[str, Any] = {"hosts": {}, "collector": None if not coll else ("ok" if reports is not None else "unreachable")}
    for h in inv.select_hosts(hosts):
        r = results[h]
        if r.answer is None:
            out["hosts"][h] = {"reachable": False, "error": r.error}
            continue
        data = r.answer.get("data") or {}
        containers = {c["name"]: c for c in (data.get("docker") or {}).get("containers", [])}
        services = {}
        for s in inv.services_for(None, [h]):
            want = inv.fleet.services[s].tag
            c = containers.get(s)
            probe = (data.get("health") or {}).get(s) or {}
            if c is None:
                drift = "not running"
            elif c.get("tag") != want:
                drift = f"runs {c.get('tag')}, inventory says {want}"
            else:
                drift = ""
            healthy, health = service_health(c, probe)
            services[s] = {"tag": c.get("tag") if c else None, "digest": c.get("digest") if c else None,
                           "status": c.get("status") if c else "absent", "restarts": c.get("restart_count", 0) if c else 0,
                           "healthy": healthy, "health": health, "drift": drift, "rollout_id": c.get("rollout_id") if c else None}
            if inv.fleet.services[s].proxy is not None:
                services[s]["proxy"] = proxy_route_view(data.get("proxy"), s, c, inv.fleet.reverse_proxy.network)
            if reports is not None and c:
                rep = reports.get((h, s))
                services[s]["reported_git_sha"] = rep.get("git_sha") if rep else None
                services[s]["sha_drift"] = sha_drift(c.get("tag", ""), rep, c.get("started_at", ""))
        out["hosts"][h] = {"reachable": True, "services": services, "lock": data.get("lock"), "last_rollout": data.get("last"),
                           "recovered": r.answer.get("recovered") or [], "freezes": data.get("freezes") or [],
                           "gpus": gpu_memory_view(inv, h, data.get("nvml"))}
    record_recoveries(results)
    for h in inv.select_hosts(hosts):
        ledger.observe(h, out["hosts"][h].get("last_rollout"))
    return out


def _phase_of(inv: Inventory, service: str) -> str:
    return next((p.name for p in inv.phases if service in p.services), "")


def restart(inv: Inventory, service: str, progress=None, host: str | None = None) -> RolloutReport:
    """A service in a fresh container with the same configuration, gated like a swap; the old one comes back if it fails."""
    t0 = time.monotonic()
    host = targets.replica_host(inv, service, host)
    phase = _phase_of(inv, service)
    svc = inv.fleet.services[service]
    wanted, drain_s = inv.fleet.update_order(service)
    # No NVML facts are read for a restart: a GPU service with a memory budget restarts stop-first.
    how = swap_order.choose(service, wanted, svc.proxy is not None, True, svc.gpus, svc.gpu_memory_gb,
                            inv.fleet.defaults.gpu_memory_reserve_gb, None)
    plan = Plan(new_rollout_id("restart", service), phase, operator(),
                [Step(host, service, "restart", spec=container_spec(inv, service, host), reason="operator restart",
                      order=how.order if not how.refused else "stop-first", order_reason=how.reason, drain_s=drain_s)])
    report = RolloutReport(plan.rollout_id, phase, False, State.FAILED, plan)
    common = {"rollout_id": plan.rollout_id, "phase": phase, "operator": plan.operator, "inventory": str(inv.path), "restart": service}
    ledger.append("started", **common, plan=plan.to_json(ledger.redaction_key()))
    with transport.Pool() as pool:
        results = _run_on_hosts(inv, plan, [host], lambda h: _step_args(plan, h, "revert-service", inv, ("restart",)), None,
                                progress, report, pool)
    return conclude("restart", report, results, common, t0, str(inv.path))


