"""The one shape of every agent answer (Ansible's module result: ok, changed, msg, data), versioned by PROTOCOL."""

from __future__ import annotations

from typing import Any

from . import PROTOCOL


def answer(op: str, ok: bool, msg: str = "", data: Any = None, changed: bool = False) -> dict:
    return {"protocol": PROTOCOL, "op": op, "ok": ok, "changed": changed, "msg": msg, "data": data or {}}
