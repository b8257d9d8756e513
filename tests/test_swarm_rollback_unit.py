"""`fab rollback` on a swarm phase, the pure parts: when Swarm's previous spec is a place to go back to, judging what
Swarm did after `docker service rollback`, and `--to TAG` changing one service only (no host, no swarm)."""

from __future__ import annotations

import pytest

from playbooks import rollback as ssh_rollback
from playbooks.errors import RolloutError
from playbooks.inventory import load
from playbooks.plan import BLOCKED, NOOP, REPLACE, Plan, Step
from playbooks.swarm import deploy, observe, rollback

from .test_swarm_render_unit import FLEET, PHASES

NEW, OLD = "sha256:" + "1" * 64, "sha256:" + "0" * 64
REPO = "reg:5000/lab/core"


def labels(tag: str, digest: str, shash: str) -> dict:
    return {"io.fleetroll.tag": tag, "io.fleetroll.digest": digest, "io.fleetroll.spec-hash": shash}


def service(update: dict | None, previous: bool = True) -> dict:
    """A service running t-bad now, whose previous spec was t-good."""
    svc = {"ID": "s1", "Spec": {"Name": "fr-one_api", "Labels": labels("t-bad", NEW, "h-bad")}, "UpdateStatus": update}
    if previous:
        svc["PreviousSpec"] = {"Name": "fr-one_api", "Labels": labels("t-good", OLD, "h-good")}
    return svc


def task(tid: str, node: str, digest: str, state: str = "running") -> dict:
    return {"ID": tid, "NodeID": node, "DesiredState": "running", "Spec": {"ContainerSpec": {"Image": f"{REPO}:t@{digest}"}},
            "Status": {"State": state}}


@pytest.fixture
def inv(tmp_path):
    (tmp_path / "fleet.yml").write_text(FLEET)
    (tmp_path / "phases.yml").write_text(PHASES)
    return load(tmp_path / "fleet.yml")


def test_a_service_with_a_previous_spec_can_go_back_and_the_others_say_why_not():
    assert rollback.refusal("api", service({"State": "completed", "StartedAt": "a"})) == ""
    assert rollback.refusal("api", service({"State": "paused", "StartedAt": "a"})) == ""  # a paused update: exactly the case
    assert "not in the swarm" in rollback.refusal("api", None)
    assert "no previous spec" in rollback.refusal("api", service(None, previous=False))
    # after Swarm's own rollback the previous spec is the release that failed: going back would go forward again
    why = rollback.refusal("api", service({"State": "rollback_completed", "StartedAt": "a"}))
    assert "already rolled api back" in why and "(t-good)" in why and "--to TAG" in why


def test_the_previous_spec_is_the_target_and_the_wait_follows_the_rollback_config(inv):
    svc = service({"State": "completed", "StartedAt": "s0"})
    svc["Spec"]["RollbackConfig"] = {"Parallelism": 1}
    f = rollback.follow_of(inv, "api", svc, now=1000.0)
    assert (f.new_tag, f.new_digest, f.old_tag, f.old_digest, f.want_hash) == ("t-good", OLD, "t-bad", NEW, "h-good")
    assert f.hosts == ["pc2", "node03"] and f.started_before == "s0"
    h = inv.fleet.services["api"].health
    assert f.deadline == 1000.0 + (h.healthy_deadline + h.min_healthy_time + 15) * 2 + 20  # two nodes, one at a time


def follow(inv) -> rollback.Follow:
    f = rollback.follow_of(inv, "api", service({"State": "completed", "StartedAt": "s0"}), now=0.0)
    f.deadline = 100.0
    return f


def view(update: dict, tasks: list[dict]) -> observe.View:
    return observe.View(nodes={"n1": "pc2", "n2": "node03"}, services={"api": service(update)}, tasks={"api": tasks})


def test_a_completed_rollback_is_reverted_where_the_previous_digest_is_seen_running(inv):
    f = follow(inv)
    done = {"State": "rollback_completed", "StartedAt": "s1", "Message": "rollback completed"}
    assert rollback.judge_rollback(f, view(done, [task("t1", "n1", OLD), task("t2", "n2", OLD)]), now=5.0, min_healthy_time=2)
    for h in ("pc2", "node03"):
        d = f.done[h]
        assert d["outcome"] == "reverted" and d["action"] == "revert" and d["engine"] == "swarm"
        assert (d["after_tag"], d["after_digest"], d["before_tag"]) == ("t-good", OLD, "t-bad")
        assert d["revert_gate"]["ok"] and "after Swarm's rollback" in d["revert_gate"]["last"]["reason"]


def test_nothing_is_claimed_before_swarm_is_seen_to_do_it(inv):
    f = follow(inv)
    # the same update as before the request (StartedAt unchanged): Swarm has not started the rollback yet
    assert not rollback.judge_rollback(f, view({"State": "completed", "StartedAt": "s0"}, [task("t1", "n1", NEW)]), now=5.0, min_healthy_time=2)
    started = {"State": "rollback_completed", "StartedAt": "s1"}
    # completed, but the previous digest runs on one host only: wait, then needs-operator for the other, never reverted
    assert not rollback.judge_rollback(f, view(started, [task("t1", "n1", OLD), task("t2", "n2", OLD, "starting")]), now=5.0, min_healthy_time=2)
    assert rollback.judge_rollback(f, view(started, [task("t1", "n1", OLD)]), now=200.0, min_healthy_time=2)
    assert f.done["pc2"]["outcome"] == "reverted" and f.done["node03"]["outcome"] == "needs-operator"
    assert "no task of t-good is seen running on node03" in f.done["node03"]["message"]


def test_a_paused_rollback_or_the_end_of_the_wait_needs_an_operator(inv):
    f = follow(inv)
    assert rollback.judge_rollback(f, view({"State": "rollback_paused", "StartedAt": "s1", "Message": "task failed"}, []), 5.0, 2)
    assert {d["outcome"] for d in f.done.values()} == {"needs-operator"} and "paused the rollback" in f.done["pc2"]["message"]
    g = follow(inv)
    assert rollback.judge_rollback(g, view({"State": "rollback_started", "StartedAt": "s1"}, []), now=200.0, min_healthy_time=2)
    assert {d["outcome"] for d in g.done.values()} == {"needs-operator"} and "rollback_started" in g.done["pc2"]["message"]


def test_to_tag_changes_one_service_only_the_others_block_with_the_fix():
    plan = Plan("r", "one", "me", [Step("pc2", "api", REPLACE, reason="new image"), Step("mainpc", "llm", REPLACE, reason="new image"),
                                   Step("node03", "api", NOOP)])
    deploy.only_this(plan, "api", "one")
    assert [s.action for s in plan.steps] == [REPLACE, BLOCKED, NOOP]
    assert "changes api only" in plan.steps[1].reason and "fab rollout -p one first" in plan.steps[1].reason


def test_rollback_of_a_swarm_phase_goes_to_swarm_and_to_tag_needs_a_service(inv, monkeypatch):
    seen = {}
    monkeypatch.setattr(rollback, "_previous_spec", lambda i, p, names, hosts: seen.setdefault("plain", (p, names)))
    ssh_rollback.rollback(inv, "one")
    assert seen["plain"] == ("one", ["llm", "api"])
    with pytest.raises(RolloutError, match="add -s SERVICE"):
        ssh_rollback.rollback(inv, "one", to_tag="20261201-abcdef0")
    got = {}
    monkeypatch.setattr(deploy, "rollout_swarm", lambda i, p, pool, **kw: got.update(tag=i.fleet.services["api"].tag,
                                                                                       llm=i.fleet.services["llm"].tag, **kw))
    ssh_rollback.rollback(inv, "one", service="api", to_tag="20261201-abcdef0")
    assert got["tag"] == "20261201-abcdef0" and got["llm"] == inv.fleet.services["llm"].tag and got["only"] == "api"
    assert got["record"] == {"rollback": True, "to_tag": "20261201-abcdef0"}


def test_a_previous_spec_that_is_the_running_one_is_skipped_and_a_config_only_one_is_said_so(inv):
    """Found by an exploratory run: a phase rollback said 'reverted T -> T' of a service its release had not changed."""
    same = service({"State": "completed", "StartedAt": "s0"})
    same["PreviousSpec"]["Labels"] = dict(same["Spec"]["Labels"])
    assert rollback.unchanged("api", same).startswith("Swarm's previous spec of api is the one it runs (t-bad, same configuration)")
    assert rollback.unchanged("api", service({"State": "completed", "StartedAt": "s0"})) == ""
    # the same image with an earlier configuration: reverted, and the words say which it was
    cfg = service({"State": "completed", "StartedAt": "s0"})
    cfg["PreviousSpec"]["Labels"] = labels("t-bad", NEW, "h-older")
    f = rollback.follow_of(inv, "api", cfg, now=0.0)
    done = {"State": "rollback_completed", "StartedAt": "s1", "Message": "rollback completed"}
    v = observe.View(nodes={"n1": "pc2", "n2": "node03"}, services={"api": {**cfg, "UpdateStatus": done}},
                     tasks={"api": [task("t1", "n1", NEW), task("t2", "n2", NEW)]})
    assert rollback.judge_rollback(f, v, now=5.0, min_healthy_time=2)
    assert f.done["pc2"]["message"].startswith("Swarm rolled api back to its previous spec (the same image, its earlier configuration)")


def test_a_rollback_whose_only_service_was_skipped_is_not_refused():
    from playbooks.ending import derive_state, host_outcomes

    f = rollback.Follow("api", "update", ["pc2"], "t", NEW, "t", NEW, "", 0.0)
    rollback._done(f, "pc2", "skipped", "Swarm's previous spec of api is the one it runs", after_tag="t", after_digest=NEW)
    state, needs = derive_state(host_outcomes(rollback._results([f])), "rollback")
    assert state != "refused" and not needs, state


def rolled_back(update: dict, tasks: list[dict]) -> observe.View:
    """After `docker service rollback`: Swarm's spec is the previous one (t-good) again, whatever its UpdateStatus says."""
    v = view(update, tasks)
    v.services["api"]["Spec"]["Labels"] = labels("t-good", OLD, "h-good")
    return v


def stopped(tid: str, node: str, digest: str) -> dict:
    """A task of the release the rollback left, failed and no longer wanted."""
    return {**task(tid, node, digest, "failed"), "DesiredState": "shutdown"}


def test_a_rollback_swarm_calls_completed_is_reverted_once_the_previous_spec_is_seen_running_through_the_window(inv):
    """Swarm can write `completed` over its rollback_completed: a rollback whose spec is the one rolled back to, nothing
    of the release it left wanted running, and the same task of it running on every host through min_healthy_time +
    ROLLBACK_SETTLE_S is reverted, saying what was seen. Its spec still the release it left: needs-operator, as before."""
    f = follow(inv)
    window = 2 + rollback.ROLLBACK_SETTLE_S
    said = {"State": "completed", "StartedAt": "s1"}
    seen = rolled_back(said, [stopped("x", "n1", NEW), task("t1", "n1", OLD), task("t2", "n2", OLD)])
    assert not rollback.judge_rollback(f, seen, now=5.0, min_healthy_time=2) and f.done == {}  # the clock starts
    assert not rollback.judge_rollback(f, seen, now=5.0 + window - 0.5, min_healthy_time=2) and f.done == {}
    assert rollback.judge_rollback(f, seen, now=5.0 + window, min_healthy_time=2)  # before the deadline (100)
    for h, t in (("pc2", "t1"), ("node03", "t2")):
        d = f.done[h]
        assert d["outcome"] == "reverted" and (d["after_tag"], d["after_digest"]) == ("t-good", OLD), d
        assert d["message"].startswith("Swarm rolled api back to its previous spec: Swarm says completed (no message), not"
                                       " rollback_completed, but its spec is the previous spec (t-good) again"), d["message"]
        assert f"task {t} runs t-good on {h}" in d["message"] and d["revert_gate"]["ok"]
    g = follow(inv)  # the spec is still the release the rollback was to leave: nothing claimed from the tasks
    left = view(said, [task("t1", "n1", OLD), task("t2", "n2", OLD)])
    assert not rollback.judge_rollback(g, left, now=5.0, min_healthy_time=2)
    assert not rollback.judge_rollback(g, left, now=50.0, min_healthy_time=2) and g.done == {}
    assert rollback.judge_rollback(g, left, now=100.0, min_healthy_time=2)
    assert {d["outcome"] for d in g.done.values()} == {"needs-operator"} and "rollback is completed" in g.done["pc2"]["message"]


def test_a_rollback_not_seen_running_through_the_window_is_not_judged_reverted(inv):
    """A task of the previous spec that restarted starts the clock again; one still short of the window at the deadline,
    or a task of the release left still wanted running, ends needs-operator: never reverted unseen."""
    f = follow(inv)
    window = 2 + rollback.ROLLBACK_SETTLE_S
    said = {"State": "completed", "StartedAt": "s1"}
    assert not rollback.judge_rollback(f, rolled_back(said, [task("t1", "n1", OLD), task("t2", "n2", OLD)]), 5.0, 2)
    again = rolled_back(said, [task("t1b", "n1", OLD), task("t2", "n2", OLD)])
    assert not rollback.judge_rollback(f, again, now=10.0, min_healthy_time=2)
    assert not rollback.judge_rollback(f, again, now=5.0 + window, min_healthy_time=2) and f.done == {}, "t1b ran 5 s only"
    assert rollback.judge_rollback(f, again, now=10.0 + window, min_healthy_time=2)
    assert {d["outcome"] for d in f.done.values()} == {"reverted"} and "task t1b runs t-good on pc2" in f.done["pc2"]["message"]
    g = follow(inv)  # first seen running near the deadline: too short when the wait ends
    late = rolled_back(said, [task("t1", "n1", OLD), task("t2", "n2", OLD)])
    assert not rollback.judge_rollback(g, late, now=95.0, min_healthy_time=2)
    assert rollback.judge_rollback(g, late, now=100.0, min_healthy_time=2)
    assert {d["outcome"] for d in g.done.values()} == {"needs-operator"}
    h = follow(inv)  # a task of the release left still wanted running
    wanted = rolled_back(said, [task("t1", "n1", OLD), task("t2", "n2", OLD), task("n", "n2", NEW, "starting")])
    assert not rollback.judge_rollback(h, wanted, now=5.0, min_healthy_time=2)
    assert not rollback.judge_rollback(h, wanted, now=50.0, min_healthy_time=2) and h.done == {}
    assert rollback.judge_rollback(h, wanted, now=100.0, min_healthy_time=2)
    assert {d["outcome"] for d in h.done.values()} == {"needs-operator"}


def test_the_rollback_follow_judges_with_the_inventorys_min_healthy_time(inv, monkeypatch):
    f = follow(inv)
    got = []
    monkeypatch.setattr(rollback, "_start", lambda manager, stack, follows: follows)
    monkeypatch.setattr(rollback.observe, "read", lambda manager, stack: observe.View())
    monkeypatch.setattr(rollback, "judge_rollback", lambda f, v, now, min_healthy_time: got.append(min_healthy_time) or True)
    rollback._follow(inv, None, "fr-one", [f])
    assert got == [inv.fleet.services["api"].health.min_healthy_time]
