"""Twenty hosts: nothing assumes two. Runs near the end (it replaces the lab with a 20-host one)."""

from __future__ import annotations

import pytest

from playbooks import executor, operate
from playbooks.inventory import load
from playbooks.runner import run_preflight

pytestmark = [pytest.mark.lab, pytest.mark.stage(2)]  # a 20-host lab of its own


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


def _journal(lab, host: str, rid: str) -> list[dict]:
    import json

    p = lab.host(host).dir / "state" / "journal" / f"{rid}.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def test_one_service_on_six_hosts_canary_then_batches_of_two(lab20, tmp_path):
    import docker

    from lab import images

    from .conftest import derive_inventory, new_tag

    workers = [f"node{i:02d}" for i in range(3, 9)]
    tags = {k: new_tag() for k in ("base", "good", "bad", "batch2")}
    for k, t in tags.items():
        images.push(lab20, "cpu-svc", t, "http500" if k == "bad" else "healthy")

    def inventory(tag: str, name: str):
        def edit(doc):
            doc["groups"] = {"cpu-workers": workers}
            doc["services"]["embeddings"] = {
                "image": "cpu-svc", "tag": tag, "group": "cpu-workers", "update": {"canary": 1, "max_parallel": 2},
                "ports": ["8700:8080"], "stop_timeout": 2,
                "health": {"port": 8700, "healthy_deadline": 4, "min_healthy_time": 1, "interval": 0.2}}

        return load(derive_inventory(lab20, tmp_path / name, edit,
                                     lambda p: p["phases"].append({"name": "replicas", "services": ["embeddings"]})))

    def running(h):
        c = docker.DockerClient(base_url=lab20.host(h).docker_host).containers.get("embeddings")
        return c.id, c.labels["io.fleetroll.tag"]

    assert executor.rollout(inventory(tags["base"], "base"), "replicas").ok
    # the dry run prints the order
    inv = inventory(tags["good"], "good")
    dry = executor.rollout(inv, "replicas", dry_run=True)
    text = "\n".join(dry.messages)
    assert "1/4 canary: node03" in text and "2/4 batch: node04, node05" in text and "4/4 batch: node08" in text
    # a good upgrade: canary, then batches of 2, each gated (committed) before the next starts
    rep = executor.rollout(inv, "replicas")
    assert rep.ok, rep.messages
    order = [["node03"], ["node04", "node05"], ["node06", "node07"], ["node08"]]
    spans = []
    for batch in order:
        started = [r["ts"] for h in batch for r in _journal(lab20, h, rep.rollout_id) if r["step"] == "start-new"]
        committed = [r["ts"] for h in batch for r in _journal(lab20, h, rep.rollout_id) if r["step"] == "committed"]
        assert len(started) == len(committed) == len(batch)
        spans.append((min(started), max(committed)))
    assert all(spans[i][1] < spans[i + 1][0] for i in range(len(spans) - 1)), spans
    assert all(running(h)[1] == tags["good"] for h in workers)
    # a bad release stops after the canary: the other five are untouched (same containers)
    before = {h: running(h) for h in workers}
    bad = executor.rollout(inventory(tags["bad"], "bad"), "replicas")
    assert bad.state == "reverted" and executor.exit_code([bad.state]) == 4
    assert {h: running(h) for h in workers[1:]} == {h: before[h] for h in workers[1:]}
    assert running("node03")[1] == tags["good"]
    assert all(s["outcome"] == "skipped" for h in workers[1:] for s in bad.hosts[h]["services"])
    # a release that fails in batch 2 (on node05): every replica ends on its last-known-good
    operate.set_freeze(inv, "replicas", "test: the bad release's automatic freeze", thaw=True)
    late = executor.rollout(inventory(tags["batch2"], "batch2"), "replicas",
                            failpoint={"after": "start-new", "service": "embeddings", "raise": "fails here", "hosts": ["node05"]})
    assert late.state == "reverted", late.messages
    assert {h: running(h)[1] for h in workers} == dict.fromkeys(workers, tags["good"])
    outcomes = {h: late.hosts[h]["services"][0]["outcome"] for h in workers}
    assert outcomes["node05"] == "reverted" and outcomes["node03"] == "reverted" and outcomes["node08"] == "skipped", outcomes
