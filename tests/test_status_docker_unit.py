"""`fab status` says what the hosts' Docker daemons and containers told it, and nothing they did not.

Found by exploratory operator runs (pc2's dockerd SIGSTOPped; a container renamed by hand; a kept container a failed
revert left running): status reported services absent, or said nothing, where the truth was "unknown" or "look here".
"""

from __future__ import annotations

import pytest

from playbooks import render, status, transport
from playbooks.inventory import load

from .conftest import ROOT


@pytest.fixture
def inv():
    return load(ROOT / "inventory" / "fleet.yml")


def _answers(monkeypatch, data_for) -> None:
    """Every host answers `status` with data_for(host): no SSH, no host."""

    def on_hosts(inventory, hosts, op, args_for, **kw):
        return {h: transport.CallResult(h, True, {"protocol": transport.PROTOCOL, "ok": True, "msg": "", "data": data_for(h)})
                for h in hosts}

    monkeypatch.setattr(transport, "on_hosts", on_hosts)


def test_a_docker_daemon_that_did_not_answer_makes_rows_unknown_not_absent(inv, monkeypatch):
    """pc2's dockerd SIGSTOPped: every row said `absent | not running (no container)` and status exited 0's way."""
    err = "Docker daemon not reachable: no answer from the Docker daemon within 10 s"
    last = {"rollout_id": "r-1", "state": "finished", "outcome": {"ok": True, "state": "good", "services": []}}
    _answers(monkeypatch, lambda h: {"docker": {"ok": False, "error": err}, "last": last})
    st = status.status(inv, ["pc2"])
    pc2 = st["hosts"]["pc2"]
    assert pc2["reachable"] and pc2["docker_error"] == err and pc2["orphans"] == []
    for s, row in pc2["services"].items():
        assert row["status"] == "unknown" and not row["healthy"], (s, row)
        assert row["health"] == f"Docker daemon did not answer: {err}" and "unknown" in row["drift"]
    text = render.status_text(st)
    assert "absent" not in text and "no container" not in text
    assert f"pc2: DOCKER DID NOT ANSWER: {err}" in text and "systemctl status docker" in text
    assert "not what runs now" in text  # the journal's "host state good" is not taken for what runs
