"""Build the agent zipapp: the agent package plus the libraries it needs, named by hash.

The archive is deterministic (sorted entries, fixed timestamps, no bytecode), so its
SHA-256 names exactly what runs on a host: the controller uploads it only when a host
lacks that name, and two controllers on the same commit ship the same file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import zipfile
import zlib
from functools import lru_cache
from pathlib import Path

AGENT_DIR = Path(__file__).resolve().parent.parent / "agent"
# What the agent imports on a host; each is pure Python (compiled speed-ups are skipped). Docker is spoken
# with http.client (agent/engine.py), so no docker SDK, requests or urllib3.
VENDORED = ("pynvml", "tenacity")
_EPOCH = (1980, 1, 1, 0, 0, 0)
_SKIP_SUFFIXES = (".pyc", ".so", ".pyd")


def _source_files(top: Path, arc_prefix: str) -> list[tuple[str, Path]]:
    if top.is_file():
        return [(arc_prefix, top)]
    out = []
    for p in sorted(top.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(_SKIP_SUFFIXES):
            out.append((f"{arc_prefix}/{p.relative_to(top).as_posix()}", p))
    return out


def _vendored_files() -> list[tuple[str, Path]]:
    files = []
    for name in VENDORED:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"cannot build the agent: library {name!r} is not installed on the controller")
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            files += _source_files(origin.parent, name)
        else:
            files += _source_files(origin, origin.name)
    return files


def _entries() -> list[tuple[str, Path]]:
    return [("__main__.py", AGENT_DIR / "bootstrap.py"), *_source_files(AGENT_DIR, "agent"), *_vendored_files()]


def _cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fleetroll" / "agent-digests.json"


def _files_key(entries: list[tuple[str, Path]]) -> str:
    """What the archive is made of, by name, size, device and inode, modification and change times (ns), and the zlib
    that packs it. The change time moves on any write, even one that puts the old modification time back (cp -p)."""
    h = hashlib.sha256(zlib.ZLIB_RUNTIME_VERSION.encode())
    for arc, path in sorted(entries):
        st = path.stat()
        h.update(f"{arc}\0{st.st_size}\0{st.st_dev}\0{st.st_ino}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode())
    return h.hexdigest()


def digest() -> str:
    """The archive's SHA-256, without building it when its files are as they were at the last build here.

    Every agent call names the archive by its hash; building and hashing it costs ~25 ms of
    CPU, which a command's first SSH packet would wait for (and prewarm before anything else).
    The cache maps the files' sizes, inodes and nanosecond modification and change times to the
    hash the build gave; any change to a file builds again. A command that uploads builds anyway.
    """
    if build.cache_info().currsize:
        return build()[1]
    key = ""
    try:
        key = _files_key(_entries())
        known = json.loads(_cache_file().read_text())
        if isinstance(known, dict) and _HEX64.fullmatch(str(known.get(key, ""))):
            return known[key]
    except (OSError, ValueError):
        pass
    sha = build()[1]
    if key:
        _remember(key, sha)
    return sha


def _remember(key: str, sha: str) -> None:
    """Keep the newest few builds' hashes (one per checkout or version in use); a cache that cannot be written is no cache."""
    path = _cache_file()
    try:
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
        known = {k: v for k, v in (known.items() if isinstance(known, dict) else []) if k != key}
        known = dict(list(known.items())[-7:]) | {key: sha}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, path)
    except OSError:
        pass


@lru_cache(maxsize=1)
def build() -> tuple[bytes, str]:
    """Return (archive bytes, sha256 hex) for the agent as this checkout defines it."""
    entries = _entries()
    contents = {arc: path.read_bytes() for arc, path in sorted(entries)}
    # What the host checks its unpacked tree against before every run (bootstrap.py).
    contents["MANIFEST.json"] = json.dumps({arc: hashlib.sha256(b).hexdigest() for arc, b in contents.items()},
                                           sort_keys=True).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for arc in sorted(contents):
            info = zipfile.ZipInfo(arc, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, contents[arc])
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


# The fixed verifier the controller runs before any of the archive's own code (`python3 -I -S -c VERIFIER
# <remote path> <sha256>`): a replaced archive cannot skip checks it would carry itself. It opens
# ~/.fleetroll and the archive with O_NOFOLLOW, requires both to be this user's or root's and not
# writable by group or others, hashes the open file and, only if the SHA-256 is the one named, runs
# that same open file (/proc/self/fd/N, so a rename after the check changes nothing), telling the
# archive's bootstrap what was verified. A missing or different archive says "archive damaged"
# (exit 97): the controller uploads it again (transport.agent_needs_upload). Nothing is
# interpolated into it; both arguments are checked here and again by the verifier.
# Run on every agent call of every host, so it imports little: the builtin _sha256 rather than
# hashlib (which loads OpenSSL: ~2.5 ms of the host's CPU per call), and the archive's __main__
# through zipimport (already loaded by the interpreter) rather than runpy, which pulls in pkgutil
# and importlib.util (~3 ms); both as runpy did: the zip first on sys.path, the code run as __main__.
VERIFIER = """\
import os, re, stat, sys
try:
    from _sha256 import sha256
except ImportError:
    try:
        from _sha2 import sha256
    except ImportError:
        from hashlib import sha256
def no(why, code=96):
    sys.stderr.write("fleetroll-agent: " + why + "\\n")
    sys.exit(code)
if len(sys.argv) != 3 or not re.fullmatch("[.]fleetroll/agent-[0-9a-f]{16}[.]pyz", sys.argv[1]) \\
        or not re.fullmatch("[0-9a-f]{64}", sys.argv[2]) or sys.argv[1][17:33] != sys.argv[2][:16]:
    no("usage: python3 -I -S -c VERIFIER .fleetroll/agent-<sha256[:16]>.pyz <sha256>")
path, want = sys.argv[1:]
try:
    d = os.open(".fleetroll", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    f = os.open(path[len(".fleetroll/"):], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=d)
except FileNotFoundError:
    no("archive damaged: can't open file " + path + " (missing)", 97)
except OSError as e:
    no("refusing " + path + ": " + e.strerror + " (a symlink, or not a directory and a file?)")
me = os.geteuid()
for fd, what, kind in ((d, "~/.fleetroll", stat.S_ISDIR), (f, "~/" + path, stat.S_ISREG)):
    st = os.fstat(fd)
    if not kind(st.st_mode) or st.st_uid not in (me, 0) or st.st_mode & 0o022:
        no(f"refusing {what}: it must be owned by this user (uid {me}) or root and not writable by group or others"
           f" (it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); fix: chmod go-w {what}")
h = sha256()
for chunk in iter(lambda: os.read(f, 1 << 20), b""):
    h.update(chunk)
if h.hexdigest() != want:
    no("archive damaged: its SHA-256 is not " + want, 97)
where = os.path.abspath(path)
sys.argv = [where, want]
import zipimport
z = f"/proc/self/fd/{f}"
code = zipimport.zipimporter(z).get_code("__main__")
sys.path.insert(0, z)
exec(code, {"__name__": "__main__", "__file__": z + "/__main__.py", "__builtins__": __builtins__,
            "FLEETROLL_VERIFIED": (where, f)})
"""
_HEX64 = re.compile(r"[0-9a-f]{64}")


def command(digest: str, python: str = "/usr/bin/python3") -> list[str]:
    """How a host runs the agent: its named interpreter, isolated from PYTHON* variables, the user site and the
    current directory, running the fixed VERIFIER on the archive's path and full hash (the archive's own code runs
    only once those hold).

    `-S`: no `site` either. The agent needs nothing outside the standard library and its archive, and `site` would
    run the host installation's `.pth` lines and sitecustomize (Debian's among them) before the verifier: code the
    agent did not bring, and ~7 ms of the host's CPU per call (20 hosts calling at once on the lab)."""
    if not _HEX64.fullmatch(digest):
        raise ValueError(f"agent digest {digest!r} is not 64 lowercase hex digits")
    return [python, "-I", "-S", "-c", VERIFIER, remote_name(digest), digest]


def remote_name(digest: str) -> str:
    """Path relative to the SSH user's home; SFTP and the shell both resolve it there."""
    return f".fleetroll/agent-{digest[:16]}.pyz"
