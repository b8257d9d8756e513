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
This file is copied to the archive's root as __main__.py; it uses the standard library only.
"""

import hashlib
import json
import os
import stat
import sys

DAMAGED = "fleetroll-agent: archive damaged"  # the controller re-uploads when it reads this
REFUSED = 96


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
        if os.path.isfile(os.path.join(target, ".complete")) and _tree_ok(target):
            _private(target, "the agent's unpacked tree")
            return target
        if attempt == 0:
            _unpack(verified or archive, target)
    _refuse(f"{DAMAGED}: the unpacked tree {target} does not match the archive's manifest", 97)
    return target


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
