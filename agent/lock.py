"""One rollout per Docker daemon at a time: a kernel `flock`, held by the transaction process.

The kernel releases a flock when the last descriptor of its holder closes — the process
exits, is SIGKILLed, or the host reboots — so there is no stale lock to detect and no
file to unlink: a lock that is not held is simply free.

The path is keyed by the Docker daemon the agent drives (DOCKER_HOST, or the default
socket), not by the SSH user: `root` and `ops` driving the same daemon take the same
lock. It lives in a directory only root (or the agent's own account) owns — by default
`<state dir>/lock`, created mode 2770 for the group that owns the Docker socket, since
whoever can drive that daemon must be able to take its lock — never in a world-writable
directory such as /run/lock, where any local user could create the file first.
FLEETROLL_LOCK_DIR overrides the directory (the lab gives each host its own); the same
checks apply to it. The directory is opened without following a symlink and checked
(owner, mode, group); the file is opened relative to it with O_NOFOLLOW and checked
(a regular file, one link, owned by root, us or a member of the directory's group, not
writable by others). Anything else is refused with a message naming the path and the fix.

Who holds the lock is the kernel's word, never the file's: /proc/locks lists every flock
with the pid that took it and the device and inode it is on, and /proc/<pid>/fdinfo shows
which descriptors of a live process carry it (a rollout's worker inherits the lock from
the agent that took it, so /proc/locks may name a pid that has since exited). The holder
record written into the file after the lock is taken (name, rollout, pid, start time) is
informational only: shown to the operator, and compared with what the kernel says.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

# The lock's pieces, re-exported under the names the agent, the lab and the tests use (lock.X):
# where the file lives and how it is opened, whether it can be trusted, and what the kernel says.
from .lock_file import LockUnsafe, file_name, lock_dir, open_dir, open_file, path, read_record  # noqa: F401
from .lock_kernel import (  # noqa: F401
    KernelLock,
    fdinfo_holds,
    flock_pids,
    holds,
    is_python,
    parse_lock_line,
    parse_proc_locks,
    proc_locks_text,
    same_process,
    start_time,
)
from .lock_trust import DIR_MODE, dir_problem, file_problem  # noqa: F401
from .paths import docker_endpoint, socket_gid, state_dir  # noqa: F401 - docker_endpoint, socket_gid: lock's names for them


class Locked(Exception):
    def __init__(self, holder: dict[str, Any]):
        self.holder = holder
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("time", 0) or 0))
        note = f"; {holder['note']}" if holder.get("note") else ""
        super().__init__(
            f"locked by {holder.get('holder', '?')} (rollout {holder.get('rollout_id', '?')}, pid {holder.get('pid') or '?'},"
            f" since {since}{note})"
        )


def state_of(fd: int, record: dict[str, Any] | None, proc_locks: str | None = None) -> dict[str, Any] | None:
    """Who holds the lock on the file open as `fd`, per the kernel; None when nobody does.

    `pid` is the live process the kernel confirms holds it (None if it cannot tell: e.g. the
    taker exited and the record names nobody that holds it). The record's fields are copied
    as information; `record_agrees` says whether it names that very process, and `note`
    says how it disagrees.
    """
    st = os.fstat(fd)
    taken_by = flock_pids(proc_locks_text() if proc_locks is None else proc_locks, st.st_dev, st.st_ino)
    if not taken_by:
        return None
    rec = record or {}
    try:
        rec_pid = int(rec.get("pid") or 0)
    except (TypeError, ValueError):
        rec_pid = 0
    verdicts = {p: holds(p, st.st_dev, st.st_ino) for p in dict.fromkeys([rec_pid, *taken_by]) if p > 0}
    holder_pid = next((p for p, v in verdicts.items() if v), None)
    unknown = [p for p, v in verdicts.items() if v is None]
    agrees = bool(holder_pid) and rec_pid == holder_pid and same_process(rec_pid, str(rec.get("start", "")))
    info: dict[str, Any] = {k: v for k, v in rec.items() if k in ("holder", "rollout_id", "time")}
    info.setdefault("holder", "an unrecorded process")
    info.update(pid=holder_pid, kernel_pid=taken_by[0], start=start_time(holder_pid) if holder_pid else "",
                alive=True, record_agrees=agrees, record_pid=rec_pid or None, path=str(path()))
    if not agrees:
        if holder_pid is None and unknown:
            info["note"] = (f"pid {unknown[0]} may hold the lock but runs as another account, so this account cannot check it;"
                            " only that account or root can: run fab unlock as them")
        elif holder_pid is None:
            info["note"] = (f"the kernel says pid {taken_by[0]} took the lock, and neither it nor the pid the record names"
                            f" ({rec_pid or 'none'}) holds it now: the holder is a process that inherited it")
        else:
            info["note"] = (f"the record names pid {rec_pid or 'none'} but the kernel says pid {holder_pid} holds the lock;"
                            " the record is not evidence")
    return info


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
    """Take the lock or raise Locked naming its holder (as the kernel sees it). Never waits.

    Raises LockUnsafe when the directory or file fails the ownership checks.
    """
    fd = open_file()
    assert fd is not None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            os.close(fd)
            raise
        try:
            info = state_of(fd, read_record(fd)) or {"holder": "another agent (just released)"}
        finally:
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


def signal_holder(pid: int, start: str, sig: int) -> bool:
    """Send `sig` to `pid` only if it is still that very process (start time), a Python interpreter (the
    agent), and the kernel says it holds this host's lock now. False (nothing sent) otherwise.

    Checked through a pidfd, so the pid cannot be recycled between the check and the signal.
    A process of another account cannot be checked from this one, so it is never signalled.
    """
    fd = open_file(create=False)
    if fd is None:
        return False
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    try:
        pidfd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return False
    try:
        if not (same_process(pid, start) and is_python(pid) and holds(pid, st.st_dev, st.st_ino)):
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    finally:
        os.close(pidfd)


def read() -> dict[str, Any] | None:
    """Who holds the lock, per the kernel (see state_of), with the record's fields as information. None when free."""
    fd = open_file(create=False)
    if fd is None:
        return None
    try:
        return state_of(fd, read_record(fd))
    finally:
        os.close(fd)


def busy(ids: list[str] | None = None) -> dict[str, Any] | None:
    """A transaction running on this host now (who holds the lock, per the kernel), one left interrupted, or None.

    Asked after this call's recovery: a journal still open then belongs to a live transaction, or, with
    the lock free, to one whose recovery failed ({"interrupted": ids}). Either way its containers are
    in motion or half-swapped (a new one may run under the service's name), so no plan can be made
    from them. The lock is read only then: nearly every call finds no open journal.
    """
    if ids is None:  # the caller (facts) has usually listed them already
        from . import journal

        ids = journal.open_ids()
    if not ids:
        return None
    try:
        return read() or {"interrupted": ids}
    except LockUnsafe as exc:
        return {"unsafe": str(exc)}
