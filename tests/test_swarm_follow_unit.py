"""Forming the swarm and judging what Swarm did, from captured `docker info`/inspect shapes (pure; no host)."""

from __future__ import annotations

import pytest

from playbooks.swarm import commands, deploy, form, judge, observe

NEW, OLD = "sha256:" + "1" * 64, "sha256:" + "0" * 64
REPO = "reg:5000/lab/core"


# --- forming -----------------------------------------------------------------------------------


def test_an_empty_fleet_inits_on_the_first_manager_and_joins_the_rest_by_role():
    states = {h: {"LocalNodeState": "inactive"} for h in ("mainpc", "pc2", "node03")}
    moves = form.decide(["mainpc", "pc2", "node03"], ["mainpc", "node03"], states, None)
    assert [(m.host, m.action) for m in moves] == [("mainpc", "init"), ("pc2", "join-worker"), ("node03", "join-manager")]


def test_forming_again_touches_nothing_and_another_swarm_is_refused_with_the_fix():
    states = {"mainpc": {"LocalNodeState": "active", "ControlAvailable": True, "NodeID": "n1", "Cluster": {"ID": "c1"}},
              "pc2": {"LocalNodeState": "active", "NodeID": "n2"},
              "node03": {"LocalNodeState": "active", "NodeID": "elsewhere"}}
    moves = {m.host: m for m in form.decide(["mainpc", "pc2", "node03"], ["mainpc"], states, {"n1", "n2"})}
    assert moves["mainpc"].action == "member" and moves["pc2"].action == "member"
    assert moves["node03"].action == "refuse" and "another swarm" in moves["node03"].why
    assert "fab swarm.leave -H node03" in moves["node03"].why


def test_a_first_manager_that_is_a_worker_elsewhere_is_refused():
    states = {"mainpc": {"LocalNodeState": "active", "ControlAvailable": False}, "pc2": {"LocalNodeState": "inactive"}}
    moves = form.decide(["mainpc", "pc2"], ["mainpc"], states, None)
    assert moves[0].action == "refuse" and "worker in another swarm" in moves[0].why


def test_commands_are_argv_lists_and_label_by_inventory_name():
    assert commands.init("10.0.0.1") == ["docker", "swarm", "init", "--advertise-addr", "10.0.0.1", "--listen-addr", "10.0.0.1:2377"]
    argv = commands.node_labels("abc", "pc2", {"count": 1, "compute_capability": "8.6"})
    assert argv[-1] == "abc" and "fleetroll.host=pc2" in argv and "fleetroll.gpu=true" in argv
    assert commands.stack_deploy("fr-x")[-3:] == ["-c", "-", "fr-x"] and "never" in commands.stack_deploy("fr-x")


# --- judging -----------------------------------------------------------------------------------


def task(tid: str, node: str, digest: str, state: str = "running", desired: str = "running", err: str = "", code=None) -> dict:
    return {"ID": tid, "NodeID": node, "DesiredState": desired, "Spec": {"ContainerSpec": {"Image": f"{REPO}:t@{digest}"}},
            "Status": {"State": state, "Err": err, "ContainerStatus": {"ExitCode": code}}}


def view(update: dict | None, tasks: list[dict]) -> observe.View:
    svc = {"ID": "s1", "Spec": {"Name": "fr-p_web", "Labels": {"io.fleetroll.spec-hash": "want"}}, "UpdateStatus": update}
    return observe.View(nodes={"n1": "mainpc", "n2": "pc2"}, services={"web": svc}, tasks={"web": tasks})


def follow(mode: str = "update") -> judge.Follow:
    return judge.Follow("web", mode, ["mainpc", "pc2"], "t-new", NEW, "t-old", OLD, "2020-01-01T00:00:00Z", 100.0, "want")


def test_a_completed_update_commits_each_host_running_the_new_digest():
    f = follow()
    v = view({"State": "completed", "StartedAt": "2030-01-01T00:00:00Z"}, [task("a", "n1", NEW), task("b", "n2", NEW),
                                                                          task("c", "n1", OLD, "shutdown", "shutdown")])
    assert judge.judge(f, v, now=10, min_healthy_time=2)
    assert {h: d["outcome"] for h, d in f.done.items()} == {"mainpc": "committed", "pc2": "committed"}
    assert f.done["pc2"]["after_digest"] == NEW and "task b" in f.done["pc2"]["message"]


def test_the_previous_update_status_is_not_taken_for_this_one():
    f = follow()
    v = view({"State": "completed", "StartedAt": "2020-01-01T00:00:00Z"}, [task("a", "n1", OLD), task("b", "n2", OLD)])
    assert not judge.judge(f, v, now=10, min_healthy_time=2) and f.done == {}


def test_a_rollback_by_swarm_is_reverted_only_where_the_old_digest_is_seen_running():
    f = follow()
    tasks = [task("x", "n1", NEW, "failed", "shutdown", "task: non-zero exit (1): unhealthy container", 1),
             task("a", "n1", OLD), task("b", "n2", OLD, "starting")]
    v = view({"State": "rollback_completed", "StartedAt": "2030-01-01T00:00:00Z", "Message": "update rolled back"}, tasks)
    assert not judge.judge(f, v, now=10, min_healthy_time=2)  # pc2 not seen running yet: wait, claim nothing
    assert f.done["mainpc"]["outcome"] == "reverted" and "pc2" not in f.done
    assert f.done["mainpc"]["details"]["exit_code"] == 1 and f.done["mainpc"]["after_digest"] == OLD
    assert judge.judge(f, v, now=200, min_healthy_time=2)  # at the deadline: not observed is needs-operator
    assert f.done["pc2"]["outcome"] == "needs-operator"


def test_a_paused_update_needs_an_operator_never_reverted():
    f = follow()
    v = view({"State": "paused", "StartedAt": "2030-01-01T00:00:00Z", "Message": "update paused due to failure"}, [])
    assert judge.judge(f, v, now=10, min_healthy_time=2)
    assert {d["outcome"] for d in f.done.values()} == {"needs-operator"} and "paused" in f.done["mainpc"]["message"]
    assert "docker service rollback fr-p_web on a manager" in f.done["mainpc"]["message"]


def test_a_paused_rollback_needs_an_operator_and_says_the_command_that_finishes_it():
    """Seen in CI under load (with Swarm's default rollback failure_action pause): a good task killed as unhealthy
    mid-rollback. Swarm's rollback used up its previous spec, so `docker service rollback` would fail there: the advice
    is `update --force`, which puts the spec (the previous release) on every task."""
    f = follow()
    v = view({"State": "rollback_paused", "StartedAt": "2030-01-01T00:00:00Z", "Message": "update paused due to failure"
              " or early termination of task t9"}, [task("a", "n1", OLD), task("b", "n2", NEW, "failed", "shutdown")])
    assert judge.judge(f, v, now=10, min_healthy_time=2)
    assert {d["outcome"] for d in f.done.values()} == {"needs-operator"}
    words = f.done["pc2"]["message"]
    assert "paused its rollback to t-old part way" in words and "task t9" in words
    assert "docker service update --force fr-p_web on a manager to put t-old on every task" in words
    assert "service rollback" not in words and "--rollback" not in words


def test_a_new_service_commits_once_the_same_tasks_ran_through_min_healthy_time():
    f = follow("create")
    v = view(None, [task("a", "n1", NEW), task("b", "n2", NEW)])
    assert not judge.judge(f, v, now=10, min_healthy_time=2)
    assert not judge.judge(f, v, now=11, min_healthy_time=2)
    assert judge.judge(f, v, now=12.5, min_healthy_time=2)
    assert {d["outcome"] for d in f.done.values()} == {"committed"} and f.done["mainpc"]["action"] == "create"


def test_a_new_service_that_never_runs_everywhere_is_not_committed_there():
    f = follow("create")
    v = view(None, [task("a", "n1", NEW), task("x", "n2", NEW, "failed", "shutdown", "unhealthy", 1)])
    assert not judge.judge(f, v, now=50, min_healthy_time=2)
    assert judge.judge(f, v, now=100, min_healthy_time=2)
    assert f.done["mainpc"]["outcome"] == "committed" and f.done["pc2"]["outcome"] == "needs-operator"
    assert f.done["pc2"]["details"]["restarts"] == 1


def test_a_new_service_whose_task_never_ran_says_the_state_swarm_left_it_in():
    """At the end of the wait, no failed task on pc2: the newest task there and its state are the evidence (and the
    report says it as the manager saw it), with 0 restarts, so nothing claims the release failed there."""
    from playbooks import ending

    f = follow("create")
    stuck = task("p", "n2", NEW, "preparing")
    stuck.update(Version={"Index": 90}, UpdatedAt="2030-01-01T00:00:05.9Z", Status={**stuck["Status"], "Message": "pulling"})
    older = {**task("q", "n2", NEW, "pending"), "Version": {"Index": 80}, "UpdatedAt": "2030-01-01T00:00:05.95Z"}
    v = view(None, [task("a", "n1", NEW), older, stuck])
    assert judge.judge(f, v, now=100, min_healthy_time=2)
    ev = f.done["pc2"]["details"]
    assert f.done["pc2"]["outcome"] == "needs-operator" and ev["status"] == "preparing" and ev["restarts"] == 0, ev
    assert ev["task"] == "p", "newest by Swarm's version index, not by a timestamp string"
    text = ending.describe_failure("pc2", f.done["pc2"], "fab status")
    assert "swarm task p, as a manager saw it last: preparing, 0 restarts (pulling)" in text, text
    assert judge.judge(follow("create"), view(None, [task("a", "n1", NEW)]), now=100, min_healthy_time=2)


def test_a_task_waiting_with_an_error_is_no_restart_and_the_error_is_in_the_report():
    from playbooks import ending

    f = follow("create")
    waiting = {**task("w", "n2", NEW, "pending", err="no suitable node (insufficient resources on 2 nodes)"),
               "Version": {"Index": 7}}
    v = view(None, [task("a", "n1", NEW), waiting])
    assert judge.judge(f, v, now=100, min_healthy_time=2)
    ev = f.done["pc2"]["details"]
    assert ev["status"] == "pending" and ev["restarts"] == 0, ev
    text = ending.describe_failure("pc2", f.done["pc2"], "fab status")
    assert "pending, 0 restarts error: no suitable node (insufficient resources on 2 nodes)" in text, text


def test_own_ports_are_freed_from_the_preflight_facts():
    v = view(None, [task("a", "n1", NEW)])
    v.services["web"]["Spec"]["EndpointSpec"] = {"Ports": [{"PublishedPort": 9300}]}
    facts = {"mainpc": {"ports": [22, 9300]}, "pc2": {"ports": [22, 9300]}}
    freed = deploy.own_ports_freed(facts, v)
    assert freed["mainpc"]["ports"] == [22] and freed["pc2"]["ports"] == [22, 9300]  # pc2's 9300 is not the stack's task


def test_a_swarm_rollback_is_described_as_new_tasks_of_the_previous_release_not_the_old_container():
    from playbooks import ending

    f = follow()
    tasks = [task("x", "n1", NEW, "failed", "shutdown", "task: non-zero exit (143): dockerexec: unhealthy container", 143),
             task("a", "n1", OLD), task("b", "n2", OLD)]
    v = view({"State": "rollback_completed", "StartedAt": "2030-01-01T00:00:00Z", "Message": "update rolled back"}, tasks)
    assert judge.judge(f, v, now=10, min_healthy_time=2)
    text = ending.describe_failure("mainpc", f.done["mainpc"], "fab status")
    assert "now:   t-old@000000000000 — the previous release, run again by Swarm's rollback in new tasks" in text
    assert "old container itself" not in text and "exit code 143, 1 restarts" in text
    ssh = {**f.done["mainpc"], "engine": "ssh", "prev_ref": "web-prev"}
    assert "the old container itself (pinned as web-prev)" in ending.describe_failure("mainpc", ssh, "fab status")


def test_preflight_of_a_swarm_phase_wants_each_host_a_ready_active_node_labelled_by_its_name():
    from playbooks.swarm import checks

    v = observe.View(nodes={"n1": "mainpc", "n2": "pc2", "n3": ""},
                     node_status={"n1": ("ready", "active"), "n2": ("down", "active"), "n3": ("ready", "active")})
    got = {c.host: c for c in checks.node_checks("mainpc", v, ["mainpc", "pc2", "node03"])}
    assert got["mainpc"].status == "pass" and "ready, active" in got["mainpc"].detail
    assert got["pc2"].status == "fail" and "is down and active" in got["pc2"].detail and "start dockerd on pc2" in got["pc2"].fix
    assert got["node03"].status == "fail" and "labelled fleetroll.host=node03" in got["node03"].detail
    assert got["node03"].fix.startswith("fab swarm.form")


def test_a_replicas_service_commits_where_its_task_runs_and_is_noop_where_swarm_put_none():
    f = judge.Follow("web", "create", ["mainpc", "pc2"], "t-new", NEW, "", "", "", 100.0, "want", replicas=1)
    v = view(None, [task("b", "n2", NEW)])
    assert not judge.judge(f, v, now=10, min_healthy_time=1) and f.done == {}  # the window starts now
    assert judge.judge(f, v, now=11.5, min_healthy_time=1)
    assert f.done["pc2"]["outcome"] == "committed"
    assert f.done["mainpc"]["outcome"] == "noop" and "runs the 1 replica(s) of t-new on pc2" in f.done["mainpc"]["message"]
    # rolled back: reverted where the old digest runs, noop where there is no task; none running yet: wait, claim nothing
    f = judge.Follow("web", "update", ["mainpc", "pc2"], "t-new", NEW, "t-old", OLD, "2020-01-01T00:00:00Z", 100.0, "want", 1)
    upd = {"State": "rollback_completed", "StartedAt": "2030-01-01T00:00:00Z", "Message": "update rolled back"}
    assert not judge.judge(f, view(upd, [task("x", "n2", NEW, "failed", "shutdown", "unhealthy", 143)]), 10, 1) and not f.done
    assert judge.judge(f, view(upd, [task("a", "n1", OLD)]), 11, 1)
    assert f.done["mainpc"]["outcome"] == "reverted" and f.done["pc2"]["outcome"] == "noop"


def test_status_of_a_replicas_service_says_where_it_runs_now(tmp_path):
    from playbooks.inventory import load
    from playbooks.swarm import status_view

    (tmp_path / "fleet.yml").write_text(
        "registry: {host: reg:5000, org: lab}\nengine: swarm\nhosts:\n  mainpc: {address: 10.0.0.1}\n  pc2: {address: 10.0.0.2}\n"
        "services:\n  web:\n    image: core\n    tag: 20250817-abc1234\n    hosts: [mainpc, pc2]\n    replicas: 1\n"
        "    ports: [\"8080:8080\"]\n    health: {port: 8080}\n")
    (tmp_path / "phases.yml").write_text("phases:\n  - {name: p, services: [web]}\n")
    inv = load(tmp_path / "fleet.yml")
    v = view(None, [task("a", "n1", NEW, "shutdown", "shutdown"), task("b", "n2", NEW)])
    v.services["web"]["Spec"]["Labels"] = {"io.fleetroll.tag": "20250817-abc1234"}
    v.tasks["web"][1]["Spec"]["ContainerSpec"]["Image"] = f"{REPO}:20250817-abc1234@{NEW}"
    rows = status_view.rows(inv, v, "web")
    assert rows["pc2"]["status"] == "swarm task b running" and rows["pc2"]["healthy"] and rows["pc2"]["drift"] == ""
    assert rows["mainpc"]["status"] == "elsewhere" and rows["mainpc"]["health"].endswith("replica(s) on pc2")


def test_a_rollback_still_in_progress_at_the_end_of_the_wait_is_given_its_grace_once():
    """Swarm is rolling back when fleetroll's wait ends (a loaded node starts the old spec's tasks slowly): one more
    window to see how it ends, then, if it still has not, needs-operator as before — never `reverted` unseen."""
    f = follow()
    f.rollback_grace = 50.0
    going = view({"State": "rollback_started", "StartedAt": "2030-01-01T00:00:00Z"},
                 [task("x", "n1", NEW, "failed", "shutdown", "unhealthy", 1), task("y", "n2", OLD, "starting")])
    assert not judge.judge(f, going, now=100, min_healthy_time=2) and f.done == {} and f.deadline == 150.0
    assert not judge.judge(f, going, now=120, min_healthy_time=2)
    done = view({"State": "rollback_completed", "StartedAt": "2030-01-01T00:00:00Z", "Message": "rolled back"},
                [task("a", "n1", OLD), task("b", "n2", OLD)])
    assert judge.judge(f, done, now=130, min_healthy_time=2)
    assert {d["outcome"] for d in f.done.values()} == {"reverted"}
    g = follow()
    g.rollback_grace = 50.0
    assert not judge.judge(g, going, now=100, min_healthy_time=2)
    assert judge.judge(g, going, now=151, min_healthy_time=2)  # the grace is given once
    assert {d["outcome"] for d in g.done.values()} == {"needs-operator"}


def test_a_rollback_still_moving_when_its_grace_is_spent_is_waited_on_and_one_that_stopped_is_not():
    """Seen in CI under load: Swarm's rollback was still placing the previous spec's tasks when the grace ended, and
    the rollout said needs-operator although Swarm finished it a little later. While its tasks keep changing, fleetroll
    waits a window at a time (up to a bound); a rollback whose tasks stopped changing is left to an operator as before."""
    f = follow()
    f.rollback_grace = 0.0
    state = {"State": "rollback_started", "StartedAt": "2030-01-01T00:00:00Z"}
    stuck = view(state, [task("x", "n1", NEW, "failed", "shutdown", "unhealthy", 1), task("y", "n2", OLD, "pending")])
    moving = view(state, [task("x", "n1", NEW, "failed", "shutdown", "unhealthy", 1), task("y", "n2", OLD, "starting")])
    assert not judge.judge(f, stuck, now=10, min_healthy_time=2)  # first sight, before the deadline
    assert not judge.judge(f, moving, now=f.deadline + 1, min_healthy_time=2) and f.done == {}, "it moved: waited on"
    assert f.deadline == pytest.approx(f.progress_at + judge.ROLLBACK_PROGRESS_S)
    assert judge.judge(f, moving, now=f.deadline + judge.ROLLBACK_PROGRESS_S, min_healthy_time=2)
    assert {d["outcome"] for d in f.done.values()} == {"needs-operator"}, "it stopped moving: needs an operator"
    g = follow()  # moving for ever: still bounded
    g.extended = judge.ROLLBACK_MORE_MAX
    assert not judge.judge(g, stuck, now=10, min_healthy_time=2)
    assert judge.judge(g, moving, now=g.deadline + 1, min_healthy_time=2)


def test_an_update_swarm_calls_completed_while_its_new_tasks_failed_is_rolled_back_by_asking_swarm():
    """Seen in CI under load: Swarm marked the update completed, its new tasks killed as unhealthy on both nodes, no
    rollback. The stack says failure_action rollback: fleetroll asks Swarm for it (once), then judges its end."""
    f = follow()
    failed = [task("x", "n1", NEW, "failed", "shutdown", "task: non-zero exit (143): dockerexec: unhealthy container", 143),
              task("y", "n2", NEW, "failed", "shutdown", "task: non-zero exit (143): dockerexec: unhealthy container", 143)]
    done = view({"State": "completed", "StartedAt": "2030-01-01T00:00:00Z"}, failed)
    assert not judge.judge(f, done, now=10, min_healthy_time=2) and f.done == {}
    assert "no task of t-new runs on mainpc, pc2" in f.ask_rollback and "unhealthy container" in f.ask_rollback
    f.rollback_asked, f.ask_rollback = f.ask_rollback, ""  # what the follow loop does once it has asked
    assert not judge.judge(f, done, now=11, min_healthy_time=2) and not f.ask_rollback  # asked once, never again
    back = view({"State": "rollback_completed", "StartedAt": "2030-01-01T00:01:00Z", "Message": "manually requested rollback"},
                [*failed, task("a", "n1", OLD), task("b", "n2", OLD)])
    assert judge.judge(f, back, now=20, min_healthy_time=2)
    assert {h: d["outcome"] for h, d in f.done.items()} == {"mainpc": "reverted", "pc2": "reverted"}
    assert "Swarm rolled the update back: manually requested rollback" in f.done["pc2"]["message"]


def test_a_completed_update_with_a_failed_task_where_a_new_one_now_runs_is_committed_not_rolled_back():
    f = follow()
    tasks = [task("x", "n1", NEW, "failed", "shutdown", "unhealthy", 143), task("a", "n1", NEW), task("b", "n2", NEW)]
    assert judge.judge(f, view({"State": "completed", "StartedAt": "2030-01-01T00:00:00Z"}, tasks), now=10, min_healthy_time=2)
    assert {d["outcome"] for d in f.done.values()} == {"committed"} and not f.ask_rollback


def test_the_follow_loop_asks_swarm_for_the_rollback_once_and_waits_for_it(monkeypatch):
    from playbooks.swarm import deploy

    ran: list[list[str]] = []

    class Manager:
        def run(self, argv, timeout=None):
            ran.append(argv)

    class Report:
        messages: list[str] = []

    f = follow()
    f.rollback_grace, f.ask_rollback = 80.0, "Swarm marked the update of web completed, yet ..."
    deploy._ask_rollback(Manager(), "fr-p", f, 50.0, Report)
    assert ran == [["docker", "service", "rollback", "--detach", "--quiet", "fr-p_web"]]
    assert f.rollback_asked.startswith("Swarm marked") and not f.ask_rollback and f.deadline == 130.0
    assert Report.messages == [f.rollback_asked]



def test_a_rollback_swarm_had_already_begun_is_followed_not_given_up(monkeypatch):
    """Seen in CI under load: Swarm's own failure_action rolled back between fleetroll's view ('completed') and its request,
    and answered 'does not have a previous spec'. That is no refusal: the follow waits for the rollback and judges it."""
    from playbooks.swarm import deploy
    from playbooks.swarm.remote import SwarmCommandError

    class Manager:
        def run(self, argv, timeout=None):
            raise SwarmCommandError("mainpc", argv, 1, "Error response from daemon: rpc error: code = FailedPrecondition desc ="
                                                       " service qoyq3q9 does not have a previous spec")

    class Report:
        messages: list[str] = []

    f = follow()
    f.rollback_grace, f.ask_rollback = 80.0, "Swarm marked the update of web completed, yet ..."
    deploy._ask_rollback(Manager(), "fr-p", f, 50.0, Report)
    assert f.deadline == 130.0 and f.rollback_asked.startswith("Swarm marked")
    assert Report.messages == ["Swarm marked the update of web completed, yet ...; Swarm answered that the service has no"
                               " previous spec any more (it clears it when it rolls back by itself): fleetroll follows what it does"]

    class Refusing(Manager):
        def run(self, argv, timeout=None):
            raise SwarmCommandError("mainpc", argv, 1, "Error response from daemon: service not found")

    g = follow()
    g.rollback_grace, g.ask_rollback = 80.0, "why"
    before = g.deadline
    Report.messages = []
    deploy._ask_rollback(Refusing(), "fr-p", g, 50.0, Report)
    assert g.deadline == before and Report.messages[0].startswith("why; Swarm refused it:")


def test_a_rollback_swarm_still_calls_started_while_the_previous_release_runs_everywhere_is_reverted_as_seen():
    """Seen on the lab (a failed-release restart racing the rollback's task for the host port): Swarm's UpdateStatus
    stays rollback_started although the previous spec is Swarm's spec again and its tasks run healthy on every host,
    a surplus task of it pending "host-mode port already in use". Judged by what runs, once it has run past Swarm's own
    monitor and ROLLBACK_SETTLE_S: reverted, without waiting out the grace; never while the failed release is wanted."""
    def stalled(*extra):
        v = view({"State": "rollback_started", "StartedAt": "2030-01-01T00:00:00Z",
                  "Message": "update rolled back due to failure or early termination of task x"},
                 [task("x", "n1", NEW, "failed", "shutdown", "unhealthy container", 143), task("a", "n1", OLD),
                  task("b", "n2", OLD), task("r", "n1", NEW, "pending", "shutdown", "host-mode port already in use on 1 node"),
                  task("s", "n1", OLD, "pending", "running", "host-mode port already in use on 1 node"), *extra])
        v.services["web"]["Spec"]["Labels"]["io.fleetroll.digest"] = OLD
        return v
    f = follow()
    f.rollback_grace = 118.0
    assert not judge.judge(f, stalled(), now=10, min_healthy_time=1) and f.done == {}  # first seen running: the clock starts
    assert not judge.judge(f, stalled(), now=10 + judge.ROLLBACK_SETTLE_S, min_healthy_time=1) and f.done == {}
    assert judge.judge(f, stalled(), now=11 + judge.ROLLBACK_SETTLE_S, min_healthy_time=1)  # well before the deadline (100)
    assert {h: d["outcome"] for h, d in f.done.items()} == {"mainpc": "reverted", "pc2": "reverted"}
    assert f.done["mainpc"]["message"].startswith("Swarm rolled the update back") and "surplus task of it, s" in f.done["mainpc"]["message"]
    assert f.done["pc2"]["after_digest"] == OLD and f.done["pc2"]["revert_gate"]["ok"]
    g = follow()  # a task of the failed release still wanted running somewhere: not a rollback seen through
    wanted = stalled(task("n", "n2", NEW, "starting", "running"))
    assert not judge.judge(g, wanted, now=10, min_healthy_time=1) and not judge.judge(g, wanted, now=50, min_healthy_time=1)
    assert g.done == {}
    h = follow()  # Swarm's spec not (yet) the previous release: nothing claimed from the tasks alone
    spec_new = stalled()
    spec_new.services["web"]["Spec"]["Labels"]["io.fleetroll.digest"] = NEW
    assert not judge.judge(h, spec_new, now=10, min_healthy_time=1) and not judge.judge(h, spec_new, now=50, min_healthy_time=1)
    assert h.done == {}


def overwritten(spec_digest: str, *extra) -> observe.View:
    """Seen in the lab: Swarm's failure_action rolled the update back, then Swarm wrote `completed` over its
    `rollback_completed`; the spec (its fleetroll labels) is whatever `spec_digest` says."""
    v = view({"State": "completed", "StartedAt": "2030-01-01T00:00:00Z"},
             [task("x", "n1", NEW, "failed", "shutdown", "task: non-zero exit (143): unhealthy container", 143),
              task("y", "n2", NEW, "failed", "shutdown", "task: non-zero exit (143): unhealthy container", 143),
              task("a", "n1", OLD), task("b", "n2", OLD), *extra])
    v.services["web"]["Spec"]["Labels"]["io.fleetroll.digest"] = spec_digest
    return v


def test_swarm_completed_written_over_its_own_rollback_is_reverted_once_the_previous_release_is_seen_running():
    """Swarm says `completed`, but its spec is the previous release again, nothing of the new one is wanted running and
    the previous release's task ran on every host through min_healthy_time + ROLLBACK_SETTLE_S: reverted, saying what
    was seen; no rollback is asked of Swarm (it has no previous spec left). A spec still the new release: as before."""
    f = follow()
    f.rollback_grace = 50.0
    window = 2 + judge.ROLLBACK_SETTLE_S
    assert not judge.judge(f, overwritten(OLD), now=10, min_healthy_time=2) and f.done == {}  # the clock starts
    assert not f.ask_rollback, "Swarm's spec is the previous release already: nothing to ask it"
    assert not judge.judge(f, overwritten(OLD), now=10 + window - 0.5, min_healthy_time=2) and f.done == {}
    assert judge.judge(f, overwritten(OLD), now=10 + window, min_healthy_time=2)  # well before the deadline (100)
    assert {h: d["outcome"] for h, d in f.done.items()} == {"mainpc": "reverted", "pc2": "reverted"}
    msg = f.done["mainpc"]["message"]
    assert msg.startswith("Swarm rolled the update back: Swarm says the update completed, but it rolled back by itself:"), msg
    assert "its spec is the previous release (t-old) again" in msg and "task a runs t-old on mainpc" in msg, msg
    assert "task b runs t-old on pc2" in f.done["pc2"]["message"] and f.done["pc2"]["after_digest"] == OLD
    assert f.done["pc2"]["revert_gate"]["ok"] and f.done["pc2"]["details"]["exit_code"] == 143
    g = follow()  # the spec is still the new release: asked for the rollback, and needs-operator at the end, as before
    assert not judge.judge(g, overwritten(NEW), now=10, min_healthy_time=2) and g.ask_rollback
    g.rollback_asked, g.ask_rollback = g.ask_rollback, ""
    assert not judge.judge(g, overwritten(NEW), now=50, min_healthy_time=2) and g.done == {}
    assert judge.judge(g, overwritten(NEW), now=100, min_healthy_time=2)
    assert {d["outcome"] for d in g.done.values()} == {"needs-operator"}
    assert "Swarm says the update completed but no task of t-new runs on pc2" in g.done["pc2"]["message"]


def test_completed_over_a_rollback_is_not_judged_before_the_same_old_task_ran_through_the_window():
    """A previous-release task that restarted (another task id) starts the clock again; a task of the new release
    still wanted running is no rollback seen through: after the grace, needs-operator, never committed nor reverted."""
    f = follow()
    window = 2 + judge.ROLLBACK_SETTLE_S
    assert not judge.judge(f, overwritten(OLD), now=10, min_healthy_time=2)
    restarted = overwritten(OLD, task("a2", "n1", OLD))
    restarted.tasks["web"] = [t for t in restarted.tasks["web"] if t["ID"] != "a"]
    assert not judge.judge(f, restarted, now=20, min_healthy_time=2)
    assert not judge.judge(f, restarted, now=10 + window, min_healthy_time=2) and f.done == {}, "a2 ran 7 s only"
    assert judge.judge(f, restarted, now=20 + window, min_healthy_time=2)
    assert {d["outcome"] for d in f.done.values()} == {"reverted"} and "task a2 runs t-old on mainpc" in f.done["mainpc"]["message"]
    g = follow()
    g.rollback_grace = 50.0
    wanted = overwritten(OLD, task("n", "n2", NEW, "starting", "running"))
    assert not judge.judge(g, wanted, now=10, min_healthy_time=2) and not judge.judge(g, wanted, now=60, min_healthy_time=2)
    assert not judge.judge(g, wanted, now=100, min_healthy_time=2) and g.deadline == 150.0 and g.done == {}  # grace, once
    assert judge.judge(g, wanted, now=150, min_healthy_time=2)
    assert {d["outcome"] for d in g.done.values()} == {"needs-operator"}
    assert "Swarm says the update completed, but its spec is the previous release (t-old) again" in g.done["pc2"]["message"]


def test_completed_over_the_rollback_of_a_configuration_change_is_never_committed():
    """A change of configuration only (the same image, e.g. an env that fails the healthcheck; lab: VARIANT=http500 on the
    healthy image): if Swarm writes `completed` over its rollback_completed, its spec is the earlier configuration again,
    whose tasks run the same digest. They were judged `committed` (the digest is the one rolled out), a commit never
    observed; judged now by the spec hash Swarm carries: needs-operator at the end of the wait, never committed."""
    f = judge.Follow("web", "update", ["mainpc", "pc2"], "t-same", OLD, "t-same", OLD, "2020-01-01T00:00:00Z", 100.0, "want")
    v = overwritten(OLD)
    v.tasks["web"] = [dict(t, Spec={"ContainerSpec": {"Image": f"{REPO}:t@{OLD}"}}) for t in v.tasks["web"]]
    v.services["web"]["Spec"]["Labels"]["io.fleetroll.spec-hash"] = "earlier"  # Swarm's spec: the earlier configuration
    assert not judge.judge(f, v, now=10, min_healthy_time=2) and f.done == {} and not f.ask_rollback
    assert not judge.judge(f, v, now=60, min_healthy_time=2) and f.done == {}
    assert judge.judge(f, v, now=100, min_healthy_time=2)
    assert {d["outcome"] for d in f.done.values()} == {"needs-operator"}, f.done
    assert "its spec is no longer the one deployed" in f.done["pc2"]["message"], f.done["pc2"]["message"]
    same = judge.Follow("web", "update", ["mainpc", "pc2"], "t-same", OLD, "t-same", OLD, "2020-01-01T00:00:00Z", 100.0, "want")
    v.services["web"]["Spec"]["Labels"]["io.fleetroll.spec-hash"] = "want"  # the spec deployed, completed: committed
    v.tasks["web"] = [t for t in v.tasks["web"] if t["ID"] in ("a", "b")]
    assert judge.judge(same, v, now=10, min_healthy_time=2)
    assert {d["outcome"] for d in same.done.values()} == {"committed"}
