"""What hosts send back is untrusted: control characters stripped, size and depth capped (no hosts)."""

from __future__ import annotations

import json

import pytest

from playbooks import remote
from playbooks.executor import sha_drift


def test_control_characters_never_survive_in_strings_or_keys():
    evil = {"msg": "ok\x1b]0;pwned\x07\x1b[2J", "last_logs": ["line\r\x1b[1A overwritten", "tab\tnew\nline"],
            "k\x1bey": {"nested": "\x9b31mC1\x85"}}
    out = remote.parse_line(json.dumps(evil).encode())
    assert out == {"msg": "ok]0;pwned[2J", "last_logs": ["line[1A overwritten", "tab\tnew\nline"], "key": {"nested": "31mC1"}}
    text = json.dumps(out, ensure_ascii=False).replace("\\t", "").replace("\\n", "")
    assert not [c for c in text if ord(c) < 32 or 0x7f <= ord(c) <= 0x9f]


def test_deep_or_huge_answers_are_refused_not_crashing():
    deep = ("[" * 5000 + "]" * 5000).encode()
    with pytest.raises(remote.BadAnswer, match="nested"):
        remote.parse_line(deep)
    medium = ("[" * 40 + "]" * 40).encode()
    with pytest.raises(remote.BadAnswer, match="deeper than 32"):
        remote.parse_line(medium)
    with pytest.raises(remote.BadAnswer, match="over the"):
        remote.parse_line(b"1" * (remote.MAX_LINE + 1))
    with pytest.raises(remote.BadAnswer, match="not JSON"):
        remote.parse_line(b"\x1b[31m not json")


def test_agent_session_reads_through_the_choke_point(monkeypatch):
    """The transport's reader: a control-laden line is cleaned, an overlong one dropped, the answer still found."""
    import io

    from playbooks import transport

    lines = [json.dumps({"event": "gate", "message": "\x1b[2Jhi"}).encode() + b"\n",
             b"[" * 100 + b"]" * 100 + b"\n",
             json.dumps({"protocol": transport.PROTOCOL, "ok": True, "msg": "done\x07", "data": {}}).encode() + b"\n"]

    class Chan:
        def __init__(self):
            self.buf = io.BytesIO(b"".join(lines))

        def settimeout(self, t):
            pass

        def sendall(self, b):
            pass

    sess = transport.AgentSession(conn=None, host="h")
    sess.chan = Chan()
    sess.out = sess.chan.buf
    events = []
    res = sess.call("status", {}, timeout=5, on_event=events.append)
    assert res.ok and res.answer["msg"] == "done" and events == [{"event": "gate", "message": "[2Jhi"}]


def test_reported_git_sha_must_be_hex_and_match_the_tag():
    rep = {"git_sha": "0a1b2c3d4e5f", "started_at": "2026-11-26T06:00:10Z"}
    assert sha_drift("20261126-0a1b2c3", rep, "2026-11-26T06:00:09Z") == ""
    for got in ("", "0", "0a1b2c", "0A1B2C3", "0a1b2c3\x1b", "zzzzzzz", "0a1b2c4"):
        assert "tag names 0a1b2c3" in sha_drift("20261126-0a1b2c3", {**rep, "git_sha": got}, "2026-11-26T06:00:09Z"), got
    assert "tag names 0a1b2c3d4e" in sha_drift("20261126-0a1b2c3d4e", {**rep, "git_sha": "0a1b2c3"}, "2026-11-26T06:00:09Z")


def test_registry_without_a_digest_header_gets_the_digest_of_the_manifest_bytes():
    import hashlib

    from agent.registry import manifest_digest

    body = b'{"schemaVersion":2,"config":{"digest":"sha256:abc"}}'
    assert manifest_digest("", body) == "sha256:" + hashlib.sha256(body).hexdigest()
    assert manifest_digest("sha256:" + "f" * 64, body) == "sha256:" + "f" * 64
    assert manifest_digest("garbage", body).startswith("sha256:") and manifest_digest("garbage", body) != "garbage"


def test_a_host_that_streams_events_forever_cannot_fill_the_controller():
    from playbooks import remote

    ev = remote.Events()
    for i in range(remote.MAX_EVENTS * 3):
        ev.keep({"event": "gate-progress", "n": i}, 100)
    ev.keep({"event": "huge"}, remote.MAX_EVENT + 1)
    assert len(ev) == remote.MAX_EVENTS and ev[-1]["n"] == remote.MAX_EVENTS * 3 - 1, "the newest are kept"
    assert all(e["event"] != "huge" for e in ev)


def test_a_host_key_of_another_type_is_changed_and_replaces_the_old_pin(tmp_path):
    import paramiko

    from playbooks import hostkeys

    rsa = paramiko.RSAKey.generate(1024)
    ecdsa = paramiko.ECDSAKey.generate()
    assert hostkeys.judge({}, rsa) == "new"
    assert hostkeys.judge({"ssh-rsa": rsa}, rsa) == "same"
    assert hostkeys.judge({"ssh-rsa": rsa}, ecdsa) == "CHANGED", "another key type is a changed key, not a new one"
    path = tmp_path / "known_hosts"
    path.write_text(f"[10.0.0.1]:22 ssh-rsa {rsa.get_base64()}\n")
    s = hostkeys.Scan("h1", "[10.0.0.1]:22", path)
    s.key, s.status = ecdsa, "CHANGED"
    hostkeys.write(path, [s])
    pinned = [ln.split()[1] for ln in path.read_text().splitlines() if ln.startswith("[10.0.0.1]")]
    assert pinned == [ecdsa.get_name()], "the old key of the other type is no longer trusted"


def test_an_accept_that_cannot_be_honoured_is_said_and_fails_never_dropped(tmp_path):
    """Found on the lab: --accept with a wrong fingerprint for an already-pinned host, or for a host outside --hosts,
    ended silently with exit 0."""
    import paramiko
    import pytest

    from playbooks import hostkeys

    key = paramiko.ECDSAKey.generate()
    s = hostkeys.Scan("pc2", "[10.0.0.2]:22", tmp_path / "known_hosts")
    s.key, s.status = key, "same"
    said: list[str] = []
    accepted, open_ = hostkeys.decide([s], {"pc2": "SHA256:AAAAwrong"}, None, said.append)
    assert accepted == [] and open_ == [s] and said == [f"pc2: its pinned key is {s.fingerprint}, not the SHA256:AAAAwrong you"
                                                         " named; nothing changed"]
    assert hostkeys.decide([s], {"pc2": s.fingerprint}, None, said.append) == ([], []), "naming the pinned key is fine"
    with pytest.raises(hostkeys.HostKeyFileError, match=r"pc3 is not among the hosts this run scans \(pc2\)"):
        hostkeys.parse_accepts(["pc3=SHA256:x"], ["pc2"])
