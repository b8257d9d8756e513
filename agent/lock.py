"""One rollout per host at a time: a lock file naming its holder, pid and time.

Created with O_EXCL, so two agents cannot both take it. A lock whose pid is no longer
alive on this host is stale (the transaction died with its host process) and may be
taken over; the take-over is reported. `fab unlock` removes a lock by hand, with a reason.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from .paths import state_dir


class Locked(Exception):
    def __init__(self, holder: dict[str, Any]):
        self.holder = holder
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("time", 0)))
        super().__init__(
            f"locked by {holder.get('holder', '?')} (rollout {holder.get('rollout_id', '?')}, pid {holder.get('pid', '?')},"
            f" since {since})"
        )


def _path():
    return state_dir() / "lock"


def read() -> dict[str, Any] | None:
    try:
        return json.loads(_path().read_text())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire(holder: str, rollout_id: str, pid: int | None = None) -> dict[str, Any] | None:
    """Take the lock; return the stale lock it replaced (or None). Raise Locked if held."""
    info = {"holder": holder, "rollout_id": rollout_id, "pid": pid or os.getpid(), "time": time.time()}
    replaced = None
    for _ in range(2):
        try:
            fd = os.open(_path(), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except FileExistsError:
            current = read()
            if current and alive(int(current.get("pid", 0))):
                raise Locked(current) from None
            replaced = current
            try:
                os.unlink(_path())
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
            f.flush()
            os.fsync(f.fileno())
        return replaced
    raise Locked(read() or {})


def hand_over(rollout_id: str, pid: int) -> None:
    """The detached transaction becomes the holder (its pid is what stale-detection checks)."""
    info = read() or {}
    if info.get("rollout_id") == rollout_id:
        info["pid"] = pid
        tmp = state_dir() / f".lock.{os.getpid()}"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, _path())


def release(rollout_id: str) -> None:
    info = read()
    if info and info.get("rollout_id") == rollout_id:
        try:
            os.unlink(_path())
        except FileNotFoundError:
            pass


def force_release() -> dict[str, Any] | None:
    info = read()
    try:
        os.unlink(_path())
    except FileNotFoundError:
        pass
    return info
