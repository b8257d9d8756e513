"""Pinning host keys without trust on first use: scan, show fingerprints, write only what the operator confirms.

OpenSSH fills ~/.ssh/known_hosts by trusting whatever key a host offers the first time;
fleetroll never does. Its known_hosts is a file of its own (beside the inventory by
default), and `fab hostkeys` is the only writer: it fetches each host's key, shows the
SHA256 fingerprint for the operator to compare out of band (on the host's console:
`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), and writes a key only when the
operator confirms it — interactively, or by naming the expected fingerprint with
`--accept HOST=SHA256:…`. A changed key is shown as CHANGED and handled the same way.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import paramiko


class HostKeyFileError(Exception):
    pass


@dataclass
class Scan:
    host: str
    entry: str  # the known_hosts host field: address, or [address]:port
    path: Path
    key: paramiko.PKey | None = None
    error: str = ""
    status: str = ""  # new | same | CHANGED | unreachable

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key) if self.key else ""


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's form: SHA256:<unpadded base64 of the key blob's digest>."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def entry_name(address: str, port: int) -> str:
    return address if port == 22 else f"[{address}]:{port}"


def check_file(path: Path) -> None:
    """Refuse what paramiko cannot honour: a revocation it would ignore is worse than no file."""
    if not path.exists():
        return
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("@"):
            marker = line.split()[0]
            raise HostKeyFileError(
                f"{path}:{n}: '{marker}' lines are not supported by fleetroll's SSH client; it cannot honour them."
                f" Remove the line{' and every line of the key it revokes' if marker == '@revoked' else ''}, then pin keys"
                " with fab hostkeys")
    try:
        paramiko.HostKeys(str(path))
    except (paramiko.SSHException, ValueError) as exc:
        raise HostKeyFileError(f"{path}: not a valid known_hosts file ({exc}); fix or remove the bad line") from None


def scan(host: str, address: str, port: int, path: Path, timeout: float) -> Scan:
    s = Scan(host, entry_name(address, port), path)
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
        t = paramiko.Transport(sock)
        try:
            t.start_client(timeout=timeout)
            s.key = t.get_remote_server_key()
        finally:
            t.close()
    except (OSError, paramiko.SSHException, EOFError) as exc:
        s.status, s.error = "unreachable", f"{address}:{port}: {exc}"
        return s
    known = paramiko.HostKeys(str(path)) if path.exists() else paramiko.HostKeys()
    pinned = (known.lookup(s.entry) or {}).get(s.key.get_name())
    s.status = "new" if pinned is None else ("same" if pinned == s.key else "CHANGED")
    return s


def write(path: Path, accepted: list[Scan]) -> None:
    """Replace the pinned key of each accepted entry (same key type) and add new ones, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = path.read_text().splitlines() if path.exists() else ["# fleetroll's pinned host keys: written by fab hostkeys, only as confirmed"]
    for s in accepted:
        lines = [ln for ln in lines if not (ln.split()[:2] == [s.entry, s.key.get_name()])]
        lines.append(f"{s.entry} {s.key.get_name()} {s.key.get_base64()}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
