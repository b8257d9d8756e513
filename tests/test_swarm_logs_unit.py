"""`fab logs --follow` on a swarm service: docker service logs --follow through a manager, streamed, cleaned (no host)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import invoke
import paramiko
import pytest

from playbooks import operate, tasks
from playbooks.errors import RolloutError
from playbooks.swarm import deploy
from playbooks.swarm import operate as swarm
from playbooks.swarm.logs import MAX_PENDING, Lines
from playbooks.swarm.remote import Host, SwarmCommandError

from .test_swarm_rollback_unit import inv  # noqa: F401 - a fixture


class StreamChan:
    """A paramiko channel that gives `chunks` one recv() at a time; an exception in the list is raised there."""

    def __init__(self, chunks, rc: int = 0):
        self.chunks, self.rc, self.closed, self.pty, self.cmd = list(chunks), rc, False, None, None
        self.status_event = threading.Event()
        self.status_event.set()

    def settimeout(self, t):
        self.timeout = t

    def get_pty(self, **kw):
        self.pty = kw

    def exec_command(self, cmd):
        self.cmd = cmd

    def recv(self, n):
        if not self.chunks:
            return b""
        got = self.chunks.pop(0)
        if isinstance(got, BaseException):
            raise got
        return got

    def recv_exit_status(self):
        return self.rc

    def close(self):
        self.closed = True


def host(chan: StreamChan) -> Host:
    transport = SimpleNamespace(open_session=lambda timeout=None: chan)
    return Host("mainpc", "10.0.0.1", SimpleNamespace(client=SimpleNamespace(get_transport=lambda: transport), close=lambda: None))


def test_lines_are_whole_and_cleaned_of_terminal_escapes_however_the_chunks_fall():
    got: list[str] = []
    lines = Lines(got.append)
    for chunk in [b"fr-one_api.1.abc@mainpc | hel", b"lo\r\n\x1b[31mred\x1b[0m\r\n", b"\x07bell\n\n", b"no newline"]:
        lines.feed(chunk)
    assert got[0] == "fr-one_api.1.abc@mainpc | hello" and got[2] == "bell"
    assert "red" in got[1] and "\x1b" not in got[1]  # agent/motion.clean_lines, as every logs path: no ESC reaches the terminal
    lines.close()
    assert got[-1] == "no newline"
    lines.feed(b"x" * (MAX_PENDING + 1))  # a line that never ends is printed (cut), not kept growing
    assert got[-1] == "x" * 300 and lines.pending == b""


def test_stream_runs_on_a_pty_hands_output_as_it_comes_and_closes_the_channel():
    chan = StreamChan([b"a\n", b"b\n"], rc=0)
    seen: list[bytes] = []
    assert host(chan).stream(["docker", "service", "logs", "--follow", "fr-one_api"], seen.append) == 0
    assert seen == [b"a\n", b"b\n"] and chan.pty is not None and chan.closed
    assert chan.cmd == "docker service logs --follow fr-one_api"


def test_ctrl_c_while_streaming_closes_the_channel_and_goes_up():
    chan = StreamChan([b"a\n", KeyboardInterrupt()])
    with pytest.raises(KeyboardInterrupt):
        host(chan).stream(["docker", "service", "logs", "--follow", "x"], lambda d: None)
    assert chan.closed  # the pty's hang-up ends docker service logs on the manager


def test_a_lost_link_or_silence_is_a_swarm_command_error():
    with pytest.raises(SwarmCommandError, match="the SSH connection failed"):
        host(StreamChan([b"a\n", paramiko.SSHException("gone")])).stream(["docker"], lambda d: None)
    with pytest.raises(SwarmCommandError, match="no output for 5s"):
        host(StreamChan([TimeoutError()])).stream(["docker"], lambda d: None, idle_s=5)


def _manager(monkeypatch, chan: StreamChan) -> dict:
    seen = {"closed": False}
    h = host(chan)
    h.close = lambda: seen.update(closed=True)
    monkeypatch.setattr(deploy, "open_manager", lambda i: h)
    return seen


def test_fab_logs_follow_of_a_swarm_service_streams_through_the_manager(inv, monkeypatch):  # noqa: F811
    chan = StreamChan([b"fr-one_api.1.t1@pc2 | up\r\n", b"fr-one_api.1.t1@pc2 | \x1b]0;title\x07ok\r\n"])
    seen = _manager(monkeypatch, chan)
    got: list[str] = []
    out = operate.logs(inv, "api", follow=True, tail=5, on_line=got.append)
    assert got == ["fr-one_api.1.t1@pc2 | up", "fr-one_api.1.t1@pc2 | ]0;titleok"]  # ESC and BEL gone: nothing drives a terminal
    assert chan.cmd == "docker service logs --no-trunc --tail 5 --follow fr-one_api" and seen["closed"]
    assert out["lines"] == [] and "ended" in out["note"] and out["host"] == "mainpc"
    assert swarm.logs_command("fr-one", "api", 5, None, False, follow=True)[-2:] == ["--follow", "fr-one_api"]
    with pytest.raises(RolloutError, match="drop --host"):
        operate.logs(inv, "api", host="pc2", follow=True)


def test_a_stream_that_ends_in_error_says_where_and_what_next(inv, monkeypatch):  # noqa: F811
    _manager(monkeypatch, StreamChan([b"Error: No such service: fr-one_api\r\n"], rc=1))
    got: list[str] = []
    with pytest.raises(RolloutError, match=r"mainpc: docker service logs --follow fr-one_api ended with exit 1.*fab status"):
        operate.logs(inv, "api", follow=True, on_line=got.append)
    assert got == ["Error: No such service: fr-one_api"]
    _manager(monkeypatch, StreamChan([paramiko.SSHException("reset")]))
    with pytest.raises(RolloutError, match="following fr-one_api's log through mainpc: .*the SSH connection failed"):
        operate.logs(inv, "api", follow=True, on_line=got.append)


def test_ctrl_c_ends_fab_logs_follow_with_exit_130_as_the_ssh_push_does(inv, monkeypatch, capsys):  # noqa: F811
    seen = _manager(monkeypatch, StreamChan([b"line one\n", KeyboardInterrupt()]))
    monkeypatch.setattr(tasks, "_inventory", lambda i: inv)
    with pytest.raises(tasks.Exit) as ended:
        tasks.logs(invoke.Context(), service="api", follow=True)
    assert ended.value.code == 130 and seen["closed"] and "stopped following (Ctrl-C)" in str(ended.value)
    assert "line one" in capsys.readouterr().out
