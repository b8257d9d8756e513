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
* every file of the unpacked tree must match the archive's MANIFEST.json, no file may be
  there that the archive did not put there (bytecode aside: it is compiled with checked
  hashes), and nothing in the tree may be a symlink, another user's or writable by others.
  A tree that fails is unpacked again.

Every run holds a shared lock (flock) on the tree it runs from, inherited by the detached
transaction it may fork. The first run of a new version prunes the earlier ones: each release
left ~2.4 MB in ~/.fleetroll, and a checkout that changes its agent with every commit filled
homes. The KEEP most recently uploaded earlier versions stay (two operators on two releases do
not re-upload each other's), and so does any tree a process still holds; a pruned version the
controller asks for again is simply uploaded again.
This file is copied to the archive's root as __main__.py; it uses the standard library only.
"""

import hashlib
import json
import os
import re
import stat
import sys

DAMAGED = "fleetroll-agent: archive damaged"  # the controller re-uploads when it reads this
REFUSED = 96
KEEP = 3  # earlier agent versions kept beside the running one
LEFTOVER_S = 3600  # an unpack's own temporary tree older than this was left by a process that died
_VERSION = re.compile(r"agent-([0-9a-f]{16})(\.pyz)?")
_LEFTOVER = re.compile(r"agent-[0-9a-f]{16}\.(tmp|bad|prune)[0-9]+")
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
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tree_ok(target: str) -> bool:
    """The unpacked tree is exactly the manifest's files: no symlink anywhere (a file or a directory:
    `http -> elsewhere` would make `import http` run the other code), nothing another user owns or
    anyone else can write, nothing missing, nothing extra (checked-hash bytecode aside)."""
    me = os.geteuid()

    def sound(path: str, is_dir: bool) -> bool:
        try:
            st = os.lstat(path)
        except OSError:
            return False
        kind = stat.S_ISDIR if is_dir else stat.S_ISREG  # a symlink is neither, by lstat
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
            if not sound(full, False):
                return False
            rel = os.path.relpath(full, target).replace(os.sep, "/")
            if rel in ("MANIFEST.json", ".complete") or (os.path.basename(top) == "__pycache__" and name.endswith(".pyc")):
                continue
            if rel not in manifest or _sha256(full) != manifest[rel]:
                return False
            seen.add(rel)
    return seen == set(manifest)


def _unpack(archive: str, target: str) -> None:
    """Unpack beside `target`, then put it in place with a rename: never delete a tree another call may run from.

    Two agent calls of one user can start at once (two hosts sharing a home, two operators, a status
    beside a rollout). Removing the target first, as this once did, deleted the tree the other call had
    just put in place and was importing from ("No module named agent.paths"). A tree already in place
    and sound is used as it is; only one that fails the check is moved aside (one rename) and replaced.
    """
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
    try:
        os.rename(tmp, target)  # in place at once, or refused because something is already there
        return
    except OSError:
        pass
    if os.path.isfile(os.path.join(target, ".complete")) and _tree_ok(target):
        shutil.rmtree(tmp, ignore_errors=True)  # another call put the same tree in place first
        return
    # Ours to replace: named after this archive, beside it, in the private directory checked above.
    aside = f"{target}.bad{os.getpid()}"
    os.rename(target, aside)
    os.rename(tmp, target)
    if os.path.islink(aside) or not os.path.isdir(aside):
        os.unlink(aside)
    else:
        shutil.rmtree(aside, ignore_errors=True)


def _unpacked(archive: str, want: str, verified: str = "") -> str:
    """The checked tree for `archive`. `verified` names the archive's open file (/proc/self/fd/N) when the
    controller's verifier has already checked that very file's owner, mode and SHA-256."""
    _private(os.path.dirname(archive), "the agent's directory")
    if not verified:
        _private(archive, "the agent archive")
        if _sha256(archive) != want:
            _refuse(f"{DAMAGED}: its SHA-256 is not {want}", 97)
    target = archive[: -len(".pyz")] if archive.endswith(".pyz") else archive + ".d"
    for attempt in range(2):
        # Locked before it is checked: a tree checked and then pruned under us would fail our imports later.
        if os.path.isfile(os.path.join(target, ".complete")) and _hold(target) and _tree_ok(target):
            _private(target, "the agent's unpacked tree")
            if attempt:  # this run unpacked a version new to this home: the earlier ones can go
                _prune(os.path.dirname(archive), os.path.basename(target))
            return target
        _release()
        if attempt == 0:
            _unpack(verified or archive, target)
    _refuse(f"{DAMAGED}: the unpacked tree {target} does not match the archive's manifest", 97)
    return target


def _hold(target: str) -> bool:
    """Take a shared lock on `target` for this process's life; False if `target` is not (or no longer) that tree.

    A pruner renames a tree away while it holds the exclusive lock: the check after our lock
    compares the locked directory with what `target` names now, so we never run from a tree on
    its way out.
    """
    import fcntl

    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        same = os.path.samestat(os.fstat(fd), os.lstat(target))
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


def _prune(directory: str, current: str, keep: int = KEEP) -> list[str]:
    """Remove earlier agent versions from `directory` (~/.fleetroll): all but the `keep` uploaded last and any in use.

    Only names this bootstrap and the controller's upload make are touched (agent-<16 hex>, its
    .pyz, an unpack's .tmp/.bad/.prune leftovers), only this user's, never through a symlink, and
    a tree only when it holds the MANIFEST.json every unpack writes. Best effort: a failure leaves
    the version in place and the call goes on. Returns the versions removed.
    """
    me = os.geteuid()
    found: dict[str, float] = {}
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in names:
        try:
            st = os.lstat(os.path.join(directory, name))
        except OSError:
            continue
        m = _VERSION.fullmatch(name)
        if m and f"agent-{m.group(1)}" != current and st.st_uid == me:
            found[m.group(1)] = max(found.get(m.group(1), 0.0), st.st_mtime)
        elif _LEFTOVER.fullmatch(name) and st.st_uid == me and stat.S_ISDIR(st.st_mode) and st.st_mtime < _now() - LEFTOVER_S:
            _remove_tree(os.path.join(directory, name), need_manifest=False)
    removed = []
    for version in sorted(found, key=found.get, reverse=True)[keep:]:
        if _remove_version(directory, version, me):
            removed.append(version)
    return removed


def _now() -> float:
    import time

    return time.time()


def _remove_version(directory: str, version: str, me: int) -> bool:
    """One earlier version: its tree (unless a process holds it), then its archive."""
    import fcntl

    tree = os.path.join(directory, f"agent-{version}")
    try:
        st = os.lstat(tree)
    except FileNotFoundError:
        st = None
    except OSError:
        return False
    if st is not None:
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != me:
            return False  # a symlink or someone else's: not ours to follow or remove
        try:
            fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # refused while any process runs from it
            if not os.path.samestat(os.fstat(fd), os.lstat(tree)) or not _is_file(os.path.join(tree, "MANIFEST.json")):
                return False
            aside = f"{tree}.prune{os.getpid()}"
            os.rename(tree, aside)  # gone from its name while still locked: a run that opened it first sees that
        except OSError:
            return False
        finally:
            os.close(fd)
        _remove_tree(aside, need_manifest=True)
    archive = f"{tree}.pyz"
    try:
        st = os.lstat(archive)
        if stat.S_ISREG(st.st_mode) and st.st_uid == me:
            os.unlink(archive)  # a run that has it open keeps reading it; one that asks for it again gets it uploaded
    except OSError:
        pass
    return True


def _is_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _remove_tree(path: str, need_manifest: bool) -> None:
    import shutil

    if need_manifest and not _is_file(os.path.join(path, "MANIFEST.json")):
        return
    shutil.rmtree(path, ignore_errors=True)  # fd-based on Linux: never follows a symlink inside


if __name__ == "__main__":
    if len(sys.argv) < 2 or len(sys.argv[1]) != 64:
        _refuse("the controller must name the archive's SHA-256: python3 -I <agent>.pyz <sha256>")
    # Set by the controller's verifier (agentpack.VERIFIER), which runs this file from the
    # archive's open file: sys.argv[0] is then /proc/self/fd/N, not the archive's path.
    _verified = globals().get("FLEETROLL_VERIFIED")
    if _verified:
        root = _unpacked(_verified[0], sys.argv[1], f"/proc/self/fd/{int(_verified[1])}")
    else:
        root = _unpacked(os.path.abspath(sys.argv[0]), sys.argv[1])
    sys.path[0] = root
    from agent.__main__ import main

    sys.exit(main())
