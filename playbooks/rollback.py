"""Sending services back: `fab rollback` (to the recorded configuration, or --to a tag).

A host transaction of its own (revert), gated like a swap, ending through ending.conclude
like a rollout; `fab restart` (restart.py) swaps in the order `swap_order_of` chooses here too.
"""

from __future__ import annotations

import time

from agent.vocabulary import State

from . import ledger, targets, transport
from . import order as swap_order
from .ending import RolloutReport, conclude
from .hostcalls import record_recoveries, recovered_notes, run_on_hosts, step_args
from .inventory import Inventory, tag_problem
from .plan import Plan, build_plan, container_spec, new_rollout_id, operator


def rollback(inv: Inventory, phase: str, service: str | None = None, hosts: list[str] | None = None,
             max_parallel: int | None = None, progress=None, to_tag: str | None = None) -> RolloutReport:
    """Put services of a phase back on the exact container configuration they had before their running release.

    Which release runs is read from the host (the container's rollout label); what ran
    before it, the host finds in that rollout's journal (the old container's full create
    configuration), so the old env, ports and volumes come back, not today's inventory
    with an old image — and no env value ever travels back to the controller.
    """
    check_request(inv, phase, service, hosts, to_tag)
    if inv.fleet.engine_of(inv.phase(phase)) == "swarm":  # Swarm's previous spec, or --to through the rollout's gates
        from .swarm.rollback import rollback_swarm

        return rollback_swarm(inv, phase, service, hosts, progress, to_tag)
    return _rollback_ssh(inv, phase, service, hosts, max_parallel, progress, to_tag)


def check_request(inv: Inventory, phase: str, service: str | None, hosts: list[str] | None, to_tag: str | None) -> None:
    """A rollback's input, checked before the operator or any host is asked (an error names what to fix)."""
    targets.check(inv, phase, hosts, service)
    if to_tag and tag_problem(to_tag):  # before any host is asked: 'x;id' is not a tag any host ran
        raise targets.TargetError(f"--to {to_tag!r}: {tag_problem(to_tag)}; fab versions -s {service or 'SERVICE'} lists"
                                  " the tags that ran")
    if to_tag and not service:  # each service has its own versions: a phase-wide --to changed some and refused others
        raise targets.TargetError(f"--to {to_tag} names a version of one service: add -s SERVICE (phase {phase}: "
                                  f"{', '.join(inv.phase(phase).services)}); nothing was changed")


def _rollback_ssh(inv: Inventory, phase: str, service: str | None, hosts: list[str] | None, max_parallel: int | None,
                  progress, to_tag: str | None) -> RolloutReport:
    t0 = time.monotonic()
    names = [service] if service else inv.services_for(phase, hosts)
    plan = build_plan(inv, phase, {}, hosts, rollout_id=new_rollout_id(phase, "rollback"), who=operator())
    plan.steps = [s for s in plan.steps if s.service in names]
    report = RolloutReport(plan.rollout_id, phase, False, State.FAILED, plan)
    common = {"rollout_id": plan.rollout_id, "phase": phase, "operator": plan.operator, "inventory": str(inv.path),
              "inventory_git_sha": ledger.inventory_git_sha(inv.path), "rollback": True}
    gpu_hosts = sorted({s.host for s in plan.steps if inv.fleet.services[s.service].wants_gpu})
    with transport.Pool() as pool:
        facts = transport.on_hosts(inv, plan.hosts, "facts", lambda h: {"gpu": h in gpu_hosts}, max_parallel=max_parallel,
                                   timeout=60, pool=pool)
        report.messages += recovered_notes(facts)
        record_recoveries(facts)
        if _unheard(facts, report, common, plan, phase, service, t0):
            return report
        report.messages += _through_freezes(facts, plan.hosts, phase) + _gpu_notes(inv, facts, gpu_hosts)
        targets_of: dict[tuple[str, str], dict] = {}
        for s in plan.steps:
            data = (facts[s.host].answer or {}).get("data") or {}
            running = next((c for c in (data.get("docker") or {}).get("containers", []) if c.get("name") == s.service), None)
            rid = (running or {}).get("rollout_id", "")
            s.action, s.spec = "revert", container_spec(inv, s.service, s.host)
            s.current_tag, s.current_digest = (running or {}).get("tag", ""), (running or {}).get("digest", "")
            s.reason = f"running release from rollout {rid or '(unknown)'}" + (f", back to {to_tag}" if to_tag else "")
            s.order, s.order_reason, s.drain_s = swap_order_of(inv, s.service, running is not None)
            targets_of[(s.host, s.service)] = {"expect_rollout_id": rid, **({"to_tag": to_tag} if to_tag else {}),
                                               **({"named": True} if service else {})}
        ledger.append("started", **common, plan=plan.to_json(ledger.redaction_key()))

        def args_for(h: str) -> dict:
            steps = [{**st.to_json(), **targets_of[(h, st.service)]} for st in plan.for_host(h)]
            return {**step_args(plan, h, "revert-service", inv, ()), "steps": steps, "reason": "operator rollback"}

        results = run_on_hosts(inv, plan, plan.hosts, args_for, max_parallel, progress, report, pool)
    return conclude("rollback", report, results, common, t0, str(inv.path))


def _through_freezes(facts: dict, hosts: list[str], phase: str) -> list[str]:
    """A rollback goes through a manual freeze (it puts back what ran before); it says so, not silently (pure)."""
    return [f"note: phase {phase} is frozen on {h} by {f.get('by')} ({f.get('reason')!r}); a rollback goes ahead all the"
            " same (it puts back what ran before; a freeze holds rollouts of new releases)"
            for h in hosts for f in ((facts[h].answer or {}).get("data") or {}).get("freezes") or []
            if f.get("phase") == phase and not f.get("auto")]


def _gpu_notes(inv: Inventory, facts: dict, hosts: list[str]) -> list[str]:
    """A rollback goes ahead where the driver or the cards are not as the inventory says (refusing it would leave the
    release it goes back from), but says so: its GPU services' gates may fail there (risk R1). Pure.

    Left open last session: status and a rollout's preflight compared them; a rollback asked the hosts for no GPU facts."""
    from .status import gpu_problems

    return [f"note: {h}: GPU NOT AS THE INVENTORY SAYS: {p}; the rollback goes ahead (it puts back what ran before), but"
            " the health gates of its GPU services may fail there"
            for h in hosts for p in gpu_problems(inv, h, ((facts[h].answer or {}).get("data") or {}).get("nvml"))
            .get("gpu_problems", [])]


def _unheard(facts: dict, report: RolloutReport, common: dict, plan: Plan, phase: str, service: str | None, t0: float) -> bool:
    """A host that did not answer before anything changed refuses the whole rollback (as preflight refuses a rollout).

    Found by an exploratory run: with pc2 unreachable, a rollback of a service on mainpc and pc2 reverted mainpc and
    said 'no outcome observed' for pc2 (needs-operator), leaving the two replicas on different versions."""
    silent = {h: r.error or (r.answer or {}).get("msg") or "no answer" for h, r in facts.items() if r.answer is None or not r.ok}
    if not silent:
        return False
    heard = [h for h in plan.hosts if h not in silent]
    report.state, report.elapsed_s = State.REFUSED, time.monotonic() - t0
    report.messages += [f"FAILED {h}: {why}" for h, why in sorted(silent.items())]
    alone = f"fab rollback -p {phase}{f' -s {service}' if service else ''} -H {','.join(heard)}"
    report.messages.append(f"nothing was changed: a rollback on some of the hosts only would leave them on other versions than"
                           f" {', '.join(sorted(silent))}. Run it again when every host answers"
                           + (f", or roll back the others alone: {alone}" if heard else ""))
    ledger.append("refused", **common, reason="a host did not answer", failures=[f"{h}: {w}" for h, w in sorted(silent.items())])
    return True


def swap_order_of(inv: Inventory, service: str, running: bool) -> tuple[str, str, float]:
    """How a rollback or restart swaps: as the service's update.order says, start-first behind the proxy when it can.

    No NVML facts are read for these: a GPU service with a memory budget goes stop-first.
    """
    svc = inv.fleet.services[service]
    wanted, drain_s = inv.fleet.update_order(service)
    how = swap_order.choose(service, wanted, svc.proxy is not None, running, svc.gpus, svc.gpu_memory_gb,
                            inv.fleet.defaults.gpu_memory_reserve_gb, None)
    return (how.order if not how.refused else "stop-first"), how.reason, drain_s
