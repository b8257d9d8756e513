"""A failed canary's release is refused on the hosts it did not reach (no hosts: the agent's op runs in-process).

Found by an operator run on the lab: the canary on mainpc failed and was reverted, pc2 was not
started, and `fab rollout -p P -H pc2` then deployed the same failed digest to pc2.
"""

from __future__ import annotations

from agent.vocabulary import Outcome
from playbooks import freeze_spread, freezes
from playbooks.plan import REPLACE, Plan, Step

from .test_swarm_freeze_unit import agents, results  # noqa: F401 - the fixture and its helper

OLD, BAD, FIX = "sha256:" + "0" * 64, "sha256:" + "b" * 64, "sha256:" + "c" * 64


def spec(host: str, digest: str = BAD, tag: str = "t-bad") -> dict:
    return {"name": "multi", "repo": "reg/core", "tag": tag, "digest": digest, "env": {"MACHINE": host}}


def plan(hosts=("mainpc", "pc2", "node3"), digest: str = BAD, tag: str = "t-bad", rid: str = "r-1") -> Plan:
    return Plan(rid, "multi", "op", [Step(h, "multi", REPLACE, "t-good", OLD, tag, digest, spec(h, digest, tag)) for h in hosts])


def failed_canary() -> dict:
    return {"service": "multi", "action": REPLACE, "outcome": Outcome.REVERTED, "check": "health-deadline", "frozen": True,
            "tried_tag": "t-bad", "tried_digest": BAD}


def skipped() -> dict:
    return {"service": "multi", "action": REPLACE, "outcome": "skipped", "check": "batch", "message": "not started"}


def test_only_the_hosts_the_failure_did_not_reach_are_asked_each_with_its_own_configuration():
    committed = {**skipped(), "outcome": Outcome.COMMITTED, "check": ""}
    sent_back = {**skipped(), "outcome": Outcome.REVERTED, "check": "phase-revert"}  # it passed there; the phase went back
    lost = {**skipped(), "outcome": Outcome.NEEDS_OPERATOR, "check": "transaction"}
    got = freeze_spread.decide(plan(("mainpc", "pc2", "node3", "node4", "node5")),
                               results(mainpc=[failed_canary()], pc2=[skipped()], node3=[committed], node4=[sent_back], node5=[lost]))
    assert list(got) == ["pc2"], "only where it never ran: not where it passed, was sent back, or was not observed"
    from agent.freeze import config_fingerprint

    assert got["pc2"] == {"multi": {"tag": "t-bad", "digest": BAD, "config": config_fingerprint(spec("pc2"))}}
    assert freeze_spread.decide(plan(), results(mainpc=[{**failed_canary(), "frozen": False}], pc2=[skipped()])) == {}, \
        "a failure that points away from the release froze nothing, and spreads nothing"
    assert freeze_spread.decide(plan(digest=FIX), results(mainpc=[failed_canary()], pc2=[skipped()])) == {}, "another release"


def test_a_failed_canary_freezes_the_hosts_it_kept_from_starting_and_the_same_release_is_refused_there(agents):  # noqa: F811
    calls, facts = agents
    res = results(mainpc=[failed_canary()], pc2=[skipped()])
    (line,) = freeze_spread.record(None, plan(("mainpc", "pc2")), res, None)
    assert [h for h, _ in calls] == ["pc2"] and calls[0][1]["auto"] and "multi:t-bad failed on mainpc" in calls[0][1]["reason"]
    assert line.startswith("frozen: phase multi on pc2 against multi:t-bad@bbbbbbbbbbbb") and "it failed on mainpc" in line, line
    assert res["pc2"].answer["data"]["services"][0]["frozen"]
    # `fab rollout -p multi -H pc2` with the same release: refused on pc2
    (msg,) = freezes.blocking(plan(("pc2",), rid="r-2"), {"pc2": facts("pc2")}, "inv.yml")
    assert "frozen on pc2" in msg and "multi:t-bad failed on mainpc" in msg and "fab thaw --phase multi" in msg, msg
    assert freezes.blocking(plan(("pc2",), digest=FIX, tag="t-fix", rid="r-3"), {"pc2": facts("pc2")}, "inv.yml") == []
