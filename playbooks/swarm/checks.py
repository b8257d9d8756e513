"""`fab preflight` on a swarm phase: the SSH push's checks, plus what only a manager knows.

Each host of the phase must be a node of the swarm, labelled with its inventory name, Ready and
active (else Swarm cannot place its tasks there), and the host ports the stack's own tasks hold
are not "in use by something else": the agents see no container named after a swarm service.
`node_checks` is pure; `apply` reads one view through a manager and rewrites the report's checks.
"""

from __future__ import annotations

from .. import preflight, transport
from ..errors import RolloutError
from ..inventory import Inventory
from . import observe, render
from .remote import SwarmCommandError

CHECK = "swarm"


def node_checks(manager: str, view: observe.View, hosts: list[str]) -> list[preflight.Check]:
    """One check per host: its node (by the fleetroll.host label) is Ready and active. Pure."""
    by_host = {h: nid for nid, h in view.nodes.items() if h}
    out = []
    for h in hosts:
        nid = by_host.get(h)
        state, availability = view.node_status.get(nid, ("", "")) if nid else ("", "")
        if nid is None:
            out.append(preflight.Check(h, CHECK, preflight.FAIL, f"no node of the swarm managed by {manager} is labelled"
                                       f" {render.HOST_LABEL}={h}", "fab swarm.form (it joins and labels every host)"))
        elif state != "ready" or availability != "active":
            out.append(preflight.Check(h, CHECK, preflight.FAIL, f"node {nid[:12]} is {state or 'unknown'} and"
                                       f" {availability or 'unknown'}: Swarm places nothing there",
                                       f"start dockerd on {h} (or docker node update --availability active {nid[:12]})"))
        else:
            out.append(preflight.Check(h, CHECK, preflight.PASS, f"node {nid[:12]} ready, active, seen by {manager}"))
    return out


def apply(inv: Inventory, report) -> None:
    """Rewrite a swarm phase's preflight report (runner.PreflightReport) with a manager's view of the swarm."""
    from .deploy import open_manager, own_ports_freed

    phase = report.phase
    try:
        manager = open_manager(inv)
    except (RolloutError, transport.TransportError) as exc:
        report.checks += [preflight.Check(h, CHECK, preflight.FAIL, str(exc).split("; fix:")[0], "fab swarm.form")
                          for h in report.hosts]
        return
    try:
        view = observe.read(manager, render.stack_name(phase))
    except (SwarmCommandError, OSError, EOFError) as exc:
        report.checks += [preflight.Check(h, CHECK, preflight.FAIL, f"reading the swarm through {manager.name}: {exc}",
                                          "look at docker info on the manager") for h in report.hosts]
        return
    finally:
        manager.close()
    freed = own_ports_freed(report.facts, view)
    report.checks = [c for h in report.hosts
                     for c in (preflight.evaluate(inv, h, phase, freed[h]) if h in freed else [c for c in report.checks if c.host == h])]
    report.checks += node_checks(manager.name, view, report.hosts)
