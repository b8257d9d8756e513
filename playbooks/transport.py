"""Calling the agent on the fleet: one connection per host (playbooks/ssh_connection.py), the agent shipped by hash.

A call to the agent is one exec, `python3 -I -S -c <VERIFIER>
.fleetroll/agent-<h16>.pyz <sha256>` (agentpack.command), with the JSON request on stdin: a
fixed verifier of the controller's checks the archive's owner, mode and SHA-256 before any of
its code runs, then the archive checks its unpacked tree. Only when the host lacks that exact
agent build does the controller upload it and try again, so a warm call is one round trip.

Two SSH clients carry the same conversation (inventory `ssh.client`): the system's OpenSSH
(playbooks/openssh.py; `auto`, the default, wherever an `ssh` program is on PATH) and paramiko
(playbooks/ssh_connection.py). Both refuse unknown and changed host keys the same way.

Every call records where its seconds went (playbooks/timings.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from agent import PROTOCOL  # noqa: E402,F401 - one protocol version, the agent's own

from . import openssh, prewarm
from .agent_session import (  # noqa: F401 - the session's names, where callers have always found them
    READ_ONLY_OPS,
    AgentSession,
    CallResult,
    OpenSSHSession,
    agent_needs_upload,
    call_agent,
    no_answer,
)
from .inventory import Inventory
from .ssh_connection import (  # noqa: F401 - the connection's names, where the callers have always found them
    HANDSHAKES,
    HANDSHAKES_PER_CPU,
    Target,
    TransportError,
    check_known_hosts,
    connect,
    handshake_slots,
    link_errors,
    usable_cpus,
)
from .timings import HostTimes, plus


def client_for(inv: Inventory) -> str:
    """Which SSH client carries this inventory's agent calls: `openssh` or `paramiko`."""
    chosen = inv.fleet.ssh.client
    if chosen == "auto":
        return "openssh" if openssh.usable() else "paramiko"
    if chosen == "openssh" and not openssh.usable():
        v = openssh.version()
        found = f"OpenSSH {v[0]}.{v[1]}" if v else "no OpenSSH `ssh` on PATH"
        need = ".".join(map(str, openssh.MIN_VERSION))
        raise TransportError("ssh-client", f"{inv.path}: ssh.client is openssh but there is {found}; fleetroll needs"
                                           f" OpenSSH {need} or newer (Debian: openssh-client) or set ssh.client: paramiko")
    return chosen


def open_session(inv: Inventory, host: str) -> AgentSession | OpenSSHSession:
    """A logged-in session to one host, on the inventory's SSH client; TransportError (with its times) if not."""
    target = Target.from_inventory(inv, host)
    if client_for(inv) == "openssh":
        check_known_hosts(target, paramiko_reads_it=False)  # OpenSSH itself honours @revoked/@cert-authority
        try:
            return OpenSSHSession(target, host).login()
        except openssh.PathError as exc:
            raise TransportError("ssh-client", f"{host}: {exc}") from None
    return AgentSession(connect(target), host)


class Pool:
    """One SSH connection and one agent process per host for the length of a command.

    Outside a Pool every on_hosts() call connects and starts the agent afresh; inside, the
    preflight's connection and agent process also run the rollout (and any revert). One
    that broke is dropped and made again on the next call.
    """

    def __init__(self) -> None:
        self.sessions: dict[str, AgentSession | OpenSSHSession] = {}
        self.lock = threading.Lock()
        self.times: dict[str, HostTimes] = {}  # every call's times through this pool, per host, for the whole command
        self.closing: list[AgentSession | OpenSSHSession] = []  # given the end of their input, not yet waited for

    def get(self, inv: Inventory, host: str) -> AgentSession | OpenSSHSession:
        with self.lock:
            sess = self.sessions.get(host)
        if sess is not None and sess.alive():
            return sess
        sess = open_session(inv, host)
        with self.lock:
            self.sessions[host] = sess
        return sess

    def count(self, host: str, times: HostTimes) -> None:
        with self.lock:
            self.times[host] = self.times.get(host, HostTimes()).add(times)

    def drop(self, host: str) -> None:
        with self.lock:
            sess = self.sessions.pop(host, None)
        if sess is not None:
            sess.shut()

    def __enter__(self) -> Pool:
        return self

    def finish(self) -> None:
        """The command will call no host again: every agent gets the end of its input now, without waiting for it.

        Their exits then overlap what the command still does (plan, report, ledger) instead of
        following it; __exit__ waits for what is left. A call after this opens a new session.
        """
        with self.lock:
            sessions, self.sessions = list(self.sessions.values()), {}
            self.closing += sessions
        for sess in sessions:
            sess.shut(wait_s=0)

    def __exit__(self, *exc) -> None:
        """Every host's agent gets the end of its input at once, then all get up to 2 s together to exit."""
        self.finish()
        deadline = time.monotonic() + 2.0
        for sess in self.closing:
            if isinstance(sess, OpenSSHSession):
                sess.reap(max(0.0, deadline - time.monotonic()))
        self.closing = []
        prewarm.discard()


def _attempt(inv: Inventory, host: str, op: str, args_for: Callable[[str], dict[str, Any]], timeout: float,
             on_event: Callable[[str, dict], None] | None, pool: Pool | None) -> CallResult:
    """One call of `op` on one host (through the pool's session, or a connection of its own); every failure an answer."""
    res = _call(inv, host, op, args_for, timeout, on_event, pool)
    if pool:
        pool.count(host, res.times)
    return res


def _call(inv: Inventory, host: str, op: str, args_for: Callable[[str], dict[str, Any]], timeout: float,
          on_event: Callable[[str, dict], None] | None, pool: Pool | None) -> CallResult:
    t0 = time.monotonic()
    try:
        if pool:
            before = pool.sessions.get(host)
            sess = pool.get(inv, host)
        else:
            sess = open_session(inv, host)
    except TransportError as exc:
        return CallResult(host=host, ok=False, error=str(exc), error_kind=exc.kind, elapsed_s=time.monotonic() - t0, times=exc.times)
    # This call paid for the connection only if it made it (a pooled session's later calls did not).
    connected = sess.connect_times if not pool or sess is not before else HostTimes()
    try:
        cb = (lambda ev: on_event(host, ev)) if on_event else None
        res = sess.call(op, args_for(host), timeout=timeout, on_event=cb)
        # The session's own logins after this call's first (an upload's, OpenSSH's new one after it) add to its connect.
        res.times.wait_s, res.times.ahead = connected.wait_s, connected.ahead
        res.times.connect_s = plus(connected.connect_s, res.times.connect_s)
        return res
    except TransportError as exc:
        if pool:
            pool.drop(host)
        return CallResult(host=host, ok=False, error=f"{host}: {exc}", error_kind=exc.kind, elapsed_s=time.monotonic() - t0)
    except KeyboardInterrupt:
        openssh.kill_all()  # no 2 s wait in `finally` for an agent blocked on, say, a quiet log stream
        raise
    except link_errors() as exc:
        if pool:
            pool.drop(host)
        return CallResult(
            host=host, ok=False, error=f"{host}: SSH link lost during {op}: {exc}", error_kind="link-lost",
            elapsed_s=time.monotonic() - t0,
        )
    finally:
        if not pool:
            sess.shut()


def on_hosts(
    inv: Inventory,
    hosts: list[str],
    op: str,
    args_for: Callable[[str], dict[str, Any]],
    max_parallel: int | None = None,
    timeout: float = 120.0,
    on_event: Callable[[str, dict], None] | None = None,
    pool: Pool | None = None,
) -> dict[str, CallResult]:
    """Run one agent op on each host in parallel (bounded); never let one host hide another."""

    def one(host: str) -> CallResult:
        res = _attempt(inv, host, op, args_for, timeout, on_event, pool)
        if res.error_kind == "link-lost" and op in READ_ONLY_OPS:
            # A read-only op is safe to repeat once on a fresh connection; a rollout is not
            # (the executor re-attaches to its journal instead).
            res = _attempt(inv, host, op, args_for, timeout, on_event, pool)
        return res

    if len(hosts) == 1:
        # In the caller's thread: Ctrl-C interrupts the read itself and the connection closes behind it.
        return {hosts[0]: one(hosts[0])}
    workers = max(1, min(len(hosts), max_parallel or inv.fleet.ssh.max_parallel))
    threads = ThreadPoolExecutor(max_workers=workers)
    futures = [threads.submit(one, h) for h in hosts]
    try:
        while not all(f.done() for f in futures):
            wait(futures, timeout=0.25)  # short waits: Ctrl-C is seen within a quarter of a second
    except KeyboardInterrupt:
        # Calls in flight are not waited for: the hosts' transactions run detached and finish on their own.
        threads.shutdown(wait=False, cancel_futures=True)
        openssh.kill_all()  # a worker blocked on an ssh's answer ends with it (paramiko's end when their pool closes)
        raise
    threads.shutdown(wait=True)
    results = [f.result() for f in futures]
    return {r.host: r for r in results}
