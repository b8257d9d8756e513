"""`fab versions` and `fab logs` on swarm services, the pure parts: versions from ledger records and a manager's view,
the logs command, and the dispatch from playbooks/operate.py (no host, no swarm)."""

from __future__ import annotations

import pytest

from playbooks import operate
from playbooks.errors import RolloutError
from playbooks.swarm import observe
from playbooks.swarm import operate as swarm

from .test_swarm_rollback_unit import NEW, OLD, REPO, inv, service  # noqa: F401 - inv is a fixture

RECORDS = [
    {"kind": "started", "engine": "swarm", "rollout_id": "r0"},
    {"kind": "finished", "engine": "swarm", "rollout_id": "r1", "operator": "ann", "ts": 1.0,
     "services": [{"host": "pc2", "service": "api", "outcome": "committed", "tried_tag": "t-good", "tried_digest": OLD},
                  {"host": "node03", "service": "api", "outcome": "noop", "tried_tag": "t-good", "tried_digest": OLD}]},
    {"kind": "finished", "rollout_id": "r-ssh", "ts": 1.5,  # an SSH push's record: the host's own journal has it
     "services": [{"host": "pc2", "service": "api", "outcome": "committed", "tried_tag": "t-ssh", "tried_digest": OLD}]},
    {"kind": "finished", "engine": "swarm", "rollout_id": "r2", "operator": "bob", "ts": 2.0,
     "services": [{"host": "pc2", "service": "api", "outcome": "committed", "tried_tag": "t-bad", "tried_digest": NEW}]},
    {"kind": "finished", "engine": "swarm", "rollout_id": "r3", "operator": "bob", "ts": 3.0, "rollback": True,
     "services": [{"host": "pc2", "service": "api", "outcome": "reverted", "tried_tag": "t-good", "tried_digest": OLD}]},
]


def test_versions_are_what_swarm_records_started_on_that_host():
    got = swarm.history(RECORDS, "api", "pc2")
    assert [(v["rollout_id"], v["tag"], v["kind"], v["outcome"]) for v in got] == [
        ("r1", "t-good", "rollout", "committed"), ("r2", "t-bad", "rollout", "committed"), ("r3", "t-good", "rollback", "reverted")]
    assert swarm.history(RECORDS, "api", "node03") == []  # noop: nothing was started there


def test_a_record_of_a_host_where_nothing_was_tried_is_no_version():
    """Found by an exploratory run: a row with no tag and no digest in fab versions after a rollout that changed nothing."""
    empty = [{"kind": "finished", "engine": "swarm", "rollout_id": "r9", "ts": 9.0,
              "services": [{"host": "pc2", "service": "api", "outcome": "needs-operator", "tried_tag": "", "tried_digest": ""}]}]
    assert swarm.history(RECORDS + empty, "api", "pc2")[-1]["rollout_id"] == "r3"


def test_the_version_swarm_runs_is_marked_and_the_specs_are_said():
    task = {"ID": "task1234567890", "NodeID": "n1", "DesiredState": "running", "Status": {"State": "running"},
            "Spec": {"ContainerSpec": {"Image": f"{REPO}:t-good@{OLD}"}}}
    view = observe.View(nodes={"n1": "pc2"}, services={"api": service({"State": "completed"})}, tasks={"api": [task]})
    row = swarm.replica(view, RECORDS, "api", "pc2")
    assert row["running"] == {"tag": "t-good", "digest": OLD, "task": "task12345678"}
    assert [(v["rollout_id"], v["running"]) for v in row["versions"]] == [("r3", True), ("r2", False), ("r1", False)]
    assert f"spec t-bad@{NEW[7:19]}; previous spec t-good@{OLD[7:19]}" in row["note"]
    assert "fab rollback -s api --to TAG" in row["note"]
    other = swarm.replica(view, RECORDS, "api", "node03")
    assert other["running"] == {} and "no task of it runs on this host now" in other["note"]
    assert "not in the swarm now" in swarm.replica(observe.View(), [], "api", "pc2")["note"]


def test_the_logs_command_is_one_argv_for_every_task():
    assert swarm.logs_command("fr-one", "api", 50, 600.0, True) == [
        "docker", "service", "logs", "--no-trunc", "--tail", "50", "--since", "600s", "--timestamps", "fr-one_api"]
    assert swarm.logs_command("fr-one", "api", 100, None, False)[-1] == "fr-one_api"


def test_fab_logs_and_versions_of_a_swarm_service_go_to_the_manager(inv, monkeypatch):  # noqa: F811
    assert swarm.is_swarm_service(inv, "api")
    with pytest.raises(RolloutError, match="drop --host"):
        operate.logs(inv, "api", host="pc2")
    seen = {}
    monkeypatch.setattr(swarm, "versions", lambda i, s, h: seen.setdefault("versions", (s, h)))
    operate.versions(inv, "api")
    assert seen["versions"] == ("api", None)


def test_versions_offer_fab_rollback_only_where_it_would_go_back():
    """Seen on the lab: after `fab rollback -s S` (rollback_completed) fab versions still said "back to the previous spec:
    fab rollback -s S", which then refused ("Swarm already rolled S back") and sent the operator to fab versions again.
    The note says what fab rollback would do with Swarm's previous spec, as rollback.refusal/unchanged judge it."""
    def note(svc):
        return swarm.replica(observe.View(nodes={"n1": "pc2"}, services={"api": svc}, tasks={}), [], "api", "pc2")["note"]
    assert "back to the previous spec: fab rollback -s api;" in note(service({"State": "completed"}))
    for svc, why in ((service({"State": "rollback_completed"}), "Swarm already rolled api back"),
                     (service({"State": "completed"}, previous=False), "Swarm keeps no previous spec of api")):
        said = note(svc)
        assert "back to the previous spec: fab rollback" not in said and f"not fab rollback -s api: {why}" in said, said
        assert "fab rollback -s api --to TAG" in said


def test_a_host_without_a_running_task_is_said_elsewhere_only_where_one_runs_elsewhere():
    """Seen on the lab (a rollback Swarm paused, every task failing): fab versions said "(Swarm places it elsewhere)"
    of a global service that ran nowhere, because some task of it existed. Said now only where one runs, naming where."""
    failed = {"ID": "t1", "NodeID": "n1", "DesiredState": "ready", "Status": {"State": "failed"},
              "Spec": {"ContainerSpec": {"Image": f"{REPO}:t-good@{OLD}"}}}
    view = observe.View(nodes={"n1": "pc2", "n2": "node03"}, services={"api": service({"State": "rollback_paused"})},
                        tasks={"api": [failed]})
    note = swarm.replica(view, [], "api", "pc2")["note"]
    assert "no task of it runs on this host now" in note and "elsewhere" not in note, note
    view.tasks["api"].append(dict(failed, ID="t2", NodeID="n2", DesiredState="running", Status={"State": "running"}))
    assert "no task of it runs on this host now (Swarm runs it on node03)" in swarm.replica(view, [], "api", "pc2")["note"]
