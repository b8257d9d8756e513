"""Zipapp bootstrap: unpack once next to the archive, check the tree, then run from it.

Importing the docker SDK from inside a zip costs about 0.3 s on every call because no
bytecode can be cached there. Unpacking once into a directory named by the archive's
content hash (and compiling it) makes every later call pay only for cached bytecode.

The controller does not trust this file to check the archive it is part of (a replaced
archive would simply carry no checks): it runs a fixed verifier first, `python3 -I -S -c
<the controller's VERIFIER> .fleetroll/agent-<hash16>.pyz <sha256>`, which opens the archive
with O_NOFOLLOW, checks its and its directory's owner and mode, hashes the open file and
only then runs it from that same open file, handing this file FLEETROLL_VERIFIED = (archive
path, fd). Run directly (`python3 -I <agent>.pyz <sha256>`), this file checks the same itself.

Before every run:
* the directory holding the agent must belong to this user (or root) and be closed to
  others' writes (anyone who can write there could run code as this user);
* the archive's full SHA-256 must equal the one the controller names on the command line;
* every file of the unpacked tree must match the archive's MANIFEST.json (hashed, or unchanged since
  hashed: _tree_ok), no file may be there that the archive did not put there (bytecode aside: it is
  compiled with checked hashes), and nothing in the tree may be a symlink, another user's or writable
  by others. A tree that fails is unpacked again.

Every run holds a shared lock (flock) on the tree it runs from, inherited by the detached transaction it may
fork. The first run of a new version prunes the earlier ones (each left ~2.4 MB in ~/.fleetroll; a checkout
that changes its agent with every commit filled homes) but the KEEP uploaded last (two operators on two
releases do not re-upload each other's) and any tree a process still holds; a pruned one is uploaded again.
This file is copied to the archive's root as __main__.py; it uses the standard library only.
"""

import fcntl
import json
import os
import re
import stat
import sys
import time

try:  # the builtin: hashlib would load OpenSSL (~2.5 ms of every call's CPU) for a few SHA-256s
    from _sha256 import sha256
except ImportError:
    try:  # Python 3.12 and later name it _sha2
        from _sha2 import sha256
    except ImportError:  # an interpreter built without either
        from hashlib import sha256

DAMAGED = "fleetroll-agent: archive damaged"  # the controller re-uploads when it reads this
REFUSED = 96
KEEP = 3  # earlier agent versions kept beside the running one: the ones uploaded last
MIN_AGE_S = 7 * 86400  # and any uploaded this recently (a teammate's release; an agent from before these locks)
LEFTOVER_S = 3600  # an unpack's or an upload's own temporary file older than this was left by a process that died
NAMES_LOCK = ".names.lock"  # held while a name in ~/.fleetroll changes (unpack into place, replace, prune)
_VERSION = re.compile(r"agent-([0-9a-f]{16})(\.pyz)?")
_LEFTOVER = re.compile(r"agent-[0-9a-f]{16}(\.(tmp|bad|prune)[0-9]+|\.pyz\.[0-9]+\.[0-9]+\.part)")
# statfs f_type of the filesystems whose flock is this machine's own: ext2/3/4, xfs, btrfs, tmpfs, ramfs, overlayfs,
# zfs, f2fs, bcachefs. A home on NFS (or anything else) is never pruned: a lock there may not reach the other hosts.
_LOCAL_FS = {0xEF53, 0x58465342, 0x9123683E, 0x01021994, 0x858458F6, 0x794C7630, 0x2FC12FC1, 0xF2F52010, 0xCA451A4E}
_HELD: list[int] = []  # the shared lock on the tree this process runs from (open for its whole life, and its forks')


def _refuse(msg: str, code: int = REFUSED) -> None:
    sys.stderr.write(f"fleetroll-agent: {msg}\n")
    sys.exit(code)


def _private(path: str, what: str) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or st.st_uid not in (os.geteuid(), 0) or st.st_mode & 0o022:
        _refuse(f"{what} {path} must be owned by this user (uid {os.geteuid()}) or root, not a symlink, and not group- or"
                f" world-writable (it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); fix it: chmod go-w {path}")


def _sha256(path: str) -> str:
    h = sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# The tree's files as lstat saw them when last hashed, (inode, size, mtime, ctime) each: contents are hashed (~4 ms of
# a call's CPU) only when a file's lstat differs from this seal the last full check wrote (the walk: ~0.4 ms). The
# kernel sets ctime on every write, rename or chmod and an owner cannot set it back, so an unchanged seal means the
# bytes hashed then. No stronger than the manifest beside it (a damaged tree); other accounts: the owner/mode checks.
SEAL = ".sealed.json"
SEAL_AFTER_NS = 2_000_000_000  # no seal of a file changed this recently: a same-size rewrite in its clock tick keeps ctime


def _tree_ok(target: str) -> bool:
    """The unpacked tree is exactly the manifest's files: no symlink anywhere (a file or a directory:
    `http -> elsewhere` would make `import http` run the other code), nothing another user owns or
    anyone else can write, nothing missing, nothing extra (checked-hash bytecode aside; contents: SEAL)."""
    me = os.geteuid()
    stats: dict[str, list[int]] = {}

    def sound(path: str, is_dir: bool) -> bool:
        try:
            st = os.lstat(path)
        except OSError:
            return False
        kind = stat.S_ISDIR if is_dir else stat.S_ISREG  # a symlink is neither, by lstat
        if not is_dir:
            stats[os.path.relpath(path, target).replace(os.sep, "/")] = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        return kind(st.st_mode) and st.st_uid in (me, 0) and not st.st_mode & 0o022

    if not sound(target, True):
        return False
    try:
        with open(os.path.join(target, "MANIFEST.json")) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    seen = set()
    for top, dirs, files in os.walk(target):  # never follows a symlink: each is judged by lstat instead
        for name in dirs:
            if not sound(os.path.join(top, name), True):
                return False
        for name in files:
            full = os.path.join(top, name)
            if top == target and name.startswith(f"{SEAL}.") and name[len(SEAL) + 1:].isdigit():
                continue  # another call's seal on its way in (renamed away under our lstat), or a killed call's: never used
            if not sound(full, False):
                return False
            rel = os.path.relpath(full, target).replace(os.sep, "/")
            if rel in ("MANIFEST.json", ".complete", SEAL) or (os.path.basename(top) == "__pycache__" and name.endswith(".pyc")):
                continue
            if rel not in manifest:
                return False
            seen.add(rel)
    if seen != set(manifest):
        return False
    return _sealed(target, {rel: stats[rel] for rel in (*seen, "MANIFEST.json")},
                   lambda: all(_sha256(os.path.join(target, rel)) == manifest[rel] for rel in seen))


def _sealed(target: str, checked: dict[str, list[int]], hashed) -> bool:
    """The files are those the seal says were hashed, or hashed() says they match now (then sealed anew)."""
    try:
        fd = os.open(os.path.join(target, SEAL), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # no FIFO to wait on
        with os.fdopen(fd) as f:
            if stat.S_ISREG(os.fstat(fd).st_mode) and json.load(f) == checked:
                return True
    except (OSError, ValueError):
        pass
    if not hashed():
        return False
    tmp = os.path.join(target, f"{SEAL}.{os.getpid()}")  # then a rename: a reader sees the old seal or this one
    try:
        if time.time_ns() - max(st[3] for st in checked.values()) >= SEAL_AFTER_NS:
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644), "w") as f:
                json.dump(checked, f)
            os.replace(tmp, os.path.join(target, SEAL))
    except OSError:  # a tree that cannot take it (a read-only home) is hashed on every call, as before
        pass
    return True


def _unpack(archive: str, target: str) -> None:
    """Unpack beside `target`, then put it in place with a rename: never delete a tree another call may run from.

    Two agent calls of one user can start at once (two hosts sharing a home, two operators, a status beside a
    rollout). Removing the target first, as this once did, deleted the tree the other call had just put in place
    and was importing from ("No module named agent.paths"). A tree already in place and sound is used as it is;
    only one that fails the check is moved aside (one rename) and replaced."""
    import compileall
    import py_compile
    import shutil
    import zipfile

    tmp = f"{target}.tmp{os.getpid()}"
    umask = os.umask(0o022)  # the tree must not be writable by others (_tree_ok), whatever the login's umask
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        compileall.compile_dir(tmp, quiet=2, workers=1, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    finally:
        os.umask(umask)
    open(os.path.join(tmp, ".complete"), "w").close()
    names = _names_lock(os.path.dirname(target))  # no prune renames a tree between our check and our rename
    try:
        try:
            os.rename(tmp, target)  # in place at once, or refused because something is already there
            return
        except OSError:
            pass
        if os.path.isfile(os.path.join(target, ".complete")) and _tree_ok(target):
            shutil.rmtree(tmp, ignore_errors=True)  # another call put the same tree in place first
            return
        # Ours to replace: named after this archive, beside it, in the private directory checked above. A run
        # holding the old tree imports by path, so from now on from this same version's sound tree.
        aside = f"{target}.bad{os.getpid()}"
        os.rename(target, aside)
        os.rename(tmp, target)
    finally:
        os.close(names)
    try:
        if os.path.islink(aside) or not os.path.isdir(aside):
            os.unlink(aside)
        else:
            shutil.rmtree(aside, ignore_errors=True)
    except FileNotFoundError:
        pass


def _unpacked(archive: str, want: str, verified: str = "") -> str:
    """The checked tree for `archive`; `verified`: its open file (/proc/self/fd/N) the controller's verifier checked."""
    _private(os.path.dirname(archive), "the agent's directory")
    if not verified:
        _private(archive, "the agent archive")
        if _sha256(archive) != want:
            _refuse(f"{DAMAGED}: its SHA-256 is not {want}", 97)
    target = archive[: -len(".pyz")] if archive.endswith(".pyz") else archive + ".d"
    for attempt in range(2):  # locked before it is checked: a tree checked, then pruned under us, would fail imports
        if os.path.isfile(os.path.join(target, ".complete")) and _hold(target) and _tree_ok(target):
            _private(target, "the agent's unpacked tree")
            if attempt:  # this run unpacked a version new to this home: the earlier ones can go
                _prune(os.path.dirname(archive), os.path.basename(target))
            return target
        _release()
        if attempt == 0:
            if os.path.isfile(os.path.join(target, ".complete")):  # a finished tree failed its check: the answer says so
                os.environ["FLEETROLL_AGENT_REPAIRED"] = target
            _unpack(verified or archive, target)
    _refuse(f"{DAMAGED}: the unpacked tree {target} does not match the archive's manifest", 97)
    return target


def _hold(target: str) -> bool:
    """Take a shared lock on `target`'s .complete for this process's life; False if `target` is not (or no longer) that tree.

    A pruner renames a tree away while it holds the exclusive lock: the check after our lock compares the locked
    file with what `target` names now, so we never run from a tree on its way out. A regular file, not the
    directory: flock of a directory is less portable."""
    marker = os.path.join(target, ".complete")
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a pruner checks and renames (milliseconds)
    try:
        same = os.path.samestat(os.fstat(fd), os.lstat(marker))
    except OSError:
        same = False
    if not same:
        os.close(fd)
        return False
    _HELD.append(fd)
    return True


def _release() -> None:
    while _HELD:
        os.close(_HELD.pop())


def _names_lock(directory: str) -> int:
    fd = os.open(os.path.join(directory, NAMES_LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _prune(directory: str, current: str, keep: int = KEEP, min_age_s: float = MIN_AGE_S) -> list[str]:
    """Remove earlier agent versions from `directory` (~/.fleetroll): not the `keep` uploaded last, not one uploaded
    within `min_age_s`, not one a process runs from. Returns the versions removed.

    Only names this bootstrap and the controller's upload make are touched (agent-<16 hex>, its .pyz, the
    .tmp/.bad/.prune/.part leftovers), only this user's, never through a symlink, and a tree only when it holds
    the .complete and MANIFEST.json every unpack writes. Best effort: a failure leaves the version, the call goes on.
    """
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return []
    try:
        if _fs_type(dfd) not in _LOCAL_FS:
            return []
        names = os.listdir(dfd)
    except OSError:
        return []
    finally:
        os.close(dfd)
    me, now = os.geteuid(), time.time()
    uploaded: dict[str, float] = {}
    for name in names:
        try:
            st = os.lstat(os.path.join(directory, name))
        except OSError:
            continue
        if st.st_uid != me:
            continue
        m = _VERSION.fullmatch(name)
        if m and f"agent-{m.group(1)}" != current:
            uploaded[m.group(1)] = max(uploaded.get(m.group(1), 0.0), st.st_mtime)
        elif _LEFTOVER.fullmatch(name) and st.st_ctime < now - LEFTOVER_S:  # ctime: a rename resets it, mtime not
            _remove_leftover(os.path.join(directory, name), st)
    doomed = [v for v in sorted(uploaded, key=uploaded.get, reverse=True)[keep:] if uploaded[v] < now - min_age_s]
    asides: dict[str, str] = {}
    if doomed:
        names_fd = _names_lock(directory)
        try:
            for version in doomed:
                aside = _take_version(directory, version, me)
                if aside is not None:
                    asides[version] = aside
        finally:
            os.close(names_fd)
    for aside in asides.values():
        if aside:
            _remove_tree(aside)
    return list(asides)


def _take_version(directory: str, version: str, me: int) -> str | None:
    """Under the names lock: rename an unused tree of `version` away and unlink its archive. The tree's path once
    renamed ("" if there was no tree), or None when the version stays."""
    tree = os.path.join(directory, f"agent-{version}")
    aside = ""
    try:
        st = os.lstat(tree)
    except FileNotFoundError:
        st = None
    except OSError:
        return None
    if st is not None:
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != me:
            return None  # a symlink or someone else's: not ours to follow or remove
        marker = os.path.join(tree, ".complete")
        try:
            fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None  # not a tree an unpack finished: not ours to judge
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # refused while any process runs from it
            if not os.path.samestat(os.fstat(fd), os.lstat(marker)) or not _is_file(os.path.join(tree, "MANIFEST.json")):
                return None
            aside = f"{tree}.prune{os.getpid()}"
            os.rename(tree, aside)  # gone from its name while still locked: a run that opened it first sees that
        except OSError:
            return None
        finally:
            os.close(fd)
    archive = f"{tree}.pyz"
    try:
        st = os.lstat(archive)
        if stat.S_ISREG(st.st_mode) and st.st_uid == me:
            os.unlink(archive)  # a run that has it open keeps reading it; one that asks for it again gets it uploaded
    except OSError:
        pass
    return aside


def _fs_type(fd: int) -> int:
    """statfs(2) f_type of the filesystem `fd` is on (os.statvfs has none); -1 when it cannot be read."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(512)  # struct statfs: 120 bytes on 64-bit Linux, f_type (a long) first
    if libc.fstatfs(ctypes.c_int(fd), buf) != 0:
        return -1
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _is_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _remove_leftover(path: str, st: os.stat_result) -> None:
    if stat.S_ISREG(st.st_mode):
        try:
            os.unlink(path)
        except OSError:
            pass
    elif stat.S_ISDIR(st.st_mode):
        _remove_tree(path)


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)  # fd-based on Linux: never follows a symlink inside


if __name__ == "__main__":
    if len(sys.argv) < 2 or len(sys.argv[1]) != 64:
        _refuse("the controller must name the archive's SHA-256: python3 -I <agent>.pyz <sha256>")
    # Set by the controller's verifier (agentpack.VERIFIER), which runs this file from the archive's open file.
    _verified = globals().get("FLEETROLL_VERIFIED")
    if _verified:
        root = _unpacked(_verified[0], sys.argv[1], f"/proc/self/fd/{int(_verified[1])}")
    else:
        root = _unpacked(os.path.abspath(sys.argv[0]), sys.argv[1])
    sys.path[0] = root
    from agent.__main__ import main

    sys.exit(main())
