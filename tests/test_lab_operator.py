"""The week-one operator commands against the lab: freeze/thaw (and the freeze an automatic revert leaves)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab import images
from playbooks import executor, ledger, operate
from playbooks.inventory import load

from .conftest import crash_looping, derive_inventory, new_tag, with_tags

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parent.parent
FAB = str(Path(sys.executable).with_name("fab"))
PHASE = "gpu-mainpc"






def fab(*args: str, env_ledger: Path | None = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ)
    if env_ledger:
        env["FLEETROLL_LEDGER"] = str(env_ledger)
    return subprocess.run([FAB, *args], cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)


def own_freezes(status: dict, host: str) -> list[dict]:
    """The freezes of this module's phase: another module's phases on the same lab are not this test's business."""
    return [f for f in status["hosts"][host]["freezes"] if f.get("phase") == PHASE]


@pytest.fixture
def thawed(lab):
    """Whatever a test froze is thawed after it, so the next test starts from an unfrozen lab."""
    yield
    operate.set_freeze(load(lab.inventory), PHASE, "test cleanup", thaw=True)


def test_an_automatic_revert_freezes_the_phase_against_the_failed_tag_until_thawed(lab, tmp_path, thawed):
    assert executor.rollout(load(lab.inventory), PHASE).ok
    bad = new_tag()
    images.push(lab, "torch-svc", bad, "http500", arch="89;86")
    inv = with_tags(lab, tmp_path, {"llm-api": bad}, healthy_deadline=3)
    assert executor.rollout(inv, PHASE).state == "reverted"
    # the same release again: refused before anything is touched, exit 3, and it says why and what to do
    again = executor.rollout(inv, PHASE)
    assert again.state == "refused" and executor.exit_code([again.state]) == 3
    text = "\n".join(again.messages)
    assert f"llm-api:{bad} failed with its configuration and was reverted to its previous version" in text, text
    assert f"fab thaw --phase {PHASE}" in text
    assert again.hosts == {} and ledger.read()[-1]["reason"] == "phase frozen"
    st = executor.status(inv, ["mainpc"])
    assert any(f["auto"] and f["releases"] == {"llm-api": bad} for f in st["hosts"]["mainpc"]["freezes"])
    # a fixed release under a new tag goes ahead and its commit lifts the automatic freeze
    good = new_tag()
    images.push(lab, "torch-svc", good, "healthy", arch="89;86")
    assert executor.rollout(with_tags(lab, tmp_path, {"llm-api": good}), PHASE).ok
    assert own_freezes(executor.status(inv, ["mainpc"]), "mainpc") == []
    # and after another automatic revert, an operator's thaw lets the same tag be tried again
    assert executor.rollout(inv, PHASE).state == "reverted"
    ok, lines = operate.set_freeze(inv, PHASE, "the GPU was busy, not the release's fault", thaw=True)
    assert ok and lines == ["mainpc: thawed gpu-mainpc"]
    assert executor.rollout(inv, PHASE).state == "reverted"  # tried (and failed) again, not refused


def test_manual_freeze_blocks_every_rollout_and_thaw_releases_it(lab, tmp_path, thawed):
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")
    inv = with_tags(lab, tmp_path, {"llm-api": tag})
    led = tmp_path / "cli-ledger.jsonl"
    r = fab("freeze", "--phase", PHASE, "--reason", "driver upgrade tonight", "--inventory", str(inv.path), env_ledger=led)
    assert r.returncode == 0 and "mainpc: froze gpu-mainpc" in r.stdout, r.stdout + r.stderr
    r = fab("rollout", "--phase", PHASE, "--yes", "--inventory", str(inv.path), env_ledger=led)
    assert r.returncode == 3 and "driver upgrade tonight" in r.stdout + r.stderr and "frozen on mainpc" in r.stdout + r.stderr
    r = fab("rollout", "--phase", PHASE, "--dry-run", "--inventory", str(inv.path), env_ledger=led)
    assert r.returncode == 3 and "a real rollout would be refused now" in r.stdout  # what a freeze refuses exits 3
    r = fab("status", "--hosts", "mainpc", "--inventory", str(inv.path), env_ledger=led)
    assert "phase gpu-mainpc frozen by" in r.stdout and "driver upgrade tonight" in r.stdout
    r = fab("thaw", "--phase", PHASE, "--reason", "upgrade done", "--inventory", str(inv.path), env_ledger=led)
    assert r.returncode == 0 and "mainpc: thawed gpu-mainpc" in r.stdout
    r = fab("rollout", "--phase", PHASE, "--yes", "--inventory", str(inv.path), env_ledger=led)
    assert r.returncode == 0, r.stdout + r.stderr
    kinds = [(e["kind"], e.get("reason")) for e in map(json.loads, led.read_text().splitlines())]
    assert ("freeze", "driver upgrade tonight") in kinds and ("refused", "phase frozen") in kinds and ("thaw", "upgrade done") in kinds


def test_versions_lists_three_releases_and_rollback_to_the_first_of_them(lab, tmp_path, thawed):
    import docker

    tags = [new_tag() for _ in range(3)]
    for i, t in enumerate(tags):
        images.push(lab, "vision-svc", t, "healthy", arch="89;86")

        def edit(doc, t=t, i=i):
            doc["services"]["vision-api"]["tag"] = t
            doc["services"]["vision-api"]["env"]["RELEASE"] = f"r{i}"

        inv = load(derive_inventory(lab, tmp_path / f"v{i}", edit))
        assert executor.rollout(inv, PHASE).ok
    bad = new_tag()
    images.push(lab, "vision-svc", bad, "http500", arch="89;86")
    assert executor.rollout(with_tags(lab, tmp_path, {"vision-api": bad}, healthy_deadline=3), PHASE).state == "reverted"
    r = fab("versions", "--service", "vision-api", "--json", "--inventory", str(inv.path))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [r["host"] for r in out["replicas"]] == ["mainpc"]
    mine = [v for v in out["replicas"][0]["versions"] if v["tag"] in tags + [bad]]
    assert [v["tag"] for v in mine] == [bad, *reversed(tags)]  # newest first
    assert mine[0]["outcome"].startswith("failed health") and all(v["outcome"] == "committed" for v in mine[1:])
    assert mine[1]["running"] and all(v["image_present"] for v in mine) and mine[1]["operator"]
    text = fab("versions", "--service", "vision-api", "--inventory", str(inv.path)).stdout
    assert "rollback --to" in text and "running" in text
    # the version that failed is refused as a target, exit 3, nothing changed
    r = fab("rollback", "--phase", PHASE, "--service", "vision-api", "--to", bad, "--yes", "--inventory", str(inv.path))
    assert r.returncode == 3 and "never passed its health gate" in r.stdout + r.stderr
    # back to the first of the three, with its own env
    r = fab("rollback", "--phase", PHASE, "--service", "vision-api", "--to", tags[0], "--yes", "--inventory", str(inv.path))
    assert r.returncode == 0, r.stdout + r.stderr
    c = docker.DockerClient(base_url=lab.host("mainpc").docker_host).containers.get("vision-api")
    assert c.labels["io.fleetroll.tag"] == tags[0] and "RELEASE=r0" in c.attrs["Config"]["Env"]


def test_logs_details_and_follow_on_a_crash_looping_service(lab, tmp_path):
    import signal
    import time

    import docker

    inv = load(lab.inventory)
    assert executor.rollout(inv, PHASE).ok
    labels = docker.DockerClient(base_url=lab.host("mainpc").docker_host).containers.get("vision-api").labels
    try:
        with crash_looping(lab, "vision-api", "vision-svc", 8001):
            r = fab("logs", "-s", "vision-api", "--tail", "5", "-i", lab.inventory)
            assert r.returncode == 0 and "lab: crashing on purpose (exit 3)" in r.stdout, r.stdout + r.stderr
            r = fab("details", "-s", "vision-api", "-j", "-i", lab.inventory)
            d = json.loads(r.stdout)["hosts"]["mainpc"]["services"]["vision-api"]["container"]
            assert d["restart_count"] >= 2 and d["restart_policy"] == "always" and d["ports"] == {"8080/tcp": "8001"}, d
            text = fab("details", "-s", "vision-api", "-i", lab.inventory).stdout
            assert "vision-api on mainpc" in text and "restarts" in text and labels["io.fleetroll.digest"] in text
            # -f prints lines as they come; Ctrl-C leaves with 130 and no traceback
            p = subprocess.Popen([FAB, "logs", "-s", "vision-api", "-f", "--tail", "1", "-i", lab.inventory], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            seen = []
            deadline = time.time() + 30
            while time.time() < deadline and sum("crashing on purpose" in x for x in seen) < 2:
                seen.append(p.stdout.readline())
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=20)
            assert sum("crashing on purpose" in x for x in seen) >= 2, seen
            assert p.returncode == 130 and "Traceback" not in err, err
    finally:
        assert executor.rollout(inv, PHASE).ok
    r = fab("logs", "--agent", "-H", "mainpc", "-i", lab.inventory)
    assert r.returncode == 0 and "agent.log" in r.stdout.splitlines()[0], r.stdout + r.stderr
    d = json.loads(fab("details", "-H", "mainpc", "-j", "-i", lab.inventory).stdout)["hosts"]["mainpc"]["services"]
    assert d["vision-api"]["container"]["status"] == "running" and d["vision-api"]["kept"] == []


def test_ctrl_c_mid_gate_exits_130_records_it_and_status_follow_reattaches(lab, tmp_path):
    import os
    import signal
    import time

    import docker

    assert executor.rollout(load(lab.inventory), PHASE).ok
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")
    inv = with_tags(lab, tmp_path, {"llm-api": tag}, min_healthy_time=10)  # long enough for a second rollout to meet it
    led = tmp_path / "ctrlc-ledger.jsonl"
    env = {**os.environ, "FLEETROLL_LEDGER": str(led)}
    p = subprocess.Popen([FAB, "rollout", "-p", PHASE, "-y", "-i", str(inv.path)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.time() + 60
    while time.time() < deadline:
        line = p.stderr.readline()
        lines.append(line)
        if "llm-api: gate" in line:
            break
    assert any("llm-api: gate" in x for x in lines), lines
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=10)
    took = time.monotonic() - t0
    assert p.returncode == 130 and took < 3, (p.returncode, took, err)
    assert "finishes its transaction on its own" in err and "fab status --follow" in err and "Traceback" not in err
    recs = [json.loads(x) for x in led.read_text().splitlines()]
    assert recs[-1]["kind"] == "interrupted" and recs[-1]["phase"] == PHASE
    hist = fab("history", "--json", env_ledger=led)
    assert json.loads(hist.stdout)[-1]["final"].startswith("interrupted by the operator")
    # the same release again while that transaction still gates: refused (3), not "nothing to do" read off the
    # container under test (found by an exploratory run: exit 0, noop, and the first one then reverted)
    again = fab("rollout", "-p", PHASE, "-y", "-i", str(inv.path), env_ledger=led)
    assert again.returncode == 3 and "mainpc is in the middle of rollout" in again.stdout, again.stdout + again.stderr
    # re-attach: waits for the gate it left, then shows the host's outcome
    r = subprocess.run([FAB, "status", "--follow", "-H", "mainpc", "-i", str(inv.path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert "llm-api committed" in r.stderr or "no transaction running" in r.stderr, r.stderr
    c = docker.DockerClient(base_url=lab.host("mainpc").docker_host).containers.get("llm-api")
    assert c.labels["io.fleetroll.tag"] == tag and c.status == "running"
    # history now says how the host ended it; the Ctrl-C stays as a note
    rid = recs[-1]["rollout_id"]
    entries = json.loads(fab("history", "--json", env_ledger=led).stdout)
    e = next(x for x in entries if x["rollout_id"] == rid)
    assert e["final"] == "committed" and "interrupted by the operator" in e["note"] and "llm-api committed" in e["note"], e
    assert entries[-1]["final"] == "refused", entries[-1]  # the second rollout, refused while the first was in motion


def test_dry_run_shows_each_changed_key_without_values_and_a_stopped_container_as_such(lab, tmp_path):
    import docker

    assert executor.rollout(load(lab.inventory), PHASE).ok

    def edit(doc):
        doc["services"]["llm-api"]["env"]["MACHINE"] = "value-that-must-not-print"
        doc["services"]["llm-api"]["env"]["BATCH"] = "8"
        doc["services"]["llm-api"]["health"]["healthy_deadline"] = 45

    inv = load(derive_inventory(lab, tmp_path / "diff", edit))
    r = fab("rollout", "-p", PHASE, "-n", "-i", str(inv.path))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "~ env MACHINE: value changed" in r.stdout and "~ env BATCH: added" in r.stdout
    assert "~ health.healthy_deadline: 5 -> 45" in r.stdout, r.stdout
    assert "value-that-must-not-print" not in r.stdout + r.stderr
    assert "PATH" not in r.stdout  # what the image sets is not the inventory's
    docker.DockerClient(base_url=lab.host("mainpc").docker_host).containers.get("vision-api").stop(timeout=2)
    try:
        r = fab("rollout", "-p", PHASE, "-n", "-i", lab.inventory)
        line = next(x for x in r.stdout.splitlines() if "vision-api" in x)
        assert "container is exited; start it afresh" in line and "configuration changed" not in line, r.stdout
        assert not any("llm-api" in x and "replace" in x for x in r.stdout.splitlines())
    finally:
        assert executor.rollout(load(lab.inventory), PHASE).ok


def test_hooks_run_beside_the_inventory_and_a_failing_pre_hook_refuses(lab, tmp_path, thawed):
    import docker

    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")
    inv = with_tags(lab, tmp_path, {"llm-api": tag})
    hooks_dir = inv.path.parent / "hooks"
    hooks_dir.mkdir()
    for name in ("pre-rollout", "post-rollout", "on-revert"):
        (hooks_dir / name).write_text(f'#!/bin/sh\ncat > "{hooks_dir}/{name}.json"\n')
        (hooks_dir / name).chmod(0o755)
    assert executor.rollout(inv, PHASE).ok
    pre = json.loads((hooks_dir / "pre-rollout.json").read_text())
    post = json.loads((hooks_dir / "post-rollout.json").read_text())
    assert pre["phase"] == PHASE and any(s["service"] == "llm-api" for s in pre["plan"]["steps"])
    assert post["state"] == "committed" and post["rollout_id"] == pre["rollout_id"]
    assert not (hooks_dir / "on-revert.json").exists()
    # a failing pre-rollout hook refuses: exit 3, nothing touched
    (hooks_dir / "pre-rollout").write_text("#!/bin/sh\necho 'change freeze: Friday' >&2\nexit 1\n")
    tag2 = new_tag()
    images.push(lab, "torch-svc", tag2, "healthy", arch="89;86")
    inv2_doc = inv.path.read_text().replace(tag, tag2)
    inv.path.write_text(inv2_doc)
    before = docker.DockerClient(base_url=lab.host("mainpc").docker_host).containers.get("llm-api").id
    r = fab("rollout", "-p", PHASE, "-y", "-i", str(inv.path))
    assert r.returncode == 3 and "pre-rollout hook" in r.stdout and "change freeze: Friday" in r.stdout, r.stdout + r.stderr
    assert docker.DockerClient(base_url=lab.host("mainpc").docker_host).containers.get("llm-api").id == before
    # a dry run does not run it (it may act), but says a real rollout would, and would be refused if it fails
    r = fab("rollout", "-p", PHASE, "-n", "-i", str(inv.path))
    assert r.returncode == 2 and f"a real rollout first runs {hooks_dir / 'pre-rollout'}; a dry run does not" in r.stdout, (
        r.stdout + r.stderr)
    # on-revert hears about an automatic revert
    (hooks_dir / "pre-rollout").write_text("#!/bin/sh\nexit 0\n")
    bad = new_tag()
    images.push(lab, "torch-svc", bad, "http500", arch="89;86")
    inv.path.write_text(inv2_doc.replace(tag2, bad).replace("healthy_deadline: 5", "healthy_deadline: 3"))
    assert executor.rollout(load(inv.path), PHASE).state == "reverted"
    assert json.loads((hooks_dir / "on-revert.json").read_text())["state"] == "reverted"


def test_restart_exec_and_prune(lab, tmp_path):
    import docker

    inv = load(lab.inventory)
    assert executor.rollout(inv, PHASE).ok
    cl = docker.DockerClient(base_url=lab.host("mainpc").docker_host)
    before = cl.containers.get("llm-api")
    r = fab("restart", "-s", "llm-api", "-y", "-j", "-i", lab.inventory)
    assert r.returncode == 0, r.stdout + r.stderr
    after = cl.containers.get("llm-api")
    assert json.loads(r.stdout)["state"] == "committed" and after.id != before.id
    assert after.labels["io.fleetroll.tag"] == before.labels["io.fleetroll.tag"] and after.status == "running"
    assert [c.name for c in cl.containers.list(all=True) if "--kept-" in c.name] == []
    assert json.loads(r.stdout)["elapsed_s"] > 1.0, "the restart's own time, not 0.0s"
    # a fresh container that has logged nothing says so, instead of printing nothing at all
    r = fab("logs", "-s", "llm-api", "-i", lab.inventory)
    assert r.returncode == 0 and "mainpc: llm-api's container has no log lines (running)" in r.stdout, r.stdout + r.stderr
    # -s names the phase enough for a rollback
    r = fab("rollback", "-s", "llm-api", "-H", "pc2", "-y", "-i", lab.inventory)
    assert r.returncode == 1 and "phase gpu-mainpc has no service there" in r.stderr, r.stdout + r.stderr
    # exec: argv through as given, no shell on our side; the command's exit code comes back
    r = fab("exec", "-s", "llm-api", "-i", lab.inventory, "--", "echo", "a  b", "$HOME", ";", "id")
    assert r.returncode == 0 and r.stdout == "a  b $HOME ; id\n", r.stdout + r.stderr
    r = fab("exec", "-s", "llm-api", "-i", lab.inventory, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert r.returncode == 3 and r.stdout == "out\n" and "err" in r.stderr
    # prune: what runs, what rollback goes back to and recent good versions stay; the rest (old -prev pins too) goes
    running_images = {c.attrs["Image"] for c in cl.containers.list(all=True)}
    dry = json.loads(fab("prune", "-H", "mainpc", "--keep", "1", "-n", "-j", "-i", lab.inventory).stdout)["hosts"]["mainpc"]
    r = fab("prune", "-H", "mainpc", "--keep", "1", "-j", "-i", lab.inventory)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)["hosts"]["mainpc"]
    assert len(out["removed"]) == len(dry["removed"]) > 0 and out["failed"] == []
    left = {i.id for i in cl.images.list()}
    assert running_images <= left
    kept = {n for x in out["kept"] for n in x["names"]} | {i.id[:19] for i in cl.images.list() if i.id in running_images}
    assert all(x["why"] for x in out["kept"])
    assert all(t in kept or i.id[:19] in {x["image"] for x in out["kept"]} for i in cl.images.list() for t in i.tags
               if t.endswith("-prev")), "a -prev pin left is one prune kept for a reason it gave"
    assert executor.rollout(inv, PHASE).state == "noop"


def test_a_config_only_failure_freezes_that_configuration_not_the_good_tag(lab, tmp_path, thawed):
    """Same tag, a bad env value: reverted, and only that image+configuration pair is refused; the fixed env commits."""
    assert executor.rollout(load(lab.inventory), PHASE).ok

    def inv_with(name: str, env: dict):
        def edit(doc):
            doc["services"]["llm-api"]["env"].update(env)
            doc["services"]["llm-api"]["health"].update(healthy_deadline=3)
        return load(derive_inventory(lab, tmp_path / name, edit))

    bad = inv_with("bad", {"PORT": "9999"})  # the server listens where the gate does not look
    first = executor.rollout(bad, PHASE)
    assert first.state == "reverted", first.messages
    assert "frozen: phase gpu-mainpc on mainpc now refuses this image with this configuration" in "\n".join(first.messages)
    again = executor.rollout(bad, PHASE)
    assert again.state == "refused" and executor.exit_code([again.state]) == 3 and again.hosts == {}
    dry = executor.rollout(bad, PHASE, dry_run=True)
    assert executor.exit_code([executor.report_state(dry)]) == 3, "a dry run of what a freeze refuses exits 3"
    frozen = operate.details(bad, "llm-api")["hosts"]["mainpc"]["services"]["llm-api"]["frozen"]
    assert len(frozen) == 1 and "with configuration cfg:" in frozen[0] and "a changed configuration goes ahead" in frozen[0]
    fixed = executor.rollout(inv_with("fixed", {"PORT": "8080"}), PHASE)
    assert fixed.state == "committed", fixed.messages
    assert own_freezes(executor.status(bad, ["mainpc"]), "mainpc") == [], "the commit lifted the automatic freeze"


def test_a_service_dropped_from_the_inventory_shows_as_an_orphan_and_fab_remove_removes_it(lab, tmp_path):
    """Kamal's `app remove`: what fleetroll started and the inventory no longer names is listed, and can go for good."""
    import docker

    assert executor.rollout(load(lab.inventory), PHASE).ok
    cl = docker.DockerClient(base_url=lab.host("mainpc").docker_host)
    src = cl.containers.get("vision-api")
    labels = {**src.labels, "io.fleetroll.service": "old-api"}
    cl.containers.run(src.image.id, name="old-api", labels=labels, user="10001:10001", detach=True)
    cl.containers.run(src.image.id, name="hand-made", user="10001:10001", detach=True)  # not fleetroll's
    try:
        r = fab("status", "-H", "mainpc", "-i", lab.inventory)
        assert "mainpc: ORPHAN old-api" in r.stdout and "fab remove -s old-api -H mainpc" in r.stdout, r.stdout
        assert "hand-made" not in r.stdout, "only what fleetroll started is listed"
        r = fab("remove", "-s", "vision-api", "-H", "mainpc", "-y", "-i", lab.inventory)
        assert r.returncode == 1 and "vision-api is in the inventory on mainpc" in r.stderr
        r = fab("remove", "-s", "hand-made", "-H", "mainpc", "-y", "-i", lab.inventory)
        assert r.returncode == 1 and "was not started by fleetroll" in r.stderr, r.stdout + r.stderr
        r = fab("remove", "-s", "old-api", "-H", "mainpc", "-y", "-i", lab.inventory)
        assert r.returncode == 0 and "mainpc: removed old-api" in r.stdout, r.stdout + r.stderr
        assert "old-api" not in [c.name for c in cl.containers.list(all=True)]
        assert "ORPHAN old-api" not in fab("status", "-H", "mainpc", "-i", lab.inventory).stdout
        assert any(x["kind"] == "removal" and x["service"] == "old-api" for x in ledger.read())
    finally:
        for name in ("old-api", "hand-made"):
            try:
                cl.containers.get(name).remove(force=True)
            except docker.errors.NotFound:
                pass
