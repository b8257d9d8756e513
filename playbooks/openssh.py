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
"""

from __future__ import annotations

import math
import os
import re
import select
import shlex
import subprocess
import threading
import time
from pathlib import Path

from . import remote
from .ssh_connection import HANDSHAKES, Target, TransportError
from .timings import HostTimes

AUTHENTICATED = b"Authenticated to "  # OpenSSH's LogLevel=VERBOSE line once the login succeeded
_NOISE = (AUTHENTICATED, b"Transferred: ", b"Bytes per second")  # VERBOSE lines that are not the host's words
HANDSHAKE_TIMEOUTS = 3  # TCP connect, key exchange, authentication: paramiko gives each connect_timeout


def _opt(value: str) -> str:
    """A path as an ssh -o value: OpenSSH expands %-tokens and splits on blanks, so escape both."""
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
    if "Permission denied" in err or "Too many authentication failures" in err:
        return TransportError("auth", f"{where}: authentication failed ({remote.clean_text(said)}); check user and key_filename")
    if budget is not None or "timed out" in err:
        return TransportError(
            "unreachable", f"{where}: no answer within {budget or t.connect_timeout:g}s; is the host up and on the network?")
    return TransportError("unreachable", f"{where}: SSH failed: {remote.clean_text(said) or 'ssh ended without a word'}")


class Session:
    """One `ssh` process running the agent on one host: requests go in one per line on its stdin, answers come back.

    The same contract as transport.AgentSession (the paramiko one): `call`, `close`, and
    `connect_times`; `start()` may run early (prewarm) and `connect()` then only waits for the login.
    """

    def __init__(self, target: Target, command: str):
        self.target, self.command = target, command
        self.proc: subprocess.Popen | None = None
        self.connect_times = HostTimes()
        self.spawned_at = self.authed_at = None
        self.fresh = True  # no request sent to this process yet: its first answer splits start from work
        self._authed, self._ended = threading.Event(), threading.Event()
        self._err = bytearray()
        self._buf = bytearray()
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
        threading.Thread(target=self._read_stderr, name=f"ssh-stderr-{self.target.name}", daemon=True).start()
        if self._closed:  # closed while it spawned: the end of its input ends it
            self.proc.stdin.close()

    def _release(self) -> None:
        with self._lock:
            if self._slot:
                self._slot = False
                HANDSHAKES.release()

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            if line.startswith(AUTHENTICATED) and not self._authed.is_set():
                self.authed_at = time.monotonic()
                self._authed.set()
                self._release()
            elif not line.startswith(_NOISE) and len(self._err) < remote.MAX_STDERR:
                self._err += line
        self._release()
        self._ended.set()

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
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
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
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._release()


def upload(t: Target, name: str, data: bytes, timeout: float = 120.0) -> None:
    """Put the agent archive at ~/name on the host, whole or not at all (a temporary name, then a rename)."""
    tmp = f"{name}.{os.getpid()}.{threading.get_ident()}.part"
    folder = str(Path(name).parent)
    command = (f"umask 077 && mkdir -p {shlex.quote(folder)} && cat > {shlex.quote(tmp)}"
               f" && mv -f {shlex.quote(tmp)} {shlex.quote(name)}")
    with HANDSHAKES:
        try:
            done = subprocess.run(argv(t, command), input=data, capture_output=True, timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise TransportError("timeout", f"{t.name}: uploading the agent took over {timeout:g}s") from None
    if done.returncode != 0:
        err = b"\n".join(ln for ln in done.stderr.splitlines() if not ln.startswith(_NOISE)).decode(errors="replace")
        if done.returncode == 255 and AUTHENTICATED not in done.stderr:
            raise failure(t, err)
        raise TransportError("agent", f"{t.name}: could not upload the agent to ~/{name} (exit {done.returncode}):"
                                      f" {remote.clean_text(err.strip()[-300:]) or 'no output'}")
