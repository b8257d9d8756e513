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

import socket
import time
from dataclasses import dataclass
from pathlib import Path

from . import paths

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


def backend(service: str) -> str:
    return f"be_{service}"


def render(routes: list[Route], health_port: int) -> str:
    """haproxy.cfg for one host (pure). Server-side connections close after each response
    (http-server-close), so every request is balanced afresh and a drained server gets none."""
    out = [
        "global",
        f"    stats socket {SOCKET_IN_CONTAINER}/{SOCKET_NAME} mode 666 level admin",
        "    stats timeout 30s",
        "    maxconn 4096",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout http-request 10s",
        "    option http-server-close",
        "    retries 3",
        "    option redispatch 1",
        "",
        "frontend fleetroll-health",
        f"    bind :{health_port}",
        '    http-request return status 200 content-type application/json string "{\\"status\\":\\"ok\\"}" if { path /health }',
        "    http-request return status 404",
    ]
    for r in routes:
        addr, _, port = r.listen.rpartition(":")
        out += [
            "",
            f"frontend fe_{r.service}",
            f"    bind {addr}:{port}",
            f"    default_backend {backend(r.service)}",
            "",
            f"backend {backend(r.service)}",
            f"    server a {r.service}:{r.port} init-addr libc,127.0.0.1",
            f"    server b 127.0.0.1:{r.port} weight 0",  # idle: never chosen until a switch gives it weight
        ]
    return "\n".join(out) + "\n"


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


@dataclass
class Slot:
    name: str
    addr: str
    port: int
    admin: int  # HAProxy's srv_admin_state bits: 0 ready, 0x01/0x04/0x20 maintenance, 0x08/0x10 drain
    op: int  # srv_op_state: 0 stopped, 2 running
    weight: int = 1  # srv_uweight: the idle slot starts at 0 (never chosen)

    @property
    def live(self) -> bool:
        return self.admin == 0 and self.weight > 0

    @property
    def state(self) -> str:
        if self.admin == 0:
            return "ready" if self.weight > 0 else "idle"
        return "drain" if self.admin & 0x18 and not self.admin & 0x25 else "maint"


def parse_servers_state(text: str) -> dict[str, dict[str, Slot]]:
    """`show servers state` -> {backend: {slot: Slot}} (pure)."""
    out: dict[str, dict[str, Slot]] = {}
    header: list[str] = []
    for line in text.splitlines():
        if line.startswith("# "):
            header = line[2:].split()
            continue
        parts = line.split()
        if not header or len(parts) < len(header) - 8:
            continue
        row = dict(zip(header, parts, strict=False))
        try:
            out.setdefault(row["be_name"], {})[row["srv_name"]] = Slot(
                row["srv_name"], row["srv_addr"], int(row.get("srv_port", 0)), int(row["srv_admin_state"]),
                int(row["srv_op_state"]), int(row.get("srv_uweight", 1)))
        except (KeyError, ValueError):
            continue
    return out


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
            raise ProxyError(f"the proxy's runtime API at {self.path} did not answer ({exc}); is the proxy running?"
                             " (fab status)") from None
        finally:
            s.close()
        return b"".join(chunks).decode(errors="replace")

    def servers(self) -> dict[str, dict[str, Slot]]:
        return parse_servers_state(self.cmd("show servers state"))

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
        slots = self.slots(service)
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
        gone = [s.name for s in self.slots(service).values()
                if not (s.addr == keep_addr and s.port == keep_port and s.live) and s.state not in ("maint", "idle")]
        if gone:
            self.cmd("; ".join(f"set server {be}/{n} state maint" for n in gone))

    def view(self) -> dict[str, dict]:
        """{service: {"serving": [addr:port, ...], "slots": {slot: state@addr:port}}} for fab status."""
        out = {}
        for be, slots in self.servers().items():
            if not be.startswith("be_"):
                continue
            out[be[3:]] = {"serving": [f"{s.addr}:{s.port}" for s in slots.values() if s.live],
                           "slots": {s.name: f"{s.state}@{s.addr}:{s.port}" for s in slots.values()}}
        return out
