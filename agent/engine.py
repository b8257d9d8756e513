"""The Docker Engine API over the daemon's unix socket (agent/http1.py): every call the agent makes to Docker.

Why not the docker SDK: importing it (requests, urllib3 and the SDK's own modules) cost
about 0.2 s of CPU per agent call, most of a no-op's cost on a host, and the agent needs
only a few dozen endpoints. Reads (facts, status, the dry run's diff) use `Engine.get`;
the transaction and the container operations use the SDK-shaped client built on this
(agent/dockerapi.py); both raise agent/docker_errors.py's exceptions.

One connection per call: the transaction calls Docker from several threads at once (gates
side by side), a unix-socket connect costs microseconds, and no kept-alive connection can
go stale under a restarting dockerd. Paths are unversioned, so the daemon speaks its own
API version (docker.io 20.10 is 1.41).

DOCKER_HOST is honoured for unix:// addresses (the lab gives each host its own daemon).
A tcp:// or ssh:// DOCKER_HOST is refused with a message saying so: the agent runs on the
host whose daemon it drives, and that daemon listens on a unix socket.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import urllib.parse
from collections.abc import Iterator

from . import http1
from .docker_errors import APIError, DaemonTimeout, DaemonUnreachable, UnsupportedDockerHost, error_for

TYPE_CHECKING = False  # importing typing costs every agent call ~2.5 ms; Any is only ever an annotation here
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SOCKET = "/var/run/docker.sock"
EngineError = APIError  # the name the reads (facts.py) catch; `.status` is the HTTP status


def _connect(path: str, timeout: float) -> http1.Connection:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except BaseException:
        s.close()
        raise
    return http1.Connection(s, "docker")


def socket_path() -> str | None:
    """The daemon's unix socket, or None when DOCKER_HOST names something else."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://"):]
    return None


def unsupported_host_message() -> str:
    host = os.environ.get("DOCKER_HOST", "")
    return (f"DOCKER_HOST={host!r}: the fleetroll agent drives the Docker daemon of the host it runs on, over its unix"
            " socket only (tcp:// and ssh:// are not spoken); unset DOCKER_HOST for the SSH user, or set it to"
            " unix:///path/to/docker.sock")


def _query_value(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def url_for(path: str, query: dict[str, Any] | None = None) -> str:
    """`path?query` (pure): booleans as 1/0, filters as JSON, None left out."""
    q = urllib.parse.urlencode({k: _query_value(v) for k, v in (query or {}).items() if v is not None})
    return path + (f"?{q}" if q else "")


def _message(body: bytes) -> str:
    try:
        msg = json.loads(body).get("message", "")
    except (ValueError, AttributeError):
        msg = ""
    return str(msg) or body[:300].decode(errors="replace").strip()


class _Wire:
    """Turns socket and HTTP failures into the agent's Docker errors, naming the call."""

    def __init__(self, what: str, timeout: float):
        self.what, self.timeout = what, timeout

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, APIError):
            return False
        if isinstance(exc, TimeoutError):
            raise DaemonTimeout(f"no answer from the Docker daemon within {self.timeout:.0f} s ({self.what})") from None
        if isinstance(exc, OSError):  # http1.ProtocolError among them
            raise DaemonUnreachable(f"the Docker daemon dropped the connection ({self.what}): {exc!r}") from None
        return False


class Stream:
    """An answer read as it comes: a pull's progress lines, a log or an exec's output. Closes its connection."""

    def __init__(self, conn: http1.Connection, response: http1.Response, wire: _Wire):
        self.conn, self.response, self.wire = conn, response, wire

    def read(self, n: int | None = None) -> bytes:
        with self.wire:
            return self.response.read() if n is None else self.response.read(n)

    def chunks(self, size: int = 65536) -> Iterator[bytes]:
        """Raw bytes as they arrive (a TTY container's log)."""
        while True:
            with self.wire:
                data = self.response.read1(size)
            if not data:
                return
            yield data

    def lines(self) -> Iterator[bytes]:
        while True:
            with self.wire:
                line = self.response.readline()
            if not line:
                return
            yield line

    def frames(self) -> Iterator[tuple[int, bytes]]:
        """Docker's multiplexed stream (no TTY): (1 stdout | 2 stderr, payload), frame by frame."""
        while True:
            head = self.read(8)
            if len(head) < 8:
                return
            kind, size = struct.unpack(">BxxxL", head)
            yield kind, self.read(size)

    def close(self) -> None:
        self.response.close()
        self.conn.close()

    def cut(self) -> None:
        """End a read blocked on this answer, from another thread: the reader then finds its end (or an error)."""
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed already

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Engine:
    """The daemon at `path`; `timeout` bounds each wait for the daemon (a call may say how much longer it may take)."""

    def __init__(self, path: str, timeout: float = 10.0):
        self.path, self.timeout = path, timeout

    def open(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
             timeout: float | None = None, image: bool = False, headers: dict[str, str] | None = None) -> Stream:
        """Send one request; an error status raises (ImageNotFound for a 404 when `image`); the answer streams.

        `headers` adds to the request's own (a pull's X-Registry-Auth); they are never logged or put in an error.
        """
        timeout = self.timeout if timeout is None else timeout
        url = url_for(path, query)
        wire = _Wire(f"{method} {path}", timeout)
        try:
            conn = _connect(self.path, timeout)
        except TimeoutError:
            raise DaemonTimeout(f"the Docker daemon at {self.path} did not accept a connection within {timeout:.0f} s") from None
        except OSError as exc:
            raise DaemonUnreachable(f"cannot reach the Docker daemon at {self.path}: {exc.strerror or exc!r}") from None
        headers = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            with wire:
                response = conn.request(method, url, headers, data)
            if response.status >= 400:
                with wire:
                    text = response.read()
                raise error_for(response.status, _message(text), image=image)
        except BaseException:
            conn.close()
            raise
        return Stream(conn, response, wire)

    def call(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
             timeout: float | None = None, image: bool = False) -> Any:
        """One request, its whole answer: parsed JSON, or None for an empty one."""
        with self.open(method, path, query, body, timeout, image) as s:
            data = s.read()
        return json.loads(data) if data.strip() else None

    def get(self, path: str, **query: Any) -> Any:
        return self.call("GET", path, query)

    def close(self) -> None:
        """Nothing held between calls (one connection per call); kept for `with open_engine() as eng`."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_engine(timeout: float = 10.0) -> Engine | None:
    path = socket_path()
    return Engine(path, timeout) if path else None


def require_engine(timeout: float = 10.0) -> Engine:
    """The local daemon, or UnsupportedDockerHost naming DOCKER_HOST and what to set instead."""
    eng = open_engine(timeout)
    if eng is None:
        raise UnsupportedDockerHost(unsupported_host_message())
    return eng
