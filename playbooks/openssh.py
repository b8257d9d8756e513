"""The agent over the system's OpenSSH client: one `ssh` process per host session.

Why a second SSH client beside paramiko: the handshake, the ciphers and the login run in
OpenSSH's C code, in a process of their own, not on the controller's interpreter lock; and
an `ssh` process can be started before the controller has finished importing and checking
the inventory (playbooks/prewarm.py), so the network round trips and the host's login shell
overlap the controller's own start-up. Ansible's default connection makes the same choice.

The guarantees are the paramiko path's (playbooks/ssh_connection.py):
- host keys only from the inventory's known_hosts, never trusted on first use, never
  written (StrictHostKeyChecking=yes, no global file, UpdateHostKeys=no);
- no password prompt, no agent or X11 forwarding, no port forwardings from the operator's
  ~/.ssh/config, no connection sharing (each session is its own login, as paramiko's are);
- handshakes bounded apart from sessions: a host holds one of ssh_connection.HANDSHAKES from
  the spawn until OpenSSH says it authenticated, and its handshake clock starts with the slot.
OpenSSH's words on failure are turned into the same error kinds and operator text.

OpenSSH 8.7 or newer (`auto` falls back to paramiko on older). From the operator's
~/.ssh/config, what decides where and how to connect still applies (ProxyJump, HostKeyAlias,
ciphers); what could widen trust or change the session is overridden on the command line
(KnownHostsCommand, SSHFP records, forwardings, RemoteCommand, SessionType, SendEnv). Two
things cannot be overridden and are said here instead: IdentityFile lines there add keys to
the one `key_filename` names (IdentitiesOnly still keeps the agent's out), and SetEnv there
is sent (sshd takes it only where AcceptEnv allows; the agent runs `python3 -I -S`).
"""

from __future__ import annotations

import functools
import math
import os
import re
import select
import shlex
import signal
import subprocess
import threading
import time
import weakref
from pathlib import Path

from . import remote
from .ssh_connection import HANDSHAKES, Target, TransportError
from .timings import HostTimes

AUTHENTICATED = b"Authenticated to "  # OpenSSH's LogLevel=VERBOSE line once a login succeeded (a jump host's too)
_NOISE = (AUTHENTICATED, b"Transferred: ", b"Bytes per second")  # VERBOSE lines that are not the host's words
LIVE: weakref.WeakSet = weakref.WeakSet()  # every Session this process spawned (kill_all's list)
HANDSHAKE_TIMEOUTS = 3  # TCP connect, key exchange, authentication: paramiko gives each connect_timeout


MIN_VERSION = (8, 7)  # the oldest OpenSSH that knows every option below (SessionType, StdinNull, KnownHostsCommand, ^)


@functools.lru_cache(maxsize=1)
def version() -> tuple[int, int] | None:
    """The `ssh` on PATH as (major, minor), or None if there is none or it is not OpenSSH."""
    try:
        said = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=5).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.match(r"OpenSSH_(\d+)\.(\d+)", said.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def usable() -> bool:
    """An OpenSSH client new enough for fleetroll's command line is on PATH (else `auto` means paramiko)."""
    v = version()
    return v is not None and v >= MIN_VERSION


class PathError(ValueError):
    """A path OpenSSH would read as something else ($VAR, a quote, a backslash, a control character)."""


def _opt(value: str) -> str:
    """A path as an ssh -o value: OpenSSH expands %-tokens and splits on blanks, so escape both; what it would expand
    or unquote otherwise (${VAR}, quotes, backslashes) cannot be escaped, so such a path is refused."""
    if re.search(r'[$"\\\x00-\x1f\x7f]', value):
        raise PathError(f"{value!r}: OpenSSH would read '$', quotes, backslashes and control characters in a path as"
                        " something else; rename the file, or set ssh.client: paramiko")
    value = value.replace("%", "%%")
    return f'"{value}"' if re.search(r"\s", value) else value


def argv(t: Target, command: str) -> list[str]:
    """The ssh command line for `command` on target t: every security-relevant option explicit on the command line,
    where it wins over the operator's ~/.ssh/config."""
    opts = {
        "BatchMode": "yes",
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": _opt(str(t.known_hosts)),
        "GlobalKnownHostsFile": "/dev/null",
        "KnownHostsCommand": "none",  # an operator's config could otherwise add keys from outside the pinned file
        "VerifyHostKeyDNS": "no",  # nor SSHFP records from DNS
        "CheckHostIP": "no",
        "UpdateHostKeys": "no",
        "ConnectTimeout": str(max(1, math.ceil(t.connect_timeout))),
        "ServerAliveInterval": "5",
        "ServerAliveCountMax": "3",
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "ClearAllForwardings": "yes",
        "PermitLocalCommand": "no",
        # The classical curve25519 key exchange first, as paramiko's: OpenSSH 9's default hybrid sntrup761x25519 costs
        # ~50 ms of CPU per login on each end (measured on the lab: 0.05 s of user time per `ssh host true`, 0.00 s
        # with curve25519), which a fleet of logins at once pays on the controller's cores. The rest of OpenSSH's
        # default list stays, so a host without curve25519 still connects.
        "KexAlgorithms": "^curve25519-sha256,curve25519-sha256@libssh.org",
        "ControlMaster": "no",
        "ControlPath": "none",
        "RequestTTY": "no",
        # What an operator's config could make of the session itself: another command, none, no stdin, a fork.
        "RemoteCommand": "none",
        "SessionType": "default",
        "StdinNull": "no",
        "ForkAfterAuthentication": "no",
        "SendEnv": "-*",  # the controller's environment stays on the controller
        "LogLevel": "VERBOSE",
        "Port": str(t.port),
        "User": t.user,
    }
    if t.key_filename:
        opts.update(IdentityFile=_opt(t.key_filename), IdentitiesOnly="yes", IdentityAgent="none")
    out = ["ssh"]
    for k, v in opts.items():
        out += ["-o", f"{k}={v}"]
    return [*out, "--", t.address, command]


def agent_command(python: str) -> str:
    """The one command line that runs the agent (agentpack.command), as the remote shell gets it."""
    from . import agentpack

    return shlex.join(agentpack.command(agentpack.digest(), python))


def failure(t: Target, err: str, budget: float | None = None) -> TransportError:
    """OpenSSH ended before the login: its words as fleetroll's error kind and operator text."""
    where = f"{t.name} ({t.user}@{t.address}:{t.port})"
    said = "; ".join(ln.strip() for ln in err.splitlines() if ln.strip() and not ln.startswith("@"))[-400:]
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in err:
        m = re.search(r"fingerprint for the (\S+) key sent by the remote host is\s*(SHA256:\S+)", err)
        offered = f"{m.group(1)} {m.group(2).rstrip('.')}" if m else "another key"
        return TransportError(
            "host-key-changed",
            f"{where}: HOST KEY CHANGED — it offered {offered}, not the key {t.known_hosts} records. Refusing to connect."
            " If the host was reinstalled, verify the new key out of band and replace its line in known_hosts;"
            " otherwise treat this as an attack.")
    if "REVOKED HOST KEY" in err:
        return TransportError(
            "host-key-revoked",
            f"{where}: the host offered a key {t.known_hosts} marks @revoked. Refusing to connect. A revoked key"
            " may be a stolen one: give the host a new key, verify it out of band and pin it with fab hostkeys.")
    if "Host key verification failed" in err or re.search(r"No \S+ host key is known for", err):
        return TransportError(
            "host-key-unknown",
            f"{where}: host key not in {t.known_hosts}; fleetroll never trusts on first use."
            f" Pin it with fab hostkeys --hosts {t.name}, after comparing the fingerprint out of band.")
    if "UNPROTECTED PRIVATE KEY FILE" in err:
        key = t.key_filename or "the key"
        return TransportError("auth", f"{where}: OpenSSH will not use {key}: others can read it; fix: chmod 600 {key}")
    if "Permission denied" in err or "Too many authentication failures" in err:
        return TransportError("auth", f"{where}: authentication failed ({remote.clean_text(said)}); check user and key_filename")
    if budget is not None or "timed out" in err:
        return TransportError(
            "unreachable", f"{where}: no answer within {budget or t.connect_timeout:g}s; is the host up and on the network?")
    return TransportError("unreachable", f"{where}: SSH failed: {remote.clean_text(said) or 'ssh ended without a word'}")


class Session:
    """One `ssh` process running a command on one host (the agent, or an upload): its login, its pipes, its end.

    The I/O under agent_session.OpenSSHSession (send, readline, exit_status, close): `start()`
    may run early (prewarm) and `connect()` then only waits for the login.
    """

    def __init__(self, target: Target, command: str):
        self.target, self.command = target, command
        self.proc: subprocess.Popen | None = None
        self.connect_times = HostTimes()
        self.spawned_at = self.authed_at = None
        self._authed, self._ended = threading.Event(), threading.Event()
        self._err = bytearray()
        self._buf = bytearray()
        self._poll = None
        self._slot = False
        self._lock = threading.Lock()
        self._starting = threading.Lock()  # prewarm's thread and the claimer may both call start(): one spawn
        self._closed = False

    # --- the login -------------------------------------------------------------------------------------------
    def start(self, blocking: bool = True) -> bool:
        """Spawn ssh once a handshake slot is free (waiting with no clock running); True once spawned.

        blocking=False: spawn only if a slot is free now (prewarm's first pass, on the main thread).
        """
        with self._starting:
            if self.proc is None and not self._closed:
                self._spawn(blocking)
        return self.proc is not None

    def _spawn(self, blocking: bool) -> None:
        queued = time.monotonic()
        if not HANDSHAKES.acquire(blocking):
            return
        self._slot = True
        if self._closed:
            self._release()
            return
        self.spawned_at = time.monotonic()
        self.connect_times.wait_s = self.spawned_at - queued
        try:
            self.proc = subprocess.Popen(argv(self.target, self.command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            self._release()
            self._ended.set()
            raise TransportError("unreachable", f"{self.target.name}: cannot run ssh: {exc}") from None
        LIVE.add(self)
        threading.Thread(target=self._read_stderr, name=f"ssh-stderr-{self.target.name}", daemon=True).start()
        if self._closed:  # closed (or killed) while it spawned: it must not go on logging in after the command
            self.kill()

    def _release(self) -> None:
        with self._lock:
            if self._slot:
                self._slot = False
                HANDSHAKES.release()

    def _read_stderr(self) -> None:
        """Drain ssh's stderr in bounded chunks (a host can write without end): keep MAX_STDERR bytes of the host's
        words, and note the login to *this* host (a jump host's own "Authenticated to" names another)."""
        mine = b"%s%s (" % (AUTHENTICATED, self.target.address.encode())
        fd, pending = self.proc.stderr.fileno(), b""
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if len(pending) > 4096:  # no newline in sight: keep what fits, never the whole
                lines.append(pending)
                pending = b""
            for line in lines:
                self._stderr_line(line + b"\n", mine)
        if pending:
            self._stderr_line(pending, mine)
        self._release()
        self._ended.set()

    def _stderr_line(self, line: bytes, mine: bytes) -> None:
        if line.startswith(mine) and not self._authed.is_set():
            self.authed_at = time.monotonic()
            self._authed.set()
            self._release()
        elif not line.startswith(_NOISE) and len(self._err) < remote.MAX_STDERR:
            self._err += line[: remote.MAX_STDERR - len(self._err)]

    def connect(self) -> Session:
        """Wait for the login (started now if nobody started it): TransportError with the operator's text if it fails."""
        self.start()
        if self.proc is None:  # closed before it started
            raise TransportError("link-lost", f"{self.target.name}: the SSH session was closed before it started")
        budget = HANDSHAKE_TIMEOUTS * self.target.connect_timeout
        deadline = self.spawned_at + budget
        while not self._authed.is_set() and not self._ended.is_set() and time.monotonic() < deadline:
            self._authed.wait(0.05)
        if self._authed.is_set():
            self.connect_times.connect_s = self.authed_at - self.spawned_at
            return self
        timed_out = not self._ended.is_set()
        self.kill()
        exc = failure(self.target, self.stderr(), budget if timed_out else None)
        exc.times = HostTimes(wait_s=self.connect_times.wait_s, connect_s=time.monotonic() - self.spawned_at)
        raise exc

    def stderr(self) -> str:
        return bytes(self._err).decode(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- the conversation ------------------------------------------------------------------------------------
    def send(self, data: bytes) -> bool:
        """Write one request; False if the process is gone (its answer then reads as end of output)."""
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, ValueError, OSError):
            return False

    def readline(self, timeout: float) -> bytes:
        """One line of the agent's output (b'' at its end); TimeoutError after `timeout` seconds of silence."""
        fd = self.proc.stdout.fileno()
        while True:
            i = self._buf.find(b"\n")
            if i >= 0 or len(self._buf) > remote.MAX_LINE:
                n = i + 1 if i >= 0 else remote.MAX_LINE + 1
                line = bytes(self._buf[:n])
                del self._buf[:n]
                return line
            if self._poll is None:
                self._poll = select.poll()  # not select(): a command with hundreds of hosts has fds over 1024
                self._poll.register(fd, select.POLLIN)
            if not self._poll.poll(max(0, int(timeout * 1000))):
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                line = bytes(self._buf)
                self._buf.clear()
                return line
            self._buf += chunk

    def exit_status(self, timeout: float = 10.0) -> int:
        """The remote command's exit status (ssh's own 255 when the link or login failed), once stderr is read."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.wait()
        self._ended.wait(2.0)
        return rc

    def close(self, wait_s: float = 2.0) -> None:
        """End the agent the way paramiko's path does (the end of its stdin), then wait up to wait_s for ssh to exit
        (0: not at all; the agent and ssh end on their own once they read that end) and kill it if it has not."""
        self._closed = True  # not under _starting: a start waiting for a slot must not hold this up
        if self.proc is None:
            return  # not spawned: _spawn sees _closed (before or right after its Popen) and ends it
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if wait_s > 0:
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._release()

    def kill(self) -> None:
        """SIGKILL ssh's whole process group (start_new_session made it its own): a ProxyCommand child goes with it."""
        self._closed = True  # a start still waiting for its slot then spawns nothing
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
            self.proc.wait()
        self._release()


def kill_all() -> None:
    """Every ssh this process started and has not seen end: the command is being interrupted (Ctrl-C), and a thread
    blocked on a host's answer must not hold its exit up. The hosts' transactions run detached and go on."""
    for sess in list(LIVE):
        sess.kill()


def upload(t: Target, name: str, data: bytes, timeout: float = 120.0) -> float | None:
    """Put the agent archive at ~/name on the host, whole or not at all (a temporary name, then a rename).

    A login of its own, holding a handshake slot only until it has logged in (as every session does)."""
    tmp = f"{name}.{os.getpid()}.{threading.get_ident()}.part"
    folder = str(Path(name).parent)
    command = (f"umask 077 && mkdir -p {shlex.quote(folder)} && cat > {shlex.quote(tmp)}"
               f" && mv -f {shlex.quote(tmp)} {shlex.quote(name)}")
    sess = Session(t, command).connect()
    sent = sess.send(data)
    sess.close(wait_s=timeout)
    rc = sess.proc.wait()
    sess._ended.wait(2.0)
    if rc == 0 and sent:
        return sess.connect_times.connect_s  # its login, for the host's timings
    if rc == -signal.SIGKILL:
        raise TransportError("timeout", f"{t.name}: uploading the agent took over {timeout:g}s")
    err = sess.stderr()
    if rc == 255 and said_by_ssh(t, err):
        raise failure(t, err)
    raise TransportError("agent", f"{t.name}: could not upload the agent to ~/{name} (exit {rc}):"
                                  f" {remote.clean_text(err.strip()[-300:]) or 'no output'}")


def said_by_ssh(t: Target, err: str) -> bool:
    """ssh's own refusal (a host key, the login), not the remote command's words nor a cut link: what failure() names."""
    return failure(t, err).kind != "unreachable"
