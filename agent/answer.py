"""The one shape of every agent answer (Ansible's module result: ok, changed, msg, data), versioned by PROTOCOL.

uptime_s is the agent's own clock: seconds since this process loaded its modules. The
controller sees only exec -> answer; with this it tells the host's login shell and Python
start apart from the agent's work (the controller's timings module).
"""

from __future__ import annotations

import os
import time

from . import PROTOCOL

TYPE_CHECKING = False  # importing typing costs every agent call ~2.5 ms; Any is only ever an annotation here
if TYPE_CHECKING:
    from typing import Any

_LOADED = time.monotonic()  # imported by __main__ before it reads the request: the agent's start, as near as it sees it


def answer(op: str, ok: bool, msg: str = "", data: Any = None, changed: bool = False) -> dict:
    """`repaired`, in the first answer only: the unpacked tree this process runs from had failed its check (a file
    changed, damaged or added since the unpack) and the bootstrap unpacked it again from the verified archive."""
    repaired = os.environ.pop("FLEETROLL_AGENT_REPAIRED", "")
    return {"protocol": PROTOCOL, "op": op, "ok": ok, "changed": changed, "msg": msg, "data": data or {},
            "uptime_s": round(time.monotonic() - _LOADED, 4), **({"repaired": repaired} if repaired else {})}
