"""Secrets given by reference: `env: {HF_TOKEN: {secret: hf_token}}` in the inventory.

The value lives only on the host, in a file per secret (FLEETROLL_SECRETS_DIR, default
/etc/fleetroll/secrets) that root owns and nobody else may write or, outside its group,
read. The agent reads it at the moment it creates a container, so a token never transits
the controller, the ledger, the journal or a terminal: everything else carries the
reference. Containers record which env keys came from which secret (a label), so a
restore or a recreation from the journal resolves them again.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class SecretError(Exception):
    pass


def secrets_dir() -> Path:
    return Path(os.environ.get("FLEETROLL_SECRETS_DIR") or "/etc/fleetroll/secrets")


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"secret"}


def refs(env: dict[str, Any]) -> dict[str, str]:
    """{ENV_KEY: secret name} for the env entries that are references."""
    return {k: v["secret"] for k, v in (env or {}).items() if is_ref(v)}


def read(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise SecretError(f"secret name {name!r} is not a plain file name")
    path = secrets_dir() / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SecretError(f"secret {name!r} is not on this host (expected {path}, owned by root, mode 0640 or 0600)") from None
    except OSError as exc:
        raise SecretError(f"secret {name!r} at {path} cannot be read: {exc.strerror} (a symlink is refused)") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IRWXO) or not stat.S_ISREG(st.st_mode):
            raise SecretError(f"secret {name!r} at {path} must be a regular file owned by root, mode 0640 or 0600"
                              f" (it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})")
        return os.read(fd, 1 << 16).decode().rstrip("\n")
    finally:
        os.close(fd)


def resolve(env: dict[str, Any]) -> dict[str, str]:
    """Env with every reference replaced by its value: only ever handed to Docker's create call."""
    return {k: read(v["secret"]) if is_ref(v) else str(v) for k, v in (env or {}).items()}
