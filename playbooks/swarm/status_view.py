"""`fab status` for swarm phases: where each Swarm task runs, on which release, and whether Swarm calls it healthy.

The hosts' agents see no container named after a swarm service (Swarm names its own), so the
rows of swarm services come from a manager instead: one per (host, service), host by the node's
fleetroll.host label. A task is healthy when Swarm runs it (a task with a healthcheck turns
running only once healthy, and is replaced when it turns unhealthy).
"""

from __future__ import annotations

from typing import Any

from .. import transport
from ..errors import RolloutError
from ..inventory import Inventory
from . import observe, render
from .remote import SwarmCommandError


def rows(inv: Inventory, view: observe.View, service: str) -> dict[str, dict[str, Any]]:
    """{host: status row} for one swarm service: each placed host, and any host where a task of it runs. Pure."""
    want = inv.fleet.services[service].tag
    tag, digest, _h = observe.deployed(view.services.get(service))
    tasks = [observe.task_row(view, t) for t in view.tasks.get(service, [])]
    replicas = inv.fleet.services[service].replicas or 0
    runs_on = sorted({t["host"] for t in tasks if t["desired"] == "running" and t["state"] == "running"})
    out: dict[str, dict[str, Any]] = {}
    for host in dict.fromkeys([*inv.fleet.hosts_of(service), *(t["host"] for t in tasks if t["desired"] == "running")]):
        mine = [t for t in tasks if t["host"] == host]
        live = next((t for t in mine if t["desired"] == "running"), None)
        failed = sum(1 for t in mine if t["state"] in ("failed", "rejected"))
        if service not in view.services:
            status, healthy, health = "absent", False, "not in the swarm yet (fab rollout deploys its stack)"
        elif live is None and replicas and len(runs_on) >= replicas:  # a replicas: host Swarm put none on: not a fault
            status, healthy, health = "elsewhere", True, f"no task here: Swarm runs its {replicas} replica(s) on {', '.join(runs_on)}"
        elif live is None:
            status, healthy, health = "absent", False, "Swarm runs no task of it here"
        else:
            status = f"swarm task {live['id'][:12]} {live['state']}"
            healthy = live["state"] == "running"
            health = "healthy (Swarm's healthcheck)" if healthy else (live["error"] or live["message"] or live["state"])
        image = (live or {}).get("image", "")
        run_tag = image.rsplit("@", 1)[0].rsplit(":", 1)[-1] if image else None
        run_digest = image.rsplit("@", 1)[1] if "@" in image else (digest or None)
        drift = "" if run_tag == want or status == "elsewhere" else (f"runs {run_tag}, inventory says {want}" if run_tag
                                                                       else "not running")
        out[host] = {"tag": run_tag or tag or None, "digest": run_digest, "status": status, "restarts": failed, "healthy": healthy,
                     "health": health, "drift": drift, "rollout_id": None, "engine": "swarm",
                     "placed": host in inv.fleet.hosts_of(service)}
    return out


def with_leftover(row: dict[str, Any], pushed: dict[str, Any], service: str, host: str) -> dict[str, Any]:
    """The Swarm row, and the SSH push's container of the service if one still runs there (pure).

    Found by an exploratory run: after a phase moved to Swarm, status showed only Swarm's task and
    said nothing of the SSH-pushed container the move left running on the host (the rollout's plan
    names it): it holds the service's ports and serves beside, or instead of, Swarm's task.
    """
    if pushed.get("status") != "running" or not pushed.get("rollout_id"):
        return row
    left = (f"a container {service} pushed over SSH ({pushed.get('tag')}) still runs here, left by the move to Swarm: it"
            f" holds the service's ports; fab remove -s {service} -H {host}")
    return {**row, "drift": "; ".join(x for x in (row.get("drift"), left) if x), "leftover": {"tag": pushed.get("tag"),
            "rollout_id": pushed.get("rollout_id")}}


def overlay(inv: Inventory, out: dict[str, Any], hosts: list[str]) -> None:
    """Replace the agents' rows of swarm services in `out` (fab status) by what a manager says; say so when none answers."""
    from .deploy import open_manager

    phases = [p for p in inv.phases if inv.fleet.engine_of(p) == "swarm"]
    try:
        manager = open_manager(inv)
    except (RolloutError, transport.TransportError) as exc:
        out["swarm"] = {"error": str(exc)}
        for p in phases:
            for s in p.services:
                for h in (h for h in inv.fleet.hosts_of(s) if h in hosts and out["hosts"][h].get("reachable")):
                    out["hosts"][h]["services"][s].update(healthy=False, health=f"swarm: {exc}", engine="swarm")
        return
    try:
        out["swarm"] = {"manager": manager.name, "stacks": [render.stack_name(p.name) for p in phases]}
        for p in phases:
            view = observe.read(manager, render.stack_name(p.name))
            for s in p.services:
                for h, row in rows(inv, view, s).items():
                    if h in out["hosts"] and out["hosts"][h].get("reachable"):
                        pushed = out["hosts"][h]["services"].get(s) or {}
                        out["hosts"][h]["services"][s] = with_leftover(row, pushed, s, h)
    except SwarmCommandError as exc:
        out["swarm"] = {"error": str(exc)}
    finally:
        manager.close()
