"""Op `proxy_handover`: the host's proxy hands a service's traffic between its SSH container (slots a/b) and its Swarm tasks.

The SSH push's proxy is the front door under both engines (agent/proxytasks.py): each backend has slots a/b for the
container the SSH push runs and `server-template` slots for the Swarm tasks, found by DNS over the overlay. A move
between the engines is then two changes of server state on this proxy, each with a moment where both serve:

- attach: join the proxy to the overlay (proxyswitch.attach) and make the task slots ready (an earlier move back
  left them in maintenance), before the stack is deployed; refused when the proxy was started without task lines;
- to-swarm: once at least `expect` tasks are UP as this proxy sees them (resolved and passing its own check), drain
  the slots a/b, wait `drain_s`, put them in maintenance; nothing is drained when the tasks are not seen up;
- to-ssh: once a slot serves the SSH container, drain the task slots, wait, put them in maintenance (before the
  stack is taken down); nothing is drained when no slot serves.

Each answer says per service what the proxy showed before and after: the controller reports what was seen. Done
under the host's lock, as the SSH push's swaps that point the same slots are: a busy host refuses, nothing changed.
"""

from __future__ import annotations

import time
from typing import Any

from . import contract, lock, proxy, proxytasks
from .answer import answer

ACTIONS = ("attach", "to-swarm", "to-ssh", "look")


def _servers(rt: proxy.Runtime, service: str) -> tuple[dict[str, proxy.Slot], dict[str, proxy.Slot]]:
    """(slots a/b, task slots) of the service's backend."""
    all_ = rt.slots(service)
    return ({k: v for k, v in all_.items() if k in proxy.SLOTS},
            {k: v for k, v in all_.items() if proxytasks.is_task(k)})


def seen(rt: proxy.Runtime, service: str) -> dict[str, Any]:
    """What the proxy serves the service with now: {"ssh": [addr:port of live a/b], "tasks": [addr:port of UP tasks]}."""
    slots, tasks = _servers(rt, service)
    return {"ssh": [f"{s.addr}:{s.port}" for s in slots.values() if s.live],
            "tasks": [f"{s.addr}:{s.port}" for s in tasks.values() if s.up], "task_slots": len(tasks)}


def _wait(rt: proxy.Runtime, service: str, ok, wait_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    while True:
        now = seen(rt, service)
        if ok(now) or time.monotonic() >= deadline:
            return now
        time.sleep(0.2)


def _one(rt: proxy.Runtime, action: str, service: str, expect: int, wait_s: float, drain_s: float) -> dict[str, Any]:
    """One service's step; {"ok", "before", "after", "message"}. Raises ProxyError for a proxy that cannot do it."""
    slots, tasks = _servers(rt, service)
    if not tasks:
        raise proxy.ProxyError(f"the proxy has no Swarm task slots for {service}: it was started from an inventory without"
                               " swarm:; roll the proxy's phase out again first (stop-first: its ports close meanwhile)")
    before = seen(rt, service)
    if action == "attach":
        rt.set_state(service, list(tasks), "ready")
        return {"ok": True, "before": before, "after": seen(rt, service), "message": "task slots ready"}
    if action == "look":
        return {"ok": True, "before": before, "after": before, "message": ""}
    if action == "to-swarm":
        now = _wait(rt, service, lambda s: len(s["tasks"]) >= expect, wait_s)
        if len(now["tasks"]) < expect:
            return {"ok": False, "before": before, "after": now, "message": f"{len(now['tasks'])} of {expect} Swarm task(s)"
                    f" UP in the proxy after {wait_s:g}s; slots a/b left serving the SSH container"}
        give, keep = list(slots), "tasks"
    else:
        if not before["ssh"]:
            return {"ok": False, "before": before, "after": before, "message": "no SSH container serves in slots a/b; the"
                    " Swarm tasks left serving (fab rollout -p PHASE with engine: ssh first)"}
        give, keep = list(tasks), "ssh"
    rt.set_state(service, [n for n in give if n in slots and slots[n].live or n in tasks], "drain")
    time.sleep(drain_s)
    rt.set_state(service, give, "maint")
    after = seen(rt, service)
    ok = bool(after[keep]) and not after["ssh" if keep == "tasks" else "tasks"]
    return {"ok": ok, "before": before, "after": after,
            "message": f"served by {keep} only" if ok else f"the proxy shows {after} after the hand-over"}


def handover_op(args: dict[str, Any]) -> dict:
    """{"action", "proxy": container name, "services": {name: expected tasks}, "wait_s", "drain_s", "operator",
    "rollout_id"} -> per service, under the host's lock."""
    action, name = args.get("action"), str(args.get("proxy") or "")
    services = args.get("services") or {}
    if action not in ACTIONS or not contract.NAME_RE.fullmatch(name) or not all(contract.NAME_RE.fullmatch(str(s))
                                                                               for s in services):
        return answer("proxy_handover", False, f"bad request: action {action!r}, proxy {name!r}, services {list(services)}")
    try:  # the SSH push's swaps point the same slots under this lock: one of them at a time
        held = lock.acquire(str(args.get("operator") or "unknown"), str(args.get("rollout_id") or "proxy-handover"))
    except lock.Locked as exc:
        return answer("proxy_handover", False, f"host is {exc}; nothing handed over: run it again once that ends",
                      {"locked": exc.holder})
    try:
        return _handover(args, action, name, services)
    finally:
        held.release()


def _handover(args: dict[str, Any], action: str, name: str, services: dict[str, Any]) -> dict:
    from .facts import docker_client
    from .proxyswitch import attach

    client = docker_client(timeout=30)
    try:
        c = client.containers.get(name)
    except Exception:  # noqa: BLE001 - no proxy container here is an answer, not an error
        c = None
    if c is None or not (c.attrs.get("State") or {}).get("Running"):
        return answer("proxy_handover", True, f"no proxy {name} runs here", {"proxy": "absent", "services": {}})
    data: dict[str, Any] = {"proxy": name, "services": {}}
    if action == "attach":
        data["overlay"] = attach(client, c)
    rt = proxy.Runtime()
    for service, expect in services.items():
        try:
            data["services"][service] = _one(rt, action, service, int(expect), float(args.get("wait_s", 20)),
                                             float(args.get("drain_s", 1.0)))
        except proxy.ProxyError as exc:
            data["services"][service] = {"ok": False, "message": str(exc)}
    ok = all(v["ok"] for v in data["services"].values()) and not str(data.get("overlay", "")).startswith(("refused", "not"))
    return answer("proxy_handover", ok, "; ".join(f"{s}: {v['message']}" for s, v in data["services"].items() if v["message"]),
                  data, changed=action in ("attach", "to-swarm", "to-ssh"))
