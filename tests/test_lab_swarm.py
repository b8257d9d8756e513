"""engine: swarm against the lab: real dockerds form a real swarm from the inventory, Swarm runs the release.

One module-scoped swarm (formed once, left at the end, so the lab's dockerds are out of any swarm
for the tests after these): a good release commits on both nodes; a release whose /health says
"degraded" fails Swarm's healthcheck, Swarm rolls it back, fleetroll reports `reverted`, exit 4,
and ledgers it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from contextlib import contextmanager

import pytest

from lab import hosts, images
from playbooks import ledger

from .conftest import FAB, ROOT, dclient, derive_inventory, health_of, new_tag

pytestmark = pytest.mark.lab

PHASE, SERVICE, PORT = "swarm-web", "web", 9300
STACK_SERVICE = f"fr-{PHASE}_{SERVICE}"
MOVER, MOVER_PORT, MOVER_HOSTS = "mover", 9301, ["pc2", "bad-driver"]  # replicas: 1 over two workers: Swarm reschedules it
SECRET, SECRET_V1, SECRET_V2 = "swarm_token", "swarm-secret-value-one", "swarm-secret-value-two"  # on the manager only


def fab(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([FAB, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def swarm_inventory(lab, tmp, tag: str):
    """The lab inventory plus a swarm phase: `web` (the lab's healthy core image) on mainpc and pc2."""
    def edit(doc):
        doc["swarm"] = {"managers": ["mainpc"], "healthcheck": "wget"}  # the lab's images have busybox, no Python
        doc["services"][SERVICE] = {"image": "core", "tag": tag, "hosts": ["mainpc", "pc2"], "ports": [f"{PORT}:8080"],
                                    "stop_timeout": 2, "env": {"TOKEN": {"secret": SECRET, "as": "file"}},
                                    "health": {"port": PORT, "healthy_deadline": 3, "min_healthy_time": 1, "interval": 0.25}}
        doc["services"][MOVER] = {"image": "core", "tag": images.BASELINE_TAG, "hosts": MOVER_HOSTS, "replicas": 1,
                                  "ports": [f"{MOVER_PORT}:8080"], "stop_timeout": 2,
                                  "health": {"port": MOVER_PORT, "healthy_deadline": 3, "min_healthy_time": 1, "interval": 0.25}}

    def edit_phases(doc):
        doc["phases"].append({"name": PHASE, "engine": "swarm", "services": [SERVICE, MOVER]})

    return derive_inventory(lab, tmp, edit, edit_phases)


def swarm_state(lab, host: str) -> str:
    return dclient(lab, host).info()["Swarm"]["LocalNodeState"]


def task_images(lab) -> dict[str, str]:
    """{host: image} of the running swarm task of `web` on each lab host, read from that host's own dockerd."""
    out = {}
    for h in ("mainpc", "pc2"):
        for c in dclient(lab, h).containers.list(filters={"label": f"com.docker.swarm.service.name={STACK_SERVICE}"}):
            out[h] = c.attrs["Config"]["Image"]
    return out


@pytest.fixture(scope="module")
def swarm_lab(lab_session, tmp_path_factory):
    lab = lab_session()
    base = images.BASELINE_TAG
    inv = swarm_inventory(lab, tmp_path_factory.mktemp("swarm"), base)
    hosts.put_secret(lab.host("mainpc"), SECRET, SECRET_V1)  # the manager's own file; pc2 has none and needs none
    formed = fab("swarm.form", "-i", str(inv))
    try:
        assert formed.returncode == 0, formed.stdout + formed.stderr
        yield lab, inv
    finally:
        left = fab("swarm.leave", "-i", str(inv))
        assert left.returncode == 0, left.stdout + left.stderr
        assert {h.name: swarm_state(lab, h.name) for h in lab.hosts} == {h.name: "inactive" for h in lab.hosts}


def test_the_lab_forms_a_swarm_from_the_inventory_and_forming_again_changes_nothing(swarm_lab):
    lab, inv = swarm_lab
    nodes = dclient(lab, "mainpc").nodes.list()
    labels = sorted(n.attrs["Spec"]["Labels"].get("fleetroll.host", "") for n in nodes)
    assert labels == sorted(h.name for h in lab.hosts), labels  # each node by the inventory's name, hostnames alike
    gpu = [n for n in nodes if n.attrs["Spec"]["Labels"].get("fleetroll.gpu") == "true"]
    assert {n.attrs["Spec"]["Labels"]["fleetroll.host"] for n in gpu} >= {"mainpc"}
    again = fab("swarm.form", "-i", str(inv))
    assert again.returncode == 0 and "mainpc: manages swarm" in again.stdout and "pc2: already in this swarm" in again.stdout
    assert "initialised" not in again.stdout and "joined" not in again.stdout
    # fab preflight on the swarm phase: the SSH push's checks on each host, and each host a Ready node of this swarm
    pre = fab("preflight", "-p", PHASE, "-i", str(inv), "-j")
    assert pre.returncode == 0, pre.stdout[-3000:] + pre.stderr
    swarm = {c["host"]: c for c in json.loads(pre.stdout)["checks"] if c["check"] == "swarm"}
    assert set(swarm) == {"mainpc", "pc2", "bad-driver"} and all(c["status"] == "pass" for c in swarm.values()), swarm


def test_a_new_service_that_crashes_is_removed_and_that_release_frozen_until_thawed(swarm_lab, tmp_path):
    """A service new to Swarm has no earlier version to go back to: fleetroll removes it once its task was seen to
    fail, reports `removed` (exit 4), and freezes its phase on that host against the release, as the SSH push does
    for a create it removed; the same release is refused (exit 3) until `fab thaw`. Second in the module: on a swarm
    just formed (after the rescheduling test's dockerd restart, a loaded lab's manager left the task `starting` past
    the wait, and a task never seen failing rightly freezes nothing)."""
    lab, _inv = swarm_lab
    phase, svc, bad = "swarm-new", "fresh", new_tag()
    images.push(lab, "core", bad, "crash")

    def edit(doc):
        doc["swarm"] = {"managers": ["mainpc"], "healthcheck": "wget"}
        # A long deadline costs nothing here (the wait ends at the third failed task); under load it lets the first
        # crash be seen at all: with no failed task seen, fleetroll removes the service but, rightly, freezes nothing.
        doc["services"][svc] = {"image": "core", "tag": bad, "hosts": ["mainpc"], "ports": ["9302:8080"], "stop_timeout": 2,
                                "health": {"port": 9302, "healthy_deadline": 30, "min_healthy_time": 1, "interval": 0.25}}

    inv = derive_inventory(lab, tmp_path, edit, lambda doc: doc["phases"].append(
        {"name": phase, "engine": "swarm", "services": [svc]}))
    t0 = time.monotonic()
    r = fab("rollout", "-p", phase, "-i", str(inv), "-y", "-j")
    assert r.returncode == 4, r.stdout[-3000:] + r.stderr
    rep = json.loads(r.stdout)["phases"][0]
    (s,) = rep["hosts"]["mainpc"]["services"]
    assert s["outcome"] == "removed" and s["check"] == "swarm-create", s
    assert (s.get("details") or {}).get("status") == "failed", json.dumps(s)  # a task of it was seen to run and fail
    assert s["frozen"] and any(m.startswith(f"frozen: phase {phase} on mainpc against {svc}:{bad}@") and
                               "after the removal of a new service that failed" in m for m in rep["messages"]), rep["messages"]
    assert f"fr-{phase}_{svc}" not in [x.name for x in dclient(lab, "mainpc").services.list()]
    again = fab("rollout", "-p", phase, "-i", str(inv), "-y", "-j")
    assert again.returncode == 3, again.stdout[-3000:] + again.stderr
    refusal = "\n".join(json.loads(again.stdout)["phases"][0]["messages"])
    assert f"phase {phase} is frozen on mainpc since " in refusal and f"automatically: rollout {rep['rollout_id']} ended in the" \
        " removal of a new service that failed" in refusal, refusal
    thawed = fab("thaw", "--phase", phase, "--reason", "lab: the crash was on purpose", "-i", str(inv))
    assert thawed.returncode == 0 and f"mainpc: thawed {phase}" in thawed.stdout, thawed.stdout + thawed.stderr
    print(f"new swarm service: failed, removed, frozen, refused, thawed in {time.monotonic() - t0:.1f}s")


def test_a_good_release_commits_on_both_nodes_and_a_failing_one_is_rolled_back_by_swarm(swarm_lab, tmp_path):
    lab, _inv = swarm_lab
    first = swarm_inventory(lab, tmp_path / "first", images.BASELINE_TAG)
    t0 = time.monotonic()
    created = fab("rollout", "-p", PHASE, "-i", str(first), "-y", "-j")
    assert created.returncode == 0, created.stdout[-3000:] + created.stderr
    made = {(h, s["service"]): s["outcome"] for h, v in json.loads(created.stdout)["phases"][0]["hosts"].items()
            for s in v["services"]}
    # the replicas: 1 service commits where Swarm put its task and is noop (observed: no task there) on the other host
    assert sorted(o for (h, svc), o in made.items() if svc == MOVER) == ["committed", "noop"], made
    # A good new release, with the secret rotated on the manager: Swarm updates both nodes (new image, new
    # Swarm secret), fleetroll reports each (host, service) committed.
    hosts.put_secret(lab.host("mainpc"), SECRET, SECRET_V2)
    good = new_tag()
    images.push(lab, "core", good, "healthy")
    inv = swarm_inventory(lab, tmp_path / "good", good)
    r = fab("rollout", "-p", PHASE, "-i", str(inv), "-y", "-j")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    rep = json.loads(r.stdout)["phases"][0]
    assert rep["state"] == "committed"
    outcomes = {(h, s["service"]): s["outcome"] for h, v in rep["hosts"].items() for s in v["services"]}
    assert outcomes == {("mainpc", SERVICE): "committed", ("pc2", SERVICE): "committed"}, outcomes
    digest = rep["hosts"]["mainpc"]["services"][0]["after_digest"]
    assert all(img.endswith(f"{good}@{digest}") for img in task_images(lab).values()) and len(task_images(lab)) == 2
    assert json.loads(health_of(lab, "pc2", PORT))["status"] == "ok"
    secret_reached_the_tasks_and_no_record(lab, r.stdout + r.stderr + created.stdout + created.stderr)
    # fab status: where each swarm task runs (the hosts' agents cannot see it; a manager says it)
    st = json.loads(fab("status", "-i", str(inv), "-j", "-H", "mainpc,pc2").stdout)
    for h in ("mainpc", "pc2"):
        row = st["hosts"][h]["services"][SERVICE]
        assert row["engine"] == "swarm" and row["healthy"] and row["tag"] == good and row["drift"] == "", row
        assert row["status"].startswith("swarm task ") and row["status"].endswith(" running")
    # A release whose /health says "degraded": Swarm's healthcheck fails it and Swarm rolls back; exit 4, ledgered.
    bad = new_tag()
    images.push(lab, "core", bad, "degraded")
    r = fab("rollout", "-p", PHASE, "-i", str(swarm_inventory(lab, tmp_path / "bad", bad)), "-y", "-j")
    if r.returncode == 5 and "still rollback_started at the end of fleetroll's wait" in r.stdout:
        swarm_stalled_its_rollback(lab, json.loads(r.stdout)["phases"][0], good, digest)
        return
    if r.returncode == 5 and ("no previous spec any more" in r.stdout or "its spec is the previous release" in r.stdout):
        # Seen once in CI under load (1 run of 6): Swarm rolled back on its own and then wrote 'completed' over its
        # 'rollback_completed'. fleetroll now judges that from what runs (judge._completed_over_rollback): reverted once
        # the previous release's tasks ran through the window; this branch is for tasks not seen so in time: not
        # observed, needs-operator, never reverted.
        rep = json.loads(r.stdout)["phases"][0]
        assert rep["state"] == "needs-operator" and all(
            s["outcome"] == "needs-operator" for v in rep["hosts"].values() for s in v["services"]), rep
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (
                len(task_images(lab)) == 2 and all(i.endswith(f"{good}@{digest}") for i in task_images(lab).values())):
            time.sleep(5)
        assert all(i.endswith(f"{good}@{digest}") for i in task_images(lab).values()), task_images(lab)
        return
    assert r.returncode == 4, r.stdout[-3000:] + r.stderr
    rep = json.loads(r.stdout)["phases"][0]
    assert rep["state"] == "reverted"
    for h in ("mainpc", "pc2"):
        s = rep["hosts"][h]["services"][0]
        assert s["outcome"] == "reverted" and s["after_tag"] == good and s["after_digest"] == digest, s
        assert s["revert_gate"]["ok"] and "Swarm rolled the update back" in s["message"]
    assert all(img.endswith(f"{good}@{digest}") for img in task_images(lab).values())
    fin = [x for x in ledger.read() if x.get("rollout_id") == rep["rollout_id"] and x["kind"] == "finished"]
    assert fin and fin[0]["final"] == "reverted" and fin[0]["engine"] == "swarm"
    assert {(x["host"], x["outcome"]) for x in fin[0]["services"]} == {("mainpc", "reverted"), ("pc2", "reverted")}
    print(f"swarm rollouts (create, good, bad) took {time.monotonic() - t0:.1f}s")
    # fab details, where every Swarm failure report sends the operator: each host's tasks from the manager
    d = fab("details", "-s", SERVICE, "-i", str(inv))
    assert d.returncode == 0 and f"{SERVICE} on pc2 (Swarm service fr-{PHASE}_{SERVICE})" in d.stdout, d.stdout + d.stderr
    # What Swarm says of its update is what the report said it saw: rollback_completed; or 'completed' written over it,
    # or a rollback_started Swarm's updater left stuck, each judged reverted from what runs (and said so, CI under load)
    said = rep["hosts"]["pc2"]["services"][0]["message"]
    update = ("completed" if "Swarm says the update completed, but it rolled back" in said
              else "rollback_started" if "Swarm still says rollback_started" in said else "rollback_completed")
    assert f"  update    {update}" in d.stdout and f" running (desired running) core:{good}@{digest}" in d.stdout, d.stdout
    assert "no container" not in d.stdout
    the_rolled_back_release_is_frozen_until_thawed(tmp_path / "bad", rep, fin[0], bad)


def swarm_stalled_its_rollback(lab, rep: dict, good: str, digest: str) -> None:
    """A rollback Swarm really left stuck (swarmkit's updater waits, with no timeout, on a task of its own that a
    restarted task of the failed release beat to the host port). Where the previous release nonetheless runs healthy on
    every node, fleetroll now reports it reverted from what runs (judge._rolled_back_as_seen), so this branch is for a
    rollback whose tasks do not all run in time: fleetroll must say it did not observe the end (needs-operator, exit 5),
    never `reverted`; the previous release's tasks then run on both nodes within a few minutes more (Swarm's
    UpdateStatus may stay rollback_started)."""
    assert rep["state"] == "needs-operator", rep
    for h in ("mainpc", "pc2"):
        s = rep["hosts"][h]["services"][0]
        assert s["outcome"] == "needs-operator" and s["after_tag"] == "" and "Swarm carries on" in s["message"], s
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        seen = task_images(lab)
        if len(seen) == 2 and all(img.endswith(f"{good}@{digest}") for img in seen.values()):
            print("swarm stalled its rollback past fleetroll's wait; reported needs-operator; Swarm then finished it")
            return
        time.sleep(5)
    raise AssertionError(f"Swarm did not finish its rollback within 5 more minutes: {task_images(lab)}")


def the_rolled_back_release_is_frozen_until_thawed(bad_inv, rep: dict, fin: dict, bad: str) -> None:
    """As with SSH push: Swarm's rollback froze the phase on both hosts against that release (said in the report and
    the ledger); the same release again is refused naming the freeze, exit 3; fab thaw lets it be tried again."""
    t0 = time.monotonic()
    inv = str(bad_inv / "fleet.yml")
    for h in ("mainpc", "pc2"):
        assert rep["hosts"][h]["services"][0]["frozen"], rep["hosts"][h]
        assert any(m.startswith(f"frozen: phase {PHASE} on {h} against {SERVICE}:{bad}@") for m in rep["messages"]), rep["messages"]
    assert all(x["frozen"] for x in fin["services"])
    again = fab("rollout", "-p", PHASE, "-i", inv, "-y", "-j")
    assert again.returncode == 3, again.stdout[-3000:] + again.stderr
    refused = json.loads(again.stdout)["phases"][0]
    text = "\n".join(refused["messages"])
    assert refused["state"] == "refused" and refused["hosts"] == {}, refused
    for h in ("mainpc", "pc2"):  # the SSH push's own words (playbooks/freezes.blocking)
        assert f"phase {PHASE} is frozen on {h} since " in text, text
        assert f"automatically: rollout {rep['rollout_id']} ended in Swarm's rollback" in text, text
    assert f"{SERVICE}:{bad}@" in text and f"fab thaw --phase {PHASE}" in text
    assert ledger.read()[-1]["reason"] == "phase frozen"
    thawed = fab("thaw", "--phase", PHASE, "--reason", "lab: tried again on purpose", "-i", inv)
    assert thawed.returncode == 0 and f"mainpc: thawed {PHASE}" in thawed.stdout and f"pc2: thawed {PHASE}" in thawed.stdout, (
        thawed.stdout + thawed.stderr)
    dry = fab("rollout", "-p", PHASE, "-i", inv, "--dry-run")
    assert dry.returncode == 2 and "would be refused" not in dry.stdout + dry.stderr, dry.stdout[-3000:] + dry.stderr
    print(f"swarm freeze: refused, thawed, allowed in {time.monotonic() - t0:.1f}s")


def test_rollback_to_a_tag_then_to_swarm_s_previous_spec_and_versions_and_logs_through_the_manager(swarm_lab):
    """After the failed release: `--to` the baseline is a rollout of it through the gates; a plain rollback then puts
    Swarm's previous spec (the good release) back; versions and logs of the swarm service are read through the manager."""
    lab, inv = swarm_lab
    labels = dclient(lab, "mainpc").api.inspect_service(STACK_SERVICE)["Spec"]["Labels"]
    good, digest = labels["io.fleetroll.tag"], labels["io.fleetroll.digest"]
    assert good != images.BASELINE_TAG
    t0 = time.monotonic()
    to = fab("rollback", "-p", PHASE, "-s", SERVICE, "--to", images.BASELINE_TAG, "-i", str(inv), "-y", "-j")
    assert to.returncode == 0, to.stdout[-3000:] + to.stderr
    rep = json.loads(to.stdout)
    assert rep["state"] == "committed" and rep["preflight"]["ok"], rep["messages"]
    assert {h: v["services"][0]["after_tag"] for h, v in rep["hosts"].items()} == {"mainpc": images.BASELINE_TAG,
                                                                                     "pc2": images.BASELINE_TAG}
    fin = [x for x in ledger.read() if x.get("rollout_id") == rep["rollout_id"] and x["kind"] == "finished"][0]
    assert fin["rollback"] and fin["to_tag"] == images.BASELINE_TAG and fin["engine"] == "swarm" and fin["final"] == "committed"
    back = fab("rollback", "-p", PHASE, "-s", SERVICE, "-i", str(inv), "-y", "-j")  # Swarm's previous spec: the good release
    assert back.returncode == 0, back.stdout[-3000:] + back.stderr
    rep = json.loads(back.stdout)
    assert rep["state"] == "reverted", rep["messages"]
    for h in ("mainpc", "pc2"):
        s = rep["hosts"][h]["services"][0]
        assert (s["outcome"], s["after_tag"], s["after_digest"], s["engine"]) == ("reverted", good, digest, "swarm"), s
    assert all(img.endswith(f"{good}@{digest}") for img in task_images(lab).values()) and len(task_images(lab)) == 2
    took = time.monotonic() - t0
    ver = fab("versions", "-s", SERVICE, "-i", str(inv), "-j")
    assert ver.returncode == 0, ver.stdout[-2000:] + ver.stderr
    for r in json.loads(ver.stdout)["replicas"]:
        assert r["running"]["tag"] == good and r["versions"][0]["kind"] == "rollback" and r["versions"][0]["running"], r
        assert r["versions"][1]["tag"] == images.BASELINE_TAG and "previous spec" in r["note"], r
    logs = fab("logs", "-s", SERVICE, "-i", str(inv), "--tail", "5")
    assert logs.returncode == 0 and f"docker service logs {STACK_SERVICE} through mainpc" in logs.stdout, logs.stdout + logs.stderr
    assert "\x1b" not in logs.stdout
    print(f"swarm rollback --to and back took {took:.1f}s; versions and logs {time.monotonic() - t0 - took:.1f}s")
    logs_follow_streams_through_the_manager_until_ctrl_c(lab, inv)


def _say_in_task(lab, text: str) -> None:
    """A line in web's log on pc2 (a worker: its lines reach the manager through Swarm): written to the task's stdout."""
    c = dclient(lab, "pc2").containers.list(filters={"label": f"com.docker.swarm.service.name={STACK_SERVICE}"})[0]
    rc, out = c.exec_run(["/bin/sh", "-c", f"printf '%s\\033[31m\\n' '{text}' > /proc/1/fd/1"])
    assert rc == 0, out


def logs_follow_streams_through_the_manager_until_ctrl_c(lab, inv) -> None:
    """fab logs --follow of the swarm service: the tail at once, a new line as it is written (escapes gone), Ctrl-C: 130."""
    import queue
    import threading

    t0 = time.monotonic()
    marks = [f"lab-follow-{os.getpid()}-{n}" for n in (1, 2)]
    _say_in_task(lab, marks[0])
    p = subprocess.Popen([FAB, "logs", "-s", SERVICE, "-i", str(inv), "--follow", "--tail", "3"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in p.stdout], daemon=True).start()
    seen: list[str] = []

    def wait_for(mark: str) -> None:
        deadline = time.monotonic() + 20
        while not any(mark in x for x in seen) and time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=0.5))
            except queue.Empty:
                continue
        assert any(mark in x for x in seen), (mark, seen)

    try:
        wait_for(marks[0])  # --tail 3: what was there before
        _say_in_task(lab, marks[1])
        wait_for(marks[1])  # --follow: what comes after, as it comes
    finally:
        p.send_signal(signal.SIGINT)
        _out, err = p.communicate(timeout=20)
    assert p.returncode == 130 and "Traceback" not in err, (p.returncode, err)  # Ctrl-C, as the SSH push's follow
    line = next(x for x in seen if marks[1] in x)
    assert f"{STACK_SERVICE}." in line and "\x1b" not in line, line  # Swarm names the task (and its node)
    print(f"swarm logs --follow: two lines and Ctrl-C in {time.monotonic() - t0:.1f}s")


def test_a_replicas_service_is_rescheduled_when_its_node_s_dockerd_stops_and_status_says_where(swarm_lab):
    """Stop the dockerd under the `mover` task: Swarm runs it on the other host; fab status says where it runs now."""
    lab, inv = swarm_lab
    mgr = dclient(lab, "mainpc")
    mgr.swarm.update(dispatcher_heartbeat_period=1_000_000_000)  # lab only: notice a lost node in seconds, not 5 s+

    def where() -> dict[str, dict]:
        st = json.loads(fab("status", "-i", str(inv), "-j").stdout)
        return {h: st["hosts"][h]["services"][MOVER] for h in MOVER_HOSTS if MOVER in st["hosts"][h].get("services", {})}

    rows = where()
    before = [h for h, r in rows.items() if r["status"].startswith("swarm task ") and r["healthy"]]
    assert len(before) == 1 and rows[({*MOVER_HOSTS} - {*before}).pop()]["status"] == "elsewhere", rows
    gone, other = lab.host(before[0]), ({*MOVER_HOSTS} - {*before}).pop()
    t0 = time.monotonic()
    with dockerd_stopped(gone):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = {t["NodeID"] for t in mgr.api.tasks(filters={"service": f"fr-{PHASE}_{MOVER}", "desired-state": "running"})
                       if t["Status"]["State"] == "running"}
            if running and any(mgr.nodes.get(n).attrs["Spec"]["Labels"].get("fleetroll.host") == other for n in running):
                break
            time.sleep(0.5)
        else:
            states = [(t["NodeID"][:12], t["Status"]["State"], t["DesiredState"])
                      for t in mgr.api.tasks(filters={"service": f"fr-{PHASE}_{MOVER}"})]
            pytest.fail(f"Swarm did not run {MOVER} on {other} within 60 s of stopping {gone.name}'s dockerd (load average"
                        f" {os.getloadavg()[0]:.0f}; tasks (node, state, desired): {states}); fab status was not asked")
        moved = time.monotonic() - t0
        rows = where()
        assert rows[other]["status"].startswith("swarm task ") and rows[other]["healthy"], rows
        assert rows[other]["tag"] == images.BASELINE_TAG and json.loads(health_of(lab, other, MOVER_PORT))["status"] == "ok"
    print(f"mover rescheduled from {gone.name} to {other} in {moved:.1f}s")


def test_swarm_down_takes_the_phase_s_stack_off_every_node_and_a_second_one_finds_nothing(swarm_lab):
    """The way back to the SSH push, step 1 (docs/swarm.md): no service listed, no node running a task of it, ledgered."""
    lab, inv = swarm_lab
    r = fab("swarm.down", "-p", PHASE, "-i", str(inv), "-y", "-j")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    rep = json.loads(r.stdout)
    assert rep["ok"] and rep["stack"] == f"fr-{PHASE}" and rep["left"] == {} and rep["manager"] == "mainpc", rep
    for h in ("mainpc", "pc2"):  # each node's own dockerd: no container of the stack, not only the manager's word
        assert dclient(lab, h).containers.list(all=False, filters={"label": f"com.docker.stack.namespace=fr-{PHASE}"}) == [], h
    assert any(json.loads(x).get("kind") == "swarm-down" for x in ledger.path().read_text().splitlines())
    again = fab("swarm.down", "-p", PHASE, "-i", str(inv), "-y")
    assert again.returncode == 0 and "nothing taken down" in again.stdout, again.stdout + again.stderr
    # With the stack gone no spec names the Swarm secrets of either value: fab prune takes them (grace 0: no rollout runs).
    mgr = dclient(lab, "mainpc")
    made = sorted(x.name for x in mgr.secrets.list() if x.name.startswith(f"fr_{SECRET}_"))
    assert len(made) == 2, made
    env = {**os.environ, "FLEETROLL_SWARM_SECRET_GRACE_S": "0"}
    pruned = subprocess.run([FAB, "prune", "-i", str(inv), "-j"], cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert pruned.returncode == 0, pruned.stdout[-2000:] + pruned.stderr
    assert sorted(json.loads(pruned.stdout)["swarm"]["removed"]) == made
    assert not [x.name for x in mgr.secrets.list() if x.name.startswith(f"fr_{SECRET}_")]


def secret_reached_the_tasks_and_no_record(lab, report: str) -> None:
    """The rotated value is read inside both tasks at KEY=/run/secrets/NAME; neither value is in any record."""
    for h in ("mainpc", "pc2"):
        c = dclient(lab, h).containers.list(filters={"label": f"com.docker.swarm.service.name={STACK_SERVICE}"})[0]
        rc, out = c.exec_run(["/bin/sh", "-c", 'echo "$TOKEN"; cat "$TOKEN"'])
        assert rc == 0 and out.decode().split() == [f"/run/secrets/{SECRET}", SECRET_V2], (h, rc, out)
    mgr = dclient(lab, "mainpc")
    made = sorted(x.name for x in mgr.secrets.list() if x.name.startswith(f"fr_{SECRET}_"))
    assert len(made) == 2, made  # one Swarm secret per value: rotated, not overwritten (Swarm secrets are immutable)
    inspect = json.dumps(mgr.api.inspect_service(STACK_SERVICE))
    journals = "".join(p.read_text(errors="replace") for p in (lab.host("mainpc").dir / "state").rglob("*") if p.is_file()
                       and p.stat().st_size < 1 << 20)
    records = {"report": report, "ledger": ledger.path().read_text(), "service inspect": inspect, "manager state": journals}
    for what, text in records.items():
        assert SECRET_V1 not in text and SECRET_V2 not in text, f"a secret value is in the {what}"
    assert made[0] in inspect or made[1] in inspect  # the reference is there, by its versioned name


@contextmanager
def dockerd_stopped(h):
    """Fault injection: this lab host's dockerd (the pid the lab recorded) stopped, then started again."""
    from lab import hosts, procs

    for pid in procs.recorded(f"dockerd:{h.name}"):
        os.kill(pid, signal.SIGTERM)
    procs.wait_for(f"dockerd on {h.name} to stop", lambda: not procs.recorded(f"dockerd:{h.name}"), 30)
    try:
        yield
    finally:
        hosts._spawn_dockerd(h)
        procs.wait_for(f"dockerd on {h.name}", lambda: h.docker_sock.exists() and hosts._docker_ping(h), 45)
