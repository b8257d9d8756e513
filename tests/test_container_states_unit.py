"""Rollback, restore, restart and a forward swap, whatever state the current container is in.

The fake daemon behaves as Docker does with a crash-looping container: while Docker restarts
it, `rename` answers `sandbox … not found` and `remove` answers `is restarting`; a paused one
cannot be stopped before it is unpaused. The same cases run on a real dockerd in
tests/test_lab_container_states.py.
"""

from __future__ import annotations

import pytest

from agent import contract
from agent.transaction import Transaction, container_state, settled_retry, transient

from .test_transaction_unit import NEW_D, REPO, _committed, by_service, only, run, running_old, spec, step

pytestmark = pytest.mark.usefixtures("host_state")

STATES = ("restarting", "paused", "exited", "created", "running")


def put_in(c, state: str) -> None:
    if state == "restarting":
        c.crash_loop()
    elif state == "paused":
        c.pause()
    elif state == "exited":
        c.running, c.exit_code = False, 3
    elif state == "created":
        c.running = False


@pytest.mark.parametrize("state", STATES)
def test_rollback_of_the_running_release_works_in_every_state(daemon, state):
    _committed(daemon)
    put_in(only(daemon, "svc"), state)
    out = run(daemon, [{"action": "revert", "spec": spec(), "expect_rollout_id": "r-new"}], rid="r-new-revert", policy="revert-service")
    r = by_service(out)["svc"]
    assert r["outcome"] == "reverted", r
    c = only(daemon, "svc")
    assert c.running and not c.restarting and not c.paused
    assert c.labels[contract.ROLLOUT_ID] == "r-old" and c.restart_policy == "unless-stopped", "its own restart policy is back"
    assert len(daemon.containers.by_id) == 1, "the crash-looping release is gone"


@pytest.mark.parametrize("state", STATES)
def test_forward_swap_replaces_a_container_in_every_state(daemon, state):
    cid = running_old(daemon)
    put_in(daemon.containers.by_id[cid], state)
    daemon.image(REPO, NEW_D)
    r = by_service(run(daemon, [step(spec())]))["svc"]
    assert r["outcome"] == "committed", r
    assert only(daemon, "svc").running and len(daemon.containers.by_id) == 1


def test_a_restart_gates_for_as_long_as_the_inventory_now_says(daemon, monkeypatch):
    """A changed healthy_deadline replaces no container (plan.gate_only_change); the next swap, a restart included,
    waits as the inventory now says, at the address and path the container was started with."""
    running_old(daemon)
    seen = []
    real_gate = Transaction._gate

    def gate(self, c, h, service, **kw):
        seen.append(h)
        return real_gate(self, c, h, service, **kw)

    monkeypatch.setattr(Transaction, "_gate", gate)
    s = spec(tag="20261101-aaaaaaa")
    s["health"] = {**s["health"], "healthy_deadline": 0.7, "min_healthy_time": 0.05}
    r = by_service(run(daemon, [{"action": "restart", "spec": s}], policy="revert-service"))["svc"]
    assert r["outcome"] == "committed", r
    assert (seen[0]["healthy_deadline"], seen[0]["min_healthy_time"], seen[0]["port"]) == (0.7, 0.05, 8000), seen


def test_a_restart_with_new_gate_timings_records_them_so_the_next_plan_sees_the_inventory_s_configuration(daemon):
    """Found by an exploratory run: after the restart gated with the new healthy_deadline, the fresh container kept the
    old health label (details, explain and the dry run kept saying 'from the next swap'). It is relabelled, with the
    configuration hash the planner gives the inventory's spec, only when the timings were all that differed."""
    import json

    from agent import container_args
    from agent.contract import HEALTH, SPEC_HASH

    from .test_transaction_unit import OLD_D

    def started(s):
        img = daemon.image(REPO, OLD_D)
        daemon.images.by_id[img.id] = img
        base = {k: v for k, v in s.items() if k not in ("digest", "spec_hash")}
        labels = container_args.labels_for({**s, "spec_hash": container_args.config_hash(base, OLD_D)}, s["tag"], OLD_D,
                                           "r-old", "gpu", "op", "aaaaaaa")
        ckw, hkw = container_args.api_kwargs(container_args.from_spec(s, img.id, labels))
        daemon.containers.get(daemon.api.create_container(**ckw, host_config=daemon.api.create_host_config(**hkw))["Id"]).start()

    s_old = spec(tag="20261101-aaaaaaa", digest=OLD_D)
    started(s_old)
    s_new = {**s_old, "health": {**s_old["health"], "healthy_deadline": 0.7}}
    r = by_service(run(daemon, [{"action": "restart", "spec": s_new}], policy="revert-service"))["svc"]
    assert r["outcome"] == "committed", r
    labels = only(daemon, "svc").labels
    assert json.loads(labels[HEALTH])["healthy_deadline"] == 0.7
    base = {k: v for k, v in s_new.items() if k not in ("digest", "spec_hash")}
    assert labels[SPEC_HASH] == container_args.config_hash(base, OLD_D)
    # a container that differs in more than the timings keeps its labels (the restart is of what runs)
    other = {**s_new, "env": {"MACHINE": "elsewhere"}, "health": {**s_new["health"], "healthy_deadline": 0.9}}
    before = dict(only(daemon, "svc").labels)
    assert by_service(run(daemon, [{"action": "restart", "spec": other}], rid="r-2", policy="revert-service"))["svc"]["outcome"] == "committed"
    assert {k: only(daemon, "svc").labels[k] for k in (HEALTH, SPEC_HASH)} == {k: before[k] for k in (HEALTH, SPEC_HASH)}


@pytest.mark.parametrize("state", ("restarting", "paused"))
def test_restart_of_a_container_in_motion(daemon, state):
    cid = running_old(daemon)
    put_in(daemon.containers.by_id[cid], state)
    s = spec(tag="20261101-aaaaaaa")
    r = by_service(run(daemon, [{"action": "restart", "spec": s}], policy="revert-service"))["svc"]
    assert r["outcome"] == "committed", r
    c = only(daemon, "svc")
    assert c.running and not c.restarting and c.id != cid


def test_a_failed_swap_whose_new_container_crash_loops_restores_the_old_one(daemon, monkeypatch):
    """The new release crash-loops under its restart policy: removing it races with Docker unless it is stilled."""
    old = running_old(daemon)
    daemon.image(REPO, NEW_D, behaviour="bad")
    real_gate = Transaction._gate

    def crash_then_gate(self, c, h, service, **kw):
        if c.id != old:
            daemon.containers.by_id[c.id].crash_loop()
        return real_gate(self, c, h, service, **kw)

    monkeypatch.setattr(Transaction, "_gate", crash_then_gate)
    r = by_service(run(daemon, [step(spec())]))["svc"]
    assert r["outcome"] == "reverted", r
    assert only(daemon, "svc").id == old and daemon.containers.by_id[old].running
    assert len(daemon.containers.by_id) == 1


def test_a_container_that_never_holds_still_is_revert_failed_with_the_reason_not_reverted(daemon, monkeypatch):
    """Docker keeps answering `is restarting`: the bound runs out and the service needs an operator, saying why."""
    from agent import motion

    monkeypatch.setattr(motion, "SETTLE_S", 0.3)
    _committed(daemon)
    c = only(daemon, "svc")
    c.crash_loop()
    monkeypatch.setattr(type(c), "stop", lambda self, timeout=10: None)  # a stop that never takes
    out = run(daemon, [{"action": "revert", "spec": spec(), "expect_rollout_id": "r-new"}], rid="r-new-revert", policy="revert-service")
    r = by_service(out)["svc"]
    assert r["outcome"] == "revert-failed" and "restarting" in r["message"]
    assert out["state"] == "needs-operator" and not out["ok"]


def test_transient_docker_answers_are_told_apart_from_real_ones():
    from agent import docker_errors

    assert transient(docker_errors.NotFound("sandbox 1c25c7 not found"))
    assert transient(docker_errors.APIError("Cannot kill container abc: container is restarting"))
    assert not transient(docker_errors.NotFound("No such container: abc"))
    # an update just after the process died, before Docker noticed (seen under load in a crash loop)
    assert transient(docker_errors.APIError("Cannot update container 04c8f553: cannot update a stopped container: unknown"))
    # the same race one step earlier: dockerd still thought it ran and asked runc, whose process had exited (seen in CI)
    assert transient(docker_errors.APIError("Cannot update container 69fc33c7e: failed to update resources: runc did not"
                                            " terminate successfully: exit status 1: container not running\n: unknown"))
    assert not transient(docker_errors.APIError("port is already allocated"))
    # a name another container holds stays held: failed at once, not after SETTLE_S of retries (it said "Conflict.")
    held = docker_errors.APIError('Conflict. The container name "/svc" is already in use by container "c1". You have to'
                                  ' remove (or rename) that container to be able to reuse that name.')
    assert not transient(held)
    calls = []
    with pytest.raises(docker_errors.APIError):
        settled_retry(lambda: calls.append(1) or (_ for _ in ()).throw(held))
    assert calls == [1]
    assert transient(docker_errors.APIError("Conflict: removal of container abc is already in progress"))
    assert not transient(RuntimeError("sandbox"))
    assert container_state({"State": {"Running": True, "Restarting": True, "Status": "restarting"}}) == "restarting"
    assert container_state({"State": {"Running": True, "Paused": True, "Status": "paused"}}) == "paused"


def test_rollback_and_restart_recreations_meet_the_hard_rules_before_anything_stops(daemon):
    """A recorded configuration is checked like a new one: a rollback to a root container is refused, nothing changed."""
    from agent import journal

    _committed(daemon)
    recs = journal.read("r-new")
    for rec in recs:
        if rec.get("step") == "set-aside":
            rec["old_config"]["user"] = "0:0"  # as if the journal had been tampered with
    journal.path_for("r-new").write_text("".join(__import__("json").dumps(r) + "\n" for r in recs))
    running_before = only(daemon, "svc").id
    r = by_service(run(daemon, [{"action": "revert", "spec": spec(), "expect_rollout_id": "r-new"}], rid="r-new-revert",
                       policy="revert-service"))["svc"]
    assert r["outcome"] == "refused" and r["check"] == "container-config" and "nothing was stopped" in r["message"]
    assert only(daemon, "svc").id == running_before and only(daemon, "svc").running


def test_a_kept_container_removed_mid_gate_is_recreated_and_the_report_says_so_not_the_old_container_itself(daemon, monkeypatch):
    """Found on the lab (before fab remove took the host lock): the container set aside was removed during the gate;
    the revert made a new one from its recorded configuration, and the report called it 'the old container itself'."""
    from playbooks.ending import _now_line

    old = running_old(daemon)
    daemon.image(REPO, NEW_D, behaviour="bad")
    real_gate = Transaction._gate

    counted_from = []

    def remove_the_kept_one_then_gate(self, c, h, service, **kw):
        counted_from.append(kw.get("restarts0"))
        if c.id != old and old in daemon.containers.by_id:
            daemon.containers.by_id[old].remove(force=True)  # someone's `docker rm -f` on the kept container
        return real_gate(self, c, h, service, **kw)

    monkeypatch.setattr(Transaction, "_gate", remove_the_kept_one_then_gate)
    r = by_service(run(daemon, [step(spec())]))["svc"]
    assert r["outcome"] == "reverted" and r["recreated"], r
    assert counted_from == [0, 0], counted_from  # the new release and the recreated one: both just made, restarts from 0
    back = only(daemon, "svc")
    assert back.id != old and back.running
    line = _now_line(r)
    assert "a new container" in line and "recorded configuration (the container set aside was gone)" in line, line
    assert "the old container itself" not in line


def test_a_port_docker_could_not_bind_points_away_from_the_release():
    """Found by an exploratory run: 'bind: address already in use' froze the proxy's phase as if the release had failed."""
    from agent import docker_errors
    from agent.motion import points_away

    for said in ("driver failed programming external connectivity: listen tcp4 0.0.0.0:18400: bind: address already in use",
                 "Bind for 0.0.0.0:8080 failed: port is already allocated",
                 "listen tcp4 10.213.6.99:18080: bind: cannot assign requested address"):
        assert points_away(docker_errors.APIError(said), f"APIError: {said} (while replacing edge)", {}), said
    assert not points_away(RuntimeError("gate"), "health-deadline: HTTP 500", {"status": "running"})
