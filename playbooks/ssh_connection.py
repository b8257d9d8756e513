"""The SSH connection to a host: strict host keys, and handshakes bounded apart from sessions.

Fabric's Connection would trust any host key on first sight (paramiko's auto-add policy);
a rollout tool must not, so every connection loads the inventory's known_hosts and uses
RejectPolicy: an unknown key and a changed key are both refused, with a message that
says which and what to do.

Handshakes are bounded apart from sessions. `max_parallel` hosts may hold a session at once,
but only `handshake_slots()` of them (a few per CPU) may be connecting at once: an SSH
handshake is CPU work on both ends, and with 100 handshakes in flight on a 2-core controller
some waited for the CPU longer than `connect_timeout` and failed as unreachable. A host waits
for its slot without a clock running; paramiko's clocks (TCP connect, banner, negotiation,
auth: all inside `Connection.open`) start only once it holds one.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .timings import HostTimes

if TYPE_CHECKING:  # the inventory's models load pydantic: prewarm reaches this module before they are needed
    from fabric import Connection

    from .inventory import Inventory

HANDSHAKES_PER_CPU = 4  # a handshake waits on the network for most of its time; a few per CPU keep the CPU busy, not queued


def handshake_slots(cpus: int | None) -> int:
    """How many SSH handshakes this process runs at once: a few per usable CPU, never fewer than 4.

    Sized from the CPU and not from max_parallel: the CPU is what a handshake competes for, and a
    busy controller must make hosts queue for it before their timeouts start, not during them.
    """
    return max(4, HANDSHAKES_PER_CPU * (cpus or 1))


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


HANDSHAKES = threading.BoundedSemaphore(handshake_slots(usable_cpus()))  # process-wide: every pool and call shares it



class TransportError(Exception):
    """kind: unreachable, host-key-unknown, host-key-changed, host-key-revoked, host-key-file, auth, agent, timeout, link-lost."""

    def __init__(self, kind: str, message: str, times: HostTimes | None = None):
        self.kind = kind
        self.times = times or HostTimes()  # how long it waited for a handshake slot and tried, when it failed connecting
        super().__init__(message)


@dataclass
class Target:
    name: str
    address: str
    port: int
    user: str
    known_hosts: Path
    key_filename: str | None
    connect_timeout: float
    python: str = "/usr/bin/python3"

    @classmethod
    def from_inventory(cls, inv: Inventory, host: str) -> Target:
        h = inv.fleet.hosts[host]
        return cls(
            name=host,
            address=h.address,
            port=h.port,
            user=h.user,
            known_hosts=inv.known_hosts_for(host),
            key_filename=str(Path(h.key_filename).expanduser()) if h.key_filename else None,
            connect_timeout=inv.fleet.ssh.connect_timeout,
            python=h.python,
        )


def link_errors() -> tuple[type[BaseException], ...]:
    """What a lost SSH link raises: paramiko's own exceptions only once paramiko is loaded (the OpenSSH path never loads it)."""
    paramiko = sys.modules.get("paramiko")
    return (OSError, EOFError, paramiko.SSHException) if paramiko else (OSError, EOFError)


def check_known_hosts(t: Target, paramiko_reads_it: bool) -> None:
    """The pinned known_hosts must exist; paramiko must also be able to honour every line of it (hostkeys.check_file)."""
    if not t.known_hosts.exists():
        raise TransportError(
            "host-key-unknown",
            f"{t.name}: known_hosts file {t.known_hosts} does not exist; pin the host's key with"
            f" fab hostkeys --hosts {t.name} (it shows the fingerprint to compare out of band)",
        )
    if paramiko_reads_it:
        from .hostkeys import HostKeyFileError, check_file

        try:
            check_file(t.known_hosts)
        except HostKeyFileError as exc:
            raise TransportError("host-key-file", f"{t.name}: {exc}") from None


def connect(t: Target) -> Connection:
    """Open a Fabric connection that trusts only keys already in known_hosts, once a handshake slot is free.

    conn.fleetroll_times (a TransportError's .times when it fails) says how long the host waited for
    its slot and how long TCP connect + handshake + authentication then took. paramiko and Fabric are
    imported here, on first use: a command on the OpenSSH path (playbooks/openssh.py) never loads them.
    """
    import paramiko
    from fabric import Connection

    kwargs: dict[str, Any] = {
        "banner_timeout": t.connect_timeout,
        "auth_timeout": t.connect_timeout,
    }
    if t.key_filename:
        kwargs.update(key_filename=t.key_filename, look_for_keys=False, allow_agent=False)
    conn = Connection(t.address, user=t.user, port=t.port, connect_kwargs=kwargs, connect_timeout=t.connect_timeout)
    # The interpreter the agent runs under, named exactly: a `python3` first in the login PATH may be a
    # pyenv/conda shim that costs a shell and an exec on every call.
    conn.fleetroll_python = t.python
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    check_known_hosts(t, paramiko_reads_it=True)
    conn.client.load_host_keys(str(t.known_hosts))
    queued = time.monotonic()
    with HANDSHAKES:
        began = time.monotonic()
        try:
            _open(conn, t)
        except TransportError as exc:
            exc.times = HostTimes(wait_s=began - queued, connect_s=time.monotonic() - began)
            raise
    conn.fleetroll_times = HostTimes(wait_s=began - queued, connect_s=time.monotonic() - began)
    return conn


def _open(conn: Connection, t: Target) -> None:
    """TCP connect, handshake, host key check, authentication: every paramiko timeout starts in here."""
    import paramiko

    where = f"{t.name} ({t.user}@{t.address}:{t.port})"
    try:
        conn.open()
    except paramiko.BadHostKeyException as exc:
        raise TransportError(
            "host-key-changed",
            f"{where}: HOST KEY CHANGED — it offered {exc.key.get_name()} {exc.key.fingerprint}"
            f" but {t.known_hosts} records {exc.expected_key.fingerprint}. Refusing to connect."
            " If the host was reinstalled, verify the new key out of band and replace its line in"
            " known_hosts; otherwise treat this as an attack.",
        ) from None
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            raise TransportError(
                "host-key-unknown",
                f"{where}: host key not in {t.known_hosts}; fleetroll never trusts on first use."
                f" Pin it with fab hostkeys --hosts {t.name}, after comparing the fingerprint out of band.",
            ) from None
        if isinstance(exc, paramiko.AuthenticationException):
            raise TransportError("auth", f"{where}: authentication failed ({exc}); check user and key_filename") from None
        raise TransportError("unreachable", f"{where}: SSH failed: {exc}") from None
    except TimeoutError:
        raise TransportError(
            "unreachable", f"{where}: no answer within {t.connect_timeout:g}s; is the host up and on the network?"
        ) from None
    except OSError as exc:
        raise TransportError("unreachable", f"{where}: cannot connect: {exc.strerror or exc}") from None
