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


def test_a_fleetroll_container_renamed_by_hand_is_an_orphan_and_its_service_s_row_names_it(inv, monkeypatch):
    """`docker rename rag-api rag-api-old`: status said rag-api "absent (no container)" and listed no ORPHAN."""
    from playbooks.status import orphans

    old = {"name": "rag-api-old", "service": "rag-api", "tag": "T0", "status": "running", "rollout_id": "r-0"}
    kept = {"name": "rag-api--kept-1a2b3c4d", "service": "rag-api", "tag": "T0", "status": "exited"}
    assert [(o["name"], o["renamed"]) for o in orphans([old, kept], ["rag-api"])] == [("rag-api-old", True)]
    _answers(monkeypatch, lambda h: {"docker": {"ok": True, "containers": [old]}})
    st = status.status(inv, ["pc2"])
    pc2 = st["hosts"]["pc2"]
    assert [o["name"] for o in pc2["orphans"]] == ["rag-api-old"]
    row = pc2["services"]["rag-api"]
    assert not row["healthy"] and "a fleetroll container rag-api-old holds this service's release" in row["health"]
    assert "fab remove -s rag-api-old -H pc2, then fab rollout" in row["health"]
    text = render.status_text(st)
    assert "pc2: ORPHAN rag-api-old (T0, running)" in text and "renamed by hand?" in text
    assert "fab remove -s rag-api-old -H pc2" in text
