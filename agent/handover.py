"""Op `proxy_handover`: the host's proxy hands a service's traffic between its SSH container (slots a/b) and its Swarm tasks.

The SSH push's proxy is the front door under both engines (agent/proxytasks.py): each backend has slots a/b for the
container the SSH push runs and `server-template` slots for the Swarm tasks, found by DNS over the overlay. A move
between the engines is then two changes of server state on this proxy, each with a moment where both serve:

- attach: join the proxy to the overlay (proxyswitch.attach) and make the task slots ready (an earlier move back
  left them in maintenance), before the stack is deployed; refused when the proxy was started without task lines;
- to-swarm: once at least `expect` tasks are UP as this proxy sees them (resolved and passing its own check), drain
  the slots a/b, wait `drain_s`, put them in maintenance; nothing is drained when the tasks are not seen up;
- to-ssh: once a slot serves the SSH container, drain the task slots (and a live slot a/b at any other address),
  wait, put them in maintenance (before the stack is taken down); nothing is drained when no slot serves it. A slot
  counts as the SSH container's only at the address, on the proxy's network, of the running container fleetroll
  made under the service's name (inspected each time): a restarted proxy's slot `a` is whatever `<service>`
  resolved to, a Swarm task on the overlay or 127.0.0.1, never proof that the SSH container serves.

When the check after a drain, or after the maintenance, is not ok, the slots just given up that were ready before are
made ready again and the answer says what the proxy shows then. The proxy is the container this agent made with the
proxy's role (host_checks.proxy_problem), never a name from the request.

Each answer says per service what the proxy showed before and after: the controller reports what was seen. Done
under the host's lock, as the SSH push's swaps that point the same slots are: a busy host refuses, nothing changed.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable
from typing import Any

from . import contract, lock, proxy, proxytasks
from .answer import answer

ACTIONS = ("attach", "to-swarm", "to-ssh", "look")
WAIT_MAX, DRAIN_MAX, EXPECT_MAX = 120.0, 30.0, proxytasks.MAX_SLOTS  # a longer wait holds the host's lock


def _servers(rt: proxy.Runtime, service: str) -> tuple[dict[str, proxy.Slot], dict[str, proxy.Slot]]:
    """(slots a/b, task slots) of the service's backend."""
    all_ = rt.slots(service)
    return ({k: v for k, v in all_.items() if k in proxy.SLOTS},
            {k: v for k, v in all_.items() if proxytasks.is_task(k)})


def _loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return True  # not an address at all: serves nothing


def seen(rt: proxy.Runtime, service: str, ssh: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """What the proxy serves the service with now: {"ssh": [addr:port of live a/b at the SSH container's address `ssh`],
    "other": [addr:port of live a/b elsewhere], "tasks": [addr:port of UP tasks], "task_slots": n}."""
    slots, tasks = _servers(rt, service)
    live = [(f"{s.addr}:{s.port}", s.addr) for s in slots.values() if s.live]
    return {"ssh": [a for a, ip in live if a in ssh and not _loopback(ip)],
            "other": [a for a, ip in live if a not in ssh or _loopback(ip)],
            "tasks": [f"{s.addr}:{s.port}" for s in tasks.values() if s.up], "task_slots": len(tasks)}


def _wait(rt: proxy.Runtime, service: str, ok, wait_s: float, ssh: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    while True:
        now = seen(rt, service, ssh)
        if ok(now) or time.monotonic() >= deadline:
            return now
        time.sleep(0.2)


def _ready(n: str, s: proxy.Slot) -> bool:
    """A slot that took requests (or, a task slot, would once a task is in it): made ready again on a restore."""
    return s.admin == 0 and (s.weight > 0 or proxytasks.is_task(n))


def _one(rt: proxy.Runtime, action: str, service: str, expect: int, wait_s: float, drain_s: float,
         ssh_at: Callable[[], set[str]] = set, phase: str = "") -> dict[str, Any]:
    """One service's step; {"ok", "changed", "before", "after", "message"}. Raises ProxyError for a proxy that cannot.

    `ssh_at()`: the addr:port the SSH container of `service` has now (empty when none runs), asked again each time.
    """
    slots, tasks = _servers(rt, service)
    if not tasks:
        raise proxy.ProxyError(f"the proxy has no Swarm task slots for {service}: it was started from an inventory without"
                               " swarm:; roll the proxy's phase out again first (stop-first: its ports close meanwhile)")
    ssh = ssh_at()
    before = seen(rt, service, ssh)
    if action == "attach":
        todo = [n for n, s in tasks.items() if s.admin != 0]
        rt.set_state(service, todo, "ready")
        return {"ok": True, "changed": bool(todo), "before": before, "after": seen(rt, service, ssh),
                "message": "task slots ready" if todo else "task slots were ready"}
    if action == "look":
        return {"ok": True, "changed": False, "before": before, "after": before, "message": ""}
    if action == "to-swarm":
        now = _wait(rt, service, lambda s: len(s["tasks"]) >= expect, wait_s, ssh)
        if len(now["tasks"]) < expect:
            return {"ok": False, "changed": False, "before": before, "after": now, "message": f"{len(now['tasks'])} of"
                    f" {expect} Swarm task(s) UP in the proxy after {wait_s:g}s; slots a/b left serving the SSH container"}
        return _move(rt, service, dict(slots), "tasks", before, drain_s, ssh_at)
    if not before["ssh"]:
        where = f" (a live slot at {', '.join(before['other'])} is not its address)" if before["other"] else ""
        return {"ok": False, "changed": False, "before": before, "after": before, "message": f"no SSH container of"
                f" {service} serves in slots a/b{where}; the Swarm tasks left serving (roll the phase out with engine: ssh"
                f" first: fab rollout -p {phase or '<its phase>'})"}
    give = {**tasks, **{n: s for n, s in slots.items() if s.live and f"{s.addr}:{s.port}" not in before["ssh"]}}
    return _move(rt, service, give, "ssh", before, drain_s, ssh_at)


def _move(rt: proxy.Runtime, service: str, give: dict[str, proxy.Slot], keep: str, before: dict[str, Any],
          drain_s: float, ssh_at: Callable[[], set[str]]) -> dict[str, Any]:
    """Drain the slots `give`, wait, check `keep` still serves, put them in maintenance, check again; restore on a failure."""
    gone = "ssh" if keep == "tasks" else "tasks"
    if all(s.state == "maint" for s in give.values()):
        ok = bool(before[keep]) and not before[gone] and not before["other"]
        return {"ok": ok, "changed": False, "before": before, "after": before,
                "message": f"served by {keep} only (nothing to hand over)" if ok else f"the proxy shows {before}"}
    ready = [n for n, s in give.items() if _ready(n, s)]
    rt.set_state(service, ready, "drain")
    time.sleep(drain_s)
    mid = seen(rt, service, ssh_at())
    if not mid[keep]:
        return _restore(rt, service, ready, before, ssh_at, f"after the drain no {keep} served")
    rt.set_state(service, list(give), "maint")
    after = seen(rt, service, ssh_at())
    if not after[keep] or after[gone] or after["other"]:
        return _restore(rt, service, ready, before, ssh_at, f"after the hand-over the proxy showed {after}")
    return {"ok": True, "changed": True, "before": before, "after": after, "message": f"served by {keep} only"}


def _restore(rt: proxy.Runtime, service: str, ready: list[str], before: dict[str, Any], ssh_at: Callable[[], set[str]],
             why: str) -> dict[str, Any]:
    """The hand-over failed half-way: the slots given up that were ready before are ready again; say what serves now."""
    rt.set_state(service, ready, "ready")
    after = seen(rt, service, ssh_at())
    serving = [f"{k} {', '.join(after[k])}" for k in ("ssh", "tasks", "other") if after[k]]
    return {"ok": False, "changed": True, "before": before, "after": after,
            "message": f"{why}; set {', '.join(ready) or 'nothing'} back to ready: the proxy now serves"
                       f" {'; '.join(serving) or 'nothing'}"}


def _request_problem(args: dict[str, Any]) -> str:
    """Why the request is not one to act on ("" if it is): action, names, counts and bounded times."""
    action, services = args.get("action"), args.get("services") or {}
    if action not in ACTIONS or not isinstance(services, dict) or not all(contract.NAME_RE.fullmatch(str(s)) for s in services):
        return f"action {action!r}, services {list(services) if isinstance(services, dict) else services!r}"
    if args.get("proxy") and not contract.NAME_RE.fullmatch(str(args["proxy"])):
        return f"proxy {args['proxy']!r}"
    if action == "attach" and not services:
        return "attach with no services"
    bad = [f"{s}: {n!r} tasks" for s, n in services.items()
           if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= EXPECT_MAX]
    for key, default, top in (("wait_s", 20.0, WAIT_MAX), ("drain_s", 1.0, DRAIN_MAX)):
        v = args.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= top:
            bad.append(f"{key} {v!r} (0-{top:g})")
    return "; ".join(bad)


def handover_op(args: dict[str, Any]) -> dict:
    """{"action", "services": {name: expected tasks}, "wait_s" (0-120), "drain_s" (0-30), "operator", "rollout_id"}
    -> per service, under the host's lock. A "proxy" name in the request is not used: the agent finds its own proxy."""
    problem = _request_problem(args)
    if problem:
        return answer("proxy_handover", False, f"bad request: {problem}")
    try:  # the SSH push's swaps point the same slots under this lock: one of them at a time
        held = lock.acquire(str(args.get("operator") or "unknown"), str(args.get("rollout_id") or "proxy-handover"))
    except lock.Locked as exc:
        return answer("proxy_handover", False, f"host is {exc}; nothing handed over: run it again once that ends",
                      {"locked": exc.holder})
    try:
        return _handover(args, args["action"], args.get("services") or {})
    finally:
        held.release()


def find_proxy(client: Any) -> tuple[Any, str]:
    """(the proxy container this agent made, '') or (None, why none): running under its service's name (not a copy set
    aside), fleetroll's, and host_checks.proxy_problem finds nothing against it."""
    from .host_checks import proxy_problem

    run_dir = str(proxy.runtime_dir(create=False))
    found = [c for c in client.containers.list(filters={"label": f"{contract.MANAGED}=true"})
             if (c.attrs.get("State") or {}).get("Running") and proxy_problem(c.attrs, run_dir) is None
             and ((c.attrs.get("Config") or {}).get("Labels") or {}).get(contract.SERVICE) == str(c.attrs.get("Name")).lstrip("/")]
    if len(found) > 1:
        return None, f"{len(found)} containers look like the proxy ({', '.join(c.name for c in found)}); refused"
    return (found[0], "") if found else (None, "")


def _routes(config: str) -> dict[str, tuple[int, str]]:
    """{service: (container port, phase)} from the proxy's own configuration (checked: proxy_problem)."""
    out = {}
    for s, port in re.findall(r"^    server a (\S+):([0-9]+) ", config, re.M):
        m = re.search(rf" tasks\.{proxytasks.STACK_PREFIX}(\S+)_{re.escape(s)}:[0-9]+ ", config)
        out[s] = (int(port), m[1] if m else "")
    return out


def _ssh_at(client: Any, net: str, service: str, port: int) -> Callable[[], set[str]]:
    """The addr:port, on the proxy's network `net`, of the running container fleetroll made as `service` (inspected anew)."""
    def now() -> set[str]:
        try:
            c = client.containers.get(service)
        except Exception:  # noqa: BLE001 - no such container: no SSH container serves
            return set()
        labels = (c.attrs.get("Config") or {}).get("Labels") or {}
        if not (c.attrs.get("State") or {}).get("Running") or labels.get(contract.MANAGED) != "true" \
                or labels.get(contract.SERVICE) != service:
            return set()
        addr = proxy.container_address(c.attrs, net) if net else ""
        return {f"{addr}:{port}"} if addr and not _loopback(addr) else set()
    return now


def _handover(args: dict[str, Any], action: str, services: dict[str, int]) -> dict:
    from .container_args import network_of
    from .facts import docker_client
    from .proxyswitch import attach

    client = docker_client(timeout=30)
    c, why = find_proxy(client)
    if c is None:  # none: the controller says so by host; more than one: refused, said as the agent's message
        return answer("proxy_handover", not why, why or "no proxy runs here", {"proxy": "" if why else "absent", "services": {}})
    data: dict[str, Any] = {"proxy": c.name, "services": {}}
    if action == "attach":
        data["overlay"] = attach(client, c)
    routes = _routes(dict(str(e).partition("=")[::2] for e in (c.attrs.get("Config") or {}).get("Env") or [])
                     .get(proxy.CONFIG_ENV, ""))
    net = network_of(c.attrs.get("HostConfig") or {})
    rt = proxy.Runtime()
    for service, expect in services.items():
        port, phase = routes.get(service, (0, ""))
        try:
            data["services"][service] = _one(rt, action, service, expect, float(args.get("wait_s", 20)),
                                             float(args.get("drain_s", 1.0)), _ssh_at(client, net, service, port), phase)
        except proxy.ProxyError as exc:
            data["services"][service] = {"ok": False, "changed": False, "message": str(exc)}
    overlay = str(data.get("overlay", ""))
    ok = all(v["ok"] for v in data["services"].values()) and not overlay.startswith(("refused", "not"))
    changed = overlay.startswith("joined") or any(v.get("changed") for v in data["services"].values())
    return answer("proxy_handover", ok, "; ".join(f"{s}: {v['message']}" for s, v in data["services"].items() if v["message"]),
                  data, changed=changed)
