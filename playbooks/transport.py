"""SSH to the fleet: strict host keys, one connection per host, the agent shipped by hash.

Fabric's Connection would trust any host key on first sight (paramiko's auto-add policy);
a rollout tool must not, so every connection loads the inventory's known_hosts and uses
RejectPolicy: an unknown key and a changed key are both refused, with a message that
says which and what to do. A call to the agent is one exec, `python3 -I -c <VERIFIER>
.fleetroll/agent-<h16>.pyz <sha256>` (agentpack.command), with the JSON request on stdin: a
fixed verifier of the controller's checks the archive's owner, mode and SHA-256 before any of
its code runs, then the archive checks its unpacked tree. Only when the host lacks that exact
agent build does the controller upload it (SFTP) and try again, so a warm call is one round trip.
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
from pathlib import Path
from typing import Any

import paramiko
from fabric import Connection

from agent import PROTOCOL  # noqa: E402,F401 - one protocol version, the agent's own

from . import agentpack, remote
from .inventory import Inventory

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


class TransportError(Exception):
    """kind: unreachable, host-key-unknown, host-key-changed, auth, agent, timeout, link-lost."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
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


def connect(t: Target) -> Connection:
    """Open a Fabric connection that trusts only keys already in known_hosts."""
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
    if not t.known_hosts.exists():
        raise TransportError(
            "host-key-unknown",
            f"{t.name}: known_hosts file {t.known_hosts} does not exist; pin the host's key with"
            f" fab hostkeys --hosts {t.name} (it shows the fingerprint to compare out of band)",
        )
    from .hostkeys import HostKeyFileError, check_file

    try:
        check_file(t.known_hosts)
    except HostKeyFileError as exc:
        raise TransportError("host-key-file", f"{t.name}: {exc}") from None
    conn.client.load_host_keys(str(t.known_hosts))
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
    return conn


def _exec(conn: Connection, command: str, stdin: bytes, timeout: float, on_event) -> tuple[int, list[dict], str]:
    chan = conn.client.get_transport().open_session(timeout=timeout)
    chan.settimeout(timeout)
    try:
        chan.exec_command(command)
        chan.sendall(stdin)
        chan.shutdown_write()
        lines = remote.Events()
        out = chan.makefile("rb")
        while True:
            raw = out.readline(remote.MAX_LINE + 1)
            if not raw:
                break
            try:
                obj = remote.parse_line(raw)
            except remote.BadAnswer:
                continue
            if "event" in obj:
                lines.keep(obj, len(raw))
                if on_event:
                    on_event(obj)
            else:
                lines.append(obj)
        rc = chan.recv_exit_status()
        err = chan.makefile_stderr("rb").read(remote.MAX_STDERR).decode(errors="replace")
    except TimeoutError:
        raise TransportError("timeout", f"agent gave no answer within {timeout:g}s") from None
    finally:
        chan.close()
    return rc, lines, err


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
    data, digest = agentpack.build()
    name = agentpack.remote_name(digest)
    request = json.dumps({"protocol": PROTOCOL, "op": op, "args": args}).encode()
    command = shlex.join(agentpack.command(digest, getattr(conn, "fleetroll_python", "python3")))
    res = CallResult(host=host, ok=False)
    t0 = time.monotonic()
    rc, lines, err = _exec(conn, command, request, timeout, on_event)
    res.round_trips = 1
    if not lines and agent_needs_upload(rc, err):
        _upload(conn, name, data)
        res.uploaded = True
        rc, lines, err = _exec(conn, command, request, timeout, on_event)
        res.round_trips += 2
    res.elapsed_s = time.monotonic() - t0
    res.events = [x for x in lines if "event" in x]
    answers = [x for x in lines if "event" not in x]
    if not answers:
        res.error_kind = "agent"
        res.error = no_answer(host, rc, err, getattr(conn, "fleetroll_python", "python3"))
        return res
    res.answer = answers[-1]
    return _judge(res)


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

    def _open(self, timeout: float) -> None:
        _, digest = agentpack.build()
        self.chan = self.conn.client.get_transport().open_session(timeout=timeout)
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

    def get(self, inv: Inventory, host: str) -> AgentSession:
        with self.lock:
            sess = self.sessions.get(host)
        if sess is not None and sess.conn.is_connected and sess.conn.client.get_transport().is_active():
            return sess
        sess = AgentSession(connect(Target.from_inventory(inv, host)), host)
        with self.lock:
            self.sessions[host] = sess
        return sess

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
    t0 = time.monotonic()
    try:
        if pool:
            sess = pool.get(inv, host)
        else:
            conn = connect(Target.from_inventory(inv, host))
    except TransportError as exc:
        return CallResult(host=host, ok=False, error=str(exc), error_kind=exc.kind, elapsed_s=time.monotonic() - t0)
    try:
        cb = (lambda ev: on_event(host, ev)) if on_event else None
        if pool:
            return sess.call(op, args_for(host), timeout=timeout, on_event=cb)
        return call_agent(conn, host, op, args_for(host), timeout=timeout, on_event=cb)
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
