"""Secrets as files: `env: {KEY: {secret: NAME, as: file}}` reaches the container as /run/secrets/NAME.

Why: a secret resolved into the environment is in `docker inspect` for anyone who can drive
the daemon, in /proc/<pid>/environ, and in every child process. As a file it is in none of
them: the value lives on a tmpfs of the host (never on a disk), in a directory made for one
container, in a file only the container's uid can read, mounted read-only at /run/secrets;
the env key holds the file's path. `docker inspect` shows that path and the directory's
name, never the value; the journal, the plan and the ledger carry only the reference.

Layout (all of it the agent's own, on a tmpfs):

    <run dir>/secrets/<daemon>/<service>.<random>/NAME

`<run dir>` is /run/fleetroll (FLEETROLL_RUN_DIR): root's, group of the Docker socket, mode
2770, on a tmpfs. A root agent makes it; any other account needs root to have made it once
(systemd-tmpfiles: `d /run/fleetroll 2770 root docker -`). `<daemon>` keys the daemon the
agent drives, so two daemons on one machine never touch each other's directories. Each
container gets a directory of its own, made just before its create call (a start-first swap
runs two containers side by side, each with its own; a revert brings back a kept container
with its files untouched) and removed when fleetroll removes that container (`release`),
only ever a directory of this pattern holding regular files.

Ownership: as root, the directory and the file are given to the container's uid:gid (0500,
0400). Any other account cannot give a file away; it keeps the file its own (0400) and grants
the container's uid read through a POSIX ACL, which tmpfs supports; nobody else can read it.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import secrets as pysecrets
import stat
import struct
from pathlib import Path
from typing import Any

from . import contract, paths, secrets
from .digests import sha256

DIR_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}\.[0-9a-f]{16}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
SETUP = ("as root, once per boot: install -d -m 2770 -o root -g <the Docker socket's group> {run}"
         " (systemd-tmpfiles: 'd {run} 2770 root docker -'), on a tmpfs; or point FLEETROLL_RUN_DIR at such a directory")


class SecretFileError(Exception):
    pass


# --- pure --------------------------------------------------------------------------------


# statfs(2) f_type values (linux/magic.h): where a secret file may be, and a few names for the refusal.
TMPFS_MAGIC, RAMFS_MAGIC = 0x01021994, 0x858458F6
_FS_NAMES = {TMPFS_MAGIC: "tmpfs", RAMFS_MAGIC: "ramfs", 0xEF53: "ext2/3/4", 0x58465342: "xfs", 0x9123683E: "btrfs",
             0x794C7630: "overlayfs", 0x6969: "nfs", 0x65735546: "fuse", 0x2FC12FC1: "zfs"}


def fs_name(magic: int) -> str:
    """A filesystem's f_type in words (pure): its name when known, else the number."""
    return _FS_NAMES.get(magic, f"a filesystem of type {magic:#x}")


def fs_magic(fd: int) -> int:
    """statfs f_type of the filesystem holding an open file: the one this very fd is on.

    Why not /proc/self/mountinfo by path: under an over-mount (a mount on a parent, or two on
    one point) the path's longest mount prefix can name another filesystem than the one the
    opened directory is on. fstatfs asks about the fd itself. os.statvfs has no f_type, so
    libc's fstatfs is called; f_type is struct statfs's first field, a C long on Linux.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(512)  # struct statfs is 120 bytes on 64-bit Linux; room to spare
    if libc.fstatfs(ctypes.c_int(fd), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF


def owner_ids(user: str) -> tuple[int, int] | None:
    """(uid, gid) of a container's numeric `uid:gid`, None if it is not one (user_problem then says so)."""
    if not contract.USER_RE.fullmatch(user or ""):
        return None
    uid, gid = user.split(":")
    return int(uid), int(gid)


def dir_problem(st: os.stat_result, what: str, socket_gid: int | None, top: bool) -> str | None:
    """Why a directory of the secret files' path must not be used (pure, from its fstat); None if it may.

    It must be a directory (not a symlink: opened with O_NOFOLLOW), writable by nobody outside
    its owner and the Docker socket's group, and the top one owned by root. Below the top,
    only root and the Docker group could have made an entry, so any owner is one of them.
    """
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        return f"{what} is not a directory"
    if top and st.st_uid != 0:
        return f"{what} is owned by uid {st.st_uid}, not root"
    if mode & stat.S_IWOTH:
        return f"{what} is writable by every account (mode {mode:04o})"
    if mode & stat.S_IWGRP and st.st_gid not in (0, socket_gid):
        return f"{what} is writable by group {st.st_gid}, which is not the Docker socket's (mode {mode:04o})"
    return None


def daemon_key(endpoint: str) -> str:
    """The directory name of one Docker daemon's secret files (pure)."""
    return sha256(endpoint.encode()).hexdigest()[:12]


# POSIX ACL as the kernel's xattr takes it (linux/posix_acl_xattr.h): a version, then (tag, perm, id) sorted by tag.
_ACL_VERSION, _USER_OBJ, _USER, _GROUP_OBJ, _MASK, _OTHER, _NO_ID = 2, 0x01, 0x02, 0x04, 0x10, 0x20, 0xFFFFFFFF
ACL_XATTR = "system.posix_acl_access"


def acl_granting(uid: int, owner_perm: int, uid_perm: int, group_perm: int = 0) -> bytes:
    """An access ACL: the owner `owner_perm`, uid `uid_perm`, the owning group `group_perm`, nobody else anything (pure)."""
    entries = [(_USER_OBJ, owner_perm, _NO_ID), (_USER, uid_perm, uid), (_GROUP_OBJ, group_perm, _NO_ID),
               (_MASK, uid_perm | group_perm, _NO_ID), (_OTHER, 0, _NO_ID)]
    return struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)


# --- the directories (I/O) ---------------------------------------------------------------


def _open_dir(name: str | os.PathLike, parent: int | None, what: str, create: bool, top: bool) -> int:
    """Open (making it first when asked and missing) one directory of the path, checked; never through a symlink."""
    kw = {"dir_fd": parent} if parent is not None else {}
    if create:
        try:
            os.mkdir(name, 0o2770, **kw)
        except FileExistsError:
            pass
    try:
        fd = os.open(name, _DIR_FLAGS, **kw)
    except FileNotFoundError:
        raise SecretFileError(f"{what} does not exist") from None
    except OSError as exc:
        why = "is a symlink" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else f"cannot be opened ({exc.strerror})"
        raise SecretFileError(f"{what} {why}") from None
    st = os.fstat(fd)
    if create and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o2770:
        os.fchmod(fd, 0o2770)  # made just now (umask) or earlier by this account: its mode, not the umask's
        st = os.fstat(fd)
    problem = dir_problem(st, what, paths.socket_gid(), top)
    if problem:
        os.close(fd)
        raise SecretFileError(problem)
    return fd


def _make_run_dir(run: Path) -> None:
    """As root: the run directory, root's, group of the Docker socket, 2770 (what any other account needs made for it)."""
    if os.geteuid() != 0 or os.path.lexists(run):
        return
    try:
        os.mkdir(run, 0o2770)
    except FileExistsError:
        return
    os.chown(run, 0, paths.socket_gid() or 0, follow_symlinks=False)
    os.chmod(run, 0o2770, follow_symlinks=False)


def _namespace() -> tuple[int, Path]:
    """This daemon's directory of secret files, opened and checked all the way down: (fd, path)."""
    run = paths.run_dir()
    _make_run_dir(run)
    try:
        top = _open_dir(run, None, f"the agent's run directory {run}", create=False, top=True)
    except SecretFileError as exc:
        raise SecretFileError(f"{exc}; {SETUP.format(run=run)}") from None
    try:
        magic = fs_magic(top)
        if magic not in (TMPFS_MAGIC, RAMFS_MAGIC):
            raise SecretFileError(f"the agent's run directory {run} is on {fs_name(magic)}, not a tmpfs:"
                                  f" a secret file there would reach a disk; {SETUP.format(run=run)}")
        sub = _open_dir("secrets", top, f"{run}/secrets", create=True, top=False)
        try:
            key = daemon_key(paths.docker_endpoint())
            return _open_dir(key, sub, f"{run}/secrets/{key}", create=True, top=False), run / "secrets" / key
        finally:
            os.close(sub)
    finally:
        os.close(top)


def problems(args: dict[str, Any]) -> list[str]:
    """Why this host cannot give a container its secret files (checked before anything stops); [] if it can or need not."""
    files = secrets.file_refs(args.get("env") or {})
    if not files or owner_ids(args.get("user") or "") is None:
        return []
    try:
        fd, where = _namespace()
    except (SecretFileError, OSError) as exc:
        return [f"secret files ({', '.join(sorted(set(files.values())))}): {exc}"]
    try:
        if os.geteuid() != 0:
            try:
                os.getxattr(fd, ACL_XATTR)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    return [f"secret files: {where} does not take POSIX ACLs ({exc.strerror}), which an agent that is not"
                            " root needs to let the container's uid alone read its file; run the agent as root, or mount"
                            " the run directory's tmpfs with ACL support"]
    finally:
        os.close(fd)
    return []


# --- one container's files (I/O) ---------------------------------------------------------


def _write(d: int, name: str, value: str, uid: int, gid: int) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400, dir_fd=d)
    try:
        data = value.encode()
        while data:
            data = data[os.write(fd, data):]
        give_away(fd, uid, gid, 0o400, os.geteuid() == 0)
    finally:
        os.close(fd)


def give_away(fd: int, uid: int, gid: int, mode: int, as_root: bool) -> None:
    """Let uid (and nobody else but root) read an open file or directory: its owner as root, an ACL grant otherwise."""
    if as_root:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        return
    is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
    # A directory stays the Docker group's (rwx), so another operator account can remove it later; a file is owner-only.
    os.setxattr(fd, ACL_XATTR, acl_granting(uid, 0o7 if is_dir else 0o4, 0o5 if is_dir else 0o4, 0o7 if is_dir else 0))


def materialize(args: dict[str, Any]) -> dict[str, Any]:
    """Just before create: write this container's secret files; the args name their directory and each key its path.

    Every value is read first (a missing secret changes nothing on the tmpfs); a failure on
    the way removes what was written. Arguments without secret files come back unchanged.
    """
    env = args.get("env") or {}
    files = secrets.file_refs(env)
    if not files:
        return args
    owner = owner_ids(args.get("user") or "")
    if owner is None:
        raise SecretFileError(f"secret files need a numeric uid:gid to give the file to, not {args.get('user')!r}")
    values = {name: secrets.read(name) for name in sorted(set(files.values()))}
    service = (args.get("labels") or {}).get(contract.SERVICE) or str(args.get("name") or "")
    dname = f"{service if contract.NAME_RE.fullmatch(service) else 'container'}.{pysecrets.token_hex(8)}"
    ns, where = _namespace()
    try:
        os.mkdir(dname, 0o700, dir_fd=ns)
        d = os.open(dname, _DIR_FLAGS, dir_fd=ns)
        try:
            for name, value in values.items():
                _write(d, name, value, *owner)
            if os.geteuid() != 0:
                os.fchmod(d, 0o2770)  # the Docker group's, as the directories above: any operator account may remove it
            give_away(d, owner[0], owner[1], 0o500, os.geteuid() == 0)
        except BaseException:
            _empty(d)
            os.close(d)
            os.rmdir(dname, dir_fd=ns)
            raise
        os.close(d)
    finally:
        os.close(ns)
    return {**args, "env": {**env, **{k: secrets.file_path(n) for k, n in files.items()}}, "secret_dir": str(where / dname)}


def _empty(d: int) -> list[str]:
    """Unlink the regular files of an open secret directory; what is anything else is left, and named."""
    left = []
    for entry in os.listdir(d):
        try:
            st = os.lstat(entry, dir_fd=d)
            if stat.S_ISREG(st.st_mode) and secrets.NAME_RE.fullmatch(entry):
                os.unlink(entry, dir_fd=d)
            else:
                left.append(entry)
        except FileNotFoundError:  # another remover of the same directory was first: gone is what was wanted
            continue
    return left


def dirs_of(attrs: dict[str, Any], namespace: Path) -> list[str]:
    """The secret directories a container (as `docker inspect` shows it) mounts from `namespace`, by name (pure)."""
    out = []
    for src in secrets.secret_mount_sources(attrs.get("HostConfig") or {}):
        name = os.path.basename(src)
        if os.path.dirname(src) == str(namespace) and DIR_RE.fullmatch(name) and name not in out:
            out.append(name)
    return out


def missing(attrs: dict[str, Any]) -> str:
    """Why a container's secret files are not where it mounts them from ("" if they are, or it has none). I/O: lstat.

    /run is cleared at boot. A container mounting its directory as a Mounts bind is then refused a
    start (it stays down); one made with a Binds string (before) gets an empty directory Docker
    made and runs without its secrets. Either way the files are gone and `fab status` must say so.
    """
    sources = secrets.secret_mount_sources(attrs.get("HostConfig") or {})
    if not sources:
        return ""
    try:
        recorded = json.loads(((attrs.get("Config") or {}).get("Labels") or {}).get(contract.SECRET_ENV) or "{}")
    except ValueError:
        recorded = {}
    names = sorted(set(secrets.file_refs({k: secrets.ref_from_label(v) for k, v in recorded.items()}).values()))
    gone: list[str] = []
    for src in sources:
        for path in [src, *(os.path.join(src, n) for n in names)]:
            try:
                os.lstat(path)
            except FileNotFoundError:
                gone.append(path)
                break
            except OSError:  # not this account's to look into (a root agent's directory): not known to be gone
                break
    if not gone:
        return ""
    return (f"its secret files are gone ({', '.join(gone)}; /run is cleared at boot):"
            " `fab rollout` replaces the container and makes them again")


def release(attrs: dict[str, Any]) -> list[str]:
    """After fleetroll removed a container: remove the secret directory made for it. Never raises; returns what it could not do.

    Only a directory of this daemon's, named as `materialize` names them, holding regular
    files, is touched; anything else in it is left, and said.
    """
    try:
        key = daemon_key(paths.docker_endpoint())
        names = dirs_of(attrs, paths.run_dir() / "secrets" / key)
        if not names:
            return []
        ns, where = _namespace()
    except (SecretFileError, OSError) as exc:
        return [f"secret files of container {str(attrs.get('Id', ''))[:12]} not removed: {exc}"]
    try:
        return [why for why in (_remove_dir(ns, name, where) for name in names) if why]
    finally:
        os.close(ns)


def _remove_dir(ns: int, name: str, where: Path) -> str | None:
    """Empty and remove one secret directory; why it is left, if it is (never raises).

    Each directory on its own: one this account may not empty (a root agent made it the
    container's uid's, 0500, and this agent is not root: EACCES) must not keep the others.
    """
    try:
        d = os.open(name, _DIR_FLAGS, dir_fd=ns)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{where / name}: {exc.strerror}; left in place"
    try:
        left = _empty(d)
    except OSError as exc:
        return f"{where / name}: cannot be emptied ({exc.strerror}); left in place, with its secret files"
    finally:
        os.close(d)
    if left:
        return f"{where / name}: holds {', '.join(sorted(left))}, which fleetroll did not make; left in place"
    try:
        os.rmdir(name, dir_fd=ns)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{where / name}: emptied, but cannot be removed ({exc.strerror}); left in place"
    return None


def discard(args: dict[str, Any]) -> list[str]:
    """A create that failed: remove the secret directory `materialize` made for it (none: nothing to do)."""
    where = args.get("secret_dir")
    return release({"HostConfig": {"Mounts": [secrets.secret_mount(str(where))]}}) if where else []
