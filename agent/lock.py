"""One rollout per Docker daemon at a time: a kernel `flock`, held by the transaction process.

The kernel releases a flock when the last descriptor of its holder closes — the process
exits, is SIGKILLed, or the host reboots — so there is no stale lock to detect and no
file to unlink: a lock that is not held is simply free. The holder's name, rollout and
pid are written into the file only *after* the lock is held, and are informational.

The path is keyed by the Docker daemon the agent drives (DOCKER_HOST, or the default
socket), not by the SSH user: `root` and `ops` driving the same daemon take the same
lock. It lives in the system lock directory (/run/lock), created group-writable for the
group that owns the Docker socket, since whoever can drive that daemon must be able to
take its lock. FLEETROLL_LOCK_DIR overrides the directory (the lab gives each host its own).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCK_DIRS = ("/run/lock", "/var/lock", "/tmp")


class Locked(Exception):
    def __init__(self, holder: dict[str, Any]):
        self.holder = holder
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("time", 0)))
        super().__init__(
            f"locked by {holder.get('holder', '?')} (rollout {holder.get('rollout_id', '?')}, pid {holder.get('pid', '?')},"
            f" since {since})"
        )


def docker_endpoint() -> str:
    """The daemon this agent drives, normalized so two spellings of one socket are one key."""
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if host.startswith("unix://"):
        return "unix://" + os.path.realpath(host[len("unix://"):])
    return host


def socket_gid() -> int | None:
    host = docker_endpoint()
    if not host.startswith("unix://"):
        return None
    try:
        return os.stat(host[len("unix://"):]).st_gid
    except OSError:
        return None


def path() -> Path:
    d = os.environ.get("FLEETROLL_LOCK_DIR") or next((x for x in LOCK_DIRS if os.path.isdir(x) and os.access(x, os.W_OK)), "/tmp")
    key = hashlib.sha256(docker_endpoint().encode()).hexdigest()[:16]
    return Path(d) / f"fleetroll-docker-{key}.lock"


def _open() -> int:
    """Open the lock file, creating it (mode 0660, the Docker socket's group) if missing.

    Opening an existing file without O_CREAT first: in a sticky world-writable directory
    (fs.protected_regular) O_CREAT on another user's file is refused even when the file's
    own mode allows the open.
    """
    p = path()
    try:
        return os.open(p, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    try:
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o660)
    except FileExistsError:
        return os.open(p, os.O_RDWR | os.O_CLOEXEC)
    gid = socket_gid()
    try:
        if gid is not None:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, 0o660)
    except OSError:
        pass  # not in that group: the file stays ours, mode 0660 of our own group
    return fd


def _read_fd(fd: int) -> dict[str, Any] | None:
    try:
        raw = os.pread(fd, 65536, 0)
        return json.loads(raw) if raw.strip() else None
    except (OSError, ValueError):
        return None


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot: a pid plus this names one process ("" if it is gone).

    A zombie (exited, not yet reaped by its parent) counts as gone.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if fields[0] in ("Z", "X") else fields[19]


def same_process(pid: int, start: str) -> bool:
    """Is `pid` still the very process that was recorded (not a recycled pid)?"""
    return pid > 0 and bool(start) and start_time(pid) == start


@dataclass
class Held:
    fd: int
    rollout_id: str

    def record(self, holder: str, pid: int | None = None) -> None:
        """(Re)write the holder metadata: after the lock is held, never before."""
        pid = pid or os.getpid()
        info = {"holder": holder, "rollout_id": self.rollout_id, "pid": pid, "start": start_time(pid), "time": time.time()}
        data = json.dumps(info).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)

    def release(self) -> None:
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def acquire(holder: str, rollout_id: str) -> Held:
    """Take the lock or raise Locked naming its holder. Never waits."""
    fd = _open()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            os.close(fd)
            raise
        info = _read_fd(fd) or {"holder": "another agent (starting up)"}
        os.close(fd)
        raise Locked(info) from None
    held = Held(fd, rollout_id)
    held.record(holder)
    return held


def try_acquire(holder: str, rollout_id: str) -> Held | None:
    try:
        return acquire(holder, rollout_id)
    except Locked:
        return None


def read() -> dict[str, Any] | None:
    """The recorded holder, with `alive` = that exact process still runs. None when free."""
    try:
        fd = os.open(path(), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = _read_fd(fd)
    finally:
        os.close(fd)
    if not info:
        return None
    info["alive"] = same_process(int(info.get("pid", 0)), str(info.get("start", "")))
    info["path"] = str(path())
    return info if info["alive"] else None
