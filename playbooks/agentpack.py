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
import zipfile
from functools import lru_cache
from pathlib import Path

AGENT_DIR = Path(__file__).resolve().parent.parent / "agent"
# What the agent imports on a host; each is pure Python (compiled speed-ups are skipped).
VENDORED = ("docker", "requests", "urllib3", "idna", "certifi", "charset_normalizer", "pynvml", "tenacity")
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


@lru_cache(maxsize=1)
def build() -> tuple[bytes, str]:
    """Return (archive bytes, sha256 hex) for the agent as this checkout defines it."""
    entries = [("__main__.py", AGENT_DIR / "bootstrap.py")]
    entries += _source_files(AGENT_DIR, "agent")
    entries += _vendored_files()
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


def command(digest: str, python: str = "/usr/bin/python3") -> list[str]:
    """How a host runs the agent: its named interpreter, isolated from PYTHON* variables and user site, naming the full hash."""
    return [python, "-I", remote_name(digest), digest]


def remote_name(digest: str) -> str:
    """Path relative to the SSH user's home; SFTP and the shell both resolve it there."""
    return f".fleetroll/agent-{digest[:16]}.pyz"
