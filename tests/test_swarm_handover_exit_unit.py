"""A move to Swarm whose hand-over did not finish is not a clean commit: needs-operator in the results the report, the
exit code and the ledger's `finished` record come from (no host; the proxies' answers faked)."""

from __future__ import annotations

from agent.vocabulary import Outcome, State
from playbooks import ending, transport
from playbooks.swarm import handover

from .test_swarm_handover_unit import _answers, _result, inv_of


def test_a_failed_hand_over_makes_that_service_needs_operator_and_the_rollout_not_ok(tmp_path, monkeypatch):
    from playbooks import operate

    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    monkeypatch.setattr(operate, "remove", lambda *a, **k: {"removed": []})
    inv = inv_of(tmp_path, "swarm")
    facts = {"pc2": {"docker": {"containers": [{"name": "web", "running": True}]}}}
    _calls, call = _answers(ok=False)
    monkeypatch.setattr(handover, "call", call)
    results = {h: _result(h, {"web": "committed"}) for h in ("mainpc", "pc2")}
    failed: list[tuple[str, str, str]] = []
    handover.to_swarm(inv, "web", "r1", handover.plan(inv, "web"), results, facts, failed=failed)
    assert [(h, s) for h, s, _ in failed] == [("pc2", "web")]
    handover.unfinished(results, failed)
    (pc2,) = results["pc2"].answer["data"]["services"]
    assert pc2["outcome"] == Outcome.NEEDS_OPERATOR and pc2["check"] == "handover"
    assert "the hand-over on pc2 did not finish: 0 of 2 Swarm task(s) UP" in pc2["message"]
    assert results["mainpc"].answer["data"]["services"][0]["outcome"] == "committed", "mainpc ran no SSH container"
    state, needs = ending.derive_state(ending.host_outcomes(results))
    assert state == State.NEEDS_OPERATOR and any("pc2 web" in n for n in needs), (state, needs)


def test_a_proxy_host_swarm_did_not_report_on_gets_an_entry_of_its_own():
    results = {"mainpc": _result("mainpc", {"web": "committed"})}
    handover.unfinished(results, [("pc2", "web", "no answer: timeout")])
    (d,) = results["pc2"].answer["data"]["services"]
    assert d["outcome"] == Outcome.NEEDS_OPERATOR and d["message"] == "the hand-over on pc2 did not finish: no answer: timeout"
    assert isinstance(results["pc2"], transport.CallResult)
    assert ending.derive_state(ending.host_outcomes(results))[0] == State.NEEDS_OPERATOR
