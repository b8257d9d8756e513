"""Where the lock lives and how it is opened: never through a symlink, never a file an untrusted account made.

The directory is opened with O_NOFOLLOW and checked, then the file is opened relative to it
with O_NOFOLLOW and checked (agent/lock_trust.py); a missing directory or file is created
with the Docker socket's group, since whoever can drive that daemon must be able to take its
lock. Anything else is refused as LockUnsafe, naming the path and the fix.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from .digests import sha256
from .lock_trust import DIR_MODE, dir_problem, file_problem, trusted_groups
from .paths import docker_endpoint, socket_gid, state_dir


class LockUnsafe(Exception):
    """The lock directory or file is not one only trusted accounts could have made: refused, never used."""


def lock_dir() -> Path:
    env = os.environ.get("FLEETROLL_LOCK_DIR")
    if env:
        return Path(env)
    return state_dir() / "lock"


def file_name() -> str:
    return f"fleetroll-docker-{sha256(docker_endpoint().encode()).hexdigest()[:16]}.lock"


def path() -> Path:
    return lock_dir() / file_name()


def open_dir(create: bool = True) -> int | None:
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
            raise LockUnsafe(dir_problem(os.lstat(d), str(d), os.geteuid(), trusted_groups()) or f"lock directory {d}: {exc}") from None
        raise
    problem = dir_problem(os.fstat(fd), str(d), os.geteuid(), trusted_groups())
    if problem:
        os.close(fd)
        raise LockUnsafe(problem)
    return fd


def open_file(create: bool = True) -> int | None:
    """Open the lock file (creating it mode 0660, the Docker socket's group, if missing) and check it.

    Opening an existing file without O_CREAT first (an O_CREAT on another member's file in a
    setgid shared directory can be refused by fs.protected_regular). Never follows a symlink.
    Returns None when the file is missing and create is False.
    """
    dfd = open_dir(create)
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
                return open_file(create)
            gid = socket_gid()
            try:
                if gid is not None:
                    os.fchown(fd, -1, gid)
                os.fchmod(fd, 0o660)
            except OSError:
                os.fchmod(fd, 0o600)  # not in that group: the file stays ours alone
        problem = file_problem(os.fstat(fd), where, os.geteuid(), trusted_groups(), os.fstat(dfd))
        if problem:
            os.close(fd)
            raise LockUnsafe(problem)
        return fd
    finally:
        os.close(dfd)


def read_record(fd: int) -> dict[str, Any] | None:
    try:
        raw = os.pread(fd, 65536, 0)
        info = json.loads(raw) if raw.strip() else None
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None
