"""Swarm secret names made on the manager (agent/swarm_secrets.py), and the controller's side of asking for them.

Pure naming, then the agent op against a secrets directory of this test's own (no daemon: create
false computes names only), then the controller's errors, through a fake pool (an agent session
that answers what a real one would: the transport is tested elsewhere).
"""

from __future__ import annotations

import os

import pytest

from agent import swarm_secrets
from playbooks.errors import RolloutError
from playbooks.swarm import secrets as controller
from playbooks.transport import CallResult

KEY = b"k" * 32


def test_a_name_per_value_keyed_and_never_the_value():
    a = swarm_secrets.versioned_name("hf_token", "hunter2", KEY)
    assert a.startswith("fr_hf_token_") and len(a) == len("fr_hf_token_") + 12 and "hunter2" not in a
    assert swarm_secrets.versioned_name("hf_token", "hunter2", KEY) == a  # same value, same name: nothing to do
    assert swarm_secrets.versioned_name("hf_token", "hunter3", KEY) != a  # rotated: a new Swarm secret
    assert swarm_secrets.versioned_name("hf_token", "hunter2", b"x" * 32) != a  # keyed: not a hash anyone can try
    assert swarm_secrets.versioned_name("other", "hunter2", KEY).removeprefix("fr_other_") != a.removeprefix("fr_hf_token_")
    with pytest.raises(swarm_secrets.secrets.SecretError, match="too long for a Swarm secret"):
        swarm_secrets.versioned_name("n" * 60, "v", KEY)


@pytest.fixture
def host(tmp_path, monkeypatch):
    d = tmp_path / "secrets"
    d.mkdir()
    monkeypatch.setenv("FLEETROLL_SECRETS_DIR", str(d))
    monkeypatch.setenv("FLEETROLL_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    return d


@pytest.mark.skipif(os.geteuid() != 0, reason="a host secret must be root's file")
def test_the_op_reads_the_manager_s_own_secrets_dir_and_answers_names_only(host):
    (host / "hf_token").write_text("s3cr3t-value\n")
    (host / "hf_token").chmod(0o640)
    ans = swarm_secrets.swarm_secrets_op({"secrets": ["hf_token"], "create": False})
    assert ans["ok"] and ans["data"]["made"] == [] and not ans["changed"]
    name = ans["data"]["names"]["hf_token"]
    assert name.startswith("fr_hf_token_") and "s3cr3t" not in repr(ans)
    (host / "hf_token").write_text("rotated\n")
    assert swarm_secrets.swarm_secrets_op({"secrets": ["hf_token"]})["data"]["names"]["hf_token"] != name


def test_a_missing_secret_file_says_where_it_was_looked_for(host):
    ans = swarm_secrets.swarm_secrets_op({"secrets": ["nope"], "create": True})
    assert not ans["ok"] and f"expected {host}/nope" in ans["msg"] and "on this manager" in ans["msg"]


class FakeSession:
    def __init__(self, answer: dict | None, error: str = ""):
        self.answer, self.error, self.asked = answer, error, []

    def call(self, op, args, timeout):
        self.asked.append((op, args))
        return CallResult(host="m1", ok=self.answer is not None and self.answer.get("ok", False), answer=self.answer,
                          error=self.error)


class FakePool:
    def __init__(self, session):
        self.session = session

    def get(self, inv, host):
        return self.session


def test_the_controller_sends_names_and_keeps_what_comes_back():
    s = FakeSession({"ok": True, "data": {"names": {"a": "fr_a_0123456789ab"}, "made": ["fr_a_0123456789ab"]}})
    assert controller.on_manager(None, FakePool(s), "m1", ["a"], create=True) == ({"a": "fr_a_0123456789ab"},
                                                                                   ["fr_a_0123456789ab"])
    assert s.asked == [("swarm_secrets", {"secrets": ["a"], "create": True})]
    none = FakeSession(None)
    assert controller.on_manager(None, FakePool(none), "m1", [], create=True) == ({}, []) and none.asked == []


def test_the_controller_names_the_manager_and_the_fix_when_the_agent_cannot():
    s = FakeSession({"ok": False, "msg": "secret 'a' is not on this host"}, error="secret 'a' is not on this host")
    with pytest.raises(RolloutError, match=r"m1: Swarm secrets a: secret 'a' is not on this host; fix: place each as"
                       r" <FLEETROLL_SECRETS_DIR>/NAME on the manager m1"):
        controller.on_manager(None, FakePool(s), "m1", ["a"], create=False)
    partial = FakeSession({"ok": True, "data": {"names": {}, "made": []}})
    with pytest.raises(RolloutError, match="named no Swarm secret for a; nothing was deployed"):
        controller.on_manager(None, FakePool(partial), "m1", ["a"], create=False)


def test_the_value_made_a_swarm_secret_is_the_one_its_name_was_computed_from(host, monkeypatch):
    """A value rotated between two reads must not give a secret named after one value and holding the other."""
    import base64

    from agent import engine as engine_mod
    from agent import secrets as secrets_mod

    reads = iter(["value-a", "value-b", "value-c"])
    monkeypatch.setattr(secrets_mod, "read", lambda name: next(reads))
    made: list[dict] = []

    class Engine:
        def call(self, method, path, params=None, body=None):
            if path == "/secrets/create":
                made.append(body)
            return []

    monkeypatch.setattr(engine_mod, "require_engine", lambda timeout=0: Engine())
    ans = swarm_secrets.swarm_secrets_op({"secrets": ["tok"], "create": True})
    assert ans["ok"], ans
    key = swarm_secrets.journal.redaction_key()
    assert [m["Name"] for m in made] == [swarm_secrets.versioned_name("tok", "value-a", key)]
    assert base64.b64decode(made[0]["Data"]).decode() == "value-a"
