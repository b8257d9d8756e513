"""`fab details` for swarm phases: each Swarm task of a service on a host, from a manager.

Every Swarm failure report sends the operator to `fab details`; the hosts' agents know no
container by a swarm service's name (Swarm names its own), so these blocks come from a
manager, as `fab status`'s rows do (status_view.py): the service's last update, and per host
its tasks newest first with their state, desired state, image and Swarm's error.
"""

from __future__ import annotations

from typing import Any

from .. import transport
from ..errors import RolloutError
from ..inventory import Inventory
from . import observe, render
from .remote import SwarmCommandError

TASKS_SHOWN = 5  # Swarm keeps 5 per slot by default (task_history_limit); the newest say what happened


def block(inv: Inventory, view: observe.View, service: str, host: str) -> dict[str, Any]:
    """What details shows of one swarm service on one host (pure)."""
    svc = view.services.get(service)
    state, message, since = observe.update_state(svc)
    tasks = sorted((observe.task_row(view, t) for t in view.tasks.get(service, [])), key=lambda r: r["updated"], reverse=True)
    return {"engine": "swarm", "container": None, "kept": [], "swarm_service": (svc or {}).get("Spec", {}).get("Name", ""),
            "deployed": svc is not None, "update": {"state": state, "message": message, "started_at": since},
            "tasks": [t for t in tasks if t["host"] == host][:TASKS_SHOWN]}


def overlay(inv: Inventory, out: dict[str, Any]) -> None:
    """Replace the agents' empty blocks of swarm services in `out` by what a manager says; say so when none answers."""
    from .deploy import open_manager

    swarm = {s: p.name for p in inv.phases if inv.fleet.engine_of(p) == "swarm" for s in p.services}
    wanted = [(h, s) for h, info in out["hosts"].items() if info.get("reachable") for s in info["services"] if s in swarm]
    if not wanted:
        return
    try:
        manager = open_manager(inv)
    except (RolloutError, transport.TransportError) as exc:
        for h, s in wanted:
            out["hosts"][h]["services"][s].update(engine="swarm", swarm_error=f"no manager answered: {exc}")
        return
    try:
        views = {p: observe.read(manager, render.stack_name(p)) for p in dict.fromkeys(swarm[s] for _h, s in wanted)}
        for h, s in wanted:
            out["hosts"][h]["services"][s].update(block(inv, views[swarm[s]], s, h))
    except SwarmCommandError as exc:
        for h, s in wanted:
            out["hosts"][h]["services"][s].update(engine="swarm", swarm_error=f"the manager could not say: {exc}")
    finally:
        manager.close()


def text(service: str, host: str, d: dict[str, Any]) -> list[str]:
    """The lines of one swarm service's block in `fab details` (pure)."""
    if d.get("swarm_error"):
        return [f"{service} on {host} (Swarm): {d['swarm_error']}"]
    if not d.get("deployed"):
        return [f"{service} on {host} (Swarm): not in the swarm (fab rollout deploys its stack; inventory tag {d['inventory_tag']})"]
    u = d.get("update") or {}
    lines = [f"{service} on {host} (Swarm service {d['swarm_service']})",
             f"  update    {u.get('state') or 'none yet'}" + (f": {u['message']}" if u.get("message") else "")
             + (f" (since {u['started_at'][:19]})" if u.get("started_at") else "")]
    if not d.get("tasks"):
        lines.append("  tasks     none on this host")
    for t in d.get("tasks") or []:
        why = "; ".join(x for x in (t.get("error"), t.get("message") if t.get("state") != "running" else "") if x)
        code = f", exit code {t['exit_code']}" if t.get("exit_code") not in (None, 0) else ""
        lines.append(f"  task      {t['id'][:12]} {t['state']} (desired {t['desired']}{code}) {t['image'].split('/')[-1]}"
                     f" at {t['updated'][:19]}" + (f": {why}" if why else ""))
    lines.append(f"  logs      fab logs -s {service} -H {host}")
    return lines
