"""The reverse proxy on a swarm phase: a per-node HAProxy reaching the tasks behind it by DNS over a dnsrr overlay. Pure.

Why this shape. The kernel fleetroll's hosts run here has no IPVS, so Swarm's routing mesh and VIPs do not
work; a service behind the proxy therefore publishes no port at all, joins one overlay network with the
proxy (`NETWORK`, made by `fab swarm.form`), and is found by Docker's DNS at `tasks.<stack>_<service>`,
which lists a task only once its healthcheck passes and drops it before the task is stopped. HAProxy
resolves that name itself (its `resolvers` section on Docker's 127.0.0.11, `server-template` slots that
start empty with `init-addr none`), checks each task, and retries a request that met a task going away
on another one (`retry-on`, `option redispatch`). Nothing switches anything during an update: Swarm starts
the new task beside the old one (start-first: no host port to fight over), DNS adds the new and removes
the old, and HAProxy follows.

The configuration is rendered here from the inventory, from checked tokens only, with the SSH push's own
checks (agent/proxy.py: plain names, ports, bind addresses), never a second set: a name reaching HAProxy's
configuration unchecked was a past security finding. It reaches the proxy's task in the environment
variable the fleetroll-proxy image already reads (FLEETROLL_PROXY_CONFIG, families/fleetroll-proxy/
fleetroll-proxy-start), so the image is the SSH push's, unchanged; its content hash is a service label.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from agent import proxy as ssh_proxy
from agent import proxytasks

from ..inventory import Inventory

# The overlay the proxy and the services behind it share (not the SSH push's bridge `fleetroll`); attachable, so the
# SSH push's proxy container can join it too and serve a phase's Swarm tasks during and after a move (handover.py).
NETWORK = proxytasks.SWARM_NETWORK
NETWORK_LABEL = "=".join(proxytasks.SWARM_NETWORK_LABEL)
CONFIG_HASH_LABEL = "io.fleetroll.proxy-config"
DOCKER_DNS = proxytasks.DOCKER_DNS
DNS_NAME_RE = proxytasks.DNS_LABEL_RE  # no '.': a dot would split tasks.<stack>_<service> into labels
PATH_RE = proxytasks.PATH_RE  # the schema's rule for health.path, checked again before HAProxy sees it


class ProxyRenderError(Exception):
    """The inventory says something about the proxy that cannot be written into HAProxy's configuration safely."""


@dataclass(frozen=True)
class Backend:
    """One service behind the proxy, as the proxy reaches it on Swarm."""

    service: str
    stack: str  # the stack of the swarm phase that runs it (fr-<phase>)
    listen: int  # the host port the proxy publishes for it (host mode: Swarm cannot bind one address)
    port: int  # the container port its tasks answer on
    health_path: str
    slots: int  # server-template slots: every task it can have at once, old and new (start-first)

    @property
    def dns(self) -> str:
        return f"tasks.{self.stack}_{self.service}"


def _dns_part(kind: str, name: str) -> str:
    """A phase or service name, checked as the SSH push checks it, and fit for a DNS label; else ProxyRenderError."""
    try:
        ssh_proxy.plain_name(name)
    except ssh_proxy.ProxyError as exc:
        raise ProxyRenderError(f"{kind} {name!r}: {exc}") from None
    if not DNS_NAME_RE.fullmatch(name):
        raise ProxyRenderError(f"{kind} name {name!r} has a '.', which would split the DNS name the proxy resolves"
                               f" (tasks.<stack>_<service>); fix: rename it without '.'")
    return name


def swarm_phase_of(inv: Inventory, service: str) -> str | None:
    """The swarm phase that runs `service` (its first), or None when no swarm phase does."""
    return next((p.name for p in inv.phases if service in p.services and inv.fleet.engine_of(p) == "swarm"), None)


def backends(inv: Inventory) -> list[Backend]:
    """Every service behind the proxy, each on the swarm phase that runs it (inventory order); ProxyRenderError if one is not."""
    from .render import STACK_PREFIX

    fleet, out = inv.fleet, []
    for name, svc in fleet.services.items():
        if svc.proxy is None:
            continue
        phase = swarm_phase_of(inv, name)
        if phase is None:
            raise ProxyRenderError(f"services.{name} is behind the proxy {fleet.reverse_proxy.service!r}, which runs on"
                                   f" Swarm, but no swarm phase runs {name}: the proxy on Swarm reaches only swarm tasks;"
                                   " fix: run both on engine: swarm, or both on engine: ssh")
        if svc.proxy.address:
            raise ProxyRenderError(f"services.{name}.proxy.listen: {svc.proxy.listen!r} binds one address; Swarm publishes a"
                                   " host port on every address of the node; fix: listen: \"PORT\"")
        if not PATH_RE.fullmatch(svc.health.path):
            raise ProxyRenderError(f"services.{name}.health.path {svc.health.path!r} is not a plain URL path")
        try:
            listen = ssh_proxy._port(svc.proxy.listen_port, f"proxy listen port of {name}")  # the SSH push's own check
            port = ssh_proxy._port(svc.proxy.port, f"container port of {name}")
        except ssh_proxy.ProxyError as exc:
            raise ProxyRenderError(str(exc)) from None
        tasks = svc.replicas or len(fleet.hosts_of(name))
        out.append(Backend(_dns_part("service", name), _dns_part("phase", STACK_PREFIX + phase), listen, port,
                           svc.health.path, proxytasks.slots_for(tasks)))
    return out


def config(backs: list[Backend], health_port: int) -> str:
    """haproxy.cfg for every node's proxy (pure; one text for all of them: each reaches every task, wherever it runs).

    Server-side connections close after each response (http-server-close), so each request is balanced on
    the tasks DNS lists now. `retry-on conn-failure empty-response response-timeout` with `option redispatch 1`
    sends a request that met a stopping task to another one: only for those three, which a GET or a request
    that never reached the service can repeat safely; an answer the service gave is never replayed.
    """
    health = ssh_proxy._port(health_port, "proxy health port")
    out = [
        "global",
        "    maxconn 4096",
        "",
        *proxytasks.RESOLVERS,
        "",
        "defaults",
        "    mode http",
        "    timeout connect 1s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout http-request 10s",
        "    option http-server-close",
        "    retries 3",
        "    option redispatch 1",
        proxytasks.RETRY_ON,
        "",
        "frontend fleetroll-health",
        f"    bind :{health}",
        '    http-request return status 200 content-type application/json string "{\\"status\\":\\"ok\\"}" if { path /health }',
        "    http-request return status 404",
    ]
    for b in backs:
        be = ssh_proxy.backend(b.service)
        out += [
            "",
            f"frontend fe_{b.service}",
            f"    bind :{b.listen}",
            f"    default_backend {be}",
            "",
            f"backend {be}",
            *proxytasks.health_lines(b.health_path),
            proxytasks.template_line(b.service, b.port, proxytasks.Tasks(b.stack, b.health_path, b.slots)),
        ]
    return "\n".join(out) + "\n"


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def network_doc() -> dict:
    """The stack's view of the overlay: made by `fab swarm.form`, shared by every stack (a stack's own would be per phase)."""
    return {NETWORK: {"external": True, "name": NETWORK}}


def network_inspect() -> list[str]:
    return ["docker", "network", "inspect", "--format", "{{.Driver}} {{.Scope}}", NETWORK]


def network_attachable() -> list[str]:
    return ["docker", "network", "inspect", "--format", "{{.Attachable}}", NETWORK]


def network_create() -> list[str]:
    """The overlay, attachable: the SSH push's proxy container joins it (the agent checks it is the proxy, and only it
    joins; agent/host_checks.py) to serve a phase's Swarm tasks while the phase moves between the engines."""
    return ["docker", "network", "create", "--driver", "overlay", "--attachable", "--label", NETWORK_LABEL, NETWORK]


def network_remove() -> list[str]:
    return ["docker", "network", "rm", NETWORK]


def uses_swarm(inv: Inventory) -> bool:
    """Does the fleet use Swarm at all: a `swarm:` section, or a phase (or the inventory) on engine: swarm?

    Then the SSH push's proxy carries every proxied service's Swarm task lines from the start, so moving a
    phase between the engines never has to recreate it (its own swap closes the listen ports).
    """
    fleet = inv.fleet
    return "swarm" in fleet.model_fields_set or any(fleet.engine_of(p) == "swarm" for p in inv.phases)


def wanted(inv: Inventory) -> bool:
    """Must the overlay exist: a swarm phase runs the proxy or a service behind it, or the SSH push's proxy may join it?"""
    fleet = inv.fleet
    if fleet.reverse_proxy is not None and uses_swarm(inv):
        return True
    return any(fleet.engine_of(p) == "swarm" and (fleet.is_proxy(s) or fleet.services[s].proxy is not None)
               for p in inv.phases for s in p.services if s in fleet.services)


def phase_of(inv: Inventory, service: str) -> str | None:
    """The phase that runs `service` (its first), whichever engine: its stack name is the same on both."""
    return next((p.name for p in inv.phases if service in p.services), None)


def ssh_routes(inv: Inventory, host: str) -> list[ssh_proxy.Route]:
    """The routes of the SSH push's proxy on `host`: slots a/b each, and each service's Swarm tasks when the fleet uses
    Swarm (agent/proxytasks.py), under the stack of the phase that runs it. A fleet without Swarm gets today's routes."""
    from .render import STACK_PREFIX

    fleet, out = inv.fleet, []
    swarm = uses_swarm(inv)
    for name in fleet.proxied_on(host):
        svc = fleet.services[name]
        phase = phase_of(inv, name) if swarm else None
        tasks = (proxytasks.Tasks(STACK_PREFIX + phase, svc.health.path,
                                  proxytasks.slots_for(svc.replicas or len(fleet.hosts_of(name)))) if phase else None)
        out.append(ssh_proxy.Route(name, svc.proxy.listen, svc.proxy.port, tasks))
    return out

