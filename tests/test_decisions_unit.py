"""The transaction's decisions, from plain values: no Docker, no journal, no host."""

from __future__ import annotations

from agent import contract, decisions
from agent.decisions import ServiceResult
from agent.vocabulary import Outcome

RUNNING = {contract.TAG: "20261126-bbbbbbb", contract.DIGEST: "sha256:b", contract.ROLLOUT_ID: "r-new",
           contract.PREV_TAG: "20261101-aaaaaaa-prev", contract.PREV_DIGEST: "sha256:a"}


def test_pin_what_runs_unless_it_failed_its_gate():
    assert decisions.pin_for({}, False) == decisions.Pin(True, "", "")
    good = decisions.pin_for(RUNNING, False)
    assert good.pin and good.prev_tag == "20261126-bbbbbbb-prev" and good.prev_digest == "sha256:b"
    bad = decisions.pin_for(RUNNING, True)
    assert not bad.pin and bad.prev_tag == "20261101-aaaaaaa-prev" and "failed its gate in rollout r-new" in bad.note


def test_start_first_needs_something_serving_and_a_proxy():
    assert decisions.start_first("start-first", True, True)
    assert not decisions.start_first("start-first", False, True)
    assert not decisions.start_first("start-first", True, False)
    assert not decisions.start_first("stop-first", True, True)


def test_revert_target_covers_every_case():
    step: dict = {}
    t = decisions.revert_target("svc", step, RUNNING, True, "r-new", {"image": "old"}, None)
    assert t.outcome == "" and t.config == {"image": "old"}
    t = decisions.revert_target("svc", step, RUNNING, True, "r-other", {"image": "old"}, None)
    assert t.outcome == Outcome.REFUSED and t.check == "not-this-rollout"
    t = decisions.revert_target("svc", {"to_tag": "20261126-bbbbbbb"}, RUNNING, True, "r-new", {}, None)
    assert t.outcome == Outcome.SKIPPED and "already runs" in t.message
    t = decisions.revert_target("svc", {"to_tag": "20261001-ccccccc"}, RUNNING, True, "", {}, ({}, "svc never ran it"))
    assert t.outcome == Outcome.REFUSED and t.check == "no-such-version" and "never ran it" in t.message
    t = decisions.revert_target("svc", {"to_tag": "20261001-ccccccc"}, RUNNING, True, "", {}, ({"image": "c"}, ""))
    assert t.config == {"image": "c"}
    # removed by hand, nothing committed here to go back from
    t = decisions.revert_target("svc", step, {}, False, "", {}, None)
    assert t.outcome == Outcome.SKIPPED and "not running here" in t.message
    # removed by hand, the last committed rollout's recorded configuration
    assert decisions.revert_target("svc", step, {}, False, "r-new", {"image": "old"}, None).config == {"image": "old"}
    # new in the rollout being reverted phase-wide: removed
    fresh = {k: v for k, v in RUNNING.items() if k not in (contract.PREV_TAG, contract.PREV_DIGEST)}
    t = decisions.revert_target("svc", {"remove_if_no_prev": True}, fresh, True, "r-new", {}, None)
    assert t.outcome == Outcome.REMOVED
    t = decisions.revert_target("svc", step, RUNNING, True, "r-new", {}, None)
    assert t.outcome == Outcome.REFUSED and t.check == "no-recorded-config"


def test_a_rollback_of_a_named_service_with_nothing_to_go_back_to_is_refused_not_a_quiet_noop():
    """Found by two exploratory runs: `fab rollback -p P -s S` of a first release, or of one whose container was removed
    by hand, said 'skipped ... NOOP' and exited 0 (a script's `fab rollback && ...` went on)."""
    named = {"named": True}
    # running its first container: a phase rollback leaves it alone (skipped); one that names it is refused
    assert decisions.revert_target("svc", {}, RUNNING, True, "r-new", {}, None, first=True).outcome == Outcome.SKIPPED
    t = decisions.revert_target("svc", named, RUNNING, True, "r-new", {}, None, first=True)
    assert t.outcome == Outcome.REFUSED and t.check == "no-earlier-version" and "nothing was changed" in t.message
    # removed by hand after its first release: refused either way (the service is down), with the way back up
    for step in ({}, named):
        t = decisions.revert_target("svc", step, {}, False, "r-new", {}, None, first=True)
        assert t.outcome == Outcome.REFUSED and "not running here (removed by hand?): fab rollout" in t.message
    # never committed here at all: skipped in a phase rollback, refused when named
    assert decisions.revert_target("svc", {}, {}, False, "", {}, None).outcome == Outcome.SKIPPED
    assert decisions.revert_target("svc", named, {}, False, "", {}, None).outcome == Outcome.REFUSED


def test_versions_marks_no_rollback_target_whose_configuration_went_with_its_container():
    """Found by an exploratory run: after the container was removed by hand, fab versions offered 'rollback --to' for a
    version whose configuration no rollout had set aside; --to then refused it."""
    from playbooks.render import versions_text

    row = {"tag": "T1", "digest": "sha256:" + "1" * 64, "ts": 0, "rollout_id": "r-1", "operator": "op", "kind": "rollout",
           "outcome": "committed", "image_present": True, "running": False}
    text = versions_text({"replicas": [{"service": "svc", "host": "pc2", "running": {}, "versions": [
        {**row, "config_recorded": False}, {**row, "rollout_id": "r-2", "tag": "T2", "config_recorded": True}]}]})
    assert "- (configuration not kept)" in next(x for x in text.splitlines() if "r-1" in x)
    assert "rollback --to" in next(x for x in text.splitlines() if "r-2" in x)


def _r(service: str, outcome: str, action="replace", **kw) -> ServiceResult:
    return ServiceResult(service, action, outcome=outcome, tried_tag="T2", tried_digest="sha256:2", tried_config="cfg:x", **kw)


def test_freeze_exactly_what_failed_on_its_own():
    d = decisions.freeze_after([_r("a", Outcome.REVERTED), _r("b", Outcome.REVERTED, check="phase-revert")], {"a": "T2", "b": "T9"})
    assert d.freeze == {"a": {"tag": "T2", "digest": "sha256:2", "config": "cfg:x"}} and d.releases == {"a": "T2"}
    away = decisions.freeze_after([_r("a", Outcome.REVERTED, at_fault=False)], {"a": "T2"})
    assert away.freeze == {} and not away.thaw, "the evidence pointed away from the release: no freeze, no thaw"
    restart = decisions.freeze_after([_r("a", Outcome.REVERTED, action="restart")], {})
    assert restart.freeze == {}
    assert decisions.freeze_after([_r("a", Outcome.COMMITTED)], {}).thaw
    assert not decisions.freeze_after([_r("a", Outcome.COMMITTED, action="restart")], {}).thaw


def test_recovery_commits_only_what_passed_when_the_host_had_decided_so():
    assert decisions.recovery_action(True, True, False, "revert-phase") == "commit"
    assert decisions.recovery_action(True, False, False, "revert-phase") == "restore"
    assert decisions.recovery_action(True, False, False, "revert-service") == "commit"
    assert decisions.recovery_action(False, True, False, "stop") == "restore"


def test_the_summary_is_good_unless_something_needs_an_operator(host_state):
    ok = decisions.summary([_r("a", Outcome.COMMITTED)], 1.0)
    assert ok["ok"] and ok["state"] == "good"
    bad = decisions.summary([_r("a", Outcome.REVERT_FAILED)], 1.0)
    assert not bad["ok"] and bad["state"] == "needs-operator"
    rev = decisions.summary([_r("a", Outcome.REVERTED, action="revert"), _r("b", Outcome.SKIPPED, action="revert")], 1.0)
    assert rev["ok"] and rev["state"] == "good"


def test_one_refusal_shape():
    r = decisions.refuse(ServiceResult("a", "replace"), "foreign-container", "not ours; nothing was stopped")
    assert (r.outcome, r.check, r.message) == (Outcome.REFUSED, "foreign-container", "not ours; nothing was stopped")


def test_the_freeze_says_how_each_failed_release_ended_not_always_reverted():
    """A new service's failed first release was removed, not reverted: the refusal shown later quotes this reason."""
    results = [_r("web", Outcome.REVERTED), _r("fresh", Outcome.REMOVED), _r("stuck", Outcome.REVERT_FAILED)]
    reason = decisions.freeze_reason("r-1", results, {"web": "T2", "fresh": "T1", "stuck": "T3"})
    assert reason == ("rollout r-1 failed: fresh:T1 failed with its configuration and was removed (it had no earlier version);"
                      " stuck:T3 failed with its configuration and was not brought back (its revert failed);"
                      " web:T2 failed with its configuration and was reverted to its previous version")
