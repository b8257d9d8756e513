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
import grp
import hashlib
import json
import os
import pwd
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .paths import docker_endpoint, socket_gid, state_dir  # noqa: F401 - docker_endpoint, socket_gid: lock's names for them

DIR_MODE = 0o2770


class Locked(Exception):
    def __init__(self, holder: dict[str, Any]):
        self.holder = holder
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("time", 0) or 0))
        note = f"; {holder['note']}" if holder.get("note") else ""
        super().__init__(
            f"locked by {holder.get('holder', '?')} (rollout {holder.get('rollout_id', '?')}, pid {holder.get('pid') or '?'},"
            f" since {since}{note})"
        )


class LockUnsafe(Exception):
    """The lock directory or file is not one only trusted accounts could have made: refused, never used."""


def lock_dir() -> Path:
    env = os.environ.get("FLEETROLL_LOCK_DIR")
    if env:
        return Path(env)
    return state_dir() / "lock"


def file_name() -> str:
    return f"fleetroll-docker-{hashlib.sha256(docker_endpoint().encode()).hexdigest()[:16]}.lock"


def path() -> Path:
    return lock_dir() / file_name()


# --- trust checks (pure over stat results) ----------------------------------------------


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _trusted_groups() -> set[int]:
    """Groups a lock directory or file may be writable by: root's, and the Docker socket's."""
    gid = socket_gid()
    return {0} | ({gid} if gid is not None else set())


def dir_problem(st: os.stat_result, where: str, euid: int, groups: set[int]) -> str | None:
    """Why a directory cannot hold the lock, or None. `st` is an lstat/fstat of it."""
    fix_group = next((g for g in sorted(groups) if g), 0)
    fix = f"fix: chown root:{_group_name(fix_group)} {where} && chmod {DIR_MODE:o} {where}"
    if stat.S_ISLNK(st.st_mode):
        return f"lock directory {where} is a symlink; refusing it (remove it; the agent recreates it as a directory, or {fix})"
    if not stat.S_ISDIR(st.st_mode):
        return f"lock directory {where} is not a directory; remove it (the agent recreates it) or set FLEETROLL_LOCK_DIR"
    if st.st_uid not in (0, euid):
        return (f"lock directory {where} is owned by uid {st.st_uid}, not root or this agent's account (uid {euid}): another"
                f" account could forge the lock; {fix}")
    if st.st_mode & stat.S_IWOTH:
        return f"lock directory {where} is writable by any user (mode {stat.S_IMODE(st.st_mode):o}); {fix}"
    if st.st_mode & stat.S_IWGRP and st.st_gid not in groups:
        return (f"lock directory {where} is writable by group {_group_name(st.st_gid)}, which is not the Docker socket's group"
                f" (mode {stat.S_IMODE(st.st_mode):o}); {fix}")
    return None


def _members(gid: int) -> set[int]:
    """Uids in group `gid` (as primary or supplementary group)."""
    out = set()
    try:
        names = set(grp.getgrgid(gid).gr_mem)
    except KeyError:
        names = set()
    for pw in pwd.getpwall():
        if pw.pw_gid == gid or pw.pw_name in names:
            out.add(pw.pw_uid)
    return out


def file_problem(st: os.stat_result, where: str, euid: int, groups: set[int], dir_st: os.stat_result) -> str | None:
    """Why an (opened, not followed) lock file cannot be trusted, or None."""
    fix = f"fix: remove {where} (the agent recreates it; a lock no live process holds is free)"
    if not stat.S_ISREG(st.st_mode):
        return f"lock file {where} is not a regular file; {fix}"
    if st.st_nlink != 1:
        return f"lock file {where} has {st.st_nlink} links (a hard link to another file?); {fix}"
    trusted = {0, euid, dir_st.st_uid}
    if st.st_uid not in trusted and not (dir_st.st_mode & stat.S_IWGRP and st.st_uid in _members(dir_st.st_gid)):
        return f"lock file {where} is owned by uid {st.st_uid}, not root, this agent's account or a member of the lock directory's group; {fix}"
    if st.st_mode & stat.S_IWOTH:
        return f"lock file {where} is writable by any user (mode {stat.S_IMODE(st.st_mode):o}); {fix}"
    if st.st_mode & stat.S_IWGRP and st.st_gid not in groups:
        return f"lock file {where} is writable by group {_group_name(st.st_gid)}, not the Docker socket's group; {fix}"
    return None


def _open_dir(create: bool = True) -> int | None:
    """Open (creating if missing) the lock directory without following a symlink, and check it.

    None when it is missing and create is False.
    """
    d = lock_dir()
    if not os.path.lexists(d):
        if not create:
            return None
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            pass
        else:
            gid = socket_gid()
            try:
                if gid is not None:
                    os.chown(d, -1, gid, follow_symlinks=False)
                os.chmod(d, DIR_MODE if gid is not None else 0o700)
            except OSError:
                os.chmod(d, 0o700)  # not in the socket's group: a directory of our own
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise LockUnsafe(dir_problem(os.lstat(d), str(d), os.geteuid(), _trusted_groups()) or f"lock directory {d}: {exc}") from None
        raise
    problem = dir_problem(os.fstat(fd), str(d), os.geteuid(), _trusted_groups())
    if problem:
        os.close(fd)
        raise LockUnsafe(problem)
    return fd


def _open(create: bool = True) -> int | None:
    """Open the lock file (creating it mode 0660, the Docker socket's group, if missing) and check it.

    Opening an existing file without O_CREAT first (an O_CREAT on another member's file in a
    setgid shared directory can be refused by fs.protected_regular). Never follows a symlink.
    Returns None when the file is missing and create is False.
    """
    dfd = _open_dir(create)
    if dfd is None:
        return None
    try:
        name, where = file_name(), str(path())
        flags = (os.O_RDWR if create else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        fd = None
        try:
            fd = os.open(name, flags, dir_fd=dfd)
        except FileNotFoundError:
            if not create:
                return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LockUnsafe(f"lock file {where} is a symlink; refusing to follow it (fix: remove {where})") from None
            raise
        if fd is None:
            try:
                fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o660, dir_fd=dfd)
            except FileExistsError:
                return _open(create)
            gid = socket_gid()
            try:
                if gid is not None:
                    os.fchown(fd, -1, gid)
                os.fchmod(fd, 0o660)
            except OSError:
                os.fchmod(fd, 0o600)  # not in that group: the file stays ours alone
        problem = file_problem(os.fstat(fd), where, os.geteuid(), _trusted_groups(), os.fstat(dfd))
        if problem:
            os.close(fd)
            raise LockUnsafe(problem)
        return fd
    finally:
        os.close(dfd)


def _read_fd(fd: int) -> dict[str, Any] | None:
    try:
        raw = os.pread(fd, 65536, 0)
        info = json.loads(raw) if raw.strip() else None
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


# --- what the kernel says ---------------------------------------------------------------


@dataclass(frozen=True)
class KernelLock:
    kind: str  # FLOCK, POSIX, OFDLCK, LEASE ...
    access: str  # WRITE, READ ...
    pid: int
    major: int
    minor: int
    inode: int
    blocked: bool  # a waiter ("->"), not a holder


def parse_lock_line(line: str) -> KernelLock | None:
    """One line of /proc/locks, or a `lock:` line of /proc/<pid>/fdinfo/<fd>.

    `1: FLOCK  ADVISORY  WRITE 3025 fe:00:2147252 0 EOF` (major and minor in hex, inode in
    decimal); a waiter reads `1: -> FLOCK ...`. None for anything else.
    """
    line = line.strip()
    if line.startswith("lock:"):
        line = line[len("lock:"):].strip()
    parts = line.split()
    if len(parts) < 6 or not parts[0].endswith(":"):
        return None
    rest = parts[1:]
    blocked = rest[0] == "->"
    if blocked:
        rest = rest[1:]
    if len(rest) < 5:
        return None
    kind, _mode, access, pid, where = rest[:5]
    dev = where.split(":")
    try:
        if len(dev) != 3:
            return None
        return KernelLock(kind, access, int(pid), int(dev[0], 16), int(dev[1], 16), int(dev[2]), blocked)
    except ValueError:
        return None


def parse_proc_locks(text: str) -> list[KernelLock]:
    return [x for x in (parse_lock_line(ln) for ln in text.splitlines()) if x is not None]


def flock_pids(text: str, dev: int, ino: int) -> list[int]:
    """Pids that /proc/locks (text) names as holding a FLOCK on the file (st_dev `dev`, inode `ino`).

    The pid is the process that took the lock: a child that inherited the descriptor holds it
    too, and the taker may have exited since (see holds()).
    """
    return [k.pid for k in parse_proc_locks(text)
            if k.kind == "FLOCK" and not k.blocked and (k.major, k.minor, k.inode) == (os.major(dev), os.minor(dev), ino)]


def fdinfo_holds(text: str, dev: int, ino: int) -> bool:
    """Does this /proc/<pid>/fdinfo/<fd> text show the descriptor carries a held FLOCK on (dev, ino)?"""
    return any(k.kind == "FLOCK" and not k.blocked and (k.major, k.minor, k.inode) == (os.major(dev), os.minor(dev), ino)
               for k in (parse_lock_line(ln) for ln in text.splitlines() if ln.startswith("lock:")) if k is not None)


def holds(pid: int, dev: int, ino: int) -> bool | None:
    """Does the live process `pid` have a descriptor that carries the flock on (dev, ino)? The kernel's word.

    None when it cannot tell: the process runs as another account (its fdinfo is not ours to read).
    """
    if pid <= 0:
        return False
    base = f"/proc/{pid}/fdinfo"
    try:
        fds = os.listdir(base)
    except PermissionError:
        return None
    except OSError:
        return False
    for fd in fds:
        try:
            with open(f"{base}/{fd}") as f:
                text = f.read()
        except OSError:
            continue
        if fdinfo_holds(text, dev, ino):
            return True
    return False


def _proc_locks() -> str:
    with open("/proc/locks") as f:
        return f.read()


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


def is_python(pid: int) -> bool:
    """Is the process a Python interpreter (the agent runs as one), by its executable?"""
    try:
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return False
    return exe.startswith("python")


def state_of(fd: int, record: dict[str, Any] | None, proc_locks: str | None = None) -> dict[str, Any] | None:
    """Who holds the lock on the file open as `fd`, per the kernel; None when nobody does.

    `pid` is the live process the kernel confirms holds it (None if it cannot tell: e.g. the
    taker exited and the record names nobody that holds it). The record's fields are copied
    as information; `record_agrees` says whether it names that very process, and `note`
    says how it disagrees.
    """
    st = os.fstat(fd)
    taken_by = flock_pids(_proc_locks() if proc_locks is None else proc_locks, st.st_dev, st.st_ino)
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
    fd = _open()
    assert fd is not None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            os.close(fd)
            raise
        try:
            info = state_of(fd, _read_fd(fd)) or {"holder": "another agent (just released)"}
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
    fd = _open(create=False)
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
    fd = _open(create=False)
    if fd is None:
        return None
    try:
        return state_of(fd, _read_fd(fd))
    finally:
        os.close(fd)
