"""`fab details` of a swarm service shows Swarm's tasks on each host, from a manager (pure parts; no host).

Found by an exploratory run: every Swarm failure report points at `fab details`, which said 'no container' for a swarm
service (the agents know no container by its name: Swarm names its own).
"""

from __future__ import annotations

from playbooks.render import details_text
from playbooks.swarm import details_view

from .test_swarm_follow_unit import NEW, OLD, task, view


def _inv(tmp_path):
    from playbooks.inventory import load

    (tmp_path / "fleet.yml").write_text(
        "registry: {host: reg:5000, org: lab}\nengine: swarm\nhosts:\n  mainpc: {address: 10.0.0.1}\n  pc2: {address: 10.0.0.2}\n"
        "services:\n  web:\n    image: core\n    tag: 20250817-abc1234\n    hosts: [mainpc, pc2]\n"
        "    ports: [\"8080:8080\"]\n    health: {port: 8080}\n")
    (tmp_path / "phases.yml").write_text("phases:\n  - {name: p, services: [web]}\n")
    return load(tmp_path / "fleet.yml")


def test_each_host_shows_its_own_tasks_newest_first_with_swarm_s_error(tmp_path):
    inv = _inv(tmp_path)
    tasks = [task("old1", "n2", OLD), task("new1", "n2", NEW, "failed", "shutdown", err="task: non-zero exit (3)", code=3),
             task("new0", "n1", NEW)]
    for t, when in zip(tasks, ("2026-12-01T01:00:00Z", "2026-12-01T01:00:05Z", "2026-12-01T01:00:01Z"), strict=True):
        t["UpdatedAt"] = when
    v = view({"State": "rollback_completed", "Message": "rollback completed", "StartedAt": "2026-12-01T01:00:02Z"}, tasks)
    d = details_view.block(inv, v, "web", "pc2")
    assert [t["id"] for t in d["tasks"]] == ["new1", "old1"]  # pc2's only, newest first
    out = {"hosts": {"pc2": {"reachable": True, "services": {"web": {**d, "inventory_tag": "20250817-abc1234", "frozen": []}}}}}
    text = details_text(out)
    assert text.splitlines()[0] == "web on pc2 (Swarm service fr-p_web)"
    assert "  update    rollback_completed: rollback completed (since 2026-12-01T01:00:02)" in text
    assert f"  task      new1 failed (desired shutdown, exit code 3) core:t@{NEW} at 2026-12-01T01:00:05: task: non-zero exit (3)" in text
    assert "  logs      fab logs -s web -H pc2" in text and "no container" not in text


def test_a_service_not_deployed_and_a_manager_that_does_not_answer_say_so(tmp_path):
    inv = _inv(tmp_path)
    d = details_view.block(inv, view(None, []), "web", "pc2")
    d["deployed"] = False
    assert details_view.text("web", "pc2", {**d, "inventory_tag": "t1"})[0].startswith("web on pc2 (Swarm): not in the swarm")
    assert details_view.text("web", "pc2", {"swarm_error": "no manager answered: x"}) == ["web on pc2 (Swarm): no manager answered: x"]


def test_a_placement_that_changes_the_service_s_mode_is_blocked_in_the_plan_with_the_way_through():
    """Found by an exploratory run: hosts: -> replicas: passed the plan and the deploy failed ('service mode change is not
    allowed'), nothing changed and no fix given."""
    from playbooks.swarm.deploy import mode_change

    glob, repl = {"Spec": {"Mode": {"Global": {}}}}, {"Spec": {"Mode": {"Replicated": {"Replicas": 1}}}}
    assert mode_change(glob, {"mode": "global"}, "p") == "" and mode_change(repl, {"mode": "replicated", "replicas": 2}, "p") == ""
    why = mode_change(glob, {"mode": "replicated", "replicas": 1}, "p")
    assert why.startswith("Swarm runs it as one task on each of its hosts (hosts: without replicas:) and the inventory now"
                          " makes it replicated (host: or replicas:)")
    assert "fab swarm.down -p p, then fab rollout -p p" in why
    assert "replicated (host: or replicas:) and the inventory now makes it one task on each" in mode_change(repl, {"mode": "global"}, "p")


def test_a_noop_over_an_update_swarm_never_finished_says_so():
    from playbooks.swarm.deploy import unfinished_update

    assert unfinished_update({"UpdateStatus": {"State": "completed"}}, "web") == ""
    assert unfinished_update(None, "web") == ""
    note = unfinished_update({"UpdateStatus": {"State": "paused", "Message": "update paused due to failure"}}, "web")
    assert note.startswith("but Swarm's last update of it is paused (update paused due to failure): look with fab details -s web")


def test_status_names_an_ssh_container_a_move_to_swarm_left_running():
    from playbooks.swarm.status_view import with_leftover

    row = {"status": "swarm task abc running", "healthy": True, "drift": ""}
    pushed = {"status": "running", "tag": "t0", "rollout_id": "r-ssh"}
    got = with_leftover(row, pushed, "web", "pc2")
    assert got["drift"] == ("a container web pushed over SSH (t0) still runs here, left by the move to Swarm: it holds the"
                            " service's ports; fab remove -s web -H pc2") and got["leftover"]["rollout_id"] == "r-ssh"
    assert with_leftover(row, {"status": "absent"}, "web", "pc2") is row
    assert with_leftover(row, {"status": "exited", "rollout_id": "r"}, "web", "pc2") is row
