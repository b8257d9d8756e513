"""HTTP/1.1 as the agent speaks it: one request at a time on a socket it opened, answers framed by
Content-Length, by chunked transfer coding or by the connection's end.

Why not http.client: importing it brings the `email` package and `ssl` into every agent call
(~14 ms of CPU on the lab's hosts, a fifth of a no-op's agent, paid on every host of every
preflight), to parse headers of which the agent reads four. This module asks nothing of the
standard library beyond `socket`; TLS is the caller's (agent/registry.py wraps the socket only
for an https registry).

What it refuses, so a hostile or broken peer cannot steer it: header values and request targets
with control characters (no header injection from a token or a redirect), status lines that are
not HTTP/1.x, header lines over 64 KiB and more than 100 of them, a chunk size that is not hex, an
answer cut short of its announced length. Such failures are `ProtocolError` (an OSError, as a
dropped connection is); a connection closed before any answer is `Disconnected`.
"""

from __future__ import annotations

import socket
import urllib.parse

REDIRECTS = (301, 302, 303, 307, 308)
MAX_LINE = 65536
MAX_HEADERS = 100  # header lines, folded continuations included (as http.client counts them)
_NO_BODY = (204, 304)


class ProtocolError(ConnectionError):
    """The peer's answer is not HTTP/1.x as this module reads it, or stops short."""


class Disconnected(ConnectionResetError):
    """The peer closed the connection before answering (a kept-alive connection it had dropped)."""


def _check(text: str, what: str) -> str:
    if any(ord(ch) < 0x20 and ch != "\t" or ord(ch) == 0x7F for ch in text):
        raise ValueError(f"refusing to send an HTTP {what} with control characters: {text[:80]!r}")
    return text


def encode_request(method: str, target: str, host: str, headers: dict[str, str] | None = None,
                   body: bytes | None = None) -> bytes:
    """The request's bytes (pure). A body, or a POST/PUT without one, gets its Content-Length."""
    if not method.isalpha() or " " in target or not target:
        raise ValueError(f"refusing to send HTTP request {method!r} {target!r}")
    _check(target, "request target")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {_check(host, 'Host header')}"]
    names = {"host"}
    for name, value in (headers or {}).items():
        if not name or any(c in name for c in " :\t\r\n"):
            raise ValueError(f"refusing to send an HTTP header named {name!r}")
        if name.lower() in names:
            continue
        names.add(name.lower())
        lines.append(f"{name}: {_check(str(value), f'{name} header')}")
    if "accept-encoding" not in names:
        lines.append("Accept-Encoding: identity")
    if body is not None or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body or b'')}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def _content_length(value: str) -> int:
    """A Content-Length; the same length repeated ("2, 2": a header sent twice) is that length."""
    lengths = {v.strip() for v in value.split(",")}
    if len(lengths) != 1 or not all(v.isascii() and v.isdigit() for v in lengths):
        raise ProtocolError(f"bad Content-Length {value[:40]!r}")
    return int(lengths.pop())


class Response:
    """One answer, read as the caller asks: whole (`read()`), by size, by line, or as it arrives (`read1`)."""

    def __init__(self, fp, method: str):
        self.fp = fp
        self.status, self.reason, version = self._status_line()
        interim = 0  # answers like 100 Continue or 103 Early Hints: skipped, a bounded number of them
        while 100 <= self.status < 200 and self.status != 101:
            interim += 1
            if interim > MAX_HEADERS:
                raise ProtocolError(f"more than {MAX_HEADERS} interim answers")
            self._headers()
            self.status, self.reason, version = self._status_line()
        self._pairs = self._headers()
        self.headers: dict[str, str] = {}
        for name, value in self._pairs:
            key = name.lower()
            self.headers[key] = f"{self.headers[key]}, {value}" if key in self.headers else value
        self._buf = b""
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self._chunk_left = 0  # bytes left in the current chunk
        self._ended = self._closed = False
        length = self.headers.get("content-length")
        if method == "HEAD" or self.status in _NO_BODY or self.status < 200:
            self._left: int | None = 0
            self._chunked = False
        elif self._chunked:
            self._left = None
        elif length is not None:
            self._left = _content_length(length)
        else:
            self._left = None  # to the connection's end
        connection = self.headers.get("connection", "").lower()
        self.will_close = (version == "HTTP/1.0" and "keep-alive" not in connection) or "close" in connection or (
            self._left is None and not self._chunked)

    def _line(self) -> bytes:
        line = self.fp.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise ProtocolError("an HTTP line longer than 64 KiB")
        return line

    def _status_line(self) -> tuple[int, str, str]:
        line = self._line()
        if not line:
            raise Disconnected("the peer closed the connection without answering")
        parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(parts) < 2 or parts[0] not in ("HTTP/1.0", "HTTP/1.1") or not (
                parts[1].isascii() and parts[1].isdigit() and len(parts[1]) == 3):
            raise ProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
        return int(parts[1]), parts[2] if len(parts) > 2 else "", parts[0]

    def _headers(self) -> list[tuple[str, str]]:
        parts: list[tuple[str, list[str]]] = []
        for _ in range(MAX_HEADERS + 1):
            line = self._line()
            if not line:
                raise ProtocolError("the connection ended inside the answer's headers")
            if line in (b"\r\n", b"\n"):
                return [(name, " ".join(values)) for name, values in parts]
            text = line.decode("latin-1").rstrip("\r\n")
            if text[:1] in (" ", "\t") and parts:  # an obsolete folded line continues the last header
                parts[-1][1].append(text.strip())
                continue
            name, sep, value = text.partition(":")
            if not sep or not name or name != name.strip():
                raise ProtocolError(f"not an HTTP header line: {line[:80]!r}")
            parts.append((name, [value.strip()]))
        raise ProtocolError(f"more than {MAX_HEADERS} header lines")

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def getheaders(self) -> list[tuple[str, str]]:
        return list(self._pairs)

    def _some(self, n: int) -> bytes:
        """Up to n bytes of the body (at least one unless it has ended), framing taken off."""
        if self._ended:
            return b""
        if self._chunked:
            if not self._chunk_left:
                size = self._line().split(b";", 1)[0].strip()
                if not size or size.strip(b"0123456789abcdefABCDEF"):  # hex digits only: not "-5", "0x10" or "1_0"
                    raise ProtocolError(f"bad chunk size {size[:20]!r}")
                self._chunk_left = int(size, 16)
                if self._chunk_left == 0:
                    while self._line() not in (b"\r\n", b"\n", b""):  # trailers: read and ignored
                        pass
                    self._ended = True
                    return b""
            data = self.fp.read1(min(n, self._chunk_left))
            if not data:
                raise ProtocolError("the connection ended inside a chunk")
            self._chunk_left -= len(data)
            if not self._chunk_left and self._line() not in (b"\r\n", b"\n"):
                raise ProtocolError("a chunk not followed by its line end")
            return data
        if self._left is None:
            data = self.fp.read1(n)
            self._ended = not data
            return data
        if not self._left:
            self._ended = True
            return b""
        data = self.fp.read1(min(n, self._left))
        if not data:
            raise ProtocolError(f"the connection ended {self._left} bytes short of the answer's Content-Length")
        self._left -= len(data)
        return data

    def read(self, n: int | None = None) -> bytes:
        """The whole rest of the body, or exactly n bytes of it (fewer only at its end)."""
        if n is not None and len(self._buf) >= n:
            data, self._buf = self._buf[:n], self._buf[n:]
            return data
        parts = [self._buf]
        have = len(self._buf)
        self._buf = b""
        while n is None or have < n:
            data = self._some(65536 if n is None else n - have)
            if not data:
                break
            parts.append(data)
            have += len(data)
        return b"".join(parts)

    def read1(self, n: int = 65536) -> bytes:
        """What has arrived, up to n bytes (at least one unless the body has ended): a stream as it comes."""
        if n <= 0:
            return b""
        if self._buf:
            data, self._buf = self._buf[:n], self._buf[n:]
            return data
        return self._some(n)

    def readline(self) -> bytes:
        """One line of the body, its newline included (the last may have none)."""
        while b"\n" not in self._buf:
            data = self._some(MAX_LINE)
            if not data:
                break
            self._buf += data
        i = self._buf.find(b"\n") + 1 or len(self._buf)
        line, self._buf = self._buf[:i], self._buf[i:]
        return line

    @property
    def complete(self) -> bool:
        """The whole body was read and nothing of it is left over: the connection may carry another request."""
        if self._closed or self._buf:
            return False
        return self._ended or (self._left == 0 and not self._chunked)

    def close(self) -> None:
        """Stop reading: what is left of the body stays unread, so the connection is not used again."""
        self._ended = self._closed = True


def tcp_socket(hostname: str, port: int, timeout: float) -> socket.socket:
    """A connected TCP socket. An ASCII name goes to getaddrinfo as bytes: a str is IDNA-encoded first, and that
    codec's import (with stringprep and unicodedata) is ~1 ms of every agent call; a name that is not ASCII still is."""
    return socket.create_connection((hostname.encode() if hostname.isascii() else hostname, port), timeout=timeout)


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of a URL, the default port filled in: what must match for credentials, or a health
    check's answer, to count as the same server's. A port that is not one gives an origin nothing else equals."""
    u = urllib.parse.urlsplit(url)
    try:
        port = u.port
    except ValueError:
        return (u.scheme.lower(), u.netloc.lower(), -1)
    return (u.scheme.lower(), (u.hostname or "").lower(), port or {"https": 443, "http": 80}.get(u.scheme.lower()))


class Connection:
    """A socket carrying requests one after another (kept alive while the peer allows it)."""

    def __init__(self, sock: socket.socket, host: str):
        self.sock, self.host = sock, host
        self.fp = sock.makefile("rb")
        self.response: Response | None = None
        self.broken = False  # a request failed half-way: what is on the wire is unknown

    def request(self, method: str, target: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> Response:
        if not self.reusable:
            raise ProtocolError("the connection's last answer was not read to its end")
        data = encode_request(method, target, self.host, headers, body)
        self.broken, self.response = True, None
        self.sock.sendall(data)
        self.response = Response(self.fp, method)
        self.broken = False
        return self.response

    @property
    def reusable(self) -> bool:
        r = self.response
        return not self.broken and (r is None or (r.complete and not r.will_close))

    def close(self) -> None:
        try:
            self.fp.close()
        finally:
            self.sock.close()
