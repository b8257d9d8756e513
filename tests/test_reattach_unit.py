"""Re-attaching after a lost link reads the journal of the transaction that was sent, not of the rollout around it.

Found by an exploratory run: the phase revert (rollout id '<rollout>-revert') lost its link on mainpc; the re-attach
read the rollout's own journal, whose 'committed' became the revert's outcome: the phase was reported REVERTED (exit 4)
while mainpc still ran the new release.
"""

from __future__ import annotations

from types import SimpleNamespace

from playbooks import hostcalls, transport
from playbooks.plan import Plan


def test_a_phase_revert_that_lost_its_link_is_followed_in_the_revert_s_own_journal(monkeypatch):
    asked: list[str] = []

    def on_hosts(inv, hosts, op, request, **kw):
        if op == "rollout":
            return {h: transport.CallResult(host=h, ok=False, error="link lost", error_kind="link-lost") for h in hosts}
        rid = request(hosts[0])["rollout_id"]
        asked.append(rid)
        outcome = "reverted" if rid.endswith("-revert") else "committed"
        return {h: transport.CallResult(host=h, ok=True, answer={"protocol": transport.PROTOCOL, "ok": True,
                                                                 "data": {"services": [{"service": "svc", "outcome": outcome}]}})
                for h in hosts}

    monkeypatch.setattr(transport, "on_hosts", on_hosts)
    plan = Plan("r1", "core", "op", [])
    report = SimpleNamespace(agent_calls=0, messages=[])
    got = hostcalls.run_on_hosts(None, plan, ["mainpc"], lambda h: {"rollout_id": "r1-revert"}, None, None, report, None)
    assert asked == ["r1-revert"]
    assert got["mainpc"].answer["data"]["services"][0]["outcome"] == "reverted"
    asked.clear()
    hostcalls.run_on_hosts(None, plan, ["mainpc"], lambda h: {"steps": []}, None, None, report, None)
    assert asked == ["r1"]  # a call without an id of its own is the plan's
