"""The host's listening ports: the netlink dump agrees with /proc/net, and its parsing holds on crafted answers."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from agent import listening


def _msg(kind: int, body: bytes, seq: int = 1) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(body), kind, 0x2, seq, 0) + body
    return raw + b"\0" * (-len(raw) % 4)


def _diag(port: int, state: int = listening.TCP_LISTEN, family: int = socket.AF_INET) -> bytes:
    sockid = struct.pack("!HH", port, 0) + b"\0" * 44
    return _msg(listening.SOCK_DIAG_BY_FAMILY, struct.pack("=BBBB", family, state, 0, 0) + sockid + b"\0" * 20)


def test_the_request_asks_for_tcp_sockets_of_one_family_in_the_listen_state_only():
    raw = listening.request(socket.AF_INET6, 7)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", raw)
    family, proto, _ext, states = struct.unpack_from("=BBBxI", raw, 16)
    assert (length, kind, seq) == (len(raw), listening.SOCK_DIAG_BY_FAMILY, 7) and length == 16 + 56
    assert flags == listening.NLM_F_REQUEST | listening.NLM_F_DUMP
    assert (family, proto, states) == (socket.AF_INET6, socket.IPPROTO_TCP, 1 << 10)


def test_ports_come_from_listening_sockets_until_the_dump_says_done():
    ports, done = listening.parse(_diag(22) + _diag(8080, family=socket.AF_INET6) + _diag(5000, state=1))
    assert ports == {22, 8080} and not done  # state 1 (established) is not listening
    ports, done = listening.parse(_diag(9100) + _msg(listening.NLMSG_DONE, b"\0\0\0\0"))
    assert ports == {9100} and done


def test_a_netlink_error_or_a_malformed_answer_raises_so_the_caller_reads_proc_instead():
    with pytest.raises(OSError) as exc:
        listening.parse(_msg(listening.NLMSG_ERROR, struct.pack("=i", -errno.ENOENT) + b"\0" * 16))
    assert exc.value.errno == errno.ENOENT
    with pytest.raises(OSError, match="malformed"):
        listening.parse(struct.pack("=IHHII", 400, listening.SOCK_DIAG_BY_FAMILY, 0, 1, 0))
    with pytest.raises(OSError) as exc:  # a dump that failed half-way: its DONE carries the errno
        listening.parse(_diag(22) + _msg(listening.NLMSG_DONE, struct.pack("=i", -errno.EINTR)))
    assert exc.value.errno == errno.EINTR
    with pytest.raises(OSError, match="without its code"):
        listening.parse(_msg(listening.NLMSG_ERROR, b""))
    interrupted = bytearray(_diag(22))
    struct.pack_into("=H", interrupted, 6, listening.NLM_F_DUMP_INTR | 0x2)
    with pytest.raises(OSError, match="changed during the dump"):
        listening.parse(bytes(interrupted))


def test_netlink_and_proc_agree_on_this_machine_for_ipv4_and_ipv6_listeners():
    """Other processes may open or close listeners meanwhile: what both /proc reads saw, netlink must see, and
    netlink sees nothing that neither /proc read saw."""
    socks = []
    try:
        for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            try:
                s.bind((addr, 0))
            except OSError:
                continue  # no IPv6 on this machine
            s.listen()
        mine = {s.getsockname()[1] for s in socks if s.getsockname()[1]}
        before = listening.by_proc()
        try:
            by_netlink = listening.by_netlink()
        except OSError as exc:
            pytest.skip(f"this machine refuses sock_diag netlink ({exc}); the agent reads /proc there")
        after = listening.by_proc()
        assert mine and mine <= by_netlink
        assert before & after <= by_netlink <= before | after
    finally:
        for s in socks:
            s.close()


def test_where_netlink_is_refused_the_ports_come_from_proc(monkeypatch):
    def refused(*_a, **_k):
        raise PermissionError(errno.EPERM, "netlink refused")

    monkeypatch.setattr(listening, "by_netlink", refused)
    monkeypatch.setattr(listening, "by_proc", lambda: {22, 8080})
    assert listening.listening_ports() == [22, 8080]
