"""Every branch of the host transaction and its recovery, against a fake Docker client (no hosts).

The lab tests prove the same promise on real dockerd; these reach the faults a real
daemon will not produce at a chosen call (see tests/fakedocker.py for why a fake).
"""

from __future__ import annotations

import json
import socket
import threading

import pytest

from agent import container_args, contract, docker_errors, health, journal, lock, recovery
from agent import transaction as tx_mod
from agent.transaction import Transaction
from playbooks.executor import derive_state, exit_code

from .fakedocker import FakeDaemon

REAL_TAG_CHECK = Transaction._tag_still_names
REPO = "reg:5000/lab/svc"
OLD_D, NEW_D = "sha256:" + "a" * 64, "sha256:" + "b" * 64
FAST = {"port": 8000, "path": "/health", "healthy_deadline": 0.3, "min_healthy_time": 0.1, "interval": 0.02}


pytestmark = pytest.mark.usefixtures("host_state")


def spec(name="svc", tag="20261126-bbbbbbb", digest=NEW_D, port=8000, env=None, **kw) -> dict:
    return {"name": name, "repo": REPO, "tag": tag, "digest": digest, "spec_hash": "h-" + tag, "ports": {"8080/tcp": port},
            "env": env or {"MACHINE": "mainpc"}, "volumes": [], "user": "10001:10001", "gpus": 0, "restart": "unless-stopped",
            "stop_timeout": 1, "health": {**FAST, "port": port}, **kw}


def running_old(d: FakeDaemon, name="svc", port=8000, env=None, rid="r-old", restart="unless-stopped") -> str:
    """An old release, started the way a transaction starts one; returns its container id."""
    s = spec(name, "20261101-aaaaaaa", OLD_D, port, env or {"MACHINE": "mainpc", "OLD_ONLY": "1"})
    s["restart"] = restart
    img = d.image(REPO, OLD_D)
    d.images.by_id[img.id] = img
    labels = container_args.labels_for(s, s["tag"], OLD_D, rid, "gpu", "op", "aaaaaaa")
    ckw, hkw = container_args.api_kwargs(container_args.from_spec(s, img.id, labels))
    cid = d.api.create_container(**ckw, host_config=d.api.create_host_config(**hkw))["Id"]
    d.containers.get(cid).start()
    return cid


def run(d: FakeDaemon, steps: list[dict], policy="revert-phase", rid="r-new", **extra) -> dict:
    return Transaction({"rollout_id": rid, "phase": "gpu", "operator": "op", "on_failure": policy, "steps": steps, **extra}, client=d).run()


def step(s: dict, action="replace") -> dict:
    return {"action": action, "spec": s, "current_tag": "20261101-aaaaaaa", "current_digest": OLD_D}


def by_service(out: dict) -> dict[str, dict]:
    return {s["service"]: s for s in out["services"]}


def only(d: FakeDaemon, name: str):
    found = [c for c in d.containers.by_id.values() if c.name == name]
    assert len(found) == 1, [c.name for c in d.containers.by_id.values()]
    return found[0]


# --- happy path -------------------------------------------------------------------------


def test_good_release_commits_removes_kept_and_pins_prev(daemon):
    old = running_old(daemon)
    daemon.image(REPO, NEW_D)
    out = run(daemon, [step(spec())])
    s = by_service(out)["svc"]
    assert out["ok"] and out["state"] == "good" and s["outcome"] == "committed"
    c = only(daemon, "svc")
    assert c.id != old and c.running and c.labels[contract.TAG] == "20261126-bbbbbbb"
    assert c.labels[contract.PREV_TAG] == "20261101-aaaaaaa-prev" and c.labels[tx_mod.CREATED_BY] == "r-new"
    assert old not in daemon.containers.by_id, "the kept container goes at commit"
    assert f"{REPO}:20261101-aaaaaaa-prev" in daemon.refs
    assert s["old_container"] == old
    # The answer carries env values only as keyed hashes; the host journal keeps the configuration itself.
    assert s["old_config"]["env"]["OLD_ONLY"].startswith("hmac:") and "1" not in s["old_config"]["env"].values()
    assert tx_mod.recorded_config("r-new", "svc")["env"]["OLD_ONLY"] == "1"


# --- every failure after the first change ends in restore -----------------------------


@pytest.mark.parametrize("fault", ["unhealthy", "probe-raises", "create-fails", "start-fails", "stop-fails", "update-fails"])
def test_any_failure_after_set_aside_restores_the_very_old_container(daemon, fault):
    # An `always` container is the one whose restart policy is switched off while it waits.
    restart = "always" if fault == "update-fails" else "unless-stopped"
    old = running_old(daemon, restart=restart)
    daemon.image(REPO, NEW_D, behaviour={"unhealthy": "bad", "probe-raises": "raise"}.get(fault, "ok"))
    if fault == "create-fails":
        daemon.fail["api.create_container"] = docker_errors.APIError("invalid mount config")
    elif fault == "start-fails":
        calls = {"n": 0}
        real_start = daemon.containers.by_id[old].__class__.start

        def start_once_fails(self):
            calls["n"] += 1
            if calls["n"] == 1:
                raise docker_errors.APIError("OCI runtime create failed")
            return real_start(self)

        daemon.containers.by_id[old].__class__.start = start_once_fails
    elif fault == "stop-fails":
        daemon.fail["container.stop"] = docker_errors.APIError("cannot stop: device busy")
    elif fault == "update-fails":
        daemon.fail["container.update"] = docker_errors.APIError("update refused")
    try:
        out = run(daemon, [step(spec(env={"MACHINE": "v2", "NEW_ONLY": "1"}, port=8000))])
    finally:
        if fault == "start-fails":
            daemon.containers.by_id[old].__class__.start = real_start
    s = by_service(out)["svc"]
    assert s["outcome"] == "reverted", s
    assert not out["ok"] and out["state"] == "good"
    c = only(daemon, "svc")
    assert c.id == old and c.running and c.restart_policy == restart
    assert "OLD_ONLY=1" in c.attrs["Config"]["Env"] and "NEW_ONLY=1" not in c.attrs["Config"]["Env"]
    assert len(daemon.containers.by_id) == 1, "the new container (if any) is gone"
    assert s["revert_gate"]["ok"] and s["after_tag"] == "20261101-aaaaaaa"


def test_restore_that_fails_is_revert_failed_and_needs_operator(daemon):
    old = running_old(daemon)
    daemon.image(REPO, NEW_D, behaviour="bad")
    # the old container's image turns bad too: its restore gate fails
    daemon.images.by_id[daemon.containers.by_id[old].create["image"]].behaviour = "bad"
    out = run(daemon, [step(spec())])
    s = by_service(out)["svc"]
    assert s["outcome"] == "revert-failed" and out["state"] == "needs-operator" and not out["ok"]
    assert "not healthy within" in s["revert_gate"]["reason"]
    assert derive_state({"mainpc": {"answered": True, "ok": False, "services": out["services"]}})[0] == "needs-operator"


def test_restore_recreates_from_recorded_config_when_the_kept_container_vanished(daemon):
    old = running_old(daemon)
    daemon.image(REPO, NEW_D, behaviour="bad")
    real_gate = Transaction._gate

    def gate_then_lose_kept(self, c, h, service, **kw):
        result = real_gate(self, c, h, service, **kw)
        daemon.containers.by_id.pop(old, None)  # someone removed the kept container by hand mid-gate
        return result

    Transaction._gate = gate_then_lose_kept
    try:
        out = run(daemon, [step(spec())])
    finally:
        Transaction._gate = real_gate
    s = by_service(out)["svc"]
    assert s["outcome"] == "reverted"
    c = only(daemon, "svc")
    assert c.id != old and "OLD_ONLY=1" in c.attrs["Config"]["Env"] and c.labels[contract.TAG] == "20261101-aaaaaaa"


def test_the_prepare_every_host_runs_first_refuses_what_the_swap_would_refuse_before_stopping_anything(daemon, monkeypatch):
    """Found by an exploratory run: a secret present on mainpc and missing on pc2 passed the fleet-wide prepare; mainpc
    swapped and committed, pc2 refused, and the phase reverted mainpc (exit 4 where 3 was due)."""
    from agent import ops

    old = running_old(daemon)
    daemon.image(REPO, NEW_D)
    monkeypatch.setattr(tx_mod, "docker_client", lambda timeout=120: daemon)
    s = spec(env={"MACHINE": "pc2", "API_TOKEN": {"secret": "api_token"}})
    out = ops.prepare({"rollout_id": "r-prep", "phase": "gpu", "steps": [step(s)]})
    assert not out["ok"], out
    [r] = out["data"]["services"]
    assert r["check"] == "container-config" and "api_token" in r["message"] and "nothing was stopped" in r["message"], r
    assert only(daemon, "svc").id == old and only(daemon, "svc").running


def test_the_prepare_check_sees_the_env_the_swap_would_give_a_report_key_included(daemon, monkeypatch, tmp_path):
    """CI: with a collector, every service's env derives a report key from FLEETROLL_HOST, _SERVICE and the image digest
    the swap sets; a prepare that checked the env without that digest refused every service of the phase."""
    from agent import ops

    monkeypatch.setenv("FLEETROLL_SECRETS_DIR", str(tmp_path))
    (tmp_path / "fleet").write_text("fleet-report-secret")
    (tmp_path / "fleet").chmod(0o600)
    running_old(daemon)
    daemon.image(REPO, NEW_D)
    monkeypatch.setattr(tx_mod, "docker_client", lambda timeout=120: daemon)
    s = spec(env={"MACHINE": "pc2", "FLEETROLL_HOST": "pc2", "FLEETROLL_SERVICE": "svc", "FLEETROLL_REPORT_KEY": {"report_key": "fleet"}})
    out = ops.prepare({"rollout_id": "r-prep2", "phase": "gpu", "steps": [step(s)]})
    assert out["ok"], out


def test_new_service_that_fails_is_removed(daemon):
    daemon.image(REPO, NEW_D, behaviour="bad")
    out = run(daemon, [step(spec(), "create")])
    assert by_service(out)["svc"]["outcome"] == "removed" and daemon.containers.by_id == {}


# --- nothing is stopped before the image is proven ------------------------------------


@pytest.mark.parametrize("case,check", [("no-digest", "digest"), ("pull-fails", "pull"), ("root-user", "image-user"),
                                        ("no-tini", "image-entrypoint"), ("tag-moved", "digest"), ("registry-down", "registry")])
def test_prepare_failures_refuse_and_touch_nothing(daemon, monkeypatch, case, check):
    old = running_old(daemon)
    daemon.calls.clear()
    s = spec()
    if case == "no-digest":
        s["digest"] = ""
    elif case == "root-user":
        daemon.image(REPO, NEW_D, user="0:0")
    elif case == "no-tini":
        daemon.image(REPO, NEW_D, entry=("/app/run",))
    else:
        if case != "pull-fails":
            daemon.image(REPO, NEW_D)
    if case in ("tag-moved", "registry-down"):
        from agent.registry import RegistryClient, RegistryError

        monkeypatch.setattr(Transaction, "_tag_still_names", REAL_TAG_CHECK)  # the real check, with a registry answer we choose

        def digest(self, ref):
            if case == "registry-down":
                raise RegistryError("unreachable", "registry reg:5000 did not answer: Connection refused")
            return "sha256:" + "c" * 64

        monkeypatch.setattr(RegistryClient, "digest", digest)
    out = run(daemon, [step(s)])
    r = by_service(out)["svc"]
    assert r["outcome"] == "refused" and r["check"] == check and "nothing was stopped" in r["message"]
    c = only(daemon, "svc")
    assert c.id == old and c.running
    assert not any(n in daemon.calls for n in ("container.stop", "container.rename", "api.create_container"))


def test_foreign_container_is_refused(daemon):
    running_old(daemon)
    c = only(daemon, "svc")
    c.create["labels"] = {}
    daemon.image(REPO, NEW_D)
    assert by_service(run(daemon, [step(spec())]))["svc"]["check"] == "foreign-container"


# --- host-wide policy -----------------------------------------------------------------


def test_revert_phase_restores_earlier_gated_services_from_their_kept_containers(daemon):
    a_old, b_old = running_old(daemon, "a", 8000), running_old(daemon, "b", 8001)
    daemon.image(REPO, NEW_D)
    bad = "sha256:" + "d" * 64
    daemon.image(REPO, bad, behaviour="bad")
    out = run(daemon, [step(spec("a", port=8000)), step(spec("b", digest=bad, port=8001))])
    res = by_service(out)
    assert res["a"]["outcome"] == "reverted" and res["a"]["check"] == "phase-revert"
    assert res["b"]["outcome"] == "reverted" and res["b"]["check"].startswith("health-")
    assert only(daemon, "a").id == a_old and only(daemon, "b").id == b_old
    recs = [r["step"] for r in journal.read("r-new")]
    assert "abort-host" in recs and "commit-host" not in recs
    # Found by an exploratory run: fab versions said 'no outcome recorded' of a, and its row read '(failed)'.
    from agent import versions
    from playbooks.render import _row_refs

    assert versions.list_versions("a")[0]["outcome"] == "passed its gate; sent back with its phase"
    assert versions.list_versions("b")[0]["outcome"].startswith("failed")
    assert "(passed its gate; sent back with its phase) ->" in _row_refs(res["a"]) and "(failed) ->" in _row_refs(res["b"])
    assert "was sent back with its phase" in versions.find_config("a", "20261126-bbbbbbb")[1]


def test_revert_service_keeps_the_good_ones(daemon):
    running_old(daemon, "a", 8000)
    b_old = running_old(daemon, "b", 8001)
    bad = "sha256:" + "d" * 64
    daemon.image(REPO, bad, behaviour="bad")
    daemon.image(REPO, NEW_D)
    out = run(daemon, [step(spec("b", digest=bad, port=8001)), step(spec("a", port=8000))], policy="revert-service")
    res = by_service(out)
    assert res["b"]["outcome"] == "reverted" and res["a"]["outcome"] == "committed"
    assert only(daemon, "b").id == b_old and len(daemon.containers.by_id) == 2


def test_stop_policy_skips_the_rest(daemon):
    running_old(daemon, "a", 8000)
    running_old(daemon, "b", 8001)
    bad = "sha256:" + "d" * 64
    daemon.image(REPO, bad, behaviour="bad")
    daemon.image(REPO, NEW_D)
    out = run(daemon, [step(spec("a", digest=bad)), step(spec("b", port=8001))], policy="stop")
    assert [s["outcome"] for s in out["services"]] == ["reverted", "skipped"]


# --- reverting a committed service ----------------------------------------------------


def _committed(daemon) -> dict:
    running_old(daemon, env={"MACHINE": "mainpc", "OLD_ONLY": "1"})
    daemon.image(REPO, NEW_D)
    out = run(daemon, [step(spec(env={"MACHINE": "v2"}))], rid="r-new")
    return by_service(out)["svc"]


def test_a_rollback_of_a_container_removed_by_hand_after_a_rollback_does_not_bring_back_the_undone_release(daemon):
    """Found by an exploratory run: rollout (r-new), rollback (back on r-old's configuration), the container removed by
    hand, then `fab rollback` again recreated r-new's configuration: the host's last commit was the rollback, and what
    it had set aside (r-new's) was taken for what ran before. It goes back from what ran: r-old's configuration, whose
    own earlier one was never recorded here, so it is refused and nothing is changed."""
    _committed(daemon)
    out = run(daemon, [{"action": "revert", "spec": spec(), "expect_rollout_id": "r-new"}], rid="r-new-revert", policy="revert-service")
    assert by_service(out)["svc"]["outcome"] == "reverted"
    from agent import versions

    assert versions.last_committed_rollout("svc") == "r-old", "the rollback's commit left r-old's configuration running"
    daemon.containers.by_id.pop(only(daemon, "svc").id)  # removed by hand
    out = run(daemon, [{"action": "revert", "spec": spec()}], rid="r-again", policy="revert-service")
    r = by_service(out)["svc"]
    assert r["outcome"] == "refused" and r["check"] == "no-recorded-config" and "r-old" in r["message"], r
    assert not daemon.containers.by_id, "nothing recreated: not the release the first rollback undid"


def test_revert_committed_recreates_the_recorded_old_configuration(daemon):
    _committed(daemon)
    rev = {"action": "revert", "spec": spec(), "expect_rollout_id": "r-new"}
    out = run(daemon, [rev], rid="r-new-revert", policy="revert-service")
    r = by_service(out)["svc"]
    assert out["ok"] and r["outcome"] == "reverted" and r["after_tag"] == "20261101-aaaaaaa"
    c = only(daemon, "svc")
    assert "OLD_ONLY=1" in c.attrs["Config"]["Env"] and "MACHINE=mainpc" in c.attrs["Config"]["Env"]
    assert c.labels[contract.ROLLOUT_ID] == "r-old", "the old container's own labels come back"
    assert len(daemon.containers.by_id) == 1


def test_revert_without_a_journalled_configuration_is_refused(daemon):
    running_old(daemon)
    rev = {"action": "revert", "spec": spec(), "expect_rollout_id": "r-old"}
    r = by_service(run(daemon, [rev], rid="r-old-revert"))["svc"]
    assert r["outcome"] == "refused" and r["check"] == "no-recorded-config" and "nothing was changed" in r["message"]


def test_revert_committed_refuses_another_rollouts_container(daemon):
    _committed(daemon)
    rev = {"action": "revert", "spec": spec(), "expect_rollout_id": "r-someone-else"}
    r = by_service(run(daemon, [rev], rid="r-x-revert"))["svc"]
    assert r["outcome"] == "refused" and r["check"] == "not-this-rollout"
    assert only(daemon, "svc").labels[contract.ROLLOUT_ID] == "r-new"


def test_revert_committed_whose_old_config_fails_brings_the_release_back(daemon):
    s = _committed(daemon)
    daemon.images.by_id[s["old_config"]["image"]].behaviour = "bad"
    rev = {"action": "revert", "spec": spec(), "expect_rollout_id": "r-new"}
    out = run(daemon, [rev], rid="r-new-revert")
    r = by_service(out)["svc"]
    assert r["outcome"] == "revert-failed" and "the release it was to replace is back and healthy" in r["message"]
    assert only(daemon, "svc").labels[contract.ROLLOUT_ID] == "r-new" and only(daemon, "svc").running


def test_reverts_of_several_services_gate_concurrently(daemon, monkeypatch):
    for i, name in enumerate(("a", "b", "c")):
        running_old(daemon, name, 8000 + i)
    daemon.image(REPO, NEW_D)
    out = run(daemon, [step(spec(n, port=8000 + i)) for i, n in enumerate(("a", "b", "c"))])
    assert all(s["outcome"] == "committed" for s in out["services"])
    active, peak = [0], [0]
    lock_ = threading.Lock()
    real_gate = Transaction._gate
    # Each gate waits for the other two to have started (a serial revert would break the barrier after 20 s): under
    # CI's load a fast gate could end before the next began, and the peak then proved nothing either way (it flaked).
    together = threading.Barrier(3, timeout=20)

    def counting_gate(self, c, h, service, **kw):
        with lock_:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            together.wait()
            return real_gate(self, c, h, service, **kw)
        finally:
            with lock_:
                active[0] -= 1

    monkeypatch.setattr(Transaction, "_gate", counting_gate)
    revs = [{"action": "revert", "spec": spec(n, port=8000 + i), "expect_rollout_id": "r-new"}
            for i, n in enumerate(("a", "b", "c"))]
    assert run(daemon, revs, rid="r-new-revert")["ok"]
    assert peak[0] == 3


# --- recovery -----------------------------------------------------------------------


def die_at(daemon, failpoint: str, args: dict) -> None:
    """Run an accepted transaction whose failpoint raises instead of sleeping: the process 'dies' right there."""

    class Died(BaseException):
        pass

    def die(self, name, service):
        if name == failpoint:
            raise Died(name)

    from agent.ops import accepted_record

    journal.mark_open(args["rollout_id"])
    journal.append(args["rollout_id"], "accepted", **accepted_record(args))
    real_hit = Transaction.hit
    Transaction.hit = die
    try:
        with pytest.raises(Died):
            Transaction(args, client=daemon).run()
    finally:
        Transaction.hit = real_hit


def _interrupted(daemon, failpoint: str, behaviour="ok") -> tuple[str, str]:
    old = running_old(daemon)
    daemon.image(REPO, NEW_D, behaviour=behaviour)
    die_at(daemon, failpoint, {"rollout_id": "r-int", "phase": "gpu", "operator": "op", "on_failure": "revert-phase",
                               "steps": [step(spec())]})
    return old, "r-int"


@pytest.mark.parametrize("boundary", ["pin-prev", "stop-old", "start-new", "gate", "reverting"])
def test_recovery_after_death_at_each_boundary_restores_the_old_container(daemon, monkeypatch, boundary):
    old, rid = _interrupted(daemon, boundary, "bad" if boundary == "reverting" else "ok")
    monkeypatch.setattr(tx_mod, "docker_client", lambda timeout=120: daemon)
    assert journal.open_ids() == [rid]
    out = recovery.recover_pending()
    assert [o["rollout_id"] for o in out] == [rid] and out[0]["state"] == "good"
    c = only(daemon, "svc")
    assert c.id == old and c.running and c.restart_policy == "unless-stopped"
    assert len(daemon.containers.by_id) == 1
    done = journal.outcome(journal.read(rid))
    assert done["recovered"] and not done["ok"]
    assert journal.open_ids() == [] and recovery.recover_pending() == []


def test_recovery_commits_a_service_that_had_passed_its_gate_when_the_host_was_committing(daemon, monkeypatch):
    old = running_old(daemon)
    daemon.image(REPO, NEW_D)
    args = {"rollout_id": "r-c", "phase": "gpu", "operator": "op", "on_failure": "revert-phase", "steps": [step(spec())]}
    from agent.ops import accepted_record

    journal.mark_open("r-c")
    journal.append("r-c", "accepted", **accepted_record(args))
    tx = Transaction(args, client=daemon)
    r = tx.swap(step(spec()))
    assert r.outcome == "gated"
    tx.j("commit-host", services=["svc"])  # ... and the process died before commit() ran
    monkeypatch.setattr(tx_mod, "docker_client", lambda timeout=120: daemon)
    out = recovery.recover_pending()
    assert out[0]["services"] == {"svc": "committed"}
    assert old not in daemon.containers.by_id and only(daemon, "svc").labels[contract.TAG] == "20261126-bbbbbbb"


def test_recovery_skips_while_a_live_transaction_holds_the_lock(daemon):
    journal.mark_open("r-live")
    journal.append("r-live", "accepted", steps=[])
    held = lock.acquire("someone", "r-live")
    try:
        assert recovery.recover_pending() == []
        assert journal.open_ids() == ["r-live"]
    finally:
        held.release()


def test_decide_is_pure_and_follows_policy():
    base = [{"step": "accepted", "policy": "revert-phase"},
            {"step": "set-aside", "service": "a", "container": "x"}, {"step": "start-new", "service": "a"}, {"step": "gated", "service": "a"},
            {"step": "set-aside", "service": "b", "container": "y"}, {"step": "start-new", "service": "b"}]
    assert recovery.decide(base) == {"a": "restore", "b": "restore"}
    rs = [{**base[0], "policy": "revert-service"}, *base[1:]]
    assert recovery.decide(rs) == {"a": "commit", "b": "restore"}
    assert recovery.decide([*base, {"step": "commit-host"}]) == {"a": "commit", "b": "restore"}
    assert recovery.decide([base[0], {"step": "pin-prev", "service": "a"}]) == {}
    assert recovery.decide([*base, {"step": "reverted", "service": "b"}]) == {"a": "restore"}


# --- the lock ------------------------------------------------------------------------


def test_lock_is_exclusive_and_frees_itself_when_the_holder_dies(tmp_path):
    import subprocess
    import sys

    held = lock.acquire("me", "r1")
    with pytest.raises(lock.Locked, match="locked by me"):
        lock.acquire("you", "r2")  # a second open file description: refused even in-process
    held.release()
    code = "import sys,time; from agent import lock; lock.acquire('child', 'r3'); print('held', flush=True); time.sleep(60)"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=str(tmp_path),
                         env={"PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parent.parent),
                              "FLEETROLL_LOCK_DIR": str(tmp_path)})
    assert p.stdout.readline().strip() == "held"
    info = lock.read()
    assert info and info["holder"] == "child" and info["pid"] == p.pid and info["alive"]
    p.kill()
    p.wait()
    assert lock.read() is None, "a dead holder is no holder"
    lock.acquire("me", "r4").release()


def test_lock_path_is_per_docker_daemon_not_per_user(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/a/../docker.sock")
    a = lock.path()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    assert lock.path() == a
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/other.sock")
    assert lock.path() != a


# --- pure pieces ----------------------------------------------------------------------


def test_create_args_round_trip_through_inspect(daemon):
    s = spec(volumes=["/srv/models:/models:ro"], gpus="all", ports={"8080/tcp": "127.0.0.1:8000"})
    img = daemon.image(REPO, NEW_D)
    daemon.images.by_id[img.id] = img
    args = container_args.from_spec(s, img.id, container_args.labels_for(s, s["tag"], NEW_D, "r", "p", "o", "g"))
    ckw, hkw = container_args.api_kwargs(args)
    assert hkw["port_bindings"] == {"8080/tcp": ("127.0.0.1", 8000)} and hkw["binds"] == {"/srv/models": {"bind": "/models", "mode": "ro"}}
    assert hkw["device_requests"] == [{"count": -1, "capabilities": [["gpu"]]}] and ckw["user"] == "10001:10001"
    cid = daemon.api.create_container(**ckw, host_config=daemon.api.create_host_config(**hkw))["Id"]
    back = container_args.from_inspect(daemon.containers.get(cid).attrs)
    assert back == args
    assert json.loads(args["labels"][contract.HEALTH])["port"] == 8000
    assert container_args.health_of(args["labels"], {"port": 1})["port"] == 8000


def test_health_probe_turns_any_exception_into_a_failed_probe():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve():
        for _ in range(1):
            conn, _ = srv.accept()
            conn.recv(1024)
            conn.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    port = srv.getsockname()[1]
    p = health.probe(f"http://127.0.0.1:{port}/health", 2)
    assert not p.ok and "not a valid HTTP answer (not an HTTP/1.x status line: b'SSH-2.0-OpenSSH_9.2p1" in p.reason, p.reason
    p = health.probe(f"http://127.0.0.1:{port}/he alth", 2)
    assert not p.ok and "refusing to send HTTP request 'GET' '/he alth'" in p.reason, p.reason  # never sent as it is
    srv.close()


def test_health_probe_reads_the_answer_and_follows_redirects_only_on_the_same_address():
    """The probe speaks agent/http1.py: status and body as the verdict needs them, an error status's body too, a
    redirect on the container's own address and port followed, one elsewhere refused with the reason."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Service(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a) -> None:
            pass

        def do_GET(self) -> None:
            here = f"http://127.0.0.1:{self.server.server_address[1]}"
            status, headers, body = {
                "/health": (200, {}, b'{"status":"ok"}'),
                "/degraded": (503, {}, b'{"status":"degraded"}'),
                "/moved": (301, {"Location": "/health"}, b""),
                "/moved-abs": (307, {"Location": f"{here}/health?x=1"}, b""),
                "/moved-space": (302, {"Location": "/he alth"}, b""),  # not valid, but urllib sent it %-encoded
                "/he%20alth": (200, {}, b'{"status":"ok"}'),
                "/away": (302, {"Location": "http://127.0.0.2:9/health"}, b""),
                "/loop": (302, {"Location": "/loop"}, b""),
            }.get(self.path.split("?")[0], (404, {}, b"no"))
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Service)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        assert health.probe(f"{base}/health", 2).ok
        p = health.probe(f"{base}/degraded", 2)
        assert (p.ok, p.status, p.reason, p.body) == (False, 503, "HTTP 503", '{"status":"degraded"}')
        assert health.probe(f"{base}/moved", 2).ok and health.probe(f"{base}/moved-abs", 2).ok
        assert health.probe(f"{base}/moved-space", 2).ok
        p = health.probe(f"{base}/away", 2)
        assert not p.ok and p.reason.startswith("HTTP 302 to http://127.0.0.2:9/health: not followed"), p.reason
        p = health.probe(f"{base}/loop", 2)
        assert (p.ok, p.reason) == (False, "HTTP 302")  # four hops, then the redirect itself is the answer
        p = health.probe("https://127.0.0.1:1/health", 2)
        assert not p.ok and "not an http:// URL" in p.reason
    finally:
        srv.shutdown()
        srv.server_close()


def test_derive_state_only_trusts_observed_outcomes():
    ok = {"answered": True, "ok": True, "services": [{"service": "a", "outcome": "committed"}]}
    assert derive_state({"h1": ok}) == ("committed", [])
    lost = {"answered": False, "ok": False, "error": "link lost", "services": []}
    assert derive_state({"h1": ok, "h2": lost})[0] == "needs-operator"
    empty = {"answered": True, "ok": False, "error": "transaction crashed", "services": []}
    assert derive_state({"h1": empty})[0] == "needs-operator"
    reverted = {"answered": True, "ok": False, "services": [{"service": "a", "outcome": "reverted"}]}
    assert derive_state({"h1": reverted}) == ("reverted", [])
    refused = {"answered": True, "ok": False, "services": [{"service": "a", "outcome": "refused"}]}
    assert derive_state({"h1": refused}) == ("refused", [])
    pending = {"answered": True, "ok": False, "services": [{"service": "a", "outcome": "gated"}]}
    assert derive_state({"h1": pending})[0] == "needs-operator"
    # a rollout that reverted one host and was refused on another ended in rollback (4); a rollback for which
    # reverted is success must not hide a service it refused (found on the lab: REVERTED, exit 0, "FAILED pc2 embed")
    assert derive_state({"h1": reverted, "h2": refused})[0] == "reverted"
    assert derive_state({"h1": reverted, "h2": refused}, "rollback")[0] == "refused"
    locked = {"answered": True, "ok": False, "locked": True, "services": []}
    assert derive_state({"h1": reverted, "h2": locked}, "rollback")[0] == "refused"
    assert derive_state({"h1": reverted}, "rollback")[0] == "reverted"
    codes = [exit_code(s) for s in (["committed"], ["noop"], ["changes-planned"], ["refused"], ["noop", "reverted"],
                                     ["reverted", "needs-operator"], ["refused", "changes-planned"])]
    assert codes == [0, 0, 2, 3, 4, 5, 3]


def test_image_present_by_digest_is_not_pulled_and_a_prepared_swap_asks_no_registry(daemon, monkeypatch):
    running_old(daemon)
    img = daemon.image(REPO, NEW_D)
    daemon.refs[f"{REPO}@{NEW_D}"] = daemon.images.by_id[img.id] = img  # already on the host
    asked = []
    monkeypatch.setattr(Transaction, "_tag_still_names", lambda self, ref, digest: asked.append(ref))
    out = run(daemon, [step(spec())], prepared=True)
    assert by_service(out)["svc"]["outcome"] == "committed"
    assert "images.pull" not in daemon.calls and asked == []
    run(daemon, [step(spec(tag="20261126-ccccccc"))], rid="r-again")
    assert asked == [f"{REPO}:20261126-ccccccc"], "an unprepared swap confirms the tag itself"


@pytest.mark.parametrize("change,why", [({"user": "0:0"}, "numeric non-root"), ({"volumes": ["/etc:/hostetc"]}, "/etc"),
                                        ({"volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}, "docker.sock"),
                                        ({"volumes": ["/var/../:/h"]}, "not normalized")])
def test_host_refuses_a_container_config_that_breaks_the_hard_rules_before_stopping_anything(daemon, change, why):
    """A plan that skipped the inventory's checks (or a forged request) still cannot run root or mount the host."""
    old = running_old(daemon)
    daemon.image(REPO, NEW_D)
    daemon.calls.clear()
    r = by_service(run(daemon, [step(spec(**change))]))["svc"]
    assert r["outcome"] == "refused" and r["check"] == "container-config" and why in r["message"] and "nothing was stopped" in r["message"]
    assert only(daemon, "svc").id == old and only(daemon, "svc").running
    assert not any(n in daemon.calls for n in ("container.stop", "container.rename", "api.create_container"))


def test_kept_always_container_cannot_come_back_by_itself_and_gets_its_policy_back(daemon):
    old = running_old(daemon, restart="always")
    daemon.image(REPO, NEW_D, behaviour="bad")
    seen = {}
    real_gate = Transaction._gate

    def look_during_gate(self, c, h, service, **kw):
        seen.setdefault("policy", daemon.containers.by_id[old].restart_policy)  # the new release's gate, not the restore's
        return real_gate(self, c, h, service, **kw)

    Transaction._gate = look_during_gate
    try:
        out = run(daemon, [step(spec())])
    finally:
        Transaction._gate = real_gate
    assert seen["policy"] == "no" and by_service(out)["svc"]["outcome"] == "reverted"
    assert only(daemon, "svc").restart_policy == "always"


# --- versions and rollback --to ------------------------------------------------------------


def test_versions_list_every_start_and_rollback_to_goes_only_to_a_version_that_passed_its_gate(daemon):
    from agent import versions

    running_old(daemon)
    c_d, d_d = "sha256:" + "c" * 64, "sha256:" + "d" * 64
    daemon.image(REPO, NEW_D)
    assert run(daemon, [step(spec(env={"MACHINE": "v-b"}))], rid="r-2")["ok"]
    daemon.image(REPO, c_d)
    assert run(daemon, [step(spec(tag="20261127-ccccccc", digest=c_d, env={"MACHINE": "v-c"}))], rid="r-3")["ok"]
    daemon.image(REPO, d_d, behaviour="bad")
    assert by_service(run(daemon, [step(spec(tag="20261128-ddddddd", digest=d_d))], rid="r-4"))["svc"]["outcome"] == "reverted"
    rows = versions.list_versions("svc")
    assert [(v["tag"], v["rollout_id"], v["outcome"]) for v in rows] == [
        ("20261126-bbbbbbb", "r-2", "committed"), ("20261127-ccccccc", "r-3", "committed"),
        ("20261128-ddddddd", "r-4", "failed health-deadline")]
    assert rows[0]["operator"] == "op" and rows[0]["digest"] == NEW_D
    # the failed one is never a target, whatever is asked
    cfg, why = versions.find_config("svc", "20261128-ddddddd")
    assert cfg == {} and "never passed its health gate" in why
    assert "never ran" in versions.find_config("svc", "20261001-zzzzzzz")[1]
    # back two versions: b's own configuration (env included), not today's inventory
    rev = {"action": "revert", "spec": spec(), "expect_rollout_id": "r-3", "to_tag": "20261126-bbbbbbb"}
    r = by_service(run(daemon, [rev], rid="r-5", policy="revert-service"))["svc"]
    assert r["outcome"] == "reverted" and r["after_tag"] == "20261126-bbbbbbb", r
    c = only(daemon, "svc")
    assert c.labels[contract.TAG] == "20261126-bbbbbbb" and "MACHINE=v-b" in c.attrs["Config"]["Env"]
    # asking for a failed version refuses and changes nothing
    rev = {"action": "revert", "spec": spec(), "expect_rollout_id": "r-2", "to_tag": "20261128-ddddddd"}
    r = by_service(run(daemon, [rev], rid="r-6", policy="revert-service"))["svc"]
    assert r["outcome"] == "refused" and r["check"] == "no-such-version" and only(daemon, "svc").id == c.id
    rev = {"action": "revert", "spec": spec(), "expect_rollout_id": "r-2", "to_tag": "20261126-bbbbbbb"}
    assert by_service(run(daemon, [rev], rid="r-7", policy="revert-service"))["svc"]["outcome"] == "skipped"


def test_a_running_version_that_failed_its_gate_is_never_pinned_as_prev(daemon):
    # Left running by an older fleetroll (or by hand) although its rollout recorded it failing its gate.
    s = spec("svc", "20261120-fffffff", "sha256:" + "f" * 64)
    img = daemon.image(REPO, "sha256:" + "f" * 64)
    daemon.images.by_id[img.id] = img
    labels = container_args.labels_for(s, s["tag"], s["digest"], "r-bad", "gpu", "op", "fffffff",
                                       prev_tag="20261101-aaaaaaa-prev", prev_digest=OLD_D)
    ckw, hkw = container_args.api_kwargs(container_args.from_spec(s, img.id, labels))
    cid = daemon.api.create_container(**ckw, host_config=daemon.api.create_host_config(**hkw))["Id"]
    daemon.containers.get(cid).start()
    journal.append("r-bad", "start-new", service="svc", tag=s["tag"], digest=s["digest"], image=img.id)
    journal.append("r-bad", "swap-failed", service="svc", check="health-deadline")
    daemon.image(REPO, NEW_D)
    out = by_service(run(daemon, [step(spec())], rid="r-next"))["svc"]
    assert out["outcome"] == "committed", out["message"]
    c = only(daemon, "svc")
    # the new container's last-known-good is the failed one's own -prev, not the failed one
    assert c.labels[contract.PREV_TAG] == "20261101-aaaaaaa-prev" and c.labels[contract.PREV_DIGEST] == OLD_D
    assert f"{REPO}:20261120-fffffff-prev" not in daemon.refs
    assert any(r["step"] == "pin-skipped" for r in journal.read("r-next"))


# --- GPU services: on a GPU, within their declared memory --------------------------------


@pytest.mark.parametrize("procs,outcome,says", [
    ("mine-4gb", "committed", ""),
    ("none", "reverted", "fallen back to CPU"),
    ("mine-9gb", "reverted", "uses 9.0 GB on GPU 0, more than its declared 6.0 GB"),
    ("someone-else", "reverted", "fallen back to CPU"),
    ("mine-on-gpu1", "reverted", "runs on GPU 1, not on the GPU(s) it was given (0)"),
])
def test_a_gpu_service_must_be_on_a_gpu_within_its_budget_after_it_turns_healthy(daemon, monkeypatch, procs, outcome, says):
    from agent import gpuproc

    old = running_old(daemon)
    daemon.image(REPO, NEW_D)

    def fake_processes():
        new = next(c for c in daemon.containers.by_id.values() if c.id != old)
        return {"mine-4gb": [{"gpu": 0, "pid": 1, "used_mib": 4096, "container": new.id}],
                "mine-9gb": [{"gpu": 0, "pid": 1, "used_mib": 9216, "container": new.id}],
                "someone-else": [{"gpu": 0, "pid": 2, "used_mib": 4096, "container": "f" * 64}],
                "mine-on-gpu1": [{"gpu": 1, "pid": 1, "used_mib": 4096, "container": new.id}],
                "none": []}[procs]

    monkeypatch.setattr(gpuproc, "processes", fake_processes)
    s = by_service(run(daemon, [step(spec(gpu_memory_gb=6.0, gpus=1))]))["svc"]
    assert s["outcome"] == outcome, s
    if says:
        assert s["check"] == "health-gpu" and says in s["message"]
        assert only(daemon, "svc").id == old  # the old container serves again


def test_a_restart_of_a_gpu_service_is_gated_on_its_gpu_budget_too(daemon, monkeypatch):
    """Found by an exploratory run: fab restart (and a rollback) of a GPU service with gpu_memory_gb said 'proven
    healthy' while NVML showed it off the GPU (CPU fallback) or over its budget; only a release's swap checked."""
    from agent import gpuproc

    s_old = spec(tag="20261101-aaaaaaa", digest=OLD_D, gpus=1, gpu_memory_gb=6.0)
    img = daemon.image(REPO, OLD_D)
    daemon.images.by_id[img.id] = img
    labels = container_args.labels_for(s_old, s_old["tag"], OLD_D, "r-old", "gpu", "op", "aaaaaaa")
    ckw, hkw = container_args.api_kwargs(container_args.from_spec(s_old, img.id, labels))
    old = daemon.api.create_container(**ckw, host_config=daemon.api.create_host_config(**hkw))["Id"]
    daemon.containers.get(old).start()
    monkeypatch.setattr(gpuproc, "processes", lambda: [])  # nothing on the GPU: fallen back to CPU
    r = by_service(run(daemon, [{"action": "restart", "spec": s_old}], policy="revert-service"))["svc"]
    assert r["outcome"] == "reverted" and r["check"] == "health-gpu" and "fallen back to CPU" in r["message"], (r["message"], r.get("revert_gate"))
    assert only(daemon, "svc").id == old


def test_a_recovered_service_says_what_was_tried_and_its_next_step_does_not_blame_the_release(daemon, monkeypatch):
    """Found on the lab after fab unlock --force mid-gate: the row read 'reverted (none) -> T1' and the next step said
    'fix the image (a new tag)' though nothing had judged the release: its transaction was cut short."""
    from playbooks.ending import next_step

    old, rid = _interrupted(daemon, "gate")
    monkeypatch.setattr(tx_mod, "docker_client", lambda timeout=120: daemon)
    recovery.recover_pending()
    (s,) = journal.outcome(journal.read(rid))["services"]
    assert s["outcome"] == "reverted" and s["check"] == "recovered", s
    assert (s["tried_tag"], s["tried_digest"]) == ("20261126-bbbbbbb", NEW_D) and s["before_tag"] == "20261101-aaaaaaa", s
    line = next_step("rollout", "mainpc", s, "gpu", "inv.yml")
    assert "fix the image" not in line and line.startswith("nothing judged the release") and "fab rollout --phase gpu" in line
    # a restart (or rollback) cut short points at the command the operator ran, not at a rollout of the phase
    again = next_step("restart", "mainpc", s, "gpu", "inv.yml")
    assert again.startswith("nothing judged the restart") and "fab restart -s svc -H mainpc" in again and "rollout" not in again
    assert f"fab rollback -p gpu -s svc -H mainpc --to {s['tried_tag']}" in next_step("rollback", "mainpc", s, "gpu", "inv.yml")
    from agent import freeze

    assert not s.get("frozen") and freeze.read("gpu") is None, "an interrupted release is not condemned"


def test_a_release_that_failed_its_gate_before_the_revert_was_cut_short_is_reported_as_failed_not_unjudged(daemon, monkeypatch):
    """From an independent read: cut short while reverting a release whose gate had failed, recovery called it 'recovered'
    and the next step said 'nothing judged the release ... roll it out again'."""
    from playbooks.ending import next_step

    old, rid = _interrupted(daemon, "reverting", "bad")
    monkeypatch.setattr(tx_mod, "docker_client", lambda timeout=120: daemon)
    recovery.recover_pending()
    (s,) = journal.outcome(journal.read(rid))["services"]
    assert s["outcome"] == "reverted" and s["check"] != "recovered" and "its revert was cut short" in s["message"], s
    assert s["tried_tag"] == "20261126-bbbbbbb"
    line = next_step("rollout", "mainpc", s, "gpu", "inv.yml")
    assert "nothing judged" not in line and "fix the image" in line, line
    assert only(daemon, "svc").id == old
    # and it is frozen against, as the uninterrupted revert would have done (the fingerprint start-new journalled)
    from agent import freeze

    f = freeze.read("gpu")
    assert s["frozen"] and f["auto"] and f["failed"]["svc"] == {"tag": "20261126-bbbbbbb", "digest": NEW_D,
                                                                 "config": freeze.config_fingerprint(spec())}, f
    assert f["reason"].endswith("(its revert was finished by recovery)")


def test_a_rollback_of_a_services_first_container_leaves_it_as_it_is_not_refused(daemon):
    """Found by an exploratory run: `fab rollback -p P` of a phase where one service had a new release and another had
    only its first rollout said REFUSED ('no-recorded-config') and sent the operator to `fab rollout -p P`, which would
    have undone the rollback. The first container has no earlier version: the service is skipped, said so."""
    daemon.image(REPO, NEW_D)
    out = run(daemon, [{"action": "create", "spec": spec()}], rid="r-first")
    assert by_service(out)["svc"]["outcome"] == "committed", out
    first = only(daemon, "svc").id
    out = run(daemon, [{"action": "revert", "spec": spec(), "expect_rollout_id": "r-first"}], rid="r-first-revert",
              policy="revert-service")
    r = by_service(out)["svc"]
    assert r["outcome"] == "skipped" and "no earlier version on this host (rollout r-first started its first" in r["message"], r
    assert out["ok"] and only(daemon, "svc").id == first, "left as it is"


def test_a_refused_rollback_row_says_the_service_still_runs_what_it_ran(daemon):
    """Found by an exploratory run: `rollback --to nonsense` read 'refused T -> (none)', as if the container were gone."""
    _committed(daemon)
    out = run(daemon, [{"action": "revert", "spec": spec(), "expect_rollout_id": "r-new", "to_tag": "20260101-0000000"}],
              rid="r-to", policy="revert-service")
    r = by_service(out)["svc"]
    assert r["outcome"] == "refused" and r["after_tag"] == r["before_tag"] == "20261126-bbbbbbb", r


def test_a_container_recreated_after_a_hand_removal_is_not_taken_for_the_first(daemon):
    """Found by a review: v1 committed, its container removed by hand, r-2 created v2 with nothing to set aside; the
    rollback said 'no earlier version' (exit 0) though v1 had run here. It is refused, as before (nothing recorded)."""
    daemon.image(REPO, NEW_D)
    assert by_service(run(daemon, [{"action": "create", "spec": spec()}], rid="r-1"))["svc"]["outcome"] == "committed"
    daemon.containers.by_id.pop(only(daemon, "svc").id)  # removed by hand
    v2 = "sha256:" + "e" * 64
    daemon.image(REPO, v2)
    out = run(daemon, [{"action": "create", "spec": spec(tag="20261127-eeeeeee", digest=v2)}], rid="r-2")
    assert by_service(out)["svc"]["outcome"] == "committed", out
    back = run(daemon, [{"action": "revert", "spec": spec(), "expect_rollout_id": "r-2"}], rid="r-2-revert", policy="revert-service")
    r = by_service(back)["svc"]
    assert r["outcome"] == "refused" and r["check"] == "no-recorded-config", r


def test_a_transaction_recovered_after_its_gate_is_not_called_sent_back_with_its_phase(daemon, monkeypatch):
    """Found by a review: recovery of a transaction killed after its gate journals gated + reverted, which fab versions
    took for a phase revert ('passed its gate; sent back with its phase') though no other service failed."""
    from agent import versions

    _interrupted(daemon, "gate")
    monkeypatch.setattr(tx_mod, "docker_client", lambda timeout=120: daemon)
    recovery.recover_pending()
    outcome = versions.list_versions("svc")[0]["outcome"]
    assert "sent back with its phase" not in outcome and outcome.startswith(("interrupted", "committed")), outcome
