"""Handshakes are bounded apart from sessions, and their clocks start with the slot (no hosts, no clock read)."""

from __future__ import annotations

import threading

import pytest
from fabric import Connection

from playbooks import ssh_connection, transport
from playbooks.timings import HostTimes


def test_handshake_slots_come_from_the_cpus_not_from_max_parallel():
    assert transport.handshake_slots(2) == 8
    assert transport.handshake_slots(16) == 64
    assert transport.handshake_slots(1) == 4 and transport.handshake_slots(None) == 4, "never fewer than 4"
    assert transport.HANDSHAKES._value == transport.handshake_slots(transport.usable_cpus()), "one semaphore for the process"


def _target(tmp_path, name: str) -> transport.Target:
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    return transport.Target(name=name, address="192.0.2.1", port=22, user="u", known_hosts=kh, key_filename=None,
                            connect_timeout=3)


def test_at_most_the_slots_handshake_at_once_and_paramiko_runs_only_inside_a_slot(tmp_path, monkeypatch):
    """Connection.open is where paramiko starts every timeout (TCP, banner, negotiation, auth): it runs only inside a slot,
    so a host queued behind others waits with no clock running; 12 hosts, 3 slots, never a 4th handshake at once."""
    slots = threading.BoundedSemaphore(3)
    monkeypatch.setattr(ssh_connection, "HANDSHAKES", slots)
    lock, inside, most, release = threading.Lock(), [0], [0], threading.Event()
    held_while_open = []

    def fake_open(self):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            held_while_open.append(slots._value < 3)
            if inside[0] == 3:
                release.set()  # the slots are full: let them finish, the queued ones follow
        release.wait(10)
        with lock:
            inside[0] -= 1

    monkeypatch.setattr(Connection, "open", fake_open)
    conns = []
    threads = [threading.Thread(target=lambda i=i: conns.append(transport.connect(_target(tmp_path, f"h{i}")))) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(conns) == 12 and most[0] == 3 and all(held_while_open)
    assert slots._value == 3, "every slot given back"
    for c in conns:
        assert c.fleetroll_times.wait_s >= 0 and c.fleetroll_times.connect_s >= 0


def test_a_failed_handshake_gives_its_slot_back_and_says_how_long_it_tried(tmp_path, monkeypatch):
    slots = threading.BoundedSemaphore(1)
    monkeypatch.setattr(ssh_connection, "HANDSHAKES", slots)

    def refuse(self):
        raise TimeoutError

    monkeypatch.setattr(Connection, "open", refuse)
    for _ in range(2):  # the second would block for ever if the first kept its slot
        with pytest.raises(transport.TransportError) as err:
            transport.connect(_target(tmp_path, "h"))
        assert err.value.kind == "unreachable" and "within 3s" in str(err.value)
        assert err.value.times.connect_s is not None
    assert slots._value == 1


class _Conn:
    def __init__(self):
        self.fleetroll_times = HostTimes(wait_s=0.5, connect_s=0.25)
        self.is_connected = True
        self.client = self

    def get_transport(self):
        return self

    def is_active(self):
        return True

    def close(self):
        pass


def test_a_pool_counts_the_connect_once_and_every_call_of_the_command(monkeypatch):
    monkeypatch.setattr(transport.Target, "from_inventory", classmethod(lambda cls, inv, h: h))
    monkeypatch.setattr(transport, "connect", lambda t: _Conn())
    monkeypatch.setattr(transport, "client_for", lambda inv: "paramiko")
    answers = iter([HostTimes(start_s=0.3, agent_s=0.1, calls=1), HostTimes(agent_s=2.0, calls=1)])

    def call(self, op, args, timeout, on_event=None):
        return transport.CallResult(host=self.host, ok=True, answer={"ok": True}, times=next(answers))

    monkeypatch.setattr(transport.AgentSession, "call", call)
    pool = transport.Pool()
    first = transport.on_hosts(None, ["h"], "facts", lambda h: {}, pool=pool)["h"]
    second = transport.on_hosts(None, ["h"], "rollout", lambda h: {}, pool=pool)["h"]
    assert (first.times.wait_s, first.times.connect_s) == (0.5, 0.25)
    assert (second.times.wait_s, second.times.connect_s) == (0.0, None), "the session was already open"
    assert pool.times["h"] == HostTimes(wait_s=0.5, connect_s=0.25, start_s=0.3, agent_s=2.1, calls=2)
