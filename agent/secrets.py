"""Secrets given by reference: `env: {HF_TOKEN: {secret: hf_token}}` in the inventory.

The value lives only on the host, in a file per secret (FLEETROLL_SECRETS_DIR, default
/etc/fleetroll/secrets) that root owns and nobody else may write or, outside its group,
read. The agent reads it at the moment it creates a container, so a token never transits
the controller, the ledger, the journal or a terminal: everything else carries the
reference. Containers record which env keys came from which secret (a label), so a
restore or a recreation from the journal resolves them again.

`{secret: NAME, as: file}` gives the container the value as a file instead
(`/run/secrets/NAME`, made by agent/secret_files.py on a tmpfs) and the env key holds that
path: the value is then in neither `docker inspect` nor the container's environment.

A second kind of reference, `{report_key: NAME}`, is made by the planner (never written in
the inventory): the container's own start-up report key, derived here from the fleet's
report secret NAME and the host, service and image digest this very container runs with.
The collector derives the same key from what a report claims, so a container can report
for itself and for nothing else, and the fleet secret itself never enters a container
other than the collector's.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from pathlib import Path

from .digests import sha256

TYPE_CHECKING = False  # importing typing costs every agent call ~2.5 ms; Any is only ever an annotation here
if TYPE_CHECKING:
    from typing import Any

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class SecretError(Exception):
    pass


def secrets_dir() -> Path:
    return Path(os.environ.get("FLEETROLL_SECRETS_DIR") or "/etc/fleetroll/secrets")


REPORT_KEY_CONTEXT = b"fleetroll-report-v1"
AS_FILE = "file"  # {secret: NAME, as: file}: the only other way a secret may reach a container
MOUNT_DIR = "/run/secrets"  # where a container finds its secret files (read-only, on a tmpfs of the host)


def is_ref(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    keys = set(value)
    return keys in ({"secret"}, {"report_key"}) or (keys == {"secret", "as"} and value["as"] == AS_FILE)


def is_file_ref(value: Any) -> bool:
    return is_ref(value) and value.get("as") == AS_FILE


def file_refs(env: dict[str, Any]) -> dict[str, str]:
    """{ENV_KEY: secret name} of the env entries given to the container as files (pure)."""
    return {k: v["secret"] for k, v in (env or {}).items() if is_file_ref(v)}


def file_path(name: str) -> str:
    """Where the container finds secret NAME as a file; also the value of its env key."""
    if not NAME_RE.fullmatch(name or ""):
        raise SecretError(f"secret name {name!r} is not a plain file name")
    return f"{MOUNT_DIR}/{name}"


def in_mount_dir(bind: str) -> bool:
    """Does a bind (`src:dst[:mode]`) put something at MOUNT_DIR or below, where secret files are mounted (pure)?"""
    dst = (bind.split(":") + [""])[1]
    dst = posixpath.normpath(dst) if dst else ""
    return dst == MOUNT_DIR or dst.startswith(MOUNT_DIR + "/")


def secret_mount(source: str) -> dict[str, Any]:
    """The HostConfig.Mounts entry of a container's secret directory (pure).

    Why Mounts and not a `Binds` string: for a missing bind source, a `Binds` entry makes Docker
    create an empty root-owned directory and start the container anyway (after a reboot /run is
    empty and an `unless-stopped` container would come back with an empty /run/secrets); a
    `Mounts` bind is refused ("bind source path does not exist"), so the container stays down, loudly.
    """
    return {"Type": "bind", "Source": source, "Target": MOUNT_DIR, "ReadOnly": True}


def secret_mount_sources(host_config: dict[str, Any]) -> list[str]:
    """The host directories a container (its `docker inspect` HostConfig) mounts at MOUNT_DIR (pure).

    Both forms: `Mounts` (how the agent mounts them now) and `Binds` (containers made before).
    """
    out = [str(m.get("Source") or "") for m in host_config.get("Mounts") or []
           if isinstance(m, dict) and m.get("Type") == "bind" and posixpath.normpath(str(m.get("Target") or "/")) == MOUNT_DIR]
    out += [b.partition(":")[0] for b in host_config.get("Binds") or []
            if isinstance(b, str) and posixpath.normpath((b.split(":") + ["", ""])[1] or "/") == MOUNT_DIR]
    return [s for i, s in enumerate(out) if s and s not in out[:i]]


def refs(env: dict[str, Any]) -> dict[str, str | dict]:
    """{ENV_KEY: what the container's label records} for the env entries that are references.

    A plain env secret is recorded as its name (the label's original form); a secret file
    and a derived report key as their whole reference.
    """
    return {k: v["secret"] if set(v) == {"secret"} else dict(v) for k, v in (env or {}).items() if is_ref(v)}


def ref_from_label(recorded: Any) -> dict | None:
    """The env reference a container's secret-env label recorded for one key (inverse of `refs`)."""
    if isinstance(recorded, str):
        return {"secret": recorded}
    if is_ref(recorded):
        return dict(recorded)
    return None


def report_key(fleet_secret: str, host: str, service: str, digest: str) -> str:
    """The start-up report key of one container (the collector computes the same function)."""
    msg = b"\0".join([REPORT_KEY_CONTEXT, host.encode(), service.encode(), digest.encode()])
    import hmac  # here, not at the top: it loads OpenSSL, which most agent calls never need

    return hmac.new(fleet_secret.encode(), msg, sha256).hexdigest()


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


def problems(names: list[str]) -> dict[str, str]:
    """Of these secret names, those this host could not hand to a container now, and why (preflight's `secrets`).

    Each is read as a create would read it (so the same refusals); its value is dropped at once, never answered.
    """
    out: dict[str, str] = {}
    for name in names:
        try:
            read(name)
        except SecretError as exc:
            out[name] = str(exc)
    return out


def resolve(env: dict[str, Any]) -> dict[str, str]:
    """Env with every reference replaced by its value: only ever handed to Docker's create call.

    A secret file's value is resolved too (so a check that every secret is readable, and the
    hiding of values in log lines, cover it); at create, secret_files.materialize has already
    replaced each file reference by its path, and container_args.api_kwargs refuses an env in
    which a file secret's key holds anything else. A report key is derived from the host, service and digest in this same env, which the
    agent set from what it verified (FLEETROLL_IMAGE_DIGEST is the digest it pulled).
    """
    env = env or {}
    out = {}
    for k, v in env.items():
        if not is_ref(v):
            out[k] = str(v)
        elif "secret" in v:  # in env, or (before secret_files.materialize) as a file
            out[k] = read(v["secret"])
        else:
            ctx = [env.get(n) for n in ("FLEETROLL_HOST", "FLEETROLL_SERVICE", "FLEETROLL_IMAGE_DIGEST")]
            if not all(isinstance(c, str) and c for c in ctx):
                raise SecretError(f"env {k}: a report key needs FLEETROLL_HOST, FLEETROLL_SERVICE and FLEETROLL_IMAGE_DIGEST")
            out[k] = report_key(read(v["report_key"]), *ctx)
    return out


def since_created(label: str, created_at: str, now: float) -> dict[str, list[str]]:
    """Of the secrets a container's secret-env label names, those rewritten on this host after it was created, and
    those gone.

    A container holds the values it was created with (env and secret files are resolved at create; a
    restart by its policy, `docker restart` or a reboot re-reads nothing): a secret rotated on the host
    reaches it only with the next create (`fab restart`, a release), and nothing in its configuration
    changes, so only the file's modification time can say it, against Docker's `Created` (not StartedAt,
    which every restart moves). Seconds are compared with a second's margin (read to the second): a
    rotation within the create's own second is missed, never invented. Values are never read here.
    """
    import json

    from .timestamps import up_seconds

    try:
        recorded = json.loads(label) if label else {}
    except ValueError:
        return {}
    names = sorted({r.get("secret") or r.get("report_key") for r in map(ref_from_label, (recorded or {}).values())
                    if r and NAME_RE.fullmatch(str(r.get("secret") or r.get("report_key") or ""))})
    age = up_seconds(created_at, now)
    if not names or age is None:
        return {}
    created = now - age
    changed, gone = [], []
    for name in names:
        try:
            mtime = os.stat(secrets_dir() / name, follow_symlinks=False).st_mtime
        except FileNotFoundError:
            gone.append(name)
            continue
        except OSError:
            continue
        if mtime > created + 1:
            changed.append(name)
    return {k: v for k, v in (("changed", changed), ("gone", gone)) if v}
