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


KEPT_DETAILS = {"name": "", "tag": "T0", "digest": "sha256:" + "ab" * 32, "status": "running"}


@pytest.mark.usefixtures("host_state")
def test_the_agent_says_which_rollout_set_a_kept_container_aside_and_whether_a_transaction_is_open(monkeypatch):
    """The status answer carries open journals and each kept container's origin, from the state dir (no Docker call)."""
    from agent import container_args, facts, journal, ops

    journal.append("r-1", "accepted", kind="rollout")
    journal.append("r-1", "done", ok=False, state="needs-operator", services=[{"service": "rag-api", "outcome": "revert-failed"}])
    journal.append("r-2", "accepted", kind="rollout")
    kept = container_args.kept_name("rag-api", "r-1")
    monkeypatch.setattr(facts, "docker_facts", lambda: {"ok": True, "containers": [
        {"name": kept, "service": "rag-api", "status": "running"}, {"name": "rag-api--kept-00000000", "service": "rag-api"}]})
    monkeypatch.setattr(ops.lock, "read", lambda: None)
    data = ops.status({})["data"]
    assert data["open"] == []
    assert data["kept"] == {kept: {"rollout_id": "r-1", "ended": True, "ok": False, "state": "needs-operator",
                                   "outcome": "revert-failed"}}
    from agent.kept import origins

    assert origins([container_args.kept_name("rag-api", "r-2")])[container_args.kept_name("rag-api", "r-2")]["ended"] is False


def test_a_kept_container_no_transaction_holds_is_named_by_status_with_the_command_that_removes_it(inv, monkeypatch):
    """A revert failed, a later rollback succeeded: the kept container ran on and status exited 0 without a word."""
    kept = {"name": "rag-api--kept-1a2b3c4d", "service": "rag-api", "tag": "T0", "status": "running"}
    origin = {"rollout_id": "r-1", "ended": True, "ok": False, "state": "needs-operator", "outcome": "revert-failed"}
    data = {"docker": {"ok": True, "containers": [kept]}, "open": [], "lock": None, "kept": {kept["name"]: origin}}
    _answers(monkeypatch, lambda h: data)
    st = status.status(inv, ["pc2"])
    pc2 = st["hosts"]["pc2"]
    assert [k["name"] for k in pc2["kept_leftovers"]] == [kept["name"]] and pc2["orphans"] == []
    drift = pc2["services"]["rag-api"]["drift"]
    assert "left by rollout r-1 (its revert failed), no transaction holds it now" in drift
    assert "fab remove -s rag-api--kept-1a2b3c4d -H pc2" in drift
    assert "pc2: LEFTOVER kept container rag-api--kept-1a2b3c4d (running, T0) left by rollout r-1" in render.status_text(st)
    for held in ({"open": ["r-2"], "lock": None}, {"open": ["r-2"], "lock": {"rollout_id": "r-2", "pid": 7}},
                 {"open": [], "lock": {"unsafe": "owned by another user"}}, {}):
        data = {"docker": {"ok": True, "containers": [kept]}, **held}
        assert status.kept_leftovers([kept], data) == [], held  # a transaction's own, or nobody said: no claim


def test_details_words_a_kept_container_by_what_holds_it(inv, monkeypatch):
    """`fab details` said "a transaction in progress or interrupted" of a kept container nothing held any more."""
    from playbooks import operate

    kept = {**KEPT_DETAILS, "name": "rag-api--kept-1a2b3c4d"}
    origin = {"rollout_id": "r-1", "ended": True, "ok": False, "state": "needs-operator", "outcome": "revert-failed"}
    tx = {"open": [], "lock": None, "kept": {kept["name"]: origin}}

    def details_for(host_says):
        _answers(monkeypatch, lambda h: {"services": {"rag-api": {"container": None, "kept": [kept]}}, **host_says})
        return render.details_text(operate.details(inv, "rag-api"))

    text = details_for(tx)
    assert "left by rollout r-1 (its revert failed), no transaction holds it now" in text
    assert "fab remove -s rag-api--kept-1a2b3c4d -H pc2" in text and "in progress" not in text
    text = details_for({**tx, "open": ["r-2"], "lock": {"rollout_id": "r-2", "pid": 42}})
    assert "held by the running transaction r-2 (pid 42)" in text and "no transaction holds it" not in text
    assert "is still open and no process holds the lock" in details_for({**tx, "open": ["r-2"]})
    assert "did not say which" in details_for({})


@pytest.mark.usefixtures("host_state")
def test_the_agent_s_details_answer_says_what_holds_its_kept_containers(monkeypatch):
    """details_op adds the open journals, the lock and each kept container's origin to what Docker said."""
    from types import SimpleNamespace

    from agent import container_args, container_ops, contract, facts, journal, lock

    journal.append("r-1", "accepted", kind="rollout")
    journal.append("r-1", "done", ok=False, state="needs-operator", services=[{"service": "rag-api", "outcome": "revert-failed"}])
    name = container_args.kept_name("rag-api", "r-1")
    labels = {contract.MANAGED: "true", contract.SERVICE: "rag-api", contract.TAG: "T0"}
    attrs = {"Id": "c" * 64, "Name": "/" + name, "State": {"Status": "running", "Running": True}, "Config": {"Labels": labels},
             "HostConfig": {}, "NetworkSettings": {}}
    box = SimpleNamespace(attrs=attrs, labels=labels, name=name)
    monkeypatch.setattr(facts, "docker_client", lambda: SimpleNamespace(containers=SimpleNamespace(list=lambda **kw: [box])))
    monkeypatch.setattr(lock, "read", lambda: None)
    data = container_ops.details_op({"services": {"rag-api": ""}})["data"]
    assert [k["name"] for k in data["services"]["rag-api"]["kept"]] == [name]
    assert data["open"] == [] and data["lock"] is None and data["kept"][name]["outcome"] == "revert-failed"


def test_cards_or_a_driver_not_as_the_inventory_says_are_named_by_status_and_exit_1(inv, monkeypatch):
    """Found by an exploratory run: mainpc's RTX 4090 swapped for an RTX 3060 (or its driver below min_driver) and fab
    status printed the card without a word; only a rollout's preflight compared it with the inventory."""
    spec = inv.fleet.hosts["mainpc"].gpus
    good = {"ok": True, "driver_version": "999.1", "gpus": [
        {"index": 0, "name": spec.model, "compute_capability": spec.compute_capability, "memory_mib": 24564,
         "memory_used_mib": 0}]}
    swapped = {**good, "gpus": [{**good["gpus"][0], "name": "NVIDIA GeForce RTX 3060", "compute_capability": "8.6"}]}
    for nvml, bad in ((good, False), (swapped, True)):
        _answers(monkeypatch, lambda h, n=nvml: {"docker": {"ok": True, "containers": []}, "nvml": n})
        st = status.status(inv, ["mainpc"])
        found = st["hosts"]["mainpc"].get("gpu_problems") or []
        assert bool(found) is bad, found
    assert "GPU 0 is 'NVIDIA GeForce RTX 3060', inventory expects" in found[0]
    assert f"mainpc: GPU NOT AS THE INVENTORY SAYS: {found[0]}" in render.status_text(st)
    assert status.needs_attention({"hosts": {"mainpc": {"reachable": True, "services": {}, "gpu_problems": found}}})
    assert not status.needs_attention({"hosts": {"mainpc": {"reachable": True, "services": {}}}})


def test_a_rollout_superseded_before_status_read_its_end_is_still_matched_with_how_it_ended(inv, monkeypatch, tmp_path):
    """Found by an exploratory run: a rollout killed with its controller, then superseded by the next rollout, stayed
    'unfinished (controller stopped before the end)' in fab history for good (status read only the host's last)."""
    from agent import journal, ops
    from playbooks import ledger

    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    ledger.append("started", rollout_id="r-killed", phase="cpu-pc2")
    ends = {"r-killed": {"state": "good", "services": [{"service": "rag-api", "outcome": "committed"}]}}
    monkeypatch.setattr(journal, "read", lambda rid: [rid] if rid in ends else [])
    monkeypatch.setattr(journal, "outcome", lambda recs: ends.get(recs[0]) if recs else None)
    said = ops._finished_earlier(["r-killed", "r-never", 7], last="r-next")
    assert [x["rollout_id"] for x in said] == ["r-killed"] and said[0]["state"] == "finished"
    assert ops._finished_earlier(["r-killed"], last="r-killed") == []  # the last one is reported as such already
    # a phase revert's journal, when there is one, is how the host ended (independent read: 'committed' was advised
    # a rollback though the revert had already put the host back)
    ends["r-killed-revert"] = {"state": "good", "services": [{"service": "rag-api", "outcome": "reverted"}]}
    assert [x["rollout_id"] for x in ops._finished_earlier(["r-killed"], last="r-next")] == ["r-killed-revert"]
    assert ops._finished_earlier(["r-killed"], last="r-killed-revert") == []
    del ends["r-killed-revert"]
    asked = []

    def data_for(h):
        return {"docker": {"ok": True, "containers": []}, "earlier": said if h == "pc2" else []}

    def on_hosts(inventory, hosts, op, args_for, **kw):
        asked.extend(args_for(h).get("pending") for h in hosts)
        return {h: transport.CallResult(h, True, {"protocol": transport.PROTOCOL, "ok": True, "msg": "", "data": data_for(h)})
                for h in hosts}

    monkeypatch.setattr(transport, "on_hosts", on_hosts)
    status.status(inv, ["pc2"])
    assert asked == [["r-killed"]]
    e = next(x for x in ledger.rollouts() if x["rollout_id"] == "r-killed")
    assert e["final"] == "committed" and "finished on pc2 (rag-api committed" in e["note"], e


def test_a_rollback_says_when_the_cards_or_driver_are_not_as_the_inventory_says_and_goes_ahead(inv, monkeypatch, tmp_path):
    """Left open last session: status and a rollout's preflight compare the cards and driver with the inventory; a
    rollback asked the hosts for no GPU facts at all. It goes ahead (it puts back what ran before), and says so."""
    from playbooks import rollback

    spec = inv.fleet.hosts["mainpc"].gpus
    old_driver = {"ok": True, "driver_version": "470.1", "gpus": [
        {"index": 0, "name": spec.model, "compute_capability": spec.compute_capability, "memory_mib": 24564,
         "memory_used_mib": 0}]}
    asked = {}

    def on_hosts(inventory, hosts, op, args_for, **kw):
        asked.update({h: args_for(h) for h in hosts})
        return {h: transport.CallResult(h, True, {"protocol": transport.PROTOCOL, "ok": True, "msg": "", "data": {
            "docker": {"ok": True, "containers": []}, "nvml": old_driver}}) for h in hosts}

    monkeypatch.setattr(transport, "on_hosts", on_hosts)
    monkeypatch.setattr(rollback, "run_on_hosts", lambda *a, **kw: {})  # what the hosts then do is not this test's
    rep = rollback.rollback(inv, "gpu-mainpc")
    assert asked == {"mainpc": {"gpu": True}}, asked
    notes = [m for m in rep.messages if "GPU NOT AS THE INVENTORY SAYS" in m]
    assert len(notes) == 1 and notes[0].startswith("note: mainpc: GPU NOT AS THE INVENTORY SAYS: driver 470.1 < required")
    assert "the rollback goes ahead" in notes[0]
    rep = rollback.rollback(inv, "cpu-pc2")  # no GPU service: no NVML asked for, nothing said
    assert asked["pc2"] == {"gpu": False} and not [m for m in rep.messages if "GPU" in m]


def test_details_of_a_service_on_a_host_without_its_replica_is_an_input_error(inv, monkeypatch):
    """Found by an exploratory run: `fab details -s core-mainpc -H pc2` (and -H nohost) printed nothing and exited 0."""
    from playbooks import operate
    from playbooks.errors import RolloutError

    _answers(monkeypatch, lambda h: {"services": {"rag-api": {"container": None, "kept": []}}})
    for hosts, says in ((["mainpc"], "rag-api has no replica on mainpc; it runs on pc2"), (["nohost"], "no replica on nohost")):
        with pytest.raises(RolloutError, match=says):
            operate.details(inv, "rag-api", hosts)
    assert list(operate.details(inv, "rag-api", ["pc2"])["hosts"]) == ["pc2"]
