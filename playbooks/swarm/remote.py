"""Running `docker` argv lists on a host over fleetroll's SSH: the same strict known-hosts connection as the agent's.

transport.connect() refuses unknown and changed host keys; this adds only an exec of one argv
(shlex-joined, never a shell string from data) with stdin, bounded output and a timeout.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paramiko

from .. import remote as answers
from .. import transport
from ..inventory import Inventory

MAX_OUT = 4 << 20  # a swarm's inspect JSON of a few dozen services and tasks fits well inside


class SwarmCommandError(Exception):
    """A docker command failed on a host: which host, which command, what it said."""

    def __init__(self, host: str, argv: list[str], rc: int, err: str):
        self.host, self.argv, self.rc, self.err = host, argv, rc, err
        # A join token is a credential: never in a message.
        shown = ["<token>" if i and argv[i - 1] == "--token" else a for i, a in enumerate(argv)]
        super().__init__(f"{host}: `{shlex.join(shown)}` failed (exit {rc}): {answers.clean_text(err.strip()[-400:]) or 'no output'}")


@dataclass
class Host:
    """One open SSH connection to a host, for docker commands."""

    name: str
    address: str
    conn: Any

    def run(self, argv: list[str], stdin: bytes = b"", timeout: float = 60.0, check: bool = True) -> tuple[int, str, str]:
        """Run argv; every way of not getting its whole answer (a dead transport, a timeout, output over MAX_OUT, no
        exit status in time) is a SwarmCommandError, so a caller reports needs-operator instead of crashing on it."""
        try:
            t = self.conn.client.get_transport()
            if t is None:  # paramiko's answer once the connection is closed
                raise paramiko.SSHException("the SSH connection is closed")
            chan = t.open_session(timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SwarmCommandError(self.name, argv, -1, f"no SSH session to {self.address}: {exc}") from None
        chan.settimeout(timeout)
        try:
            chan.exec_command(shlex.join(argv))
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            raw = chan.makefile("rb").read(MAX_OUT + 1)
            if len(raw) > MAX_OUT:
                raise SwarmCommandError(self.name, argv, -1, f"more than {MAX_OUT} bytes of output; the answer was not"
                                        " read whole, so nothing is taken from it")
            # paramiko's recv_exit_status() waits without a clock: the status event is waited on with one.
            if not chan.status_event.wait(timeout):
                raise SwarmCommandError(self.name, argv, -1, f"no exit status within {timeout:g}s")
            rc = chan.recv_exit_status()
            err = chan.makefile_stderr("rb").read(64 << 10).decode(errors="replace")
        except TimeoutError:
            raise SwarmCommandError(self.name, argv, -1, f"no answer within {timeout:g}s") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SwarmCommandError(self.name, argv, -1, f"the SSH connection failed: {exc}") from None
        finally:
            chan.close()
        if check and rc != 0:
            raise SwarmCommandError(self.name, argv, rc, err)
        return rc, raw.decode(errors="replace"), err

    def stream(self, argv: list[str], on_data: Callable[[bytes], None], idle_s: float = 86400.0) -> int:
        """Run argv and hand its output to on_data as it comes, until it ends; return its exit status.

        For commands that run until stopped (`docker service logs --follow`). On a pseudo-terminal, so that
        closing the channel (Ctrl-C here: the KeyboardInterrupt goes up, `finally` closes) hangs the
        remote command up and leaves no docker process behind on the manager; stdout and stderr come
        merged, as on a terminal. A link that dies, or no output for idle_s, is a SwarmCommandError.
        """
        try:
            t = self.conn.client.get_transport()
            if t is None:
                raise paramiko.SSHException("the SSH connection is closed")
            chan = t.open_session(timeout=60)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SwarmCommandError(self.name, argv, -1, f"no SSH session to {self.address}: {exc}") from None
        chan.settimeout(idle_s)
        try:
            chan.get_pty(term="dumb", width=500, height=50)
            chan.exec_command(shlex.join(argv))
            while data := chan.recv(32 << 10):
                on_data(data)
            if not chan.status_event.wait(30):
                raise SwarmCommandError(self.name, argv, -1, "the output ended but no exit status came within 30s")
            return chan.recv_exit_status()
        except TimeoutError:
            raise SwarmCommandError(self.name, argv, -1, f"no output for {idle_s:g}s") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SwarmCommandError(self.name, argv, -1, f"the SSH connection failed: {exc}") from None
        finally:
            chan.close()

    def json(self, argv: list[str], timeout: float = 60.0) -> Any:
        """The command's JSON answer; an answer that is not JSON (cut short, garbled) is a SwarmCommandError."""
        _rc, out, _err = self.run(argv, timeout=timeout)
        try:
            return json.loads(out) if out.strip() else None
        except ValueError as exc:
            raise SwarmCommandError(self.name, argv, -1, f"the answer is not JSON ({exc}); nothing is taken from it") from None

    def lines(self, argv: list[str], timeout: float = 60.0) -> list[str]:
        return [x.strip() for x in self.run(argv, timeout=timeout)[1].splitlines() if x.strip()]

    def close(self) -> None:
        self.conn.close()


def open_host(inv: Inventory, name: str) -> Host:
    """Connect to an inventory host (strict known hosts); raises transport.TransportError with the operator's text."""
    t = transport.Target.from_inventory(inv, name)
    return Host(name, t.address, transport.connect(t))
