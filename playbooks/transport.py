"""Calling the agent on the fleet: one connection per host (playbooks/ssh_connection.py), the agent shipped by hash.

A call to the agent is one exec, `python3 -I -c <VERIFIER>
.fleetroll/agent-<h16>.pyz <sha256>` (agentpack.command), with the JSON request on stdin: a
fixed verifier of the controller's checks the archive's owner, mode and SHA-256 before any of
its code runs, then the archive checks its unpacked tree. Only when the host lacks that exact
agent build does the controller upload it (SFTP) and try again, so a warm call is one round trip.

Every call records where its seconds went (playbooks/timings.py).
"""

from __future__ import annotations

import json
import os
import shlex
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import paramiko
from fabric import Connection

from agent import PROTOCOL  # noqa: E402,F401 - one protocol version, the agent's own

from . import agentpack, remote
from .inventory import Inventory
from .ssh_connection import (  # noqa: F401 - the connection's names, where the callers have always found them
    HANDSHAKES,
    HANDSHAKES_PER_CPU,
    Target,
    TransportError,
    connect,
    handshake_slots,
    usable_cpus,
)
from .timings import HostTimes, first_call

# What python3 says when the agent file is missing or not a complete zipapp: upload it again.
_DAMAGED = ("can't open file", "SyntaxError", "BadZipFile", "zipimport", "bad local file header", "fleetroll-agent: archive damaged")


def agent_needs_upload(rc: int, err: str) -> bool:
    """No answer and python3 could not run the archive: it is missing, or damaged on the host."""
    return rc != 0 and any(marker in err for marker in _DAMAGED)
def no_answer(host: str, rc: int, err: str, python: str) -> str:
    if rc == 127:  # the shell could not find the interpreter
        return (f"{host}: {python} is not on this host (exit 127); fix: install Python 3.11+ there or set"
                f" hosts.{host}.python to the interpreter's absolute path")
    return f"{host}: the agent gave no answer (exit {rc}): {remote.clean_text(err.strip()[-400:]) or 'no output'}"


READ_ONLY_OPS = ("facts", "status", "journal", "prepare")  # safe to repeat on a fresh connection


@dataclass
class CallResult:
    host: str
    ok: bool
    answer: dict[str, Any] | None = None
    error: str = ""
    error_kind: str = ""
    round_trips: int = 0
    uploaded: bool = False
    elapsed_s: float = 0.0
    events: list[dict] = field(default_factory=remote.Events)
    times: HostTimes = field(default_factory=HostTimes)  # this call's share: connect (if it connected), start, work


def _upload(conn: Connection, name: str, data: bytes) -> None:
    sftp = conn.client.open_sftp()
    try:
        try:
            sftp.mkdir(".fleetroll", 0o700)
        except OSError:
            pass
        # A unique temporary name: two controllers (or lab hosts sharing a home) may upload at once.
        tmp = f"{name}.{os.getpid()}.{threading.get_ident()}.part"
        with sftp.open(tmp, "wb") as f:
            f.write(data)
        try:
            sftp.posix_rename(tmp, name)
        except OSError:
            sftp.rename(tmp, name)
    finally:
        sftp.close()


def call_agent(
    conn: Connection,
    host: str,
    op: str,
    args: dict[str, Any],
    timeout: float = 120.0,
    on_event: Callable[[dict], None] | None = None,
) -> CallResult:
    """One request on the caller's connection, through the same path as every other (an agent session of one call)."""
    sess = AgentSession(conn, host)
    try:
        return sess.call(op, args, timeout=timeout, on_event=on_event)
    finally:
        sess.close()


def _judge(res: CallResult) -> CallResult:
    """Set ok/error from the agent's answer: a wrong protocol or ok=false is a failed call."""
    if res.answer.get("protocol") != PROTOCOL:
        res.error_kind = "agent"
        res.error = f"{res.host}: agent speaks protocol {res.answer.get('protocol')}, controller {PROTOCOL}"
    else:
        res.ok = bool(res.answer.get("ok"))
        if not res.ok:
            res.error_kind, res.error = "agent", res.answer.get("msg", "")
    return res


class AgentSession:
    """One agent process kept open on a host: requests go in one per line, answers come back.

    The first request carries "session": true, so the agent keeps reading; closing stdin
    ends it. Saves a process start and a docker SDK import per call after the first.
    """

    def __init__(self, conn: Connection, host: str):
        self.conn, self.host = conn, host
        self.chan = None
        self.out = None
        self.started_at: float | None = None  # when the agent process was exec'd, until its first answer

    def _open(self, timeout: float) -> None:
        _, digest = agentpack.build()
        self.chan = self.conn.client.get_transport().open_session(timeout=timeout)
        self.started_at = time.monotonic()
        self.chan.exec_command(shlex.join(agentpack.command(digest, getattr(self.conn, "fleetroll_python", "python3"))))
        self.out = self.chan.makefile("rb")

    def call(self, op: str, args: dict[str, Any], timeout: float, on_event=None) -> CallResult:
        res = CallResult(host=self.host, ok=False)
        t0 = time.monotonic()
        request = (json.dumps({"protocol": PROTOCOL, "op": op, "args": args, "session": True}) + "\n").encode()
        for attempt in range(2):
            if self.chan is None:
                self._open(timeout)
            self.chan.settimeout(timeout)
            try:
                sent = time.monotonic()
                self.chan.sendall(request)
                res.round_trips += 1
                while True:
                    raw = self.out.readline(remote.MAX_LINE + 1)
                    if not raw:
                        break
                    try:
                        obj = remote.parse_line(raw)
                    except remote.BadAnswer:
                        continue
                    if "event" in obj:
                        res.events.keep(obj, len(raw))
                        if on_event:
                            on_event(obj)
                        continue
                    res.answer = obj
                    self._time(res, sent)
                    break
            except TimeoutError:
                raise TransportError("timeout", f"agent gave no answer within {timeout:g}s") from None
            if res.answer is not None:
                break
            rc = self.chan.recv_exit_status()
            err = self.chan.makefile_stderr("rb").read(remote.MAX_STDERR).decode(errors="replace")
            self.close()
            if attempt == 0 and agent_needs_upload(rc, err):
                data, digest = agentpack.build()
                _upload(self.conn, agentpack.remote_name(digest), data)
                res.uploaded = True
                res.round_trips += 1
                continue
            res.error_kind = "agent"
            res.error = no_answer(self.host, rc, err, getattr(self.conn, "fleetroll_python", "python3"))
            break
        res.elapsed_s = time.monotonic() - t0
        return _judge(res) if res.answer is not None else res

    def _time(self, res: CallResult, sent: float) -> None:
        """The first answer of a process splits exec -> answer into start and work; later ones are all work."""
        now = time.monotonic()
        if self.started_at is not None:
            res.times.start_s, res.times.agent_s = first_call(now - self.started_at, res.answer.get("uptime_s"))
            self.started_at = None
        else:
            res.times.agent_s = now - sent  # the process was already running, idle on stdin until the request
        res.times.calls = 1

    def close(self) -> None:
        if self.chan is not None:
            try:
                self.chan.shutdown_write()
                self.chan.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass
        self.chan = self.out = None


class Pool:
    """One SSH connection and one agent process per host for the length of a command.

    Outside a Pool every on_hosts() call connects and starts the agent afresh; inside, the
    preflight's connection and agent process also run the rollout (and any revert). One
    that broke is dropped and made again on the next call.
    """

    def __init__(self) -> None:
        self.sessions: dict[str, AgentSession] = {}
        self.lock = threading.Lock()
        self.times: dict[str, HostTimes] = {}  # every call's times through this pool, per host, for the whole command

    def get(self, inv: Inventory, host: str) -> AgentSession:
        with self.lock:
            sess = self.sessions.get(host)
        if sess is not None and sess.conn.is_connected and sess.conn.client.get_transport().is_active():
            return sess
        sess = AgentSession(connect(Target.from_inventory(inv, host)), host)
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
            sess.close()
            sess.conn.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        for host in list(self.sessions):
            self.drop(host)


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
            conn = sess.conn
        else:
            conn = connect(Target.from_inventory(inv, host))
    except TransportError as exc:
        return CallResult(host=host, ok=False, error=str(exc), error_kind=exc.kind, elapsed_s=time.monotonic() - t0, times=exc.times)
    # This call paid for the connection only if it made it (a pooled session's later calls did not).
    connected = getattr(conn, "fleetroll_times", HostTimes()) if not pool or sess is not before else HostTimes()
    try:
        cb = (lambda ev: on_event(host, ev)) if on_event else None
        if pool:
            res = sess.call(op, args_for(host), timeout=timeout, on_event=cb)
        else:
            res = call_agent(conn, host, op, args_for(host), timeout=timeout, on_event=cb)
        res.times.wait_s, res.times.connect_s = connected.wait_s, connected.connect_s
        return res
    except TransportError as exc:
        if pool:
            pool.drop(host)
        return CallResult(host=host, ok=False, error=f"{host}: {exc}", error_kind=exc.kind, elapsed_s=time.monotonic() - t0)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        if pool:
            pool.drop(host)
        return CallResult(
            host=host, ok=False, error=f"{host}: SSH link lost during {op}: {exc}", error_kind="link-lost",
            elapsed_s=time.monotonic() - t0,
        )
    finally:
        if not pool:
            conn.close()


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
        raise
    threads.shutdown(wait=True)
    results = [f.result() for f in futures]
    return {r.host: r for r in results}
