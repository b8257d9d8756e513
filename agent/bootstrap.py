"""Zipapp bootstrap: verify, unpack once next to the archive, then run from the unpacked tree.

Importing the docker SDK from inside a zip costs about 0.3 s on every call because no
bytecode can be cached there. Unpacking once into a directory named by the archive's
content hash (and compiling it) makes every later call pay only for cached bytecode.

Before every run, and with `python3 -I` (no PYTHON* variables, no user site):
* the directory holding the agent must belong to this user and be closed to others' writes
  (anyone who can write there could run code as this user);
* the archive's full SHA-256 must equal the one the controller names on the command line;
* every file of the unpacked tree must match the archive's MANIFEST.json, and no file may
  be there that the archive did not put there (bytecode aside: it is compiled with
  checked hashes, so a stale .pyc is never used). A tree that fails is unpacked again.
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
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        _refuse(f"{what} {path} must be owned by this user (uid {os.geteuid()}), not a symlink, and not group- or"
                f" world-writable (it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); fix it: chmod go-w {path}")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tree_ok(target: str) -> bool:
    try:
        with open(os.path.join(target, "MANIFEST.json")) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    seen = set()
    for top, _dirs, files in os.walk(target):
        for name in files:
            full = os.path.join(top, name)
            rel = os.path.relpath(full, target).replace(os.sep, "/")
            if rel in ("MANIFEST.json", ".complete") or (os.path.basename(top) == "__pycache__" and name.endswith(".pyc")):
                continue
            if rel not in manifest or os.path.islink(full) or _sha256(full) != manifest[rel]:
                return False
            seen.add(rel)
    return seen == set(manifest)


def _unpack(archive: str, target: str) -> None:
    import compileall
    import py_compile
    import shutil
    import zipfile

    if os.path.lexists(target):
        # Ours to remove: named after this archive, beside it, in the private directory checked above.
        if os.path.islink(target) or not os.path.isdir(target):
            os.unlink(target)
        else:
            shutil.rmtree(target)
    tmp = f"{target}.tmp{os.getpid()}"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp)
    compileall.compile_dir(tmp, quiet=2, workers=1, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    open(os.path.join(tmp, ".complete"), "w").close()
    try:
        os.rename(tmp, target)
    except OSError:  # another call unpacked it first; it is checked before use like any other
        shutil.rmtree(tmp, ignore_errors=True)


def _unpacked(archive: str, want: str) -> str:
    _private(os.path.dirname(archive), "the agent's directory")
    _private(archive, "the agent archive")
    if _sha256(archive) != want:
        _refuse(f"{DAMAGED}: its SHA-256 is not {want}", 97)
    target = archive[: -len(".pyz")] if archive.endswith(".pyz") else archive + ".d"
    for attempt in range(2):
        if os.path.isfile(os.path.join(target, ".complete")) and _tree_ok(target):
            _private(target, "the agent's unpacked tree")
            return target
        if attempt == 0:
            _unpack(archive, target)
    _refuse(f"{DAMAGED}: the unpacked tree {target} does not match the archive's manifest", 97)
    return target


if __name__ == "__main__":
    if len(sys.argv) < 2 or len(sys.argv[1]) != 64:
        _refuse("the controller must name the archive's SHA-256: python3 -I <agent>.pyz <sha256>")
    root = _unpacked(os.path.abspath(sys.argv[0]), sys.argv[1])
    sys.path[0] = root
    from agent.__main__ import main

    sys.exit(main())
