"""The rollout engine against the lab: real swaps, real health gates, real rollbacks."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
import time

import pytest

from lab import fleet, images
from playbooks import executor, hostcalls, ledger
from playbooks.inventory import load

from .conftest import FAB, ROOT, baseline, dclient, derive_inventory, health_of, new_tag, svc_result, with_tags

pytestmark = pytest.mark.lab


def test_good_upgrade_commits_and_pins_prev(lab, tmp_path):
    baseline(lab)
    old_tag = load(lab.inventory).fleet.services["llm-api"].tag
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")
    inv = with_tags(lab, tmp_path, {"llm-api": tag})
    rep = executor.rollout(inv, "gpu-mainpc")
    assert rep.ok and rep.state == "committed", rep.messages
    s = svc_result(rep, "mainpc", "llm-api")
    assert s["outcome"] == "committed" and s["before_tag"] == old_tag and s["after_tag"] == tag
    assert s["gate"]["ok"] and s["gate"]["time_to_healthy_s"] is not None
    # -prev tag on the host names the exact old digest
    prev = dclient(lab).images.get(f"{inv.repo('llm-api')}:{old_tag}-prev")
    assert any(s["prev_digest"] in d for d in prev.attrs["RepoDigests"])
    c = dclient(lab).containers.get("llm-api")
    assert c.labels["io.fleetroll.tag"] == tag and c.labels["io.fleetroll.rollout-id"] == rep.rollout_id
    assert c.labels["io.fleetroll.phase"] == "gpu-mainpc" and c.labels["io.fleetroll.git-sha"] == tag.split("-")[1]
    assert c.attrs["Config"]["User"] == "10001:10001" and "MACHINE=mainpc" in c.attrs["Config"]["Env"]
    assert c.attrs["HostConfig"]["DeviceRequests"][0]["Count"] == -1
    # ledger: started + finished with before/after and the pin; pins file for the operator
    recs = [r for r in ledger.read() if r.get("rollout_id") == rep.rollout_id]
    assert [r["kind"] for r in recs] == ["started", "finished"]
    fin = recs[-1]
    assert fin["final"] == "committed" and fin["operator"] and "inventory_git_sha" in fin
    assert any(p["prev_ref"].endswith(f"{old_tag}-prev") for p in fin["pins"])
    pins = json.loads((ledger.path().parent / "pins" / f"{rep.rollout_id}.json").read_text())
    assert pins["pins"][0]["prev_digest"].startswith("sha256:")


@pytest.mark.parametrize(
    "variant,health,expect",
    [
        ("degraded", {"healthy_deadline": 4}, "status is 'degraded'"),
        ("http500", {"healthy_deadline": 4}, "HTTP 500"),
        # It crashes 1 s after start, inside the lab's 2 s window. On a loaded machine the probe can meet the reset
        # before Docker records the exit: the report then says so, and carries the container's own last line.
        ("crash", {}, ("exit code 3", "crashing on purpose (exit 3)")),
        ("hang", {"healthy_deadline": 4}, "no answer"),
    ],
)
def test_bad_release_rolls_back_to_prev(lab, tmp_path, variant, health, expect):
    baseline(lab)
    before = load(lab.inventory).fleet.services["vision-api"].tag
    tag = new_tag()
    images.push(lab, "vision-svc", tag, variant, arch="89;86")
    inv = with_tags(lab, tmp_path, {"vision-api": tag}, **health)
    rep = executor.rollout(inv, "gpu-mainpc")
    assert not rep.ok and rep.state == "reverted"
    s = svc_result(rep, "mainpc", "vision-api")
    said = s["message"] + json.dumps(s["details"]) + json.dumps(s["gate"])
    assert s["outcome"] == "reverted" and any(e in said for e in ((expect,) if isinstance(expect, str) else expect)), said
    assert s["prev_ref"].endswith(f"{before}-prev") and s["revert_gate"]["ok"]
    text = "\n".join(rep.messages)
    assert "FAILED mainpc vision-api: health-" in text and f"tried: {tag}@" in text
    assert f"now:   {before}@{s['after_digest'][7:19]} — the old container itself" in text
    assert "next: " in text
    if variant == "crash":
        assert "crashing on purpose" in text
    c = dclient(lab).containers.get("vision-api")
    assert c.labels["io.fleetroll.tag"] == before and json.loads(health_of(lab, "mainpc", 8001))["status"] == "ok"


def test_registry_down_before_swap_changes_nothing(lab, tmp_path):
    baseline(lab)
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")
    inv = with_tags(lab, tmp_path, {"llm-api": tag})
    before = dclient(lab).containers.get("llm-api").id
    seen, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            seen.append(health_of(lab, "mainpc", 8000))
            time.sleep(0.05)

    t = threading.Thread(target=poll)
    t.start()
    fleet.stop_registry()
    try:
        rep = executor.rollout(inv, "gpu-mainpc")
    finally:
        fleet.start_registry()
        stop.set()
        t.join()
    assert not rep.ok and rep.state == "refused"
    assert "preflight failed; nothing was changed" in rep.messages[0] and "did not answer" in rep.messages[0]
    assert dclient(lab).containers.get("llm-api").id == before
    assert seen and all('"ok"' in x for x in seen), "the old version stopped serving"


def test_root_image_refused_nothing_stopped(lab, tmp_path):
    baseline(lab)
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "root", arch="89;86")
    inv = with_tags(lab, tmp_path, {"llm-api": tag})
    before = dclient(lab).containers.get("llm-api").id
    rep = executor.rollout(inv, "gpu-mainpc")
    assert not rep.ok
    assert any("runs as user 0:0, required 10001:10001" in m for m in rep.messages)
    assert dclient(lab).containers.get("llm-api").id == before


def test_no_tini_image_refused_by_agent_even_without_preflight(lab, tmp_path):
    """The agent checks the contract itself: a plan that skipped preflight still cannot start it."""
    baseline(lab)
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "notini", arch="89;86")
    from playbooks import transport
    from playbooks.plan import build_plan
    from playbooks.runner import run_preflight

    inv = with_tags(lab, tmp_path, {"llm-api": tag})
    plan = build_plan(inv, "gpu-mainpc", run_preflight(inv, "gpu-mainpc").facts)
    res = transport.on_hosts(inv, ["mainpc"], "rollout", lambda h: executor.step_args(plan, h, "revert-phase", inv))["mainpc"]
    s = res.answer["data"]["services"][0]
    assert s["outcome"] == "refused" and s["check"] == "image-entrypoint" and "nothing was stopped" in s["message"]


def test_phase_wide_revert_across_both_hosts(lab, tmp_path):
    baseline(lab, "core-infra")
    base_tag = load(lab.inventory).fleet.services["core-mainpc"].tag
    good, bad = new_tag(), new_tag()
    images.push(lab, "core", good, "healthy")
    images.push(lab, "core", bad, "degraded")
    inv = with_tags(lab, tmp_path, {"core-mainpc": good, "core-pc2": bad, "core-bad-driver": good})
    rep = executor.rollout(inv, "core-infra")
    assert not rep.ok and rep.state == "reverted"
    for host in ("mainpc", "pc2", "bad-driver"):
        s = svc_result(rep, host, f"core-{host}")
        assert s["outcome"] == "reverted", s
        c = dclient(lab, host).containers.get(f"core-{host}")
        assert c.labels["io.fleetroll.tag"] == base_tag
    assert any("reverting the phase on" in m for m in rep.messages)


def test_noop_rerun_restarts_nothing_and_costs_one_call_per_host(lab):
    baseline(lab, "cpu-pc2")
    before = {c.name: c.attrs["State"]["StartedAt"] for c in dclient(lab, "pc2").containers.list()}
    rep = executor.rollout(load(lab.inventory), "cpu-pc2")
    assert rep.ok and rep.state == "noop" and rep.agent_calls == 1
    after = {c.name: c.attrs["State"]["StartedAt"] for c in dclient(lab, "pc2").containers.list()}
    assert before == after


def test_dry_run_changes_nothing(lab, tmp_path):
    baseline(lab)
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")
    inv = with_tags(lab, tmp_path, {"llm-api": tag})
    before = dclient(lab).containers.get("llm-api").id
    r = subprocess.run([FAB, "rollout", "--phase", "gpu-mainpc", "--dry-run", "--inventory", str(inv.path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr  # changes planned
    assert "replace  llm-api" in r.stdout and f"-> {tag}@" in r.stdout and "noop     vision-api" in r.stdout
    assert dclient(lab).containers.get("llm-api").id == before
    assert not ledger.path().exists() or all(x["kind"] != "started" for x in ledger.read())


def test_concurrent_rollout_refused_with_holder(lab, tmp_path):
    baseline(lab)
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")
    slow = with_tags(lab, tmp_path, {"llm-api": tag}, min_healthy_time=8)
    # The second operator's release is pushed and its inventory written before the first rollout starts: under CI's
    # load a push took longer than the first rollout's hold on the lock (the second then found the host free).
    tag2 = new_tag()
    images.push(lab, "vision-svc", tag2, "healthy", arch="89;86")

    def second_operator(doc):  # another login account driving the same Docker daemon
        for host in doc["hosts"].values():
            host["user"] = fleet.LAB_OPS_USER
        doc["services"]["vision-api"]["tag"] = tag2

    ops = load(derive_inventory(lab, tmp_path / "ops", second_operator))
    first: dict = {}
    t = threading.Thread(target=lambda: first.update(rep=executor.rollout(slow, "gpu-mainpc")))
    t.start()
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            st = executor.status(load(lab.inventory), ["mainpc"])["hosts"]["mainpc"]
            if st.get("lock"):
                break
            time.sleep(0.2)
        seen = executor.status(ops, ["mainpc"])["hosts"]["mainpc"]["lock"]
        second = executor.rollout(ops, "gpu-mainpc")
    finally:
        t.join()
    assert seen and seen["rollout_id"] == first["rep"].rollout_id, "the second account must see the first one's lock"
    assert not second.ok and second.state == "refused"
    text = "\n".join(second.messages)
    # refused at preflight, before anything is pulled or planned from the containers the first one has in motion
    assert f"mainpc is in the middle of rollout {first['rep'].rollout_id} (" in text and "fab unlock -H mainpc" in text, text
    refused = [r for r in ledger.read() if r.get("rollout_id") == second.rollout_id]
    assert "fab status --follow -H mainpc" in text and refused[-1]["reason"] == "host in the middle of another rollout", refused
    assert first["rep"].ok


def _wait_finished(lab, host, rid, timeout=40):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = executor.status(load(lab.inventory), [host])["hosts"][host]
        last = st.get("last_rollout") or {}
        if last.get("rollout_id") == rid and last.get("state") == "finished":
            return st
        time.sleep(0.5)
    raise AssertionError(f"{host} did not finish {rid}")


def test_controller_killed_during_gate_host_ends_good(lab, tmp_path):
    baseline(lab)
    before = load(lab.inventory).fleet.services["vision-api"].tag
    tag = new_tag()
    images.push(lab, "vision-svc", tag, "crash", arch="89;86")
    inv = with_tags(lab, tmp_path, {"vision-api": tag}, min_healthy_time=5)
    p = subprocess.Popen([FAB, "rollout", "--phase", "gpu-mainpc", "--yes", "--inventory", str(inv.path)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
    rid = None
    for line in p.stderr:
        if "vision-api: gate" in line:
            break
    p.send_signal(signal.SIGKILL)
    p.wait()
    rid = [r for r in ledger.read() if r["kind"] == "started"][-1]["rollout_id"]
    st = _wait_finished(lab, "mainpc", rid)
    outcome = st["last_rollout"]["outcome"]
    assert outcome["state"] == "good"
    assert {s["service"]: s["outcome"] for s in outcome["services"]}["vision-api"] == "reverted"
    assert st["services"]["vision-api"]["tag"] == before and st["services"]["vision-api"]["healthy"]
    r = subprocess.run([FAB, "status", "--inventory", lab.inventory, "--hosts", "mainpc"], cwd=ROOT, capture_output=True, text=True)
    assert f"last rollout {rid}: finished" in r.stdout and "vision-api reverted" in r.stdout
    hist = subprocess.run([FAB, "history", "--json"], cwd=ROOT, capture_output=True, text=True)
    entry = next(e for e in json.loads(hist.stdout) if e["rollout_id"] == rid)
    # the controller died; the host's own outcome, read by the fab status above, is what history shows
    assert entry["final"] == "reverted" and "finished on mainpc (vision-api reverted" in entry["note"]


def test_ssh_link_cut_mid_transaction_host_ends_good(lab, tmp_path, monkeypatch):
    baseline(lab)
    monkeypatch.setattr(hostcalls, "LINK_SILENCE_S", 4.0)  # two missed heartbeats, not five: the same path, sooner
    noticed = threading.Event()
    real_reattach = hostcalls.reattach

    def reattach(*a, **kw):
        noticed.set()
        return real_reattach(*a, **kw)

    monkeypatch.setattr(hostcalls, "reattach", reattach)
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")
    inv = with_tags(lab, tmp_path, {"llm-api": tag}, min_healthy_time=4)
    out: dict = {}
    events = []
    t = threading.Thread(target=lambda: out.update(rep=executor.rollout(inv, "gpu-mainpc", progress=lambda h, e: events.append(e))))
    t.start()
    deadline = time.time() + 20
    while time.time() < deadline and not any(e.get("event") == "gate" for e in events):
        time.sleep(0.05)
    fleet.set_link(lab.host("mainpc"), False)
    assert noticed.wait(30), "the controller never noticed the silent link"  # it must notice, then re-attach
    fleet.set_link(lab.host("mainpc"), True)
    t.join(90)
    rep = out["rep"]
    assert rep.ok and rep.state == "committed", rep.messages
    assert any("lost contact" in m for m in rep.messages)
    st = executor.status(load(lab.inventory), ["mainpc"])["hosts"]["mainpc"]
    assert st["services"]["llm-api"]["tag"] == tag and st["services"]["llm-api"]["healthy"]


def test_rollback_command(lab, tmp_path):
    baseline(lab)
    before = load(lab.inventory).fleet.services["llm-api"].tag
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")
    inv = with_tags(lab, tmp_path, {"llm-api": tag})
    assert executor.rollout(inv, "gpu-mainpc").ok
    r = subprocess.run([FAB, "rollback", "--phase", "gpu-mainpc", "--service", "llm-api", "--yes", "--json", "--inventory", str(inv.path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["state"] == "reverted" and out["pins"][0]["prev_ref"].endswith(f"{before}-prev")
    assert dclient(lab).containers.get("llm-api").labels["io.fleetroll.tag"] == before
    # (unlock: see test_lab_integrity.py — a dead holder's kernel lock frees itself)


def test_fab_rollout_all_stops_after_failed_phase(lab, tmp_path):
    baseline(lab, "core-infra")
    baseline(lab, "gpu-mainpc")
    bad = new_tag()
    images.push(lab, "torch-svc", bad, "degraded", arch="89;86")
    inv = with_tags(lab, tmp_path, {"llm-api": bad})
    r = subprocess.run([FAB, "rollout", "--all", "--yes", "--inventory", str(inv.path)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 4
    assert "phase core-infra: NOOP" in r.stdout and "phase gpu-mainpc: REVERTED" in r.stdout
    assert "later phases not started: cpu-pc2" in r.stdout


TRIVY_HIGH = [{"VulnerabilityID": "CVE-2026-4242", "Severity": "CRITICAL", "PkgName": "busybox", "InstalledVersion": "1.35.0"}]


def test_security_gate_blocks_high_findings_unless_risk_accepted(lab, tmp_path):
    baseline(lab)
    tag = new_tag()
    ref = images.push(lab, "torch-svc", tag, "healthy", arch="89;86")
    arts = tmp_path / "artifacts"
    (arts / "torch-svc" / tag).mkdir(parents=True)
    (arts / "torch-svc" / tag / "trivy.json").write_text(json.dumps(images.trivy_report(ref, images.digest(ref), TRIVY_HIGH)))
    acc = tmp_path / "risk-acceptances.yml"

    def inv_with(acceptances: str):
        acc.write_text(acceptances)

        def edit(doc):
            doc["services"]["llm-api"]["tag"] = tag
            doc["security"] = {"artifacts": str(arts), "acceptances": str(acc), "missing_report": "refuse"}

        return load(derive_inventory(lab, tmp_path / secrets.token_hex(3), edit))

    before = dclient(lab).containers.get("llm-api").id
    rep = executor.rollout(inv_with("acceptances: []\n"), "gpu-mainpc")
    assert not rep.ok and rep.state == "refused"
    assert any("blocked: security gate" in m and "CVE-2026-4242 (CRITICAL) in busybox" in m for m in rep.messages)
    assert dclient(lab).containers.get("llm-api").id == before
    # A clean report that scanned another digest vouches for nothing: missing, and the policy says refuse.
    clean_other = images.trivy_report(ref, "sha256:" + "0" * 64, [])
    (arts / "torch-svc" / tag / "trivy.json").write_text(json.dumps(clean_other))
    rep = executor.rollout(inv_with("acceptances: []\n"), "gpu-mainpc")
    assert not rep.ok and rep.state == "refused" and any("does not count" in m and "not the planned" in m for m in rep.messages)
    assert dclient(lab).containers.get("llm-api").id == before
    (arts / "torch-svc" / tag / "trivy.json").write_text(json.dumps(images.trivy_report(ref, images.digest(ref), TRIVY_HIGH)))
    expired = "acceptances:\n  - {image: torch-svc, cve: CVE-2026-4242, owner: alice, reason: lab only, expires: 2026-01-01}\n"
    rep = executor.rollout(inv_with(expired), "gpu-mainpc")
    assert not rep.ok and any("expired on 2026-01-01" in m for m in rep.messages)
    until = (__import__("datetime").date.today() + __import__("datetime").timedelta(days=30)).isoformat()
    good = expired.replace("2026-01-01", until)
    rep = executor.rollout(inv_with(good), "gpu-mainpc")
    assert rep.ok and rep.state == "committed"
    assert any(m.startswith("security WARN") and f"accepted by alice until {until}" in m for m in rep.messages)
    fin = [r for r in ledger.read() if r.get("rollout_id") == rep.rollout_id and r["kind"] == "finished"][-1]
    assert fin["risk_acceptances"] == [{"image": "torch-svc", "tag": tag, "cve": "CVE-2026-4242", "owner": "alice",
                                        "reason": "lab only", "expires": until}]


def test_on_failure_revert_service_keeps_the_healthy_hosts(lab, tmp_path):
    baseline(lab, "core-infra")
    base_tag = load(lab.inventory).fleet.services["core-mainpc"].tag
    good, bad = new_tag(), new_tag()
    images.push(lab, "core", good, "healthy")
    images.push(lab, "core", bad, "http500")
    inv = with_tags(lab, tmp_path, {"core-mainpc": good, "core-pc2": bad, "core-bad-driver": good}, healthy_deadline=3)
    rep = executor.rollout(inv, "core-infra", on_failure="revert-service")
    assert not rep.ok and rep.state == "reverted"
    assert svc_result(rep, "mainpc", "core-mainpc")["outcome"] == "committed"
    assert svc_result(rep, "pc2", "core-pc2")["outcome"] == "reverted"
    assert dclient(lab, "mainpc").containers.get("core-mainpc").labels["io.fleetroll.tag"] == good
    assert dclient(lab, "pc2").containers.get("core-pc2").labels["io.fleetroll.tag"] == base_tag
    assert not any("reverting the phase" in m for m in rep.messages)


def test_unknown_failure_policy_is_refused(lab):
    with pytest.raises(executor.RolloutError, match="--on-failure must be one of revert-phase, revert-service, stop"):
        executor.rollout(load(lab.inventory), "core-infra", on_failure="pray")


def test_a_gpu_service_that_falls_back_to_cpu_fails_its_gate_and_is_reverted(lab, tmp_path):
    from agent import gpuproc

    baseline(lab)
    before = dclient(lab).containers.get("llm-api")
    # the real cgroup mapping the gate uses: a container's host pid leads back to its id
    assert gpuproc.container_of(before.attrs["State"]["Pid"]) == before.id
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")

    def edit(doc):
        doc["services"]["llm-api"]["tag"] = tag
        doc["services"]["llm-api"]["gpu_memory_gb"] = 6.0

    fleet.set_gpu_processes(lab.host("mainpc"), [])  # healthy over HTTP, but no process on the GPU
    inv = load(derive_inventory(lab, tmp_path / "cpu-fallback", edit))
    rep = executor.rollout(inv, "gpu-mainpc")
    s = svc_result(rep, "mainpc", "llm-api")
    assert rep.state == "reverted" and s["check"] == "health-gpu" and "fallen back to CPU" in s["message"], s
    assert dclient(lab).containers.get("llm-api").id == before.id
