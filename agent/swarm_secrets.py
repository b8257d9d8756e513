"""Swarm secrets made on a manager from this host's own secret files: the value never leaves the host.

`engine: swarm` gives a service `{secret: NAME, as: file}` as a Swarm secret. Swarm secrets are
immutable, so each value gets a name of its own, `fr_<NAME>_<v>`, where `<v>` is a keyed hash of
the value (HMAC-SHA256 with this host's redaction key, agent/journal.py) computed here: a new
value is a new name (the stack's spec changes, Swarm updates the service), the same value is the
same name (nothing to do), and the name says nothing about the value to whoever reads the
stack, the ledger or `docker service inspect` without the key. The file is read with the SSH
push's own checks (agent/secrets.read: root's, not writable by others, no symlink).

The controller sends names only and gets names back; `create` false only computes them (a plan,
a dry run), true also makes the missing Swarm secrets through this host's dockerd.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from . import journal, secrets
from .answer import answer
from .digests import sha256

OP = "swarm_secrets"
PREFIX = "fr_"
CONTEXT = b"fleetroll-swarm-secret-v1"
LABEL = "io.fleetroll.secret"  # the inventory's secret name, on the Swarm secret
SWARM_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}[A-Za-z0-9]")  # Docker's rule for a secret name, 64 at most


def versioned_name(name: str, value: str, key: bytes) -> str:
    """`fr_<name>_<12 hex of HMAC(key, name, value)>`: one Swarm secret per value, never the value itself (pure)."""
    import hmac  # here, not at the top: it loads OpenSSL, which most agent calls never need

    mac = hmac.new(key, b"\0".join([CONTEXT, name.encode(), value.encode()]), sha256).hexdigest()[:12]
    out = f"{PREFIX}{name}_{mac}"
    if not SWARM_NAME_RE.fullmatch(out):
        raise secrets.SecretError(f"secret name {name!r} is too long for a Swarm secret ({out!r} has {len(out)} characters,"
                                  " Docker allows 64): give it a name of at most 47 characters")
    return out


def _exists(engine, name: str) -> bool:
    """Docker's name filter also matches a part of a name: compare exactly."""
    listed = engine.call("GET", "/secrets", {"filters": {"name": [name]}}) or []
    return any((s.get("Spec") or {}).get("Name") == name for s in listed)


def _create(engine, name: str, value: str, label: str) -> None:
    data = base64.b64encode(value.encode()).decode()
    engine.call("POST", "/secrets/create", body={"Name": name, "Data": data, "Labels": {LABEL: label}})


def swarm_secrets_op(args: dict[str, Any]) -> dict:
    """{"secrets": [NAME, ...], "create": bool} -> {"names": {NAME: swarm name}, "made": [swarm names made now]}."""
    wanted = [str(n) for n in args.get("secrets") or []]
    key = journal.redaction_key()
    # Each file is read once: the name and the Swarm secret come from that one value, so a value rotated
    # between two reads cannot give a secret named after one value and holding another.
    values: dict[str, str] = {}
    names: dict[str, str] = {}
    try:
        for n in wanted:
            values[n] = secrets.read(n)
            names[n] = versioned_name(n, values[n], key)
    except secrets.SecretError as exc:
        return answer(OP, False, f"{exc} (on this manager: Swarm secrets are made from its own secret files)")
    made: list[str] = []
    if args.get("create"):
        from .docker_errors import APIError
        from .engine import require_engine

        engine = require_engine(30.0)
        for n, sname in names.items():
            if _exists(engine, sname):
                continue
            try:
                _create(engine, sname, values[n], n)
            except APIError as exc:
                if not _exists(engine, sname):  # made by another operator at the same moment is made
                    return answer(OP, False, f"docker secret create {sname} failed: {str(exc)[:300]}",
                                  {"names": names, "made": made}, changed=bool(made))
            made.append(sname)
    return answer(OP, True, "", {"names": names, "made": made}, changed=bool(made))
