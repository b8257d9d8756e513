"""The agent stops following an op once the controller has closed its side of a session (no hosts).

Over OpenSSH the controller's `ssh` can outlive a killed controller and keep reading the
agent's output; the end of the agent's stdin is then the only sign. A session's controller
sends nothing while it waits for an answer, so the agent may look at its stdin between
progress lines without taking a byte of a next request.
"""

from __future__ import annotations

import io
import os
import sys

import pytest

from agent import __main__ as agent_main


def _stdin(monkeypatch) -> int:
    r, w = os.pipe()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.FileIO(r, "r"))))
    return w


def test_an_open_quiet_stdin_is_a_controller_that_waits(monkeypatch):
    w = _stdin(monkeypatch)
    assert agent_main.controller_gone() is False
    os.close(w)
    assert agent_main.controller_gone() is True, "the end of stdin: the controller closed its side"


def test_looking_takes_no_byte_of_a_next_request(monkeypatch):
    w = _stdin(monkeypatch)
    os.write(w, b'{"op": "facts"}\n')
    assert agent_main.controller_gone() is False
    assert sys.stdin.readline() == '{"op": "facts"}\n'
    os.close(w)


def test_in_a_session_a_progress_line_to_a_gone_controller_ends_the_op_as_a_failed_write_would(monkeypatch, capsys):
    os.close(_stdin(monkeypatch))
    monkeypatch.setitem(agent_main.SESSION, "open", True)
    with pytest.raises(BrokenPipeError):
        agent_main.emit({"event": "heartbeat"})
    agent_main.emit({"ok": True})  # an answer is still written (the controller may yet read it)
    monkeypatch.setitem(agent_main.SESSION, "open", False)
    agent_main.emit({"event": "heartbeat"})  # one request per process, stdin closed after it: never a sign
    assert capsys.readouterr().out.count("\n") == 2


def test_a_session_request_opens_the_session_and_a_plain_one_does_not():
    agent_main.serve_one('{"protocol": 0, "op": "facts", "session": true}')
    assert agent_main.SESSION["open"] is True
    agent_main.serve_one('{"protocol": 0, "op": "facts"}')
    assert agent_main.SESSION["open"] is False
