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
    s.status = judge(dict(known.lookup(s.entry) or {}), s.key)
    return s


def judge(pinned: dict, key) -> str:
    """new | same | CHANGED (pure over the entry's pinned keys by type).

    A host that offers a key of another type than the one pinned for it has changed its key
    as surely as one offering another key of the same type: that is CHANGED, never "new"
    (which pinned both, and left the old key trusted).
    """
    if not pinned:
        return "new"
    return "same" if pinned.get(key.get_name()) == key else "CHANGED"


def write(path: Path, accepted: list[Scan]) -> None:
    """Replace the pinned key of each accepted entry (same key type) and add new ones, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = path.read_text().splitlines() if path.exists() else ["# fleetroll's pinned host keys: written by fab hostkeys, only as confirmed"]
    for s in accepted:
        # A confirmed CHANGED key replaces every key pinned for the entry, whatever its type: the old one is not trusted any more.
        lines = [ln for ln in lines if not (ln.split()[:1] == [s.entry] and (s.status == "CHANGED" or ln.split()[1:2] == [s.key.get_name()]))]
        lines.append(f"{s.entry} {s.key.get_name()} {s.key.get_base64()}")
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def parse_accepts(items: list[str], hosts: list[str] | None = None) -> dict[str, str]:
    """--accept HOST=SHA256:... values as {host: fingerprint}; a malformed one, or one for a host this run does not
    scan (`hosts`), is a HostKeyFileError naming it: an --accept must never be dropped without a word."""
    expected: dict[str, str] = {}
    for item in items:
        host, sep, fp = item.partition("=")
        if not sep or not fp.startswith("SHA256:"):
            raise HostKeyFileError(f"--accept {item!r}: write it as HOST=SHA256:<fingerprint>")
        if hosts is not None and host not in hosts:
            raise HostKeyFileError(f"--accept {item!r}: {host} is not among the hosts this run scans ({', '.join(hosts)});"
                                   " nothing was pinned: name it in --hosts too, or leave --hosts out")
        expected[host] = fp
    return expected


def scan_hosts(inv, hosts: list[str]) -> list[Scan]:
    """Each host's offered key, judged against the known_hosts the inventory gives it (a file paramiko cannot honour is refused)."""
    scans = []
    for h in hosts:
        path = inv.known_hosts_for(h)
        check_file(path)
        host = inv.fleet.hosts[h]
        scans.append(scan(h, host.address, host.port, path, inv.fleet.ssh.connect_timeout))
    return scans


def decide(scans: list[Scan], expected: dict[str, str], ask, say) -> tuple[list[Scan], list[Scan]]:
    """(accepted, still open) among the new or CHANGED keys: a fingerprint named in `expected` must match exactly;
    otherwise `ask(question) -> bool` decides (None: no terminal, nothing is pinned)."""
    accepted, open_ = [], []
    for s in scans:
        if s.status == "same" and s.host in expected and expected[s.host] != s.fingerprint:
            say(f"{s.host}: its pinned key is {s.fingerprint}, not the {expected[s.host]} you named; nothing changed")
            open_.append(s)  # what the operator asked for did not happen: said, and the command fails
            continue
        if s.status in ("same", "unreachable"):
            continue
        if s.host in expected:
            ok = expected[s.host] == s.fingerprint
            if not ok:
                say(f"{s.host}: fingerprint is {s.fingerprint}, not the {expected[s.host]} you named; NOT pinned")
        elif ask is not None:
            warn = " — THE KEY CHANGED; if the host was not reinstalled, stop: this may be an attack" if s.status == "CHANGED" else ""
            ok = ask(f"{s.host}: pin {s.fingerprint}{warn}? Compare it with the host's console first. [y/N] ")
        else:
            ok = False
        (accepted if ok else open_).append(s)
    return accepted, open_


def not_done(open_: list[Scan]) -> str:
    """Why fab hostkeys ends with exit 1 (pure): keys not pinned, and --accept fingerprints that named another key than
    the one already pinned (said apart: that host's pin is unchanged, not missing)."""
    wrong = [s.host for s in open_ if s.status == "same"]
    missing = [s.host for s in open_ if s.status != "same"]
    said = [f"not pinned: {', '.join(missing)}"] if missing else []
    if wrong:
        said.append(f"--accept named another key than the one pinned for {', '.join(wrong)} (its pin is unchanged)")
    said = said or ["not pinned: unreachable hosts"]
    return "; ".join(said) + "; confirm each fingerprint out of band, then run fab hostkeys again (interactively, or with --accept HOST=SHA256:...)"


def pin(accepted: list[Scan]) -> None:
    """Write every accepted key into its known_hosts file (one atomic write per file)."""
    for path in {s.path for s in accepted}:
        write(path, [s for s in accepted if s.path == path])
