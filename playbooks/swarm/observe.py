"""What Swarm did, read through a manager (`read`), and judged (the rest, pure).

Swarm's own words are the evidence: a service's UpdateStatus (updating, completed, paused,
rollback_started, rollback_completed, rollback_paused), its tasks' states, images and errors,
and each node's `fleetroll.host` label (node hostnames may be shared, so never those).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import commands
from .remote import Host, SwarmCommandError
from .render import DIGEST_LABEL, HOST_LABEL, SERVICE_LABEL, SPEC_LABEL, TAG_LABEL


@dataclass
class View:
    """One reading of a stack: node id -> inventory host, inventory service -> service JSON and its tasks."""

    nodes: dict[str, str] = field(default_factory=dict)
    node_status: dict[str, tuple[str, str]] = field(default_factory=dict)  # node id -> (Status.State, Spec.Availability)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def read(manager: Host, stack: str) -> View:
    """Nodes, the stack's services and every task of each, in a handful of docker commands on the manager."""
    view = View()
    ids = manager.lines(commands.node_ids())
    for n in manager.json(commands.inspect(ids, "node")) or [] if ids else []:
        view.nodes[n["ID"]] = ((n.get("Spec") or {}).get("Labels") or {}).get(HOST_LABEL, "")
        view.node_status[n["ID"]] = ((n.get("Status") or {}).get("State", ""), (n.get("Spec") or {}).get("Availability", ""))
    sids = manager.lines(commands.stack_services(stack))
    for s in manager.json(commands.inspect(sids, "service")) or [] if sids else []:
        name = (s["Spec"].get("Labels") or {}).get(SERVICE_LABEL) or s["Spec"]["Name"].removeprefix(f"{stack}_")
        view.services[name] = s
        tids = manager.lines(commands.service_tasks(s["ID"]))
        view.tasks[name] = _tasks(manager, tids) if tids else []
    return view


def _tasks(manager: Host, tids: list[str]) -> list[dict[str, Any]]:
    """The tasks of `tids` that still exist.

    Swarm trims a service's task history as updates go (task_history_limit, 5 by default): a task listed
    a moment ago can be gone when it is inspected. docker then prints the others, says "No such object"
    for each gone one and exits 1. Those are dropped, as Swarm dropped them; any other failure is one.
    """
    argv = commands.inspect(tids)
    rc, out, err = manager.run(argv, check=False)
    problems = [line for line in err.splitlines() if line.strip()]
    if rc != 0 and (not problems or not all("No such object" in line for line in problems)):
        raise SwarmCommandError(manager.name, argv, rc, err)
    try:
        return json.loads(out) if out.strip() else []
    except ValueError as exc:
        raise SwarmCommandError(manager.name, argv, -1, f"the answer is not JSON ({exc}); nothing is taken from it") from None


def labels(svc: dict[str, Any] | None, previous: bool = False) -> dict[str, str]:
    spec = (svc or {}).get("PreviousSpec" if previous else "Spec") or {}
    return spec.get("Labels") or {}


def deployed(svc: dict[str, Any] | None, previous: bool = False) -> tuple[str, str, str]:
    """(tag, digest, spec hash) the service (or its previous spec) was deployed with, from fleetroll's labels."""
    lab = labels(svc, previous)
    return lab.get(TAG_LABEL, ""), lab.get(DIGEST_LABEL, ""), lab.get(SPEC_LABEL, "")


def task_image(t: dict[str, Any]) -> str:
    return ((t.get("Spec") or {}).get("ContainerSpec") or {}).get("Image", "")


def task_row(view: View, t: dict[str, Any]) -> dict[str, Any]:
    st = t.get("Status") or {}
    cs = st.get("ContainerStatus") or {}
    return {"id": t.get("ID", ""), "host": view.nodes.get(t.get("NodeID", ""), "") or f"node {t.get('NodeID', '')[:12]}",
            "state": st.get("State", ""), "desired": t.get("DesiredState", ""), "image": task_image(t),
            "error": st.get("Err", ""), "message": st.get("Message", ""), "exit_code": cs.get("ExitCode"),
            "slot": t.get("Slot"), "updated": t.get("UpdatedAt", ""), "index": (t.get("Version") or {}).get("Index") or 0}


def running(view: View, service: str, digest: str = "") -> dict[str, dict[str, Any]]:
    """{host: task row} of the service's tasks Swarm runs now (desired and observed running), on `digest` if given."""
    out = {}
    for t in view.tasks.get(service, []):
        row = task_row(view, t)
        if row["state"] == "running" and row["desired"] == "running" and (not digest or row["image"].endswith(f"@{digest}")):
            out[row["host"]] = row
    return out


def failed(view: View, service: str, digest: str) -> list[dict[str, Any]]:
    """Tasks of `digest` that failed, were rejected or shut down with an error: the evidence of a failed release."""
    rows = [task_row(view, t) for t in view.tasks.get(service, [])]
    return [r for r in rows if r["image"].endswith(f"@{digest}") and (r["state"] in ("failed", "rejected") or r["error"])]


def update_state(svc: dict[str, Any] | None) -> tuple[str, str, str]:
    """(state, message, started_at) of the service's last update; ('', '', '') when it never had one."""
    u = (svc or {}).get("UpdateStatus") or {}
    return u.get("State", ""), u.get("Message", ""), u.get("StartedAt", "")


def published_ports(view: View) -> dict[str, set[int]]:
    """{host: host ports} the stack's running tasks hold there: preflight must not call them 'in use by something else'."""
    out: dict[str, set[int]] = {}
    for name, svc in view.services.items():
        ports = {p.get("PublishedPort") for p in (svc.get("Spec", {}).get("EndpointSpec") or {}).get("Ports") or []}
        for t in view.tasks.get(name, []):
            row = task_row(view, t)
            if row["state"] in ("running", "starting", "preparing", "assigned", "accepted", "ready"):
                out.setdefault(row["host"], set()).update(p for p in ports if p)
    return out
