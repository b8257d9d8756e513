"""A random key made once at a path and read ever after: first writer wins, nobody sees a half-written key."""

from __future__ import annotations

import os
from pathlib import Path


def load_or_create(path: Path, mode: int) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    try:
        os.link(tmp, path)  # atomic, and fails if another process made it first: then theirs is the key
    except FileExistsError:
        pass
    os.unlink(tmp)
    return path.read_bytes()
