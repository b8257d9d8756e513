"""Who holds a flock, in the kernel's words: /proc/locks, /proc/<pid>/fdinfo, /proc/<pid>/stat.

The lock file's holder record is only information (agent/lock.py); these readers are what it
is checked against. The parsers are pure over the text; `holds`, `start_time` and `is_python`
read /proc of the process named.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


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


def proc_locks_text() -> str:
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
