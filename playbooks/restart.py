"""`fab restart`: a service's replicas, one host after another, each in a fresh container with the same configuration.

One replica at a time, the next only once this one passed its gate in its fresh container
(Kamal's rolling boot, Nomad's max_parallel 1): a replicated service never has every replica
down at once, and the first replica that does not come back healthy (its old container
returns, as after any failed swap) stops the restart there, so the others keep running
undisturbed. The report names the replicas it never touched.
"""

from __future__ import annotations

import time

from agent.vocabulary import Outcome, State

from . import ledger, targets, transport
from .ending import RolloutReport, conclude, services_of
from .hostcalls import run_on_hosts, step_args
from .inventory import Inventory
from .plan import Plan, Step, container_spec, new_rollout_id, operator
from .rollback import swap_order_of


def restart(inv: Inventory, service: str, progress=None, hosts: list[str] | None = None) -> RolloutReport:
    """Restart `service` on each of its hosts (or those `hosts` names) in turn; stop at the first that fails."""
    t0 = time.monotonic()
    order_of = targets.replica_hosts(inv, service, hosts)
    phase = targets.phase_of_service(inv, service)
    order, why, drain_s = swap_order_of(inv, service, True)
    plan = Plan(new_rollout_id("restart", service), phase, operator(),
                [Step(h, service, "restart", spec=container_spec(inv, service, h), reason="operator restart",
                      order=order, order_reason=why, drain_s=drain_s) for h in order_of])
    report = RolloutReport(plan.rollout_id, phase, False, State.FAILED, plan)
    common = {"rollout_id": plan.rollout_id, "phase": phase, "operator": plan.operator, "inventory": str(inv.path),
              "restart": service}
    ledger.append("started", **common, plan=plan.to_json(ledger.redaction_key()))
    results: dict[str, transport.CallResult] = {}
    untouched: list[str] = []
    with transport.Pool() as pool:
        for i, h in enumerate(order_of):
            results.update(run_on_hosts(inv, plan, [h], lambda h: step_args(plan, h, "revert-service", inv, ("restart",)),
                                        None, progress, report, pool))
            if not _restarted(results[h]):
                untouched = order_of[i + 1:]
                break
    return conclude("restart", report, results, common, t0, str(inv.path), _untouched_words(service, untouched, h))


def _restarted(res: transport.CallResult) -> bool:
    """The replica answered that its fresh container passed the gate and took over (pure)."""
    return res.answer is not None and any(s.get("outcome") == Outcome.COMMITTED for s in services_of(res))


def _untouched_words(service: str, untouched: list[str], stopped_at: str) -> list[str]:
    """The replicas a stopped restart never reached: they run what they ran, and how to go on once the cause is known."""
    if not untouched:
        return []
    return [f"not restarted: {service} on {', '.join(untouched)} (the restart stopped at {stopped_at}, one replica at a"
            f" time; those still run their containers untouched). Once {stopped_at} is understood:"
            f" fab restart -s {service} -H {','.join(untouched)}"]
