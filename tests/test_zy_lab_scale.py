"""Twenty hosts: nothing assumes two. Runs near the end (it replaces the lab with a 20-host one)."""

from __future__ import annotations

import pytest

from playbooks import executor
from playbooks.inventory import load
from playbooks.runner import run_preflight

pytestmark = pytest.mark.lab


@pytest.fixture
def lab20(lab_session, tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    return lab_session(20, ())


def test_twenty_host_rollout_in_parallel(lab20):
    inv = load(lab20.inventory)
    assert len(inv.fleet.hosts) == 20
    pre = run_preflight(inv)
    assert pre.ok, [c for c in pre.checks if c.status == "fail"]
    rep = executor.rollout(inv, "core-infra", max_parallel=20)
    assert rep.ok and rep.state == "committed", rep.messages
    assert len(rep.hosts) == 20
    assert all(s["outcome"] == "committed" for h in rep.hosts.values() for s in h["services"])
    again = executor.rollout(inv, "core-infra", max_parallel=20)
    assert again.state == "noop" and again.agent_calls == 20
    st = executor.status(inv)
    assert all(v["services"][f"core-{h}"]["healthy"] for h, v in st["hosts"].items())
