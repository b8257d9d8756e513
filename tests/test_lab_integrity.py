"""The transaction's promise in every failure, against the lab's real sshd, dockerd and registry.

After any rollout every service is on its new image and healthy, or on its *old
container* (same id, own env, ports) and healthy — and the report, the exit code and the
ledger say which. Faults are real: a non-HTTP health port, a SIGKILLed transaction at
each step boundary (a failpoint holds the process there so the kill lands exactly), a
restarted dockerd, a registry that goes away, a tag re-pushed under our feet.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from lab import fleet, images
from playbooks import executor, ledger
from playbooks.inventory import load

from .conftest import (
    FAB,
    ROOT,
    baseline,
    crash_looping,
    dclient,
    derive_inventory,
    health_of,
    kept_leftovers,
    new_tag,
    snapshot,
    svc_result,
    with_tags,
)

pytestmark = pytest.mark.lab


def assert_back_on_old(lab, before: dict, service: str, port: int, host="mainpc") -> None:
    now = snapshot(lab, service, host)
    assert now == before, f"{service} is not its old container with its old configuration"
    assert json.loads(health_of(lab, host, port))["status"] == "ok"
    assert kept_leftovers(lab, host) == []


def test_health_port_speaking_another_protocol_reverts_and_exits_4(lab, tmp_path):
    baseline(lab)
    before = snapshot(lab, "vision-api")
    tag = new_tag()
    images.push(lab, "vision-svc", tag, "banner", arch="89;86")
    inv = with_tags(lab, tmp_path, {"vision-api": tag}, healthy_deadline=3)
    r = subprocess.run([FAB, "rollout", "--phase", "gpu-mainpc", "--yes", "--json", "--inventory", str(inv.path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 4, r.stdout + r.stderr  # rolled back, every host good
    whole = json.loads(r.stdout)
    assert whole["state"] == "reverted" and whole["exit_code"] == 4 and len(whole["phases"]) == 1
    out = whole["phases"][0]
    assert out["state"] == "reverted"
    s = next(x for x in out["hosts"]["mainpc"]["services"] if x["service"] == "vision-api")
    assert s["outcome"] == "reverted" and "not a valid HTTP answer (not an HTTP/1.x status line" in s["message"]
    assert s["revert_gate"]["ok"] and s["old_container"] == before["id"]
    assert_back_on_old(lab, before, "vision-api", 8001)
    fin = [x for x in ledger.read() if x["rollout_id"] == out["rollout_id"] and x["kind"] == "finished"][-1]
    assert fin["final"] == "reverted" and fin["needs_operator"] == []
    assert {x["service"]: x["outcome"] for x in fin["services"]}["vision-api"] == "reverted"


def test_release_changing_tag_env_and_ports_restores_the_old_configuration(lab, tmp_path):
    baseline(lab)
    before = snapshot(lab, "llm-api")
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "degraded", arch="89;86")

    def edit(doc):
        svc = doc["services"]["llm-api"]
        svc["tag"] = tag
        svc["env"] = {"MACHINE": "mainpc-v2", "NEW_KEY": "only-in-the-release"}
        svc["ports"] = ["8010:8080"]
        svc["health"].update(port=8010, healthy_deadline=3)

    inv = load(derive_inventory(lab, tmp_path / "release", edit))
    rep = executor.rollout(inv, "gpu-mainpc")
    assert not rep.ok and rep.state == "reverted", rep.messages
    s = svc_result(rep, "mainpc", "llm-api")
    assert s["outcome"] == "reverted" and s["revert_gate"]["ok"]
    # The journalled old configuration is the old one, and the ledger keeps it.
    assert s["old_config"]["ports"] == {"8080/tcp": "8000"} and s["old_config"]["env"]["MACHINE"].startswith("hmac:")
    assert_back_on_old(lab, before, "llm-api", 8000)
    assert "NEW_KEY=only-in-the-release" not in snapshot(lab, "llm-api")["env"]


def test_rollback_after_a_commit_that_changed_env_restores_the_old_env(lab, tmp_path):
    baseline(lab)
    before = snapshot(lab, "llm-api")
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")

    def edit(doc):
        doc["services"]["llm-api"]["tag"] = tag
        doc["services"]["llm-api"]["env"] = {"MACHINE": "mainpc-v2"}

    inv = load(derive_inventory(lab, tmp_path / "v2", edit))
    assert executor.rollout(inv, "gpu-mainpc").state == "committed"
    assert "MACHINE=mainpc-v2" in snapshot(lab, "llm-api")["env"]
    r = subprocess.run([FAB, "rollback", "--phase", "gpu-mainpc", "--service", "llm-api", "--yes", "--json", "--inventory", str(inv.path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["state"] == "reverted"
    now = snapshot(lab, "llm-api")
    assert now["env"] == before["env"] and now["ports"] == before["ports"] and now["tag"] == before["tag"]
    assert json.loads(health_of(lab, "mainpc", 8000))["status"] == "ok" and kept_leftovers(lab) == []


class Killer(threading.Thread):
    """Waits for the host's transaction to reach its failpoint, then SIGKILLs that process (its pid from the journal)."""

    def __init__(self, lab, host="mainpc", before_kill=None):
        super().__init__(daemon=True)
        self.dir = lab.host(host).dir / "state" / "journal"
        self.since = time.time()
        self.before_kill = before_kill
        self.killed: int | None = None
        self.rollout_id = ""

    def run(self) -> None:
        deadline = time.time() + 90
        while time.time() < deadline and self.killed is None:
            for p in self.dir.glob("*.jsonl"):
                if p.stat().st_mtime < self.since:
                    continue
                recs = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
                if any(r["step"] == "failpoint" for r in recs):
                    pid = next(r["pid"] for r in recs if r["step"] == "worker")
                    self.rollout_id = recs[0]["rollout_id"]
                    if self.before_kill:
                        self.before_kill()
                    os.kill(pid, signal.SIGKILL)
                    self.killed = pid
                    return
            time.sleep(0.05)


@pytest.mark.parametrize("after,variant", [("pin-prev", "healthy"), ("stop-old", "healthy"), ("start-new", "healthy"),
                                           ("gate", "healthy"), ("reverting", "degraded")])
def test_transaction_killed_at_each_step_boundary_is_recovered(lab, tmp_path, after, variant):
    baseline(lab)
    llm, vision = snapshot(lab, "llm-api"), snapshot(lab, "vision-api")
    t1, t2 = new_tag(), new_tag()
    images.push(lab, "torch-svc", t1, variant, arch="89;86")
    images.push(lab, "vision-svc", t2, "healthy", arch="89;86")
    inv = with_tags(lab, tmp_path, {"llm-api": t1, "vision-api": t2}, healthy_deadline=3, min_healthy_time=2)
    killer = Killer(lab)
    killer.start()
    rep = executor.rollout(inv, "gpu-mainpc", failpoint={"after": after, "service": "llm-api"})
    killer.join(5)
    assert killer.killed, "the failpoint was never reached"
    text = "\n".join(rep.messages)
    assert not rep.ok and rep.state in (("refused", "reverted") if after == "pin-prev" else ("reverted",)), text
    assert f"the transaction process died after step {'failpoint'!r}" in text and "host recovered it" in text
    # Both services: the very containers that ran before, old config, healthy; nothing kept or half-made left.
    assert_back_on_old(lab, llm, "llm-api", 8000)
    assert_back_on_old(lab, vision, "vision-api", 8001)
    fin = [x for x in ledger.read() if x["rollout_id"] == rep.rollout_id and x["kind"] == "finished"][-1]
    assert fin["final"] == rep.state
    # The host journal tells what happened.
    recs = [json.loads(x) for x in (killer.dir / f"{rep.rollout_id}.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs]
    assert "failpoint" in steps and "recovering" in steps and "recovered" in steps and steps[-1] == "done"
    assert recs[-1]["recovered"] is True and recs[-1]["interrupted_after"] == "failpoint"


def test_controller_and_transaction_both_killed_next_status_recovers(lab, tmp_path):
    baseline(lab, "core-infra")  # every service of mainpc runs: fab status exits 0 only when all are healthy
    baseline(lab)
    llm = snapshot(lab, "llm-api")
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")
    inv = with_tags(lab, tmp_path, {"llm-api": tag})
    code = ("import sys; from playbooks import executor; from playbooks.inventory import load;"
            "executor.rollout(load(sys.argv[1]), 'gpu-mainpc', failpoint={'after': 'start-new', 'service': 'llm-api'})")
    ctl = subprocess.Popen([sys.executable, "-c", code, str(inv.path)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill_controller_first():
        ctl.kill()
        ctl.wait()
        time.sleep(3)  # the SSH-side agent notices the closed channel at its next heartbeat and exits

    killer = Killer(lab, before_kill=kill_controller_first)
    killer.start()
    killer.join(90)
    assert killer.killed
    # The host is mixed right now: llm-api's new container is up, its old one stopped aside.
    assert any("--kept-" in n for n in kept_leftovers(lab))
    r = subprocess.run([FAB, "status", "--hosts", "mainpc", "--inventory", str(inv.path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"recovered interrupted transaction {killer.rollout_id}" in r.stdout and "llm-api reverted" in r.stdout
    assert_back_on_old(lab, llm, "llm-api", 8000)
    hist = subprocess.run([FAB, "history", "--json"], cwd=ROOT, capture_output=True, text=True)
    entry = next(e for e in json.loads(hist.stdout) if e["rollout_id"] == killer.rollout_id)
    assert entry["final"] == "reverted" and "recovered on mainpc (llm-api reverted" in entry["note"]


def test_dockerd_restarted_mid_gate_ends_in_a_good_state(lab, tmp_path):
    baseline(lab)
    llm = snapshot(lab, "llm-api")
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")
    inv = with_tags(lab, tmp_path, {"llm-api": tag}, min_healthy_time=4)
    events: list[dict] = []
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(rep=executor.rollout(inv, "gpu-mainpc", progress=lambda h, e: events.append(e))))
    t.start()
    deadline = time.time() + 30
    while time.time() < deadline and not any(e.get("event") == "gate-progress" for e in events):
        time.sleep(0.05)
    fleet.restart_dockerd(lab.host("mainpc"))
    t.join(180)
    rep = out["rep"]
    s = svc_result(rep, "mainpc", "llm-api")
    # Either outcome is a good state; what matters is that the report is what the host is.
    assert rep.state in ("committed", "reverted"), rep.messages
    c = snapshot(lab, "llm-api")
    if s["outcome"] == "reverted":
        assert c == llm
    else:
        assert s["outcome"] == "committed" and c["tag"] == tag
    assert json.loads(health_of(lab, "mainpc", 8000))["status"] == "ok" and kept_leftovers(lab) == []
    fin = [x for x in ledger.read() if x["rollout_id"] == rep.rollout_id and x["kind"] == "finished"][-1]
    assert fin["final"] == rep.state


def _core_ids(lab) -> dict[str, str]:
    return {h.name: dclient(lab, h.name).containers.get(f"core-{h.name}").id for h in lab.hosts}


@pytest.mark.parametrize("fault,cause", [("registry-gone", "could not pull"), ("tag-repushed", "re-pushed after planning")])
def test_fault_between_plan_and_swap_stops_nothing_anywhere(lab, tmp_path, fault, cause):
    baseline(lab, "core-infra")
    tag = new_tag()
    images.push(lab, "core", tag, "healthy")
    inv = with_tags(lab, tmp_path, {f"core-{h.name}": tag for h in lab.hosts})
    before = _core_ids(lab)

    def inject_then_confirm(plan) -> bool:  # runs after preflight and planning, before any host is touched
        if fault == "registry-gone":
            fleet.stop_registry()
        else:
            images.push(lab, "core", tag, "degraded")  # same tag, another digest
        return True

    try:
        rep = executor.rollout(inv, "core-infra", confirm=inject_then_confirm)
    finally:
        if not fleet.registry_up():
            fleet.start_registry()
    text = "\n".join(rep.messages)
    assert not rep.ok and rep.state == "refused", text
    assert "nothing was stopped on any host" in text and cause in text
    assert _core_ids(lab) == before


LOCKER = r"""
import json, os, sys, time
from agent import lock
t0, rounds, period, hold = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
held, refused = [], []
for k in range(rounds):
    while time.time() < t0 + k * period:
        time.sleep(0.001)
    before = time.monotonic()  # CLOCK_MONOTONIC is one clock for every process on the host: spans compare across agents
    h = lock.try_acquire(f"uid{os.getuid()}", f"round-{k}")
    if h is None:
        refused.append([k, before, time.monotonic()])
        continue
    a = time.monotonic()
    info = lock.read()
    time.sleep(hold)
    b = time.monotonic()
    h.release()
    held.append([k, a, b, info["pid"] == os.getpid(), before, time.monotonic()])
print(json.dumps({"held": held, "refused": refused}))
"""


def test_lock_is_exclusive_across_two_ssh_users_100_rounds(lab, tmp_path):
    """Six agents (three per operator account) race for the lock of one Docker daemon, 100 times.

    Run as the lab's two login users with the environment their SSH sessions get, so the
    lock path each computes is the one a real session computes.
    """
    h = lab.host("mainpc")
    code = tmp_path / "code"
    shutil.copytree(ROOT / "agent", code / "agent")
    for p in [tmp_path, code, *code.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    env = {**fleet._host_env(h), "PYTHONPATH": str(code)}
    rounds, period, hold = 100, 0.12, 0.05
    t0 = time.time() + 1.5
    procs = [subprocess.Popen(["setpriv", "--reuid", user, "--regid", user, "--init-groups", "/usr/bin/python3", "-c", LOCKER,
                               str(t0), str(rounds), str(period), str(hold)], env=env, stdout=subprocess.PIPE, text=True)
             for user in (fleet.LAB_USER, fleet.LAB_OPS_USER) * 3]
    held, refused = [], []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        got = json.loads(out)
        held += got["held"]
        refused += got["refused"]
    assert all(x[3] for x in held), "the holder metadata named another process while the lock was held"
    spans = sorted((a, b) for _, a, b, *_ in held)
    overlaps = [(x, y) for x, y in zip(spans, spans[1:], strict=False) if y[0] < x[1]]
    assert overlaps == [], f"two agents held the lock at once {len(overlaps)} times"
    # A refusal is right only while another agent held the lock: its try overlaps some holder's call-to-release span.
    # (A round may end with no holder at all: the last round's holder, descheduled on a busy host, still held it.)
    wrong = [r for r in refused if not any(s0 < r[2] and r[1] < s1 for *_, s0, s1 in held)]
    assert wrong == [], f"{len(wrong)} tries were refused while no agent held the lock: {wrong[:3]}"
    by_round: dict[int, int] = {}
    for k, *_ in held:
        by_round[k] = by_round.get(k, 0) + 1
    # Each agent tries once at its round's start and holds for `hold`: an agent descheduled past that (three test
    # workers on 2 cores) finds the lock free and takes it after the first holder, in the same round. That is the
    # lock working, not failing; the overlap check above is the exclusivity proof. Most rounds still have one holder.
    assert sum(n == 1 for n in by_round.values()) >= rounds * 0.85, by_round
    assert len(held) + len(refused) == 6 * rounds


def test_unlock_force_stops_a_live_stuck_holder_and_records_why(lab, tmp_path):
    baseline(lab)
    h = lab.host("mainpc")
    code = tmp_path / "code"
    shutil.copytree(ROOT / "agent", code / "agent")
    for p in [tmp_path, code, *code.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    # The holder runs as the lab's login user, as a real transaction would.
    stuck = subprocess.Popen(["setpriv", "--reuid", fleet.LAB_USER, "--regid", fleet.LAB_USER, "--init-groups", "/usr/bin/python3", "-c", "import time; from agent import lock; lock.acquire('stuck@test', 'r-stuck');"
                              " print('held', flush=True); time.sleep(600)"], env={**fleet._host_env(h), "PYTHONPATH": str(code)},
                             stdout=subprocess.PIPE, text=True)
    try:
        assert stuck.stdout.readline().strip() == "held"
        r = subprocess.run([FAB, "unlock", "--host", "mainpc", "--reason", "stuck gate", "--inventory", lab.inventory],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 1 and "held by a live transaction" in r.stdout + r.stderr and "r-stuck" in r.stdout + r.stderr
        r = subprocess.run([FAB, "unlock", "--host", "mainpc", "--force", "--reason", "stuck gate", "--inventory", lab.inventory],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"stopped pid {stuck.pid}" in r.stdout
        assert stuck.wait(10) == -signal.SIGTERM
        assert "stuck gate" in (h.dir / "state" / "unlocks.jsonl").read_text()
        # Free now, and a dead holder needs no unlock at all.
        r = subprocess.run([FAB, "unlock", "--host", "mainpc", "--reason", "check", "--inventory", lab.inventory],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0 and "not locked" in r.stdout
    finally:
        if stuck.poll() is None:
            stuck.kill()


def test_crash_looping_service_is_not_shown_healthy_and_status_exits_1(lab, tmp_path):
    baseline(lab, "core-infra")
    baseline(lab)
    try:
        with crash_looping(lab, "vision-api", "vision-svc", 8001):
            r = subprocess.run([FAB, "status", "--hosts", "mainpc", "--json", "--inventory", lab.inventory], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 1, r.stdout + r.stderr
            v = json.loads(r.stdout)["hosts"]["mainpc"]["services"]["vision-api"]
            assert not v["healthy"] and v["restarts"] >= 2 and ("restart" in v["health"] or "exited" in v["health"]), v
            assert all(s["healthy"] for name, s in json.loads(r.stdout)["hosts"]["mainpc"]["services"].items() if name != "vision-api")
    finally:
        baseline(lab)  # put the real one back for the tests after this
