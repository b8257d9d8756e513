"""A release that failed on its own on one host is refused on the phase's other hosts too (SSH push).

The host transaction that reverts (or removes) a failed release freezes its phase there, against
that image digest with that configuration (agent/freeze.py). Only there: a failed canary stopped the
batches after it, but `fab rollout -p P -H pc2` would then deploy the very release the canary
condemned onto pc2, outage window and all. So once the host transactions are over, the controller
asks each other host this rollout planned the same release for (same service, same digest), where it
did not commit and wrote no freeze itself, to record the same automatic freeze through its agent's
`freeze` op, keyed by that host's own configuration fingerprint (the one freezes.repeats computes for
its next plan). As everywhere, a clean commit there lifts it, and `fab thaw` does.

`decide` is pure; `record` makes the calls and says, per host, what it did.
"""

from __future__ import annotations

from typing import Any

from agent.freeze import config_fingerprint
from agent.vocabulary import Outcome

from . import freezes, transport
from .ending import services_of
from .inventory import Inventory
from .plan import Plan

Results = dict[str, transport.CallResult]
# Where the release never ran on that host: a later batch not started, a refusal before anything changed. A host where
# it ran and passed (then sent back by a phase revert) says nothing against it, as decisions.freeze_after holds.
NOT_RUN = (Outcome.SKIPPED, Outcome.REFUSED)


def _services(results: Results, host: str) -> list[dict]:
    return services_of(results[host]) if host in results else []


def condemned(results: Results) -> dict[tuple[str, str], str]:
    """{(service, digest): the host whose transaction froze its phase against it} (pure)."""
    out: dict[tuple[str, str], str] = {}
    for h in sorted(results):
        for s in services_of(results[h]):
            if s.get("frozen") and s.get("tried_digest"):
                out.setdefault((s["service"], s["tried_digest"]), h)
    return out


def decide(plan: Plan, results: Results) -> dict[str, dict[str, dict[str, str]]]:
    """{host: {service: {tag, digest, config}}} to freeze on hosts the failure did not reach (pure)."""
    bad = condemned(results)
    out: dict[str, dict[str, dict[str, str]]] = {}
    for st in plan.changes:
        if (st.service, st.new_digest) not in bad or not st.new_digest:
            continue
        mine = next((s for s in _services(results, st.host) if s.get("service") == st.service), {})
        if mine.get("outcome", Outcome.SKIPPED) not in NOT_RUN:
            continue  # it ran there: committed, frozen by its own transaction, or passed and sent back by a phase revert

        out.setdefault(st.host, {})[st.service] = {"tag": st.new_tag, "digest": st.new_digest, "config": config_fingerprint(st.spec)}
    return out


def record(inv: Inventory, plan: Plan, results: Results, pool: transport.Pool | None = None) -> list[str]:
    """Freeze the phase on the hosts `decide` names; mark those services frozen in `results`; the report's lines."""
    todo = decide(plan, results)
    if not todo:
        return []
    bad = condemned(results)

    def request(h: str) -> dict[str, Any]:
        where = ", ".join(sorted({f"{s}:{v['tag']} failed on {bad[(s, v['digest'])]}" for s, v in todo[h].items()}))
        return {"phase": plan.phase, "operator": plan.operator, "auto": True, "failed": todo[h], "rollout_id": plan.rollout_id,
                "releases": {s: v["tag"] for s, v in todo[h].items()},
                "reason": f"rollout {plan.rollout_id}: {where}; refused on this host too, where it was not started"}

    def where(h: str) -> str:
        return f"it failed on {', '.join(sorted({bad[(s, v['digest'])] for s, v in todo[h].items()}))} in rollout {plan.rollout_id}"

    done, lines = freezes.ask_hosts(inv, plan.phase, todo, request, where, pool)
    for h in done:
        for s in _services(results, h):
            if s.get("service") in todo[h]:
                s.update(frozen=True, tried_config=todo[h][s["service"]]["config"])
    return lines
