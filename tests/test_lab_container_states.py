"""Rollback, rollback --to, restart and a failed swap on a real dockerd, whatever state the running container is in.

Docker tears a crash-looping container's sandbox down and up under the transaction's
feet; renaming or stopping it then raced (`sandbox … not found`) and the report claimed the
release was "back and healthy". Every case here ends with the target running and proven
healthy, or `needs-operator` with a message that says nothing is proven healthy. The same
branches run against the fake daemon in tests/test_container_states_unit.py.
"""

from __future__ import annotations

import json
import time

import docker
import pytest

from lab import images
from playbooks import executor, operate
from playbooks.inventory import load

from .conftest import derive_inventory, health_of, new_tag

pytestmark = pytest.mark.lab
HOST, PHASE, SVC, PORT, REPO = "pc2", "cpu-pc2", "rag-api", 8101, "cpu-svc"
# The lab's crash variant exits 1 s after each start: inside this window, so it can never pass a gate.
HEALTH = {"healthy_deadline": 4, "min_healthy_time": 1.2, "interval": 0.1}


@pytest.fixture(scope="module")
def rig(lab_session, tmp_path_factory):
    """rag-api at T1, then T2 (both committed here, so T1 is a `--to` target); a crash image pulled on pc2."""
    lab = lab_session()
    tmp = tmp_path_factory.mktemp("states")
    tags = {"t1": new_tag(), "t2": new_tag(), "bad": new_tag()}
    images.push(lab, REPO, tags["t1"], "healthy")
    images.push(lab, REPO, tags["t2"], "healthy")
    images.push(lab, REPO, tags["bad"], "degraded")
    crash = images.push(lab, REPO, new_tag(), "crash")
    invs = {}
    for name, tag in tags.items():
        def edit(doc, tag=tag, name=name):
            doc["services"][SVC].update(tag=tag)
            # T1 is only ever a rollback target here: a short window proves it healthy; the others keep a window the
            # crash (1 s after start) falls inside.
            doc["services"][SVC]["health"].update(HEALTH, **({"healthy_deadline": 2} if name == "bad" else {}),
                                                  **({"min_healthy_time": 0.5} if name == "t1" else {}))
        invs[name] = load(derive_inventory(lab, tmp / name, edit))
    client = docker.DockerClient(base_url=lab.host(HOST).docker_host)
    client.images.pull(crash)
    rig = {"lab": lab, "inv": invs, "tags": tags, "crash": crash, "client": client}
    assert executor.rollout(invs["t1"], PHASE).state in ("committed", "noop")
    yield rig
    executor.rollout(load(lab.inventory), PHASE)  # the lab's own tags again for the tests after these


def at_t2(rig) -> None:
    """Start each case from T2 committed over T1 by a rollout (so rollback has a recorded configuration to go back to)."""
    c = running(rig)
    if c is not None:
        c.reload()
    if c is None or c.attrs["State"]["Status"] != "running" or c.attrs["State"]["Restarting"] or c.attrs["RestartCount"]:
        if c is not None:
            c.remove(force=True)  # a case left it crash-looping or stopped: start again from T1
        assert executor.rollout(rig["inv"]["t1"], PHASE).state == "committed"
        c = running(rig)
    if c.labels.get("io.fleetroll.tag") != rig["tags"]["t2"]:
        rep = executor.rollout(rig["inv"]["t2"], PHASE)
        assert rep.state == "committed", rep.messages
    rig["t2_labels"] = dict(running(rig).labels)


def running(rig):
    try:
        return rig["client"].containers.get(SVC)
    except docker.errors.NotFound:
        return None


def put_in(rig, state: str) -> None:
    """Put the running rag-api (T2, from its rollout) into `state` by hand, as an operator or a crash would."""
    c = running(rig)
    if state == "crash-looping":
        # T2's labels (so it is the release of T2's rollout), a process that exits 1 s after each start.
        labels, name = dict(rig["t2_labels"]), SVC
        if c is not None:
            c.remove(force=True)
        c = rig["client"].containers.run(rig["crash"], name=name, labels=labels, ports={"8080/tcp": PORT},
                                         restart_policy={"Name": "always"}, user="10001:10001", detach=True)
        deadline = time.time() + 30
        while time.time() < deadline and (c.reload() or c.attrs["RestartCount"] < 1):
            time.sleep(0.05)
        assert c.attrs["RestartCount"] >= 1, "the hand-made container never crash-looped"
    elif state == "paused":
        c.pause()
    elif state == "exited":
        c.kill()
        c.reload()
        c.update(restart_policy={"Name": "no"})
        c.stop(timeout=1)
    elif state == "removed":
        c.remove(force=True)


def healthy_on(rig, tag: str) -> None:
    c = running(rig)
    assert c is not None and c.labels["io.fleetroll.tag"] == tag
    c.reload()
    assert c.attrs["State"]["Running"] and not c.attrs["State"]["Restarting"] and not c.attrs["State"]["Paused"]
    assert json.loads(health_of(rig["lab"], HOST, PORT))["status"] == "ok"
    assert [x.name for x in rig["client"].containers.list(all=True) if f"{SVC}--kept-" in x.name] == []


def only(rep) -> dict:
    return next(s for s in rep.hosts[HOST]["services"] if s["service"] == SVC)


@pytest.mark.parametrize("state", ["crash-looping", "paused", "exited", "removed"])
def test_rollback_goes_back_from_the_running_release_in_every_state(rig, state):
    at_t2(rig)
    put_in(rig, state)
    rep = executor.rollback(rig["inv"]["t2"], PHASE, SVC)
    assert rep.state == "reverted" and rep.ok, rep.messages
    assert f"now on {rig['tags']['t1']}@" in "\n".join(rep.messages) and rep.elapsed_s > 0.5
    healthy_on(rig, rig["tags"]["t1"])


@pytest.mark.parametrize("state", ["crash-looping", "paused"])
def test_rollback_to_a_tag_from_a_container_in_motion(rig, state):
    at_t2(rig)
    put_in(rig, state)
    rep = executor.rollback(rig["inv"]["t2"], PHASE, SVC, to_tag=rig["tags"]["t1"])
    assert rep.state == "reverted", rep.messages
    healthy_on(rig, rig["tags"]["t1"])


def test_restart_of_a_paused_container_is_a_fresh_healthy_one(rig):
    at_t2(rig)
    put_in(rig, "paused")
    before = running(rig).id
    rep = executor.restart(rig["inv"]["t2"], SVC)
    assert rep.state == "committed", rep.messages
    healthy_on(rig, rig["tags"]["t2"])
    assert running(rig).id != before


def test_restart_of_a_crash_looping_container_says_nothing_is_healthy(rig):
    """Its own configuration crashes again and so does the container it came from: needs-operator, said so."""
    at_t2(rig)
    put_in(rig, "crash-looping")
    rep = executor.restart(rig["inv"]["t2"], SVC)
    assert rep.state == "needs-operator" and executor.exit_code([rep.state]) == 5, rep.messages
    s = only(rep)
    text = "\n".join(rep.messages)
    assert s["outcome"] == "revert-failed" and "NOTHING PROVEN HEALTHY" in text and "crashing on purpose" in text
    assert "back and healthy" not in text


@pytest.mark.parametrize("state,outcome", [("crash-looping", "revert-failed"), ("paused", "reverted"), ("exited", "reverted")])
def test_a_failed_swap_from_a_container_in_motion_ends_good_or_says_it_needs_an_operator(rig, state, outcome):
    at_t2(rig)
    put_in(rig, state)
    rep = executor.rollout(rig["inv"]["bad"], PHASE)
    s = only(rep)
    assert s["outcome"] == outcome, rep.messages
    if outcome == "reverted":
        assert rep.state == "reverted"
        healthy_on(rig, rig["tags"]["t2"])
    else:
        # What it went back to is the crash-looping container it replaced: not healthy, and the report says so.
        assert rep.state == "needs-operator" and "NOTHING PROVEN HEALTHY" in "\n".join(rep.messages)
    # The degraded release froze the phase against itself; the next case starts unfrozen.
    assert operate.set_freeze(rig["inv"]["bad"], PHASE, "test cleanup", thaw=True)[0]


def test_crash_loop_rollback_twenty_times_in_a_row(rig):
    """It raced before (3 of 3 failed on one host): every one of 20 must end on T1, proven healthy."""
    at_t2(rig)
    for i in range(20):
        put_in(rig, "crash-looping")
        rep = executor.rollback(rig["inv"]["t2"], PHASE, SVC, to_tag=rig["tags"]["t1"])
        assert rep.state == "reverted", (i, rep.messages)
        healthy_on(rig, rig["tags"]["t1"])
