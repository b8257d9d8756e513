"""Pointing the host's proxy: at a new container after its gate, back at the old one on a restore, at every backend for a new proxy.

The proxy's own state is read back after each switch: a proxy that does not confirm is an
error (the caller restores), never a success. In a fleet that uses Swarm the proxy also joins
the overlay `fr-proxy` (attach) so its backends' Swarm task slots resolve (agent/proxytasks.py);
the hand-over between the engines is agent/handover.py.
"""

from __future__ import annotations

import time
from typing import Any

from . import container_args, proxy, proxytasks
from .decisions import ServiceResult
from .docker_errors import DockerError
from .motion import failure_text, settled_retry
from .vocabulary import Step

TASKS_WAIT_S = 15.0  # how long a new proxy may take to see a Swarm task UP that the old one served
IDLE_WAIT_S = 2.0  # at most, for the requests on a server the proxy left without a drain (the schema's default drain_s)


def on_overlay(said: str) -> bool:
    """Is the proxy on fr-proxy, by what attach said?"""
    return said in (f"on {proxytasks.SWARM_NETWORK}", f"joined {proxytasks.SWARM_NETWORK}")


class ProxySwitch:
    """Mixed into Transaction: the switches of start-first swaps and of restores behind the proxy."""

    client: Any

    def _address(self, c, h: dict) -> str:
        """Where the gate and the proxy reach a container on the proxy network ("" off it)."""
        if not h.get("network"):
            return ""
        c.reload()
        return proxy.container_address(c.attrs, h["network"])

    def _point_backends(self, service: str) -> None:
        """A new proxy passed its gate: point each backend at the container that runs its service now.

        Its start script resolved the names it could; this makes it exact (a name Docker could
        not resolve in time starts at no server). A backend with no container here is left to its
        Swarm tasks only once one is UP in this proxy: one that the old proxy served by its tasks
        (journalled as it left the overlay) and this one cannot fails the swap, which restores the
        old proxy. A failure here fails the proxy's swap.
        """
        joined = attach(self.client, self._get(service))
        served_by_tasks = self._served_by_tasks(service)  # one read of the journal, not one per backend
        rt = proxy.Runtime()
        pointed: dict = {}
        for be, slots in rt.servers().items():
            name = be.removeprefix("be_")
            c = self._get(name) if be.startswith("be_") else None
            if c is None or not (c.attrs.get("State") or {}).get("Running"):
                if be.startswith("be_") and any(proxytasks.is_task(s) for s in slots):
                    pointed[name] = self._to_tasks(rt, be, name, joined, name in served_by_tasks)
                continue
            addr = proxy.container_address(c.attrs, container_args.network_of(c.attrs.get("HostConfig") or {}))
            port = next(iter(slots.values())).port
            if addr:
                pointed[name] = rt.point(name, addr, port)
                rt.retire(name, addr, port)
        self.j(Step.PROXY_BACKENDS, service, pointed={k: v if isinstance(v, str) else v["to"] for k, v in pointed.items()},
               overlay=joined)

    def _to_tasks(self, rt: Any, be: str, name: str, joined: str, served_before: bool) -> str:
        """A backend with no SSH container: slots a/b to maintenance (they point at nothing); what serves it, said.

        Waits (at most TASKS_WAIT_S) for a Swarm task UP only for a service the old proxy served by its tasks, and
        raises ProxyError when none comes UP (the swap restores the old proxy): that service would be unserved.
        """
        deadline = time.monotonic() + (TASKS_WAIT_S if served_before and on_overlay(joined) else 0.0)
        while True:
            up = on_overlay(joined) and any(proxytasks.is_task(n) and s.up for n, s in rt.servers().get(be, {}).items())
            if up or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        if not up and served_before:
            raise proxy.ProxyError(f"{name} was served by its Swarm tasks through the old proxy, and the new one serves"
                                   f" none of them (overlay: {joined}; no task UP within {TASKS_WAIT_S:g}s)")
        rt.set_state(name, list(proxy.SLOTS), "maint")
        return "swarm tasks" if up else "unserved: no container here, no Swarm task UP yet"

    def _served_by_tasks(self, service: str) -> list[str]:
        """The services the old proxy served by Swarm tasks when it left the overlay (its proxy-overlay record)."""
        from . import journal

        recs = [x for x in journal.read(self.rid) if x.get("step") == Step.PROXY_OVERLAY and x.get("service") == service
                and x.get("action") == "left"]
        return list(recs[-1].get("served_by_tasks") or []) if recs else []

    def _off_overlay(self, r: ServiceResult, old: Any, stop: bool) -> bool:
        """Before a stop-first swap renames the old proxy aside: stop it and take it off fr-proxy, if it is on it.

        Docker refuses to rename a running container attached to a swarm overlay ("could not add service state
        for endpoint … on rename"). Stopped, the proxy serves nothing, so leaving the overlay loses nothing; the
        journal says it was on it (restore joins it again) and which services it served by their Swarm tasks.
        Returns whether the caller still has to stop it.
        """
        net = proxytasks.SWARM_NETWORK
        if not stop or net not in ((old.attrs.get("NetworkSettings") or {}).get("Networks") or {}):
            return stop
        try:
            served = sorted(be.removeprefix("be_") for be, slots in proxy.Runtime().servers().items()
                            if any(proxytasks.is_task(n) and s.up for n, s in slots.items()))
        except proxy.ProxyError:
            served = []  # its runtime API does not answer: it serves nothing through it either
        self.j(Step.PROXY_OVERLAY, r.service, action="left", container=old.id, network=net, served_by_tasks=served)
        self._stop_old(r, old)
        try:
            settled_retry(lambda: self.client.engine.call("POST", f"/networks/{net}/disconnect",
                                                          body={"Container": old.id, "Force": True}))
        except DockerError as exc:  # a stopped container is renamed whatever networks it is on: said, not fatal
            self.j(Step.PROXY_OVERLAY, r.service, action="not-left", container=old.id, error=failure_text(exc))
        old.reload()
        return False

    def _rejoin(self, r: ServiceResult, kept: Any) -> None:
        """A restored proxy that left fr-proxy to be set aside joins it again (after its rename back and start)."""
        from . import journal

        if not any(x.get("step") == Step.PROXY_OVERLAY and x.get("service") == r.service and x.get("action") == "left"
                   and x.get("container") == r.old_container for x in journal.read(self.rid)):
            return
        said = attach(self.client, kept)
        self.j(Step.PROXY_OVERLAY, r.service, action="rejoined", container=kept.id, overlay=said)
        if said.startswith(("refused", "not joined")):
            raise proxy.ProxyError(f"the restored proxy could not join {proxytasks.SWARM_NETWORK} again: {said}")

    def _unserve(self, r: ServiceResult, h: dict, start_first: bool) -> None:
        """Stop-first behind the proxy: no server for the service from the old container's stop until a switch.

        Docker may give the stopped container's address to the new one, and a slot left pointing at it
        then sends clients to a release that has not passed its gate (found by an exploratory run: 2,894
        answers from a degraded release during its 20 s gate). Stop-first has its downtime anyway: the
        proxy answers 503 in it. The switch after the gate, or the restore's switch back, makes a slot
        ready again (recovery too). Advisory: a proxy that cannot be told is one that serves nothing.
        """
        if start_first or not h.get("proxied"):
            return
        try:
            rt = proxy.Runtime()
            live = [s.name for s in rt.slots(r.service).values() if s.live]
            rt.set_state(r.service, live, "maint")
            self.j(Step.SWITCH, r.service, to="maintenance", servers=live)
        except Exception as exc:  # noqa: BLE001 - see above
            self.j(Step.SWITCH, r.service, to="maintenance", error=failure_text(exc))

    def _switch_to(self, r: ServiceResult, c, h: dict, drain_s: float, settle: bool = True) -> dict:
        """Point the host's proxy at `c` (the only ready server of the service's backend), drain the other, retire it.

        `settle`: the servers left keep their requests in flight until they end (at most IDLE_WAIT_S, after
        any `drain_s`), so the container behind them can be stopped without cutting one; False where that
        container is already stopped (a stop-first swap). Raises ProxyError when the proxy does not confirm:
        the caller restores, and the restore switches back before it removes anything.
        """
        service = r.service
        addr, port = self._address(c, h), int(h["port"])
        if not addr:
            raise proxy.ProxyError(f"{service}'s container has no address on the proxy network {h.get('network')}")
        self.j(Step.SWITCH, service, container=c.id, to=f"{addr}:{port}")
        rt = proxy.Runtime()
        done = rt.point(service, addr, port)
        self.j(Step.SWITCHED, service, container=c.id, **done)
        self.hit(Step.SWITCHED, service)
        if done["switched"] and drain_s:
            self.j(Step.DRAIN, service, seconds=drain_s)
            time.sleep(drain_s)
        if settle:
            # Every slot but the one now served: also one a killed earlier attempt left draining (then `point`
            # finds nothing to switch). Advisory: an unreadable proxy or a request still running at the bound is
            # said in the journal, and the swap goes on as it would have.
            left = [n for n in proxy.SLOTS if n != done["to"]]
            done["idle"] = rt.wait_idle(service, left, IDLE_WAIT_S)
            if done["idle"] is not True:
                self.j(Step.DRAIN, service, seconds=IDLE_WAIT_S, idle=done["idle"])
        rt.retire(service, addr, port)
        return done


def attach(client: Any, c: Any) -> str:
    """Join the proxy's container `c` to the overlay fr-proxy, if this host is a swarm node and it is not on it yet.

    The Engine API's network connect: the proxy keeps running, no restart. Said, not raised: a host outside the
    swarm has nothing to join, and its proxy serves slots a/b as before. A network that is not the one
    `fab swarm.form` makes, or a container that is not the proxy, is refused (agent/host_checks.py).
    """
    from .host_checks import swarm_network_problem

    net = proxytasks.SWARM_NETWORK
    if c is None:
        return "no proxy container"
    if net in ((c.attrs.get("NetworkSettings") or {}).get("Networks") or {}):
        return f"on {net}"
    try:
        if ((client.engine.get("/info") or {}).get("Swarm") or {}).get("LocalNodeState") != "active":
            return "not a swarm node: nothing to join"
        seen = client.engine.get(f"/networks/{net}")
    except DockerError:
        seen = None  # a worker lists a swarm network only once something on it runs there
    problem = swarm_network_problem(c.attrs, seen) if seen else None
    if problem:
        return f"refused: {problem}"
    try:
        client.engine.call("POST", f"/networks/{net}/connect", body={"Container": c.id})
        problem = swarm_network_problem(c.attrs, client.engine.get(f"/networks/{net}") or {})
    except DockerError as exc:
        return f"not joined: {exc}"
    if problem:
        try:
            client.engine.call("POST", f"/networks/{net}/disconnect", body={"Container": c.id, "Force": True})
        except DockerError as exc:  # said, not raised, as every other end of this function
            return f"refused: {problem}; and it could not be taken off {net} again ({exc}): docker network disconnect {net}"
        return f"refused and left again: {problem}"
    c.reload()
    return f"joined {net}"
