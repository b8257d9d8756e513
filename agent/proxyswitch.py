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
from .vocabulary import Step


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
        not resolve in time starts at no server). A failure here fails the proxy's swap.
        """
        joined = attach(self.client, self._get(service))
        rt = proxy.Runtime()
        pointed = {}
        for be, slots in rt.servers().items():
            name = be.removeprefix("be_")
            c = self._get(name) if be.startswith("be_") else None
            if c is None or not (c.attrs.get("State") or {}).get("Running"):
                if be.startswith("be_") and any(proxytasks.is_task(s) for s in slots):
                    rt.set_state(name, list(proxy.SLOTS), "maint")  # served by its Swarm tasks alone: no slot at nothing
                    pointed[name] = "swarm tasks"
                continue
            addr = proxy.container_address(c.attrs, container_args.network_of(c.attrs.get("HostConfig") or {}))
            port = next(iter(slots.values())).port
            if addr:
                pointed[name] = rt.point(name, addr, port)
                rt.retire(name, addr, port)
        self.j(Step.PROXY_BACKENDS, service, pointed={k: v if isinstance(v, str) else v["to"] for k, v in pointed.items()},
               overlay=joined)

    def _switch_to(self, r: ServiceResult, c, h: dict, drain_s: float) -> dict:
        """Point the host's proxy at `c` (the only ready server of the service's backend), drain the other, retire it.

        Raises ProxyError when the proxy does not confirm: the caller restores, and the
        restore switches back before it removes anything.
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
        rt.retire(service, addr, port)
        return done


def attach(client: Any, c: Any) -> str:
    """Join the proxy's container `c` to the overlay fr-proxy, if this host is a swarm node and it is not on it yet.

    The Engine API's network connect: the proxy keeps running, no restart. Said, not raised: a host outside the
    swarm has nothing to join, and its proxy serves slots a/b as before. A network that is not the one
    `fab swarm.form` makes, or a container that is not the proxy, is refused (agent/host_checks.py).
    """
    from .docker_errors import DockerError
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
        client.engine.call("POST", f"/networks/{net}/disconnect", body={"Container": c.id, "Force": True})
        return f"refused and left again: {problem}"
    c.reload()
    return f"joined {net}"
