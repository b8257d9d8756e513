"""Calling the hosts during a workflow: each host's arguments, the call, re-attaching after a lost link, recoveries.

Shared by rollout, rollback and restart (playbooks/rollout.py, playbooks/rollback.py): the
transaction runs detached on the host, so a lost link is re-attached to, never retried.
"""

from __future__ import annotations

import time
from typing import Any

from . import ledger, transport
from .agent_repaired import repaired_words
from .ending import RolloutReport
from .inventory import Inventory
from .plan import Plan, operator

LINK_SILENCE_S = 10.0  # the agent sends a heartbeat every 2 s, so this much silence means the link is gone


def step_args(plan: Plan, host: str, policy: str, inv: Inventory, actions=("create", "replace")) -> dict[str, Any]:
    return {
        "rollout_id": plan.rollout_id,
        "host": host,  # the inventory's name for it: the host's own messages can then say which `fab` command to run
        "operator": plan.operator,
        "phase": plan.phase,
        "on_failure": policy,
        "insecure_registry": inv.fleet.registry.insecure,
        # The bind prefixes the inventory opens: the host allows only what lies under these and its own (FLEETROLL_HOST_PATHS).
        "host_paths": list(inv.fleet.defaults.host_paths),
        "steps": [s.to_json() for s in plan.for_host(host) if s.action in actions],
    }


def reattach(inv: Inventory, host: str, rid: str, on_event, pool: transport.Pool, budget_s: float = 120.0) -> transport.CallResult | None:
    """The link dropped mid-transaction: reconnect and wait for the host's own outcome."""
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        res = transport.on_hosts(inv, [host], "journal", lambda h: {"rollout_id": rid, "timeout": max(5, deadline - time.monotonic())},
                                 timeout=budget_s, on_event=on_event, pool=pool)[host]
        if res.answer is not None:
            return res
        time.sleep(2)
    return None


def run_on_hosts(inv: Inventory, plan: Plan, hosts: list[str], args_for, max_parallel, progress, report: RolloutReport,
                  pool: transport.Pool) -> dict[str, transport.CallResult]:
    results = transport.on_hosts(inv, hosts, "rollout", args_for, max_parallel=max_parallel, timeout=LINK_SILENCE_S, on_event=progress,
                                 pool=pool)
    report.agent_calls += len(hosts)
    for h, res in list(results.items()):
        if res.answer is None and res.error_kind in ("timeout", "agent", "link-lost"):
            report.messages.append(f"{h}: lost contact during the transaction ({res.error}); the host finishes on its own — re-attaching")
            # The transaction's own id: a phase revert runs as '<rollout>-revert', and re-attaching to the rollout's
            # journal instead read its 'committed' as the revert's outcome (found by an exploratory run).
            again = reattach(inv, h, args_for(h).get("rollout_id") or plan.rollout_id, progress, pool)
            report.agent_calls += 1
            if again is not None:
                results[h] = again
    return results



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
        if (r.answer or {}).get("repaired"):
            out.append(repaired_words(h, r.answer["repaired"]))
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
