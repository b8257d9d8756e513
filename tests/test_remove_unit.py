"""`fab remove`: which SSH-pushed containers may go (no hosts: the agent's answer is faked, the decision is the controller's)."""

from __future__ import annotations

import pytest

from playbooks import ledger, operate, transport
from playbooks.errors import RolloutError
from playbooks.inventory import load

from .test_swarm_down_unit import FLEET, PHASES  # web on a swarm phase on mainpc and pc2, api on the SSH push on pc2


@pytest.fixture
def inv(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    (tmp_path / "fleet.yml").write_text(FLEET)
    (tmp_path / "phases.yml").write_text(PHASES)
    return load(tmp_path / "fleet.yml")


@pytest.fixture
def asked(monkeypatch):
    calls = []

    def on_hosts(inventory, hosts, op, args_for, **kw):
        calls.append((hosts, op))
        data = {"removed": [args_for(hosts[0])["service"]]}
        return {h: transport.CallResult(h, True, {"protocol": transport.PROTOCOL, "ok": True, "msg": "removed", "data": data})
                for h in hosts}

    monkeypatch.setattr(transport, "on_hosts", on_hosts)
    return calls


def test_a_service_the_ssh_push_still_places_there_is_refused_without_asking_the_host(inv, asked):
    with pytest.raises(RolloutError, match="api is in the inventory on pc2.*--force"):
        operate.remove(inv, "api", "pc2")
    assert asked == []


def test_force_removes_it_and_the_ledger_says_it_was_forced(inv, asked):
    out = operate.remove(inv, "api", "pc2", reason="replaced by hand", force=True)
    assert out["removed"] == ["api"] and asked == [(["pc2"], "remove")]
    rec = [r for r in ledger.read() if r["kind"] == "removal"][-1]
    assert (rec["service"], rec["forced"], rec["reason"]) == ("api", True, "replaced by hand")


def test_the_container_a_move_to_swarm_leaves_behind_goes_without_force(inv, asked):
    # web's phase runs on Swarm: the container pushed over SSH is what moving the phase leaves, not what it places
    out = operate.remove(inv, "web", "mainpc")
    assert out["removed"] == ["web"] and asked == [(["mainpc"], "remove")]
    assert [r for r in ledger.read() if r["kind"] == "removal"][-1]["forced"] is False


def test_an_orphan_goes_without_force(inv, asked):
    assert operate.remove(inv, "old-api", "pc2")["removed"] == ["old-api"]


def test_a_host_s_error_names_it_once(inv, monkeypatch):
    """Found on the lab: 'pc2: pc2: known_hosts file ... does not exist'."""
    def on_hosts(inventory, hosts, op, args_for, **kw):
        return {h: transport.CallResult(h, False, None, f"{h}: known_hosts file /x/known_hosts does not exist") for h in hosts}

    monkeypatch.setattr(transport, "on_hosts", on_hosts)
    with pytest.raises(RolloutError) as exc:
        operate.remove(inv, "old-api", "pc2")
    assert str(exc.value) == "pc2: known_hosts file /x/known_hosts does not exist"


def test_without_yes_the_host_is_asked_first_and_nothing_there_is_said_without_a_question(inv, monkeypatch):
    """Found by an operator: `fab remove -s nosuch -H pc2` asked "remove nosuch from pc2 for good?" and only then found
    nothing. The host is asked what a remove would take (read only); the question names each container."""
    calls, questions, sent = [], [], []
    would = {"old-api": [{"name": "old-api", "id": "0123456789ab", "tag": "T1", "digest": "sha256:1", "status": "running"}],
             "nosuch": []}

    def on_hosts(inventory, hosts, op, args_for, **kw):
        args = args_for(hosts[0])
        calls.append((op, bool(args.get("dry_run"))))
        if not args.get("dry_run"):
            sent.append(args.get("expect_ids"))
        data = {"would_remove": would[args["service"]]} if args.get("dry_run") else {"removed": would[args["service"]]}
        return {h: transport.CallResult(h, True, {"protocol": transport.PROTOCOL, "ok": True, "msg": "", "data": data}) for h in hosts}

    monkeypatch.setattr(transport, "on_hosts", on_hosts)
    with pytest.raises(RolloutError, match="pc2: no container of nosuch here; nothing was removed"):  # a typo: exit 1
        operate.remove(inv, "nosuch", "pc2", confirm=lambda w: questions.append(w))
    assert calls == [("remove", True)] and questions == []
    assert not [r for r in ledger.read() if r["kind"] == "removal"], "nothing was done: nothing recorded"
    with pytest.raises(RolloutError, match="nothing was removed"):  # --yes: the host finds nothing either
        operate.remove(inv, "nosuch", "pc2")
    assert not [r for r in ledger.read() if r["kind"] == "removal"]

    calls.clear()
    out = operate.remove(inv, "old-api", "pc2", confirm=lambda w: questions.append(operate.remove_question("old-api", "pc2", w)))
    assert calls == [("remove", True), ("remove", False)] and out["removed"][0]["name"] == "old-api"
    assert questions == ["remove old-api from pc2 for good (old-api 0123456789ab T1 running)?"]
    assert sent[-1] == ["0123456789ab"], "the host is told what was shown: it removes that, or nothing"

    calls.clear()

    def no(_w):
        raise SystemExit("not confirmed")

    with pytest.raises(SystemExit):
        operate.remove(inv, "old-api", "pc2", confirm=no)
    assert calls == [("remove", True)], "declined: only the read-only question reached the host"


def test_a_remove_is_a_row_of_fab_history(inv, asked):
    """Found by an exploratory run: the ledger held the remove record, fab history and history -j did not show it."""
    operate.remove(inv, "api", "pc2", reason="replaced by hand", force=True)
    row = [e for e in ledger.rollouts() if e["final"] == "removed"]
    assert len(row) == 1 and row[0]["phase"] == "(api)" and row[0]["operator"], row
    assert row[0]["note"] == "fab remove --force on pc2: api; reason: 'replaced by hand'"


def test_a_removal_an_older_version_recorded_is_a_row_of_fab_history_too(inv, asked):
    ledger.append("remove", rollout_id="r-old-remove", host="pc2", service="api", operator="op", reason="", removed=["api"],
                  forced=False)
    row = [e for e in ledger.rollouts() if e["rollout_id"] == "r-old-remove"]
    assert row and row[0]["final"] == "removed" and row[0]["note"] == "fab remove on pc2: api", row
