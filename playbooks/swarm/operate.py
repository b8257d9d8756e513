"""`fab versions` and `fab logs` on a swarm service: the hosts' agents do not know Swarm's tasks, a manager and the ledger do.

Versions come from the controller's ledger (every swarm rollout and rollback records, per host and
service, what was tried and how it ended) and from the service's current and previous spec as
Swarm keeps them (fleetroll's labels on each spec): what Swarm runs now on each host, and what
`fab rollback -s SVC` (Swarm's previous spec) would go back to. Logs are `docker service logs`
through a manager, cleaned of terminal escapes as the SSH push's logs are (agent/motion.clean_lines); with
--follow, streamed line by line through the manager (logs.py) until Ctrl-C.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.motion import clean_lines

from .. import ledger
from ..errors import RolloutError
from ..inventory import Inventory
from . import observe, render
from .remote import SwarmCommandError
from .rollback import refusal, unchanged

SKIP = ("noop", "skipped", "refused")  # nothing was started on the host: not a version it ran


def is_swarm_service(inv: Inventory, service: str) -> bool:
    phase = next((p for p in inv.phases if service in p.services), None)
    return phase is not None and inv.fleet.engine_of(phase) == "swarm"


def history(records: list[dict], service: str, host: str) -> list[dict[str, Any]]:
    """The versions `service` was started with on `host` by swarm rollouts and rollbacks, oldest first (pure)."""
    out = []
    for r in records:
        if r.get("kind") != "finished" or r.get("engine") != "swarm":
            continue
        for s in r.get("services") or []:
            if s.get("service") != service or s.get("host") != host or s.get("outcome") in SKIP:
                continue
            if not (s.get("tried_tag") or s.get("tried_digest")):  # nothing was tried there (a host Swarm put no task on)
                continue
            out.append({"ts": r.get("ts"), "tag": s.get("tried_tag", ""), "digest": s.get("tried_digest", ""),
                        "rollout_id": r.get("rollout_id", ""), "operator": r.get("operator", ""),
                        "kind": "rollback" if r.get("rollback") else "rollout", "outcome": s.get("outcome", ""),
                        "running": False, "image_present": None})
    return out


def replica(view: observe.View, records: list[dict], service: str, host: str) -> dict[str, Any]:
    """One host's `fab versions` row set, newest first, the version Swarm runs there marked (pure)."""
    svc = view.services.get(service)
    versions = list(reversed(history(records, service, host)))
    task = observe.running(view, service).get(host)
    running: dict[str, Any] = {}
    if task:
        digest = task["image"].rsplit("@", 1)[-1] if "@" in task["image"] else ""
        tag = next((v["tag"] for v in versions if v["digest"] == digest), "") or observe.deployed(svc)[0]
        running = {"tag": tag, "digest": digest, "task": task["id"][:12]}
        mine = next((v for v in versions if v["digest"] == digest), None)
        if mine:
            mine["running"] = True
    notes = []
    if svc is None:
        notes.append(f"{service} is not in the swarm now")
    else:
        cur, prev = observe.deployed(svc), observe.deployed(svc, previous=True)
        notes.append(f"swarm: spec {cur[0] or '?'}@{cur[1][7:19] or '?'}" + (
            f"; previous spec {prev[0] or '?'}@{prev[1][7:19] or '?'}" if svc.get("PreviousSpec") else "; no previous spec"))
        if not task:
            elsewhere = sorted(h for h in observe.running(view, service) if h != host)  # only what runs, not any task
            notes.append("no task of it runs on this host now" + (f" (Swarm runs it on {', '.join(elsewhere)})" if elsewhere else ""))
    # what fab rollback -s would do with Swarm's previous spec, by the rules it applies (refused, or nothing to change)
    why = refusal(service, svc) or (unchanged(service, svc) if svc else "")
    back = f"not fab rollback -s {service}: {why}" if why else f"back to the previous spec: fab rollback -s {service}"
    notes.append(f"{back}; to any tag: fab rollback -s {service} --to TAG (resolved and gated again, as a rollout)")
    return {"host": host, "service": service, "running": running, "versions": versions, "note": "\n".join(notes)}


def versions(inv: Inventory, service: str, host: str | None = None) -> dict[str, Any]:
    """`fab versions -s SVC` for a swarm service: per host of the service, from the ledger and a manager's view."""
    from .deploy import open_manager

    hosts = inv.fleet.hosts_of(service)
    if host and host not in hosts:
        raise RolloutError(f"--host {host}: {service} is not placed there; its hosts: {', '.join(hosts)}")
    phase = next(p.name for p in inv.phases if service in p.services)
    manager = open_manager(inv)
    try:
        view = observe.read(manager, render.stack_name(phase))
    finally:
        manager.close()
    records = ledger.read()
    return {"service": service, "replicas": [replica(view, records, service, h) for h in ([host] if host else hosts)]}


def logs_command(stack: str, service: str, tail: int, since_s: float | None, timestamps: bool, follow: bool = False) -> list[str]:
    """docker service logs of the stack's service, every task of it, each line prefixed by its task and node. Pure."""
    argv = ["docker", "service", "logs", "--no-trunc", "--tail", str(int(tail))]
    if since_s is not None:
        argv += ["--since", f"{int(since_s)}s"]
    if timestamps:
        argv.append("--timestamps")
    if follow:
        argv.append("--follow")
    return [*argv, f"{stack}_{service}"]


def logs(inv: Inventory, service: str, host: str | None, tail: int, since_s: float | None, follow: bool,
         timestamps: bool, on_line: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`fab logs -s SVC` for a swarm service, through the first manager that answers: every task's lines, cleaned.

    With follow, lines go to on_line as they come (the SSH push's follow does the same with its agent's
    events) until the stream ends or Ctrl-C; without on_line they are gathered and returned at the end.
    """
    from .deploy import open_manager
    from .logs import follow as follow_stream

    if host:
        raise RolloutError(f"{service} runs on engine: swarm: its log is read through a manager for every task (each line"
                           " names its task and node); drop --host")
    stack = render.stack_name(_phase(inv, service))
    manager = open_manager(inv)
    try:
        if follow:
            got: list[str] = []
            note = follow_stream(manager, logs_command(stack, service, tail, since_s, timestamps, follow=True),
                                 f"{stack}_{service}", on_line or got.append)
            return {"host": manager.name, "service": service, "lines": got, "note": note}
        _rc, out, err = manager.run(logs_command(stack, service, tail, since_s, timestamps), timeout=60)
    except SwarmCommandError as exc:
        raise RolloutError(f"reading {service}'s log through {manager.name}: {exc}; look: fab status") from None
    finally:
        manager.close()
    # docker service logs writes each task's stdout and stderr to the same two streams; both are the service's log
    return {"host": manager.name, "service": service, "lines": clean_lines(out + err),
            "note": f"swarm: docker service logs {stack}_{service} through {manager.name} (every task, each line named by it)"}


def _phase(inv: Inventory, service: str) -> str:
    return next(p.name for p in inv.phases if service in p.services)
