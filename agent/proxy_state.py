"""What HAProxy's runtime API says, parsed (pure): each server's state and address, and its requests in flight.

Kept apart from agent/proxy.py (the configuration and the socket) so both stay small; proxy.py re-exports
these names.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    def up(self) -> bool:
        """A checked server (a Swarm task's slot) that serves: enabled, resolved, and its health check passing."""
        return self.admin == 0 and self.op == 2 and self.addr not in ("", "-", "0.0.0.0")

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


def parse_sessions(text: str, be: str) -> dict[str, int]:
    """`show stat` (CSV) -> {server: sessions in flight (scur)} of backend `be` (pure)."""
    out: dict[str, int] = {}
    header: list[str] = []
    for line in text.splitlines():
        if line.startswith("# "):
            header = line[2:].split(",")
            continue
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == be and row.get("svname") not in (None, "BACKEND", "FRONTEND") and (row.get("scur") or "0").isdigit():
            out[row["svname"]] = int(row.get("scur") or 0)
    return out
