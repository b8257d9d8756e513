"""What a rollout leaves behind and says so: a moved service's old copy, the services a moving proxy leaves.

A rollout acts on the hosts the inventory places a phase's services on. A service moved from
pc2 to mainpc is created on mainpc and its old container keeps running on pc2 (Kamal and
Ansible leave it the same way; only a scheduler like Nomad stops it). Nothing said so: the
plan showed a create, and the old copy showed up later as an orphan in `fab status`. The
controller's own ledger knows where it last rolled each service out, so a plan that creates
a service names the host it last ran on and the command that removes it there. Read only
when the plan creates something (a no-op or a replacement does not read the ledger).
"""

from __future__ import annotations

from typing import Any

from agent.vocabulary import Outcome, Record

from . import ledger
from .inventory import Inventory
from .plan import CREATE, NOOP, Plan

# A service's container is on a host after a finished record saying so: it committed there, went back to what ran
# there, or already ran there (a no-op's plan rows carry the action, not an outcome).
_THERE = frozenset({Outcome.COMMITTED, Outcome.REVERTED})


def last_homes(records: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """{(service, host): time of the last record that left its container there}, minus those fab remove took (pure)."""
    homes: dict[tuple[str, str], str] = {}
    for rec in records:
        if rec.get("kind") == Record.FINISHED:
            for s in rec.get("services") or []:
                if s.get("outcome") in _THERE or (not s.get("outcome") and s.get("action") == NOOP):
                    homes[(s.get("service", ""), s.get("host", ""))] = rec.get("time", "")
        elif rec.get("kind") in (Record.REMOVED, "remove") and rec.get("removed"):  # "remove": ledgers before it was a row
            homes.pop((rec.get("service", ""), rec.get("host", "")), None)
    return homes


def notes(inv: Inventory, plan: Plan, records: list[dict[str, Any]] | None = None) -> list[str]:
    """For each service the plan creates: the hosts this ledger last left it on that the inventory no longer names."""
    created = sorted({st.service for st in plan.steps if st.action == CREATE})
    if not created:
        return []
    homes = last_homes(ledger.read() if records is None else records)
    out = []
    for svc in created:
        placed = set(inv.fleet.hosts_of(svc))
        for (s, h), when in sorted(homes.items()):
            if s == svc and h not in placed:
                out.append(f"{svc}: this ledger last left it running on {h} ({when}), where the inventory no longer places"
                           " it; this rollout does not touch that copy. If it still runs there (fab status lists it as an"
                           f" orphan), remove it once the new one serves: fab remove -s {svc} -H {h}")
    return out


def proxy_network_notes(inv: Inventory, plan: Plan) -> list[str]:
    """The proxy moving to another network leaves the services behind it on the old one until their own phases roll
    out: unreachable in between (found by an exploratory run: every request failed after the proxy's phase)."""
    rp = inv.fleet.reverse_proxy
    return [f"WARNING {st.host} {st.service}: the proxy moves to network {rp.network}; the services behind it here"
            f" ({', '.join(inv.fleet.proxied_on(st.host)) or 'none'}) stay on their network, unreachable through it, until"
            " their phases roll out: roll them out right after (fab rollout --all runs them in order)"
            for st in plan.changes if rp and st.service == rp.service and any(c.startswith("network:") for c in st.changes)]
