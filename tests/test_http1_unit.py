"""agent/http1.py, the agent's HTTP/1.1: framing, keep-alive and what it refuses, over a socket pair.

Each test writes the peer's answer into one end of a socket pair and lets the client read it from the other,
so every framing case (a chunk split mid-line, trailers, an answer cut short) is exact bytes, not whatever a server
library happens to send. The engine and registry tests run it against http.server, the lab tests against dockerd
and the registry.
"""

from __future__ import annotations

import socket

import pytest

from agent import http1


def pair(*answers: bytes) -> tuple[http1.Connection, socket.socket]:
    a, b = socket.socketpair()
    a.settimeout(5)
    for answer in answers:
        b.sendall(answer)
    return http1.Connection(a, "docker"), b


def sent(peer: socket.socket) -> bytes:
    peer.settimeout(0.2)
    out = b""
    try:
        while chunk := peer.recv(65536):
            out += chunk
    except TimeoutError:
        pass
    return out


def test_a_request_is_the_bytes_a_server_expects():
    assert http1.encode_request("POST", "/containers/create?name=web", "docker", {"Content-Type": "application/json"}, b"{}") == (
        b"POST /containers/create?name=web HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
        b"Accept-Encoding: identity\r\nContent-Length: 2\r\n\r\n{}")
    assert http1.encode_request("GET", "/_ping", "docker", {"Host": "elsewhere"}) == (
        b"GET /_ping HTTP/1.1\r\nHost: docker\r\nAccept-Encoding: identity\r\n\r\n")
    assert b"Content-Length: 0\r\n" in http1.encode_request("POST", "/containers/x/start", "docker")


@pytest.mark.parametrize("headers,target", [
    ({"Authorization": "Bearer t\r\nX-Injected: 1"}, "/v2/"),
    ({"Bad Name": "x"}, "/v2/"),
    ({}, "/v2/a b"),
    ({}, "/v2/\nx"),
])
def test_control_characters_in_a_header_or_target_are_refused_before_anything_is_sent(headers, target):
    with pytest.raises(ValueError):
        http1.encode_request("GET", target, "registry:5000", headers)


def test_content_length_answers_on_one_kept_alive_connection():
    conn, peer = pair(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nApi-Version: 1.41\r\n\r\nhello",
                      b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}")
    r = conn.request("GET", "/a")
    assert (r.status, r.reason, r.getheader("API-VERSION"), r.read()) == (200, "OK", "1.41", b"hello")
    assert conn.reusable and not r.will_close
    r2 = conn.request("GET", "/b")
    assert (r2.status, r2.read()) == (404, b"{}")
    assert sent(peer).count(b"HTTP/1.1\r\nHost: docker\r\n") == 2


def test_a_chunked_answer_read_by_line_by_size_and_as_it_arrives():
    body = b"6;ext=1\r\n{\"a\":1\r\n4\r\n}\n{\"\r\nA\r\nb\":2}\nlast\r\n0\r\nTrailer: x\r\n\r\n"
    conn, _ = pair(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    r = conn.request("POST", "/images/create")
    assert r.readline() == b'{"a":1}\n'  # a line split across two chunks
    assert r.read1(3) == b'{"'
    assert r.read(4) == b'b":2'
    assert r.readline() == b"}\n"
    assert r.readline() == b"last"  # the last line has no newline
    assert r.readline() == b"" and r.read() == b""
    assert r.complete and conn.reusable


def test_an_answer_without_length_runs_to_the_connections_end():
    conn, peer = pair(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\nstream bytes")
    r = conn.request("POST", "/exec/1/start")
    peer.shutdown(socket.SHUT_WR)
    assert r.will_close and r.read() == b"stream bytes"
    assert not conn.reusable


def test_head_204_and_interim_answers_carry_no_body():
    conn, _ = pair(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nDocker-Content-Digest: sha256:ab\r\n\r\n",
                   b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                   b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    r = conn.request("HEAD", "/v2/lab/svc/manifests/1")
    assert r.read() == b"" and r.getheader("docker-content-digest") == "sha256:ab" and conn.reusable
    r = conn.request("POST", "/containers/x/stop")
    assert r.status == 204 and r.read() == b""
    r = conn.request("GET", "/old")
    assert r.read() == b"ok" and r.will_close  # HTTP/1.0 without keep-alive closes


def test_repeated_and_folded_headers():
    conn, _ = pair(b"HTTP/1.1 401 Unauthorized\r\nWww-Authenticate: Bearer realm=\"x\"\r\nWww-Authenticate: Basic\r\n"
                   b"X-Long: one\r\n two\r\nContent-Length: 0\r\n\r\n")
    r = conn.request("GET", "/v2/")
    assert r.getheader("www-authenticate") == 'Bearer realm="x", Basic'
    assert r.getheader("x-long") == "one two"
    assert [n for n, _ in r.getheaders()] == ["Www-Authenticate", "Www-Authenticate", "X-Long", "Content-Length"]


@pytest.mark.parametrize("answer,error", [
    (b"", http1.Disconnected),
    (b"SSH-2.0-OpenSSH_9.2\r\n", http1.ProtocolError),
    (b"HTTP/1.1 2000 Huh\r\n\r\n", http1.ProtocolError),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", http1.ProtocolError),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n", http1.ProtocolError),
    (b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 101 + b"\r\n", http1.ProtocolError),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", http1.ProtocolError),
    (b"HTTP/1.1 200 OK\r\nContent-Le", http1.ProtocolError),
])
def test_what_is_not_an_http_answer_is_an_error_naming_why(answer, error):
    conn, peer = pair(answer)
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(error):
        conn.request("GET", "/health")


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
])
def test_a_body_cut_short_or_misframed_is_an_error_not_a_shorter_answer(answer):
    conn, peer = pair(answer)
    peer.shutdown(socket.SHUT_WR)
    r = conn.request("GET", "/containers/json")
    with pytest.raises(http1.ProtocolError):
        r.read()


def test_a_connection_whose_answer_was_not_read_is_not_reused():
    conn, _ = pair(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    conn.request("GET", "/a")
    assert not conn.reusable
    with pytest.raises(http1.ProtocolError):
        conn.request("GET", "/b")


def test_folded_lines_count_against_the_header_limit():
    """A peer folding one header over thousands of lines must hit the cap, not grow a value quadratically."""
    conn, peer = pair(b"HTTP/1.1 200 OK\r\nX: a\r\n" + b"\r\n".join(
        [b"\t" + b"b" * 1000] * 150) + b"\r\n\r\n")
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(http1.ProtocolError, match="more than 100 header lines"):
        conn.request("GET", "/v2/")


def test_a_head_answer_is_bodiless_even_when_it_says_chunked():
    conn, _ = pair(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert conn.request("HEAD", "/v2/lab/svc/manifests/1").read() == b"" and conn.reusable
    assert conn.request("GET", "/v2/").read() == b"ok"


def test_an_answer_closed_unread_or_a_request_cut_short_leaves_the_connection_unusable():
    conn, _ = pair(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789")
    r = conn.request("GET", "/a")
    assert r.read(3) == b"012"
    r.close()
    assert not r.complete and not conn.reusable
    conn, peer = pair()
    peer.close()
    with pytest.raises(OSError):
        conn.request("GET", "/a")
    assert not conn.reusable


def test_read_after_readline_returns_what_was_asked():
    conn, _ = pair(b"HTTP/1.1 200 OK\r\nContent-Length: 24\r\n\r\nline\n0123456789abcdefghi")
    r = conn.request("GET", "/logs")
    assert r.readline() == b"line\n"
    assert r.read(4) == b"0123" and r.read1(0) == b"" and r.read1(3) == b"456" and r.read() == b"789abcdefghi"


@pytest.mark.parametrize(("length", "ok"), [("2, 2", True), ("2, 3", False), ("\u00b2", False), ("+2", False)])
def test_a_repeated_content_length_must_agree_and_be_ascii_digits(length, ok):
    conn, peer = pair(f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\nok".encode())
    peer.shutdown(socket.SHUT_WR)
    if ok:
        assert conn.request("GET", "/").read() == b"ok"
    else:
        with pytest.raises(http1.ProtocolError):
            conn.request("GET", "/")


@pytest.mark.parametrize("size", [b"-5", b"0x10", b"1_0", b""])
def test_a_chunk_size_is_hex_digits_only(size):
    conn, peer = pair(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n")
    peer.shutdown(socket.SHUT_WR)
    r = conn.request("GET", "/")
    with pytest.raises(http1.ProtocolError, match="bad chunk size"):
        r.read()


def test_interim_answers_are_skipped_but_not_without_end():
    conn, _ = pair(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert conn.request("GET", "/").read() == b"ok"
    conn, peer = pair(b"HTTP/1.1 100 Continue\r\n\r\n" * 101)
    peer.shutdown(socket.SHUT_WR)
    with pytest.raises(http1.ProtocolError, match="interim answers"):
        conn.request("GET", "/")
