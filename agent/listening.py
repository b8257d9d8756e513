"""The host's listening TCP ports, asked of the kernel's socket-diagnostics netlink (as `ss -ltn` does).

Why not /proc/net/tcp: reading it walks the whole established-connection hash, every bucket of
every network namespace, to print the few sockets of this one: ~4.5 ms of kernel CPU per file on
the lab machine, twice (tcp and tcp6), on every host of every preflight. A sock_diag dump that asks
for the LISTEN state only walks the listening hash. Where netlink is refused (a seccomp profile, a
kernel without inet_diag), /proc/net is read as before: same answer, slower.
"""

from __future__ import annotations

import os
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_DUMP_INTR = 0x10  # the table changed while it was dumped: the answer may miss sockets
TCP_LISTEN = 10
_NLMSG = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_REQ = struct.Struct("=BBBxI48x")  # inet_diag_req_v2: family, protocol, ext, pad, states, an empty inet_diag_sockid
_MSG_HEAD = struct.Struct("=BB2x")  # inet_diag_msg: family, state, timer, retrans; then its inet_diag_sockid
_SPORT = struct.Struct("!H")  # the sockid's first field, the local port, in network byte order


def request(family: int, seq: int) -> bytes:
    """One SOCK_DIAG_BY_FAMILY dump request: TCP sockets of `family` in the LISTEN state only (pure)."""
    body = _REQ.pack(family, socket.IPPROTO_TCP, 0, 1 << TCP_LISTEN)
    return _NLMSG.pack(_NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse(data: bytes) -> tuple[set[int], bool]:
    """Listening ports in one datagram of the dump's answer, and whether it holds the dump's end (pure).

    A netlink error message raises OSError with its errno, so the caller falls back to /proc.
    """
    ports: set[int] = set()
    off = 0
    while off + _NLMSG.size <= len(data):
        length, kind, flags, _seq, _pid = _NLMSG.unpack_from(data, off)
        if length < _NLMSG.size or off + length > len(data):
            raise OSError(f"sock_diag: a malformed message ({length} bytes at offset {off})")
        if flags & NLM_F_DUMP_INTR:
            raise OSError("sock_diag: the socket table changed during the dump")
        if kind in (NLMSG_DONE, NLMSG_ERROR):
            # Both carry an errno (negative, 0 for none): a dump that failed half-way ends with it in its DONE.
            if length < _NLMSG.size + 4:
                raise OSError(f"sock_diag: a {'DONE' if kind == NLMSG_DONE else 'ERROR'} message without its code")
            err = -struct.unpack_from("=i", data, off + _NLMSG.size)[0]
            if err:
                raise OSError(err, f"sock_diag: {os.strerror(err)}")
            if kind == NLMSG_DONE:
                return ports, True
            raise OSError("sock_diag: an acknowledgement where the dump was expected")
        if kind == SOCK_DIAG_BY_FAMILY and length >= _NLMSG.size + _MSG_HEAD.size + _SPORT.size:
            _family, state = _MSG_HEAD.unpack_from(data, off + _NLMSG.size)
            if state == TCP_LISTEN:
                ports.add(_SPORT.unpack_from(data, off + _NLMSG.size + _MSG_HEAD.size)[0])
        off += (length + 3) & ~3  # NLMSG_ALIGN
    return ports, False


def by_netlink(timeout: float = 2.0) -> set[int]:
    """Listening TCP ports (IPv4 and IPv6) from one netlink socket; OSError if the kernel will not say."""
    ports: set[int] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as s:
        s.settimeout(timeout)
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            s.sendall(request(family, seq))
            done = False
            while not done:
                got, done = parse(s.recv(65536))
                ports |= got
    return ports


def parse_proc_net(text: str) -> set[int]:
    """Listening ports in /proc/net/tcp or tcp6 (pure): local address column, state 0A (LISTEN)."""
    ports = set()
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) > 3 and cols[3] == "0A":
            ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def by_proc() -> set[int]:
    ports: set[int] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                ports |= parse_proc_net(f.read())
        except OSError:
            continue
    return ports


def listening_ports() -> list[int]:
    try:
        return sorted(by_netlink())
    except OSError:
        return sorted(by_proc())


def missing_addresses(addresses: list[str]) -> list[str]:
    """Of the addresses the inventory binds ports to, those this host does not have.

    Asked of the kernel the way Docker's bind will be: a socket bound to (address, any port).
    EADDRNOTAVAIL means the host has no such address, so the swap's port bind would fail after
    the old container had stopped; anything else (a permission, a port) is not this question's.
    """
    import errno
    import ipaddress

    out = []
    for addr in addresses:
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
        except ValueError:
            continue  # not an IP address: the inventory's own checks refuse it before any host is asked
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((addr, 0))
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    out.append(addr)
    return out
