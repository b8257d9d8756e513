"""The agent's conversation on one host, whichever SSH client carries it (split from playbooks/transport.py).

A call is one line of JSON on the agent's stdin and its answer (with progress events before
it) on its stdout; the first request of a process also splits the exec -> answer time into
the remote shell + agent start and the agent's work (playbooks/timings.py). When the host
lacks the exact agent build, the session uploads it and asks again.
"""

from __future__ import annotations

import json
import os
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent import PROTOCOL

from . import agentpack, openssh, prewarm, remote
from .ssh_connection import Target, TransportError, link_errors
from .timings import HostTimes, first_call, plus

if TYPE_CHECKING:
    from fabric import Connection

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


class _Conversation:
    """The agent's side of a session, whichever SSH client carries it: requests go in one per line, answers come back.

    The first request carries "session": true, so the agent keeps reading; closing stdin
    ends it. Saves a process start per call after the first. A subclass supplies the I/O:
    _begin (start the agent process), _send, _readline, _ended (exit status and stderr),
    _upload_agent, close.
    """

    host: str
    python: str
    started_at: float | None = None  # when the agent process was exec'd, until its first answer

    def call(self, op: str, args: dict[str, Any], timeout: float, on_event=None) -> CallResult:
        res = CallResult(host=self.host, ok=False)
        t0 = time.monotonic()
        request = (json.dumps({"protocol": PROTOCOL, "op": op, "args": args, "session": True}) + "\n").encode()
        for attempt in range(2):
            relogin = self._begin(timeout)
            res.times.connect_s = plus(res.times.connect_s, relogin)
            try:
                sent = time.monotonic()
                self._send(request)
                res.round_trips += 1
                while True:
                    raw = self._readline(timeout)
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
            rc, err = self._ended()
            self.close()
            if attempt == 0 and agent_needs_upload(rc, err):
                res.times.connect_s = plus(res.times.connect_s, self._upload_agent())  # OpenSSH: a login of its own
                res.uploaded = True
                res.round_trips += 1
                continue
            res.error_kind = "agent"
            res.error = no_answer(self.host, rc, err, self.python)
            break
        res.elapsed_s = time.monotonic() - t0
        return _judge(res) if res.answer is not None else res

    def _time(self, res: CallResult, sent: float) -> None:
        """The first answer of a process splits exec -> answer into start and work; later ones are all work.

        A process started ahead of its first request (prewarm) sat idle between its start and
        the request: that idle time is neither start nor work.
        """
        now = time.monotonic()
        if self.started_at is not None:
            start, work = first_call(now - self.started_at, res.answer.get("uptime_s"))
            if start is not None:
                work = now - max(sent, self.started_at + start)
            res.times.start_s, res.times.agent_s = start, work
            self.started_at = None
        else:
            res.times.agent_s = now - sent  # the process was already running, idle on stdin until the request
        res.times.calls = 1


class AgentSession(_Conversation):
    """The conversation over a paramiko (Fabric) connection: one exec channel per agent process."""

    def __init__(self, conn: Connection, host: str):
        self.conn, self.host = conn, host
        self.python = getattr(conn, "fleetroll_python", "python3")
        self.chan = None
        self.out = None
        self.started_at = None

    @property
    def connect_times(self) -> HostTimes:
        return getattr(self.conn, "fleetroll_times", HostTimes())

    def alive(self) -> bool:
        return bool(self.conn.is_connected and self.conn.client.get_transport().is_active())

    def _begin(self, timeout: float) -> float | None:
        if self.chan is None:
            digest = agentpack.digest()
            self.chan = self.conn.client.get_transport().open_session(timeout=timeout)
            self.started_at = time.monotonic()
            self.chan.exec_command(shlex.join(agentpack.command(digest, self.python)))
            self.out = self.chan.makefile("rb")
        self.chan.settimeout(timeout)
        return None  # a channel on the connection already made: no login of its own

    def _send(self, data: bytes) -> None:
        self.chan.sendall(data)

    def _readline(self, timeout: float) -> bytes:
        return self.out.readline(remote.MAX_LINE + 1)

    def _ended(self) -> tuple[int, str]:
        rc = self.chan.recv_exit_status()
        return rc, self.chan.makefile_stderr("rb").read(remote.MAX_STDERR).decode(errors="replace")

    def _upload_agent(self) -> None:
        data, digest = agentpack.build()
        _upload(self.conn, agentpack.remote_name(digest), data)

    def close(self) -> None:
        if self.chan is not None:
            try:
                self.chan.shutdown_write()
                self.chan.close()
            except link_errors():
                pass
        self.chan = self.out = None

    def shut(self, wait_s: float = 2.0) -> None:
        self.close()
        self.conn.close()


class OpenSSHSession(_Conversation):
    """The conversation over the system's `ssh` (playbooks/openssh.py): one ssh process per agent process.

    The login and the agent's start are one process, so the first `_begin` only waits for it
    (it may have been started ahead, by prewarm); after an upload a new process logs in again.
    """

    def __init__(self, target: Target, host: str):
        self.target, self.host, self.python = target, host, target.python
        self.ssh: openssh.Session | None = None
        self.closed: openssh.Session | None = None
        self.started_at = None

    def login(self) -> OpenSSHSession:
        """Connect (or take the process prewarm started for exactly this command line); TransportError if it fails."""
        command = openssh.agent_command(self.python)
        claimed = prewarm.claim(self.target, command)
        ahead = claimed is not None and claimed.proc is not None  # registered but never spawned: this login is ours
        self.ssh = claimed or openssh.Session(self.target, command)
        self.ssh.connect()
        self.ssh.connect_times.ahead = int(ahead)
        self.started_at = self.ssh.authed_at
        return self

    @property
    def connect_times(self) -> HostTimes:
        return self.ssh.connect_times if self.ssh else HostTimes()

    def alive(self) -> bool:
        return self.ssh is not None and self.ssh.alive()

    def _begin(self, timeout: float) -> float | None:
        if self.ssh is None:  # a new login after an upload (the first is made by open_session)
            self.login()
            return self.ssh.connect_times.connect_s
        return None

    def _send(self, data: bytes) -> None:
        if not self.ssh.send(data):
            return  # the process is gone: reading finds the end of its output, and _ended says why

    def _readline(self, timeout: float) -> bytes:
        return self.ssh.readline(timeout)

    def _ended(self) -> tuple[int, str]:
        rc, err = self.ssh.exit_status(), self.ssh.stderr()
        if rc == 255:  # ssh's own status (the login or the link failed), or the agent killed by a signal
            if not self.ssh.authed_at or openssh.said_by_ssh(self.target, err):
                raise openssh.failure(self.target, err)
            raise EOFError(f"the link was lost or the agent was killed (ssh exit 255):"
                           f" {remote.clean_text(err.strip()[-300:]) or 'no output'}")
        return rc, err

    def _upload_agent(self) -> float | None:
        data, digest = agentpack.build()
        return openssh.upload(self.target, agentpack.remote_name(digest), data)

    def close(self, wait_s: float = 2.0) -> None:
        if self.ssh is not None:
            self.ssh.close(wait_s)
            self.closed = self.ssh
        self.ssh = None

    def reap(self, wait_s: float) -> None:
        """Wait up to wait_s for the last closed ssh to exit, then kill it (close is idempotent)."""
        if self.closed is not None:
            self.closed.close(wait_s)

    def shut(self, wait_s: float = 2.0) -> None:
        """End the agent and ssh, waiting up to wait_s for them to exit (a Pool ends all its hosts' at once)."""
        self.close(wait_s)
