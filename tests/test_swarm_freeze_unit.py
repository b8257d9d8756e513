"""Swarm's rollback freezes the phase as the SSH push's revert does (no hosts: the agent's op runs in-process).

The controller asks each host's agent, through its `freeze` op, for the record the SSH push's host
transaction writes itself; playbooks/freezes.blocking then refuses the same release with the same
message, `fab thaw` lifts it, and a clean commit lifts an automatic one.
"""

from __future__ import annotations

import pytest

from agent import freeze as host_freeze
from agent import ops
from agent.vocabulary import Outcome
from playbooks import freezes, transport
from playbooks.plan import CREATE, REPLACE, Plan, Step
from playbooks.swarm import freeze

OLD, NEW = "sha256:" + "0" * 64, "sha256:" + "1" * 64
SPEC = {"name": "web", "repo": "reg/core", "tag": "t-bad", "digest": NEW, "env": {"A": "1"}, "ports": ["9300:8080"]}


def plan(tag: str = "t-bad", digest: str = NEW, spec: dict | None = None, rid: str = "r-1") -> Plan:
    s = {**(spec or SPEC), "tag": tag, "digest": digest}
    return Plan(rid, "swarm-web", "op", [Step(h, "web", REPLACE, "t-good", OLD, tag, digest, s) for h in ("mainpc", "pc2")])


def end(outcome: str, check: str, service: str = "web") -> dict:
    return {"service": service, "action": REPLACE, "outcome": outcome, "check": check, "tried_tag": "t-bad",
            "tried_digest": NEW, "engine": "swarm", "message": "..."}


def results(**per_host: list[dict]) -> dict[str, transport.CallResult]:
    return {h: transport.CallResult(h, True, {"protocol": transport.PROTOCOL, "ok": True, "data": {"services": s}})
            for h, s in per_host.items()}


@pytest.fixture
def agents(tmp_path, monkeypatch):
    """transport.on_hosts answered by each host's own agent op, in-process, each host with its own state directory."""
    calls: list[tuple[str, dict]] = []

    def on_hosts(inv, hosts, op, args_for, timeout=0, pool=None, **kw):
        out = {}
        for h in hosts:
            monkeypatch.setenv("FLEETROLL_STATE_DIR", str(tmp_path / h))
            calls.append((h, args_for(h)))
            a = ops.dispatch(op, args_for(h), lambda e: None)
            out[h] = transport.CallResult(h, a["ok"], a, "" if a["ok"] else a["msg"])
        return out

    monkeypatch.setattr(transport, "on_hosts", on_hosts)

    def facts(h: str) -> dict:
        """Host h's facts as preflight reads them; h's state directory stays the current one after."""
        monkeypatch.setenv("FLEETROLL_STATE_DIR", str(tmp_path / h))
        return {"freezes": host_freeze.all_freezes()}

    yield calls, facts


def test_only_what_swarm_was_seen_to_roll_back_is_frozen():
    res = results(mainpc=[end(Outcome.REVERTED, "swarm-update")],
                  pc2=[end(Outcome.NEEDS_OPERATOR, "swarm-unobserved")])
    got = freeze.decide(res, plan())
    assert got == {"mainpc": {"web": {"tag": "t-bad", "digest": NEW, "config": host_freeze.config_fingerprint(plan().steps[0].spec)}}}
    # not observed, paused, a plain `fab rollback` (Swarm's previous spec, asked for), a committed one, a new service
    # removed with no failed task seen on this host: nothing
    for o, c in [(Outcome.NEEDS_OPERATOR, "swarm"), (Outcome.REVERTED, "swarm-rollback"), (Outcome.COMMITTED, "swarm"),
                 (Outcome.REMOVED, "swarm-create"), (Outcome.REFUSED, "swarm-deploy")]:
        assert freeze.decide(results(mainpc=[end(o, c)]), plan()) == {}, (o, c)


def test_a_rollback_freezes_each_host_and_the_same_release_is_refused_with_the_ssh_push_s_message(agents):
    calls, facts = agents
    res = results(mainpc=[end(Outcome.REVERTED, "swarm-update")], pc2=[end(Outcome.REVERTED, "swarm-update")])
    lines = freeze.record(None, plan(), res, None)
    assert [h for h, _ in calls] == ["mainpc", "pc2"] and all(a["auto"] and a["phase"] == "swarm-web" for _, a in calls)
    assert len(lines) == 2 and lines[0].startswith("frozen: phase swarm-web on mainpc against web:t-bad@111111111111")
    for h in ("mainpc", "pc2"):
        s = res[h].answer["data"]["services"][0]
        assert s["frozen"] and s["tried_config"].startswith("cfg:")  # ending.describe_failure says "frozen: ..." from it
        (f,) = facts(h)["freezes"]
        assert f["auto"] and f["releases"] == {"web": "t-bad"} and f["rollout_id"] == "r-1" and f["by"] == "op"
        assert f["failed"] == {"web": {"tag": "t-bad", "digest": NEW, "config": s["tried_config"]}}
    # the next rollout of the same release is refused, host by host, with the SSH push's own words
    all_facts = {h: facts(h) for h in ("mainpc", "pc2")}
    msgs = freezes.blocking(plan(rid="r-2"), all_facts, "inv.yml")
    assert len(msgs) == 2 and all("automatically: rollout r-1 ended in Swarm's rollback: web:t-bad failed" in m
                                  and "web:t-bad@111111111111" in m
                                  and "fab thaw --phase swarm-web" in m for m in msgs), msgs
    # a new image, or the same image with a fixed configuration, goes ahead
    assert freezes.blocking(plan("t-fix", "sha256:" + "2" * 64, rid="r-3"), all_facts, "inv.yml") == []
    assert freezes.blocking(plan(spec={**SPEC, "env": {"A": "2"}}, rid="r-3"), all_facts, "inv.yml") == []
    # fab thaw (operate.set_freeze's request) lifts it
    for h in ("mainpc", "pc2"):
        facts(h)
        assert ops.freeze_op({"phase": "swarm-web", "reason": "fixed upstream", "thaw": True, "operator": "op"})["changed"]
    assert freezes.blocking(plan(rid="r-4"), {h: facts(h) for h in ("mainpc", "pc2")}, "inv.yml") == []


def test_a_host_that_does_not_record_it_keeps_reverted_and_the_report_says_to_freeze_by_hand(agents, monkeypatch):
    def lost(inv, hosts, op, args_for, **kw):
        return {h: transport.CallResult(h, False, None, f"{h}: SSH connection lost", "link-lost") for h in hosts}

    monkeypatch.setattr(transport, "on_hosts", lost)
    res = results(mainpc=[end(Outcome.REVERTED, "swarm-update")])
    (line,) = freeze.record(None, plan(), res, None)
    assert line.startswith("FAILED recording the automatic freeze of phase swarm-web on mainpc") and "fab freeze" in line
    s = res["mainpc"].answer["data"]["services"][0]
    assert s["outcome"] == Outcome.REVERTED and not s.get("frozen")


def test_a_manual_freeze_is_not_written_over_and_the_report_says_it_stands(agents):
    calls, facts = agents
    facts("mainpc")  # mainpc's state directory, where an operator froze the phase by hand
    host_freeze.write("swarm-web", "driver upgrade", "alice")
    (line,) = freeze.record(None, plan(), results(mainpc=[end(Outcome.REVERTED, "swarm-update")]), None)
    assert "stays frozen by alice" in line and "driver upgrade" in line
    assert [f["auto"] for f in facts("mainpc")["freezes"]] == [False]


def test_the_agent_refuses_an_automatic_freeze_of_another_shape(host_state):
    bad = [{"auto": True}, {"auto": True, "failed": {"web": {"tag": "t"}}}, {"auto": True, "failed": ["web"]},
           {"auto": True, "failed": {"web": {"tag": "t", "digest": 1, "config": "c"}}},
           {"auto": True, "failed": {"web": {"tag": "t", "digest": "d", "config": "c"}}, "releases": {"web": ["t"]}}]
    for args in bad:
        a = ops.freeze_op({"phase": "p", "reason": "r", "operator": "op", **args})
        assert not a["ok"], args
    assert host_freeze.read("p") is None and host_freeze.automatic({"auto": False, "failed": "x"}) == {}


def test_a_clean_commit_lifts_the_automatic_freeze_only(agents):
    calls, facts = agents
    freeze.record(None, plan(), results(mainpc=[end(Outcome.REVERTED, "swarm-update")]), None)
    fixed = plan("t-fix", "sha256:" + "2" * 64, rid="r-5")
    now = {h: facts(h) for h in ("mainpc", "pc2")}
    ok = results(mainpc=[end(Outcome.COMMITTED, "swarm")], pc2=[end(Outcome.COMMITTED, "swarm")])
    assert freeze.lifts(now, fixed, ok) == ["mainpc"]  # pc2 had no freeze: nothing to ask it
    assert freeze.lifts(now, fixed, results(mainpc=[end(Outcome.NEEDS_OPERATOR, "swarm")])) == []
    assert freeze.lifts(now, fixed, results(mainpc=[end(Outcome.NOOP, "swarm")])) == []  # nothing changed there
    assert freeze.lift(None, fixed, ok, now, None) == ["mainpc: the automatic freeze of phase swarm-web lifted: rollout r-5 committed"]
    assert facts("mainpc")["freezes"] == []
    assert calls[-1][1]["only_auto"] and calls[-1][1]["thaw"]


def removed(status: str = "failed", error: str = "task: non-zero exit (3)", service: str = "web") -> dict:
    """A new service's end on a host after deploy._remove_failed_creations saw it gone, with that host's task evidence."""
    return {**end(Outcome.REMOVED, "swarm-create", service), "action": CREATE,
            "details": {"status": status, "exit_code": 3, "restarts": 3, "error": error, "task": "abcdef012345"},
            "message": "no task of t-bad became healthy on mainpc within web's wait; it had no earlier version, so fleetroll"
                       " removed the new service (seen gone)"}


def test_a_new_service_that_failed_and_was_removed_freezes_only_where_its_task_ran_and_failed():
    healthy = {**end(Outcome.REMOVED, "swarm-create"), "action": CREATE,
               "message": "Swarm runs task x of t-bad on pc2: healthy, but the service failed on mainpc; it had no earlier"
                          " version, so fleetroll removed the new service (seen gone)"}
    got = freeze.decide(results(mainpc=[removed()], pc2=[healthy]), plan())
    assert list(got) == ["mainpc"] and got["mainpc"]["web"]["digest"] == NEW
    # rejected or never placed, or an error that points at the node rather than the release: nothing
    port_held = ("starting container failed: driver failed programming external connectivity on endpoint fr-new_fresh.1.x"
                 " (3c9e): Bind for 0.0.0.0:9555 failed: port is already allocated")  # as a lab dockerd said it
    for d in (removed("rejected", "no suitable node (insufficient resources on 2 nodes)"), removed("failed", port_held),
              removed("failed", "No such container: 1f2e"), removed("failed", "")):
        assert freeze.decide(results(mainpc=[d]), plan()) == {}, d
    unhealthy = removed("failed", "task: non-zero exit (137): dockerexec: unhealthy container")
    assert list(freeze.decide(results(mainpc=[unhealthy]), plan())) == ["mainpc"]


def test_a_removed_new_service_is_frozen_and_the_same_create_is_refused_until_a_fix(agents):
    calls, facts = agents
    res = results(mainpc=[removed()])
    (line,) = freeze.record(None, plan(), res, None)
    assert line.startswith("frozen: phase swarm-web on mainpc against web:t-bad@111111111111") and \
        "after the removal of a new service that failed" in line, line
    assert "ended in the removal of a new service that failed" in calls[0][1]["reason"]
    assert res["mainpc"].answer["data"]["services"][0]["frozen"]
    create = Plan("r-2", "swarm-web", "op", [Step("mainpc", "web", CREATE, "", "", "t-bad", NEW, {**SPEC, "tag": "t-bad"})])
    (msg,) = freezes.blocking(create, {"mainpc": facts("mainpc")}, "inv.yml")
    # what happened to it, not "reverted": a new service has nothing to go back to
    assert "automatically: rollout r-1 ended in the removal of a new service that failed" in msg and "revert" not in msg, msg
    assert "web:t-bad@111111111111" in msg
    fixed = Plan("r-3", "swarm-web", "op", [Step("mainpc", "web", CREATE, "", "", "t-fix", "sha256:" + "2" * 64,
                                                 {**SPEC, "tag": "t-fix", "digest": "sha256:" + "2" * 64})])
    assert freezes.blocking(fixed, {"mainpc": facts("mainpc")}, "inv.yml") == []
