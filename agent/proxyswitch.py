"""Pointing the host's proxy: at a new container after its gate, back at the old one on a restore, at every backend for a new proxy.

The proxy's own state is read back after each switch: a proxy that does not confirm is an
error (the caller restores), never a success.
"""

from __future__ import annotations

import time
from typing import Any

from . import container_args, proxy
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
        rt = proxy.Runtime()
        pointed = {}
        for be, slots in rt.servers().items():
            name = be.removeprefix("be_")
            c = self._get(name) if be.startswith("be_") else None
            if c is None or not (c.attrs.get("State") or {}).get("Running"):
                continue
            addr = proxy.container_address(c.attrs, container_args.network_of(c.attrs.get("HostConfig") or {}))
            port = next(iter(slots.values())).port
            if addr:
                pointed[name] = rt.point(name, addr, port)
                rt.retire(name, addr, port)
        self.j(Step.PROXY_BACKENDS, service, pointed={k: v["to"] for k, v in pointed.items()})

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
