"""Agent operations without a host: following a journal through a dockerd restart, exec's user.

Following a transaction's journal (the SSH side of a rollout) through a dockerd restart:
While dockerd restarts, its socket is gone for a moment and the lock's checks (which trust the
socket's group) cannot pass: that says nothing about the worker, which holds its flock either
way. The follow keeps relaying, and only a lock that stays unusable is an error.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from agent import follow, journal, lock, ops
from agent.vocabulary import Step

pytestmark = pytest.mark.usefixtures("host_state")


def test_a_lock_check_that_fails_while_dockerd_restarts_does_not_end_the_follow(monkeypatch):
    journal.append("r-f", Step.ACCEPTED)
    calls = []

    def unsafe(*_a, **_kw):
        calls.append(1)
        raise lock.LockUnsafe("lock directory is writable by group docker, which is not the Docker socket's group")

    monkeypatch.setattr(lock, "try_acquire", unsafe)
    threading.Timer(1.5, lambda: journal.append("r-f", Step.DONE, ok=True, state="good", services=[])).start()
    events: list[dict] = []
    done = ops._follow("r-f", events.append, time.monotonic() + 10)
    assert done is not None and done["ok"] and calls, "it looked, could not tell, and kept following"
    assert [e["event"] for e in events][-1] == "done"


def test_a_lock_that_stays_unusable_is_an_error(monkeypatch):
    journal.append("r-g", Step.ACCEPTED)
    monkeypatch.setattr(follow, "LOCK_UNSAFE_GRACE_S", 0.3)
    monkeypatch.setattr(lock, "try_acquire", lambda *a, **k: (_ for _ in ()).throw(lock.LockUnsafe("forged")))
    with pytest.raises(lock.LockUnsafe):
        ops._follow("r-g", lambda e: None, time.monotonic() + 10)


def test_the_worker_pipe_relays_each_record_and_its_end_says_the_worker_is_gone(monkeypatch):
    """A detached worker's records wake its follower through a pipe, and the pipe's end of file (the worker exited
    without an outcome: killed) sends the follower to the lock at once. With the periodic lock check pushed out of
    reach, only the pipe's end can have started the recovery here."""
    from agent import recovery

    rid = "r-pipe"
    journal.append(rid, Step.ACCEPTED)
    monkeypatch.setattr(follow, "LOCK_CHECK_S", 1e9)
    recovered = []

    class Held:
        def release(self):
            recovered.append("released")

    def recover(r):
        recovered.append(r)
        journal.append(r, Step.DONE, ok=False, state="good", services=[])

    monkeypatch.setattr(lock, "try_acquire", lambda *a, **k: Held())
    monkeypatch.setattr(recovery, "recover", recover)

    def worker():  # a transaction that got as far as its gate, then was killed (no outcome written)
        journal.append(rid, Step.GATE, service="svc")
        os._exit(9)

    pid, wake = ops._detach(worker)
    events: list[dict] = []
    try:
        done = ops._follow(rid, events.append, time.monotonic() + 20, wake_fd=wake)
    finally:
        os.close(wake)
    assert [e["event"] for e in events] == ["accepted", "gate", "done"] and pid > 0
    end = time.monotonic() + 10  # the recovery thread lets go of the lock just after it wrote the outcome
    while "released" not in recovered and time.monotonic() < end:
        time.sleep(0.01)
    assert done is not None and recovered == [rid, "released"]


def test_exec_runs_as_the_containers_own_user_only():
    """`user: 0` in an exec request would be root inside a container the hard rules keep non-root: refused up front."""
    out = ops.exec_op({"service": "svc", "argv": ["id"], "user": 0})
    assert not out["ok"] and "refused" in out["msg"]
    assert not ops.exec_op({"service": "svc", "argv": ["id"], "user": "root"})["ok"]


def test_remove_takes_only_fleetrolls_containers_and_journals_it(monkeypatch, daemon):
    """`fab remove` on the host: a container with fleetroll's label (and its kept ones) goes; anything else is refused."""
    from agent import facts

    from .test_transaction_unit import running_old

    monkeypatch.setattr(facts, "docker_client", lambda timeout=None: daemon)
    running_old(daemon, name="old-api", port=8001)
    look = ops.dispatch("remove", {"service": "old-api", "rollout_id": "r-rm", "dry_run": True}, lambda e: None)
    assert look["ok"] and [x["name"] for x in look["data"]["would_remove"]] == ["old-api"] and daemon.containers.by_id
    assert journal.read("r-rm") == [], "a dry run only looks"
    changed = ops.dispatch("remove", {"service": "old-api", "rollout_id": "r-rm", "expect_ids": ["not-that-one"]}, lambda e: None)
    assert not changed["ok"] and "changed since you were asked" in changed["msg"] and daemon.containers.by_id, changed
    out = ops.dispatch("remove", {"service": "old-api", "rollout_id": "r-rm", "operator": "op"}, lambda e: None)
    assert out["ok"] and [x["name"] for x in out["data"]["removed"]] == ["old-api"] and not daemon.containers.by_id
    steps = [r["step"] for r in journal.read("r-rm")]
    assert steps == ["accepted", "removed", "done"]
    d = daemon.api.create_container(name="hand-made", image="x", labels={})
    assert d and not ops.dispatch("remove", {"service": "hand-made", "rollout_id": "r-rm2"}, lambda e: None)["ok"]
    assert not ops.dispatch("remove", {"service": "a;b", "rollout_id": "r-rm3"}, lambda e: None)["ok"]


def test_a_follower_whose_controller_goes_lets_its_recovery_finish_before_it_ends(monkeypatch):
    """The controller went while this follower recovered a dead transaction: relaying stops, the recovery does not
    (it may have stopped a service and not yet started the old one again)."""
    from agent import recovery

    journal.append("r-h", Step.ACCEPTED)
    state = {"started": False, "finished": False, "released": False}

    class Held:
        def release(self):
            state["released"] = True

    def slow_recover(rid):
        state["started"] = True
        time.sleep(0.5)
        state["finished"] = True

    def emit(ev):
        if state["started"]:
            raise BrokenPipeError("the controller closed its side of the session")

    monkeypatch.setattr(follow, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(lock, "try_acquire", lambda *a, **k: Held())
    monkeypatch.setattr(recovery, "recover", slow_recover)
    with pytest.raises(BrokenPipeError):
        ops._follow("r-h", emit, time.monotonic() + 10)
    assert state == {"started": True, "finished": True, "released": True}


def test_versions_marks_one_row_running_when_a_release_was_started_twice(monkeypatch):
    """Found on the lab: a release rolled out, then restarted, showed 'running' on both rows."""
    from agent import container_ops, contract, facts, versions

    rows = [{"tag": "T1", "digest": "sha256:1", "image": "i1", "ts": 1.0, "rollout_id": "r-1", "outcome": "committed"},
            {"tag": "T1", "digest": "sha256:1", "image": "i1", "ts": 2.0, "rollout_id": "r-2", "outcome": "committed"},
            {"tag": "T0", "digest": "sha256:0", "image": "i0", "ts": 0.5, "rollout_id": "r-0", "outcome": "committed"}]
    monkeypatch.setattr(versions, "list_versions", lambda service: [dict(r) for r in rows])

    def client(rid: str):
        class C:
            labels = {contract.TAG: "T1", contract.DIGEST: "sha256:1", contract.ROLLOUT_ID: rid}

        class Client:
            class containers:  # noqa: N801
                get = staticmethod(lambda name: C)

            class images:  # noqa: N801
                get = staticmethod(lambda ref: None)

        return Client

    for rid, want in (("r-2", "r-2"), ("r-1", "r-1"), ("r-9", "r-2")):  # r-9: no row of its own: the latest start of T1
        monkeypatch.setattr(facts, "docker_client", lambda timeout=None, rid=rid: client(rid))
        out = container_ops.versions_op({"service": "svc"})["data"]["versions"]
        assert [r["rollout_id"] for r in out if r["running"]] == [want], (rid, out)


def test_a_host_mid_transaction_says_who_holds_it_and_a_rollout_there_is_refused_even_as_a_no_op(host_state):
    """Found on the lab: a second rollout while the first was gating planned from the container under test, said
    'nothing to do' (exit 0) and recorded noop; the first then reverted. The agent now says the host is busy."""
    from agent import journal, lock
    from playbooks.in_motion import in_motion
    from playbooks.plan import Plan, Step

    assert lock.busy() is None, "no open journal: nothing runs"
    held = lock.try_acquire("op@laptop", "r-live")
    assert held is not None
    journal.append("r-live", "accepted")
    journal.mark_open("r-live")
    try:
        b = lock.busy()
        assert b and b["rollout_id"] == "r-live" and b["holder"] == "op@laptop" and b["pid"], b
        plan = Plan("r-next", "web", "op", [Step("pc2", "web", "noop")])
        (line,) = in_motion(plan, {"pc2": {"busy": b}})
        assert line.startswith("pc2 is in the middle of rollout r-live (op@laptop, pid") and "fab status --follow -H pc2" in line
        assert in_motion(plan, {"pc2": {"busy": {"unsafe": "forged lock"}}}) == [] and in_motion(plan, {"pc2": {}}) == []
    finally:
        held.release()


def test_remove_waits_for_no_transaction_it_refuses_while_one_runs(host_state, monkeypatch):
    """Found on the lab: fab remove --force mid-gate removed the container the transaction had set aside, so its revert
    had to recreate it. remove now takes the host's lock like a transaction: refused while one runs, nothing touched."""
    from agent import container_ops, facts, lock

    asked = []
    monkeypatch.setattr(facts, "docker_client", lambda timeout=None: asked.append("docker") or _NoContainers)
    held = lock.try_acquire("alice@laptop", "r-live")
    try:
        out = container_ops.remove_op({"service": "good1", "rollout_id": "r-rm", "operator": "bob"})
        assert not out["ok"] and out["msg"].startswith("host is locked by alice@laptop (rollout r-live") and asked == [], out
        assert "nothing was removed" in out["msg"] and "fab status --follow" in out["msg"]
    finally:
        held.release()
    out = container_ops.remove_op({"service": "good1", "rollout_id": "r-rm", "operator": "bob"})
    assert out["ok"] and out["msg"] == "no container of good1 here; nothing to remove" and asked == ["docker"]
    assert lock.try_acquire("carol", "r-next") is not None, "and it let the lock go"


class _NoContainers:
    class containers:  # noqa: N801 - the docker SDK's attribute name
        @staticmethod
        def get(name):
            from agent.docker_errors import NotFound

            raise NotFound(f"No such container: {name}")

        @staticmethod
        def list(**kw):
            return []


def test_a_host_whose_recovery_failed_is_refused_too_and_each_holder_is_named_for_what_it_is(host_state):
    """From an independent read: an open journal with the lock free (recovery failed) is half-swapped, not free; and a
    recovery or a fab remove holding the lock is not 'another rollout'."""
    from agent import journal, lock
    from playbooks.in_motion import in_motion
    from playbooks.plan import Plan, Step

    journal.append("r-dead", "accepted")
    journal.mark_open("r-dead")
    assert lock.busy() == {"interrupted": ["r-dead"]}, "nobody holds the lock: it was left, not running"
    plan = Plan("r-next", "web", "op", [Step("pc2", "web", "noop")])
    (line,) = in_motion(plan, {"pc2": {"busy": {"interrupted": ["r-dead"]}}})
    assert line.startswith("pc2 has an interrupted transaction (r-dead) that recovery could not finish") and "fab status -H pc2" in line
    (line,) = in_motion(plan, {"pc2": {"busy": {"rollout_id": "recovery", "holder": "recovery", "pid": 9}}})
    assert line.startswith("pc2 is recovering an interrupted transaction (recovery, pid 9")
    (line,) = in_motion(plan, {"pc2": {"busy": {"rollout_id": "remove-web-1", "holder": "bob", "pid": 9}}})
    assert line.startswith("pc2 is removing a container (fab remove, remove-web-1) (bob, pid 9")


def test_the_rollout_refuses_a_busy_host_first_and_a_dry_run_says_it_would(tmp_path, monkeypatch):
    """The refusal comes before preflight's verdict (a port the new container holds must not hide it): exit 3, a ledger
    record; a dry run exits 3 saying a real rollout would be refused, even when preflight also failed."""
    from types import SimpleNamespace

    from playbooks import ending, executor, ledger, preflight
    from playbooks.plan import Plan, Step
    from playbooks.rollout import _stop_before_changing
    from playbooks.runner import PreflightReport

    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "l.jsonl"))
    busy = {"rollout_id": "r-live", "holder": "ana", "pid": 7}
    port = preflight.Check("pc2", "port:8080", preflight.FAIL, "8080 in use", "")  # the new container's, mid-swap
    for dry in (False, True):
        plan = Plan("r-next", "web", "op", [Step("pc2", "web", "noop")])
        pre = PreflightReport("web", ["pc2"], [port], {"pc2": {"busy": busy}})
        report = ending.RolloutReport("r-next", "web", False, "refused", plan, pre)
        ro = SimpleNamespace(report=report, plan=plan, common={"rollout_id": "r-next", "phase": "web"}, inv=None)
        assert _stop_before_changing(ro, dry, None)
        assert report.messages[0].startswith("a real rollout would be refused now: pc2 is in the middle of rollout r-live"
                                             if dry else "pc2 is in the middle of rollout r-live"), report.messages
        assert executor.exit_code([ending.report_state(report)]) == 3
    refused = [r for r in ledger.read() if r["kind"] == "refused"]
    assert len(refused) == 1 and refused[0]["reason"] == "host in the middle of another rollout", "the dry run records nothing"
