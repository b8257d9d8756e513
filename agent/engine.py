"""A read-only Docker Engine API client over the unix socket, with http.client alone.

Why not the docker SDK here: importing it costs about 0.2 s of CPU per agent call (requests,
urllib3 and the SDK's own modules), which is most of a no-op's cost on a host. Reads (facts,
status, the dry run's diff) need three or four GETs; this does them. Anything that changes a
host (the transaction, prune, exec) still uses the SDK.

DOCKER_HOST is honoured for unix:// addresses (the lab gives each host its own daemon); a
tcp:// or ssh:// DOCKER_HOST falls back to the SDK, which speaks those.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from typing import Any

DEFAULT_SOCKET = "/var/run/docker.sock"


class EngineError(Exception):
    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


def socket_path() -> str | None:
    """The daemon's unix socket, or None when DOCKER_HOST names something else."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://"):]
    return None


class Engine:
    def __init__(self, path: str, timeout: float = 10.0):
        self.conn = _UnixConnection(path, timeout)

    def get(self, path: str, **query: Any) -> Any:
        q = urllib.parse.urlencode({k: json.dumps(v) if isinstance(v, dict) else v for k, v in query.items()})
        self.conn.request("GET", path + (f"?{q}" if q else ""), headers={"Host": "docker"})
        r = self.conn.getresponse()
        body = r.read()
        if r.status >= 400:
            try:
                msg = json.loads(body).get("message", "")
            except ValueError:
                msg = body[:200].decode(errors="replace")
            raise EngineError(r.status, f"{r.status} {msg}")
        return json.loads(body) if body else None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_engine(timeout: float = 10.0) -> Engine | None:
    path = socket_path()
    return Engine(path, timeout) if path else None
