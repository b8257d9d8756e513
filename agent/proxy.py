"""The host's reverse proxy: HAProxy, its configuration (pure) and its runtime API (a unix socket).

Why HAProxy and not Caddy: its runtime API changes a backend's address and state in place
(`set server ... addr`, `state ready|drain|maint`), several commands in one line, with no
reload at all, and `drain` is a first-class server state (no new requests, in-flight ones
finish). Caddy's admin API replaces a JSON config subtree, which re-provisions the route.

Each service behind the proxy gets a frontend on its public port and a backend with two
server slots, `a` and `b`. One slot is live (ready), the other is in maintenance. A swap
points the idle slot at the new container's address, makes it ready and drains the live one,
in one command line: there is never a moment without a ready server. The persisted config
(in the proxy container's env, so it is journalled and reverted like any configuration)
names slot `a` by container name, so a restarted proxy finds whatever runs as the service.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from . import contract, paths, proxytasks
from .proxy_state import Slot, parse_servers_state, parse_sessions
from .proxytasks import Tasks

SOCKET_IN_CONTAINER = "/run/fleetroll-proxy"
SOCKET_NAME = "admin.sock"
CONFIG_ENV = "FLEETROLL_PROXY_CONFIG"
SLOTS = ("a", "b")


class ProxyError(Exception):
    pass


@dataclass(frozen=True)
class Route:
    service: str
    listen: str  # [ADDRESS:]PORT
    port: int  # the container port
    tasks: Tasks | None = None  # in a fleet that uses Swarm: its Swarm tasks too (agent/proxytasks.py)


def plain_name(service: str) -> str:
    """`service`, if it is a plain name; else ProxyError. The agent does not trust the controller: a
    name goes into a configuration line or a runtime-API command line only once it is checked here
    (no whitespace, ';', '#', quote or newline can be in one)."""
    problem = contract.name_problem("service", service)
    if problem:
        raise ProxyError(f"{problem}; refused: it would be written into the proxy's configuration or commands")
    return service


def _port(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) and not (isinstance(value, str) and value.isdigit()):
        raise ProxyError(f"{what} {value!r} is not a port number")
    port = int(value)
    if not 1 <= port <= 65535:
        raise ProxyError(f"{what} {port} is not a port number (1-65535)")
    return port


def _address(addr: str, what: str) -> str:
    """An IP address as HAProxy takes it (IPv6 in brackets for a bind), or ProxyError."""
    try:
        ip = ipaddress.ip_address(addr.strip("[]") if addr.startswith("[") and addr.endswith("]") else addr)
    except ValueError:
        raise ProxyError(f"{what} {addr!r} is not an IP address") from None
    return str(ip)


def _bind(listen: str) -> str:
    """`[ADDRESS:]PORT` as a bind argument, checked."""
    addr, _, port = str(listen).rpartition(":")
    p = _port(port, f"proxy listen port of {listen!r}")
    if not addr:
        return f":{p}"
    ip = _address(addr, f"proxy listen address of {listen!r}")
    return f"[{ip}]:{p}" if ":" in ip else f"{ip}:{p}"


def backend(service: str) -> str:
    return f"be_{plain_name(service)}"


def render(routes: list[Route], health_port: int) -> str:
    """haproxy.cfg for one host (pure). Server-side connections close after each response
    (http-server-close), so every request is balanced afresh and a drained server gets none.

    Built from checked fields only (plain names, IP addresses, port numbers): ProxyError otherwise.
    A route with `tasks` adds Docker's DNS as a resolver and its Swarm tasks to its backend
    (agent/proxytasks.py); without any, the text is what it was before Swarm existed.
    """
    health_port = _port(health_port, "proxy health port")
    swarm = any(r.tasks for r in routes)
    out = [
        "global",
        f"    stats socket {SOCKET_IN_CONTAINER}/{SOCKET_NAME} mode 666 level admin",
        "    stats timeout 30s",
        "    maxconn 4096",
        "",
        *([*proxytasks.RESOLVERS, ""] if swarm else []),
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout http-request 10s",
        "    option http-server-close",
        "    retries 3",
        "    option redispatch 1",
        *([proxytasks.RETRY_ON] if swarm else []),
        "",
        "frontend fleetroll-health",
        f"    bind :{health_port}",
        '    http-request return status 200 content-type application/json string "{\\"status\\":\\"ok\\"}" if { path /health }',
        "    http-request return status 404",
    ]
    for r in routes:
        name, bind, port = plain_name(r.service), _bind(r.listen), _port(r.port, f"container port of {r.service}")
        try:
            tasks = proxytasks.checked(name, r.tasks) if r.tasks else None
        except proxytasks.TasksError as exc:
            raise ProxyError(str(exc)) from None
        out += [
            "",
            f"frontend fe_{name}",
            f"    bind {bind}",
            f"    default_backend {backend(name)}",
            "",
            f"backend {backend(name)}",
            *(proxytasks.health_lines(tasks.path) if tasks else []),
            f"    server a {name}:{port} init-addr libc,127.0.0.1",
            f"    server b 127.0.0.1:{port} weight 0",  # idle: never chosen until a switch gives it weight
            *([proxytasks.template_line(name, port, tasks)] if tasks else []),
        ]
    return "\n".join(out) + "\n"


# Every line render() writes, as a strict grammar: a configuration is accepted on the host only
# if each of its lines matches one of these, and re-rendering what it declares gives it back.
_NAME = contract.NAME_RE.pattern
_PORT = r"[0-9]{1,5}"
_IP = r"(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|\[[0-9a-f:.]+\])"
CONFIG_LINES = [re.compile(x) for x in (
    r"", r"global", r"defaults",
    rf"    stats socket {re.escape(SOCKET_IN_CONTAINER)}/{re.escape(SOCKET_NAME)} mode 666 level admin",
    r"    stats timeout 30s", r"    maxconn 4096", r"    mode http",
    r"    timeout (?:connect|client|server|http-request) [0-9]{1,3}s",
    r"    option http-server-close", r"    retries 3", r"    option redispatch 1",
    r"frontend fleetroll-health",
    rf"    bind (?:{_IP})?:{_PORT}",
    r'    http-request return status 200 content-type application/json string "\{\\"status\\":\\"ok\\"\}" if \{ path /health \}',
    r"    http-request return status 404",
    rf"frontend fe_{_NAME}",
    rf"    default_backend be_{_NAME}",
    rf"backend be_{_NAME}",
    rf"    server a {_NAME}:{_PORT} init-addr libc,127\.0\.0\.1",
    rf"    server b 127\.0\.0\.1:{_PORT} weight 0",
)] + proxytasks.GRAMMAR


def config_problems(text: str) -> list[str]:
    """Why a proxy configuration (as the controller sent it) is not one render() makes; [] if it is.

    Each line must match the grammar above, and the routes it declares, rendered again, must give
    the very same text (so nothing is repeated, reordered or added between the lines).
    """
    lines = str(text).split("\n")
    bad = [f"line {i + 1}: {ln[:80]!r}" for i, ln in enumerate(lines[:-1] if lines[-1:] == [""] else lines)
           if not any(g.fullmatch(ln) for g in CONFIG_LINES)]
    if bad:
        return [f"the proxy configuration has lines render() never writes: {'; '.join(bad[:3])}"]
    health = re.search(rf"^frontend fleetroll-health\n    bind :({_PORT})$", text, re.M)
    rows = text.split("\n")
    routes = []
    for i, ln in enumerate(rows):
        m = re.fullmatch(rf"frontend fe_({_NAME})", ln)
        if not m:
            continue
        bind = re.fullmatch(r"    bind (\S+)", rows[i + 1] if i + 1 < len(rows) else "")
        be = list(itertools.takewhile(bool, rows[i + 5:]))  # the backend's lines, after its own header
        server = next((s for x in be if (s := re.fullmatch(rf"    server a \S+:({_PORT}) .*", x))), None)
        if not (bind and server):
            return [f"the proxy configuration's frontend fe_{m[1]} is not followed by its bind and backend"]
        routes.append(Route(m[1], bind[1].removeprefix(":"), int(server[1]), proxytasks.parse_block(m[1], be)))
    if len({r.service for r in routes}) != len(routes):
        return ["the proxy configuration names one service twice"]
    try:
        again = render(routes, int(health[1])) if health else None
    except ProxyError as exc:
        return [f"the proxy configuration does not check: {exc}"]
    if again != text:
        return ["the proxy configuration is not one render() makes (lines repeated, reordered or added)"]
    return []


def runtime_dir(create: bool = True) -> Path:
    """Host side of the proxy's socket directory. The proxy (uid 10001) must create its socket
    here, so the directory is 0777; the state directory above it (2770) keeps other users out."""
    d = paths.state_dir() / "proxy-run"
    if create:
        d.mkdir(exist_ok=True)
        if d.stat().st_mode & 0o777 != 0o777:
            d.chmod(0o777)
    return d


def host_spec(spec: dict, create: bool = True) -> dict:
    """The proxy's own container spec as this host runs it: with its runtime socket directory mounted."""
    if spec.get("role") != "proxy":
        return spec
    bind = f"{runtime_dir(create)}:{SOCKET_IN_CONTAINER}:rw"
    return {**spec, "volumes": [*(spec.get("volumes") or []), bind]}


def container_address(attrs: dict, network: str) -> str:
    """A container's address on `network`, from `docker inspect` ("" when it has none there)."""
    nets = ((attrs.get("NetworkSettings") or {}).get("Networks") or {})
    return (nets.get(network) or {}).get("IPAddress") or ""


def socket_path() -> Path:
    return paths.state_dir() / "proxy-run" / SOCKET_NAME


def _known_slots(slots: dict[str, Slot]) -> dict[str, Slot]:
    """Only the slots render() made (a and b): a server name goes into a command line only if it is one."""
    return {k: v for k, v in slots.items() if k in SLOTS}


class Runtime:
    """HAProxy's runtime API over its unix socket (one command line per connection)."""

    def __init__(self, path: Path | None = None, timeout: float = 5.0):
        self.path = path or socket_path()
        self.timeout = timeout

    def cmd(self, line: str) -> str:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(str(self.path))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        except OSError as exc:
            raise ProxyError(f"the proxy's runtime API at {self.path} did not answer ({exc}); is the proxy's container"
                             " running?") from None
        finally:
            s.close()
        return b"".join(chunks).decode(errors="replace")

    def servers(self) -> dict[str, dict[str, Slot]]:
        return parse_servers_state(self.cmd("show servers state"))

    def wait_idle(self, service: str, servers: list[str], within: float) -> bool | str:
        """Until none of `servers` has a request in flight (scur), at most `within` s: True, False, or why unknown."""
        be, end, timeout = backend(service), time.monotonic() + within, self.timeout
        try:
            while servers:
                self.timeout = max(0.1, min(timeout, end - time.monotonic()))
                busy = [n for n, cur in parse_sessions(self.cmd("show stat"), be).items() if n in servers and cur]
                if not busy or time.monotonic() >= end:
                    return not busy
                time.sleep(0.02)
        except ProxyError as exc:
            return str(exc)[:200]
        finally:
            self.timeout = timeout
        return True

    def slots(self, service: str) -> dict[str, Slot]:
        be = backend(service)
        got = parse_servers_state(self.cmd(f"show servers state {be}")).get(be)
        if not got:
            raise ProxyError(f"the proxy has no backend {be}: it was started before {service} was put behind it;"
                             " roll out the proxy's phase first (its configuration lists the services behind it)")
        return got

    def point(self, service: str, addr: str, port: int) -> dict:
        """Make `addr:port` the only ready server of the service's backend; drain the others.

        One command line: the idle slot gets the address and turns ready before the live one
        drains. Read back afterwards — what the proxy says, not what was sent, is the answer.
        """
        be = backend(service)
        addr, port = _address(addr, f"address of {service}'s new server"), _port(port, f"port of {service}'s new server")
        slots = _known_slots(self.slots(service))
        live = [s for s in slots.values() if s.live]
        if any(s.addr == addr and s.port == port for s in live) and len(live) == 1:
            return {"switched": False, "to": live[0].name, "from": [], "switch_ms": 0.0}
        to = next((s for s in slots.values() if s.live and s.addr == addr and s.port == port), None) \
            or next((s for s in slots.values() if not s.live), None)
        if to is None:  # both ready (a half-done earlier switch): reuse the one not holding another address
            to = slots[SLOTS[1]]
        others = [s.name for s in live if s.name != to.name]
        cmds = [f"set server {be}/{to.name} addr {addr} port {port}", f"set server {be}/{to.name} state ready",
                f"set weight {be}/{to.name} 1"]
        cmds += [f"set server {be}/{o} state drain" for o in others]
        t0 = time.perf_counter()
        said = self.cmd("; ".join(cmds))
        ms = round((time.perf_counter() - t0) * 1000, 2)
        after = self.slots(service)
        now = after.get(to.name)
        if now is None or not now.live or now.addr != addr or now.port != port or any(after[o].live for o in others):
            raise ProxyError(f"the proxy did not switch {service} to {addr}:{port} (it answered: {said.strip()[:200]!r});"
                             " the earlier server still serves")
        return {"switched": True, "to": to.name, "from": others, "switch_ms": ms}

    def retire(self, service: str, keep_addr: str, keep_port: int) -> None:
        """After the drain: every slot but the one at keep_addr:keep_port goes to maintenance."""
        be = backend(service)
        gone = [s.name for s in _known_slots(self.slots(service)).values()
                if not (s.addr == keep_addr and s.port == keep_port and s.live) and s.state not in ("maint", "idle")]
        if gone:
            self.cmd("; ".join(f"set server {be}/{n} state maint" for n in gone))

    def set_state(self, service: str, servers: list[str], state: str) -> None:
        """Put the named servers of the service's backend in `state` (ready, drain or maint), in one command line.

        Only names render() made (a, b, taskN) and only those three states go into the command line.
        """
        if state not in ("ready", "drain", "maint"):
            raise ProxyError(f"server state {state!r}: ready, drain or maint")
        be = backend(service)
        names = [n for n in servers if n in SLOTS or proxytasks.is_task(n)]
        if names:
            self.cmd("; ".join(f"set server {be}/{n} state {state}" for n in names))

    def view(self) -> dict[str, dict]:
        """{service: {"serving": [addr:port, ...], "slots": {slot: state@addr:port}}} for fab status."""
        out = {}
        for be, slots in self.servers().items():
            if not be.startswith("be_"):
                continue
            out[be[3:]] = {"serving": [f"{s.addr}:{s.port}" for s in slots.values()
                                       if (s.up if proxytasks.is_task(s.name) else s.live)],
                           "slots": {s.name: f"{s.state}@{s.addr}:{s.port}" for s in slots.values()}}
        return out
