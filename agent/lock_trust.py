"""Whether a lock directory or file is one only trusted accounts could have made: pure over stat results.

A lock in a place another local user can write could be forged (created first, held, given a
holder record naming someone else's process): see agent/lock.py. These checks name the path
and the fix; agent/lock_file.py runs them on what it opened.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat

from .paths import socket_gid

DIR_MODE = 0o2770


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def trusted_groups() -> set[int]:
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
        if groups == {0}:  # no Docker socket to read its group from: the likely fault is dockerd, not the directory
            return (f"lock directory {where} is writable by group {_group_name(st.st_gid)}, and the Docker socket whose"
                    " group may write it is not there (is dockerd running?): start dockerd; if it runs, " + fix.removeprefix("fix: "))
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
