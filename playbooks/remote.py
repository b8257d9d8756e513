"""Everything a host sends back is untrusted text: parse it within limits, strip what can drive a terminal.

Agent answers carry strings that come from containers (log lines), the collector
(reported fields), Docker and the registry (error messages). An ESC or BEL in any of them
would reach the operator's terminal when printed, and the ledger when recorded; a deeply
nested or enormous answer would exhaust the controller. Every line read from an agent
goes through `parse_line` before anything else looks at it. Pure: tested without hosts.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_LINE = 8 << 20  # bytes of one answer line
MAX_EVENT = 64 << 10  # bytes of one progress event kept (a bigger one is shown, never stored)
MAX_EVENTS = 2000  # progress events kept per call (the newest): a host that streams forever cannot fill the controller
MAX_STDERR = 1 << 20  # bytes of an agent's stderr read back
MAX_DEPTH = 32
# C0 controls except tab and newline, DEL, and the C1 range: ESC sequences, BEL, CR overprinting...
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")


class BadAnswer(ValueError):
    pass


def clean_text(s: str) -> str:
    return _CONTROL.sub("", s)


def clean(obj: Any, depth: int = 0) -> Any:
    """The same structure with every string (keys too) stripped of control characters; too deep is refused."""
    if depth > MAX_DEPTH:
        raise BadAnswer(f"answer nested deeper than {MAX_DEPTH} levels")
    if isinstance(obj, str):
        return clean_text(obj)
    if isinstance(obj, dict):
        return {clean_text(str(k)): clean(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clean(v, depth + 1) for v in obj]
    return obj


class Events(list):
    """A call's progress events, bounded: the newest MAX_EVENTS, each at most MAX_EVENT bytes (a longer one is dropped)."""

    def keep(self, obj: dict, size: int) -> None:
        if size > MAX_EVENT:
            return
        self.append(obj)
        if len(self) > MAX_EVENTS:
            del self[: len(self) - MAX_EVENTS]


def parse_line(raw: bytes) -> Any:
    """One JSON line from an agent, within limits and cleaned; BadAnswer if it is not one."""
    if len(raw) > MAX_LINE:
        raise BadAnswer(f"answer line of {len(raw)} bytes is over the {MAX_LINE}-byte limit")
    try:
        obj = json.loads(raw)
    except RecursionError:
        raise BadAnswer("answer nested too deeply to parse") from None
    except ValueError as exc:
        raise BadAnswer(f"not JSON: {exc}") from None
    return clean(obj)
