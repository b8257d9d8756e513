"""Phase freezes, kept on each host (Kamal's `lock acquire -m`, per phase).

A freeze stops rollouts of one phase until an operator thaws it. It lives on the hosts,
in the state directory every operator account shares, so every controller sees it, not
only the laptop that set it. Two kinds:

- manual (`fab freeze --phase P --reason ...`): blocks every rollout of P;
- automatic, written by a host transaction that had to revert a release: it records the
  tags that failed and blocks only a rollout that would deploy one of them again, so the
  next `fab rollout` does not simply redeploy what was just rolled back; a new tag (the
  fixed release) passes, and its commit clears the automatic freeze.

Thawing removes the freeze and appends what was removed, by whom and why, to
`freezes.jsonl` beside it.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from .paths import state_dir

PHASE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _dir() -> Path:
    d = state_dir() / "freezes"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _path(phase: str) -> Path:
    if not PHASE_RE.fullmatch(phase or ""):
        raise ValueError(f"phase name {phase!r} is not a plain name")
    return _dir() / f"{phase}.json"


def _history(rec: dict) -> None:
    with open(state_dir() / "freezes.jsonl", "a") as f:
        f.write(json.dumps(rec, separators=(",", ":")) + "\n")


def write(phase: str, reason: str, by: str, auto: bool = False, releases: dict[str, str] | None = None,
          rollout_id: str = "") -> dict[str, Any]:
    """Freeze `phase` on this host (replacing an earlier freeze of it; a manual one is never replaced by an automatic one)."""
    current = read(phase)
    if auto and current and not current.get("auto"):
        return current
    rec = {"phase": phase, "reason": reason, "by": by, "ts": round(time.time(), 3), "auto": auto,
           "releases": dict(releases or {}), "rollout_id": rollout_id}
    p = _path(phase)
    tmp = p.with_name(f".{p.name}.{os.getpid()}")
    tmp.write_text(json.dumps(rec))
    os.replace(tmp, p)
    _history({"event": "freeze", **rec})
    return rec


def read(phase: str) -> dict[str, Any] | None:
    try:
        return json.loads(_path(phase).read_text())
    except (FileNotFoundError, ValueError):
        return None


def all_freezes() -> list[dict[str, Any]]:
    d = state_dir() / "freezes"
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("*.json")):
        try:
            out.append(json.loads(p.read_text()))
        except ValueError:
            continue
    return out


def thaw(phase: str, by: str, reason: str, only_auto: bool = False) -> dict[str, Any] | None:
    """Remove the freeze of `phase` here; return what was removed (None if there was none)."""
    current = read(phase)
    if current is None or (only_auto and not current.get("auto")):
        return None
    try:
        _path(phase).unlink()
    except FileNotFoundError:
        return None
    _history({"event": "thaw", "phase": phase, "by": by, "reason": reason, "ts": round(time.time(), 3), "removed": current})
    return current
