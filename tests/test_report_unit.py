"""The failure report an operator acts on, and the filters that must name something (no hosts needed).

The host side runs against the fake daemon; the controller side (ending.conclude, targets,
the exit code of a frozen dry run) is pure over what the hosts answered.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from agent import freeze
from playbooks import ending, executor, targets, transport
from playbooks.inventory import load
from playbooks.plan import Plan
from playbooks.render import rollout_text

from .test_transaction_unit import NEW_D, OLD_D, REPO, by_service, run, running_old, spec, step

SECRET = "s3cr3t-value-9f8e7d"


@pytest.fixture
def secret_dir(tmp_path, monkeypatch):
    d = tmp_path / "secrets"
    d.mkdir()
    (d / "tok").write_text(SECRET + "\n")
    os.chmod(d / "tok", 0o600)
    monkeypatch.setenv("FLEETROLL_SECRETS_DIR", str(d))
    return d


def failed_release(daemon) -> dict:
    """A release that crashes with its secret in the crash message, reverted by its host."""
    running_old(daemon)
    img = daemon.image(REPO, NEW_D, behaviour="bad")
    img.log_lines = ["\x1b[31mTraceback: KeyError MODEL_PATH\x1b[0m", "token was $TOKEN", "rag-api: crashing (exit 3)"]
    out = run(daemon, [step(spec(env={"MACHINE": "mainpc", "TOKEN": {"secret": "tok"}}))])
    return by_service(out)["svc"]


def _answer(services: list[dict], ok: bool = False) -> transport.CallResult:
    return transport.CallResult(host="mainpc", ok=ok, answer={"protocol": transport.PROTOCOL, "ok": ok, "data": {"services": services}})


def test_the_report_names_what_failed_what_runs_now_the_crash_message_and_the_freeze(host_state, daemon, secret_dir, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    s = failed_release(daemon)
    assert s["outcome"] == "reverted" and s["frozen"]
    assert any("rag-api: crashing (exit 3)" in line for line in s["details"]["last_logs"])
    rep = executor.RolloutReport("r-new", "gpu", False, "failed", Plan("r-new", "gpu", "op", []))
    ending.conclude("rollout", rep, {"mainpc": _answer([s])}, {"rollout_id": "r-new", "phase": "gpu"}, time.monotonic() - 4.2,
                    "inv/fleet.yml")
    text = rollout_text(rep)
    assert rep.state == "reverted" and executor.exit_code([rep.state]) == 4
    assert "tried: 20261126-bbbbbbb@bbbbbbbbbbbb" in text, text
    assert "now:   20261101-aaaaaaa@aaaaaaaaaaaa — the old container itself" in text
    assert "20261126-bbbbbbb (failed) -> 20261101-aaaaaaa@aaaaaaaaaaaa" in text, "the row says tried -> now, not old -> old"
    assert "| rag-api: crashing (exit 3)" in text and "Traceback: KeyError MODEL_PATH" in text
    # fab logs would show the old container now running: the failed one's lines are the ones above
    assert "frozen: phase gpu on mainpc" in text and "next: read its last log lines above (that container is gone)" in text, text
    assert "in 4.2s" in text, "the elapsed time is the command's"
    blob = json.dumps(rep.to_json())
    assert "rag-api: crashing (exit 3)" in blob and '"next"' in blob and '"frozen": true' in blob
    for out in (text, blob, (tmp_path / "ledger.jsonl").read_text()):
        assert SECRET not in out and "\x1b[" not in out and "\\u001b" not in out


def test_a_lost_answer_is_needs_operator_never_reverted(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    rep = executor.RolloutReport("r-x", "gpu", False, "failed", Plan("r-x", "gpu", "op", []))
    lost = transport.CallResult(host="mainpc", ok=False, error="link lost", error_kind="link-lost")
    ending.conclude("rollback", rep, {"mainpc": lost}, {"rollout_id": "r-x"}, time.monotonic(), "inv/fleet.yml")
    assert rep.state == "needs-operator" and executor.exit_code([rep.state]) == 5 and not rep.ok
    assert "REVERTED" not in rollout_text(rep)


def test_a_host_without_an_outcome_is_reported_with_what_it_was_asked_to_do_and_the_exact_tags(tmp_path, monkeypatch):
    """Found by an exploratory run: pc2's link dropped mid-gate and stayed down past the re-attach; the report said
    "FAILED pc2: SSH link lost ..." and "no outcome observed", not which service was mid-swap nor between which tags."""
    from playbooks.plan import Step

    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    steps = [Step("pc2", "core-pc2", "replace", "20261201-881a8f6", OLD_D, "20261201-27bf83f", NEW_D),
             Step("pc2", "rag-api", "noop", "20261101-aaaaaaa", OLD_D), Step("mainpc", "llm", "replace", "a", OLD_D, "b", NEW_D)]
    rep = executor.RolloutReport("r-x", "core", False, "failed", Plan("r-x", "core", "op", steps))
    lost = transport.CallResult(host="pc2", ok=False, error="SSH link lost during rollout", error_kind="link-lost")
    ending.conclude("rollout", rep, {"pc2": lost}, {"rollout_id": "r-x"}, time.monotonic(), "inv/fleet.yml")
    text = rollout_text(rep)
    assert rep.state == "needs-operator" and f"core-pc2 20261201-881a8f6 -> 20261201-27bf83f@{NEW_D[7:19]}" in text, text
    assert "rag-api" not in text and "llm" not in text and "fab status --hosts pc2" in text
    # A rollback's step carries the inventory's tag, not where it goes back to (review): its words say what it was asked
    back = Step("pc2", "core-pc2", "revert", "20261201-881a8f6", new_tag="20261201-881a8f6",
                reason="running release from rollout r-1")
    assert ending.in_flight(Plan("r", "core", "op", [back]), "pc2", "rollback") == (
        "\n  asked of it (rollback): core-pc2 (rollback of 20261201-881a8f6: running release from rollout r-1); not observed"
        " how it ended, so either may run now (nothing is claimed for them); the host finishes on its own: fab status"
        " --hosts pc2 and fab versions -s core-pc2 -H pc2 say which")


def test_a_rollback_that_reverted_is_reverted_and_one_with_nothing_to_do_is_noop(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    back = {"service": "svc", "action": "revert", "outcome": "reverted", "after_tag": "20261101-aaaaaaa", "after_digest": OLD_D,
            "prev_ref": f"{REPO}:20261101-aaaaaaa-prev", "prev_digest": OLD_D, "revert_gate": {"last": {"reason": "HTTP 200"}}}
    rep = executor.RolloutReport("r-b", "gpu", False, "failed", Plan("r-b", "gpu", "op", []))
    ending.conclude("rollback", rep, {"mainpc": _answer([back], ok=True)}, {"rollout_id": "r-b"}, time.monotonic(), "inv/fleet.yml")
    assert rep.state == "reverted" and rep.ok and "now on 20261101-aaaaaaa@aaaaaaaaaaaa" in "\n".join(rep.messages)
    same = {"service": "svc", "action": "revert", "outcome": "skipped", "message": "svc already runs 20261101-aaaaaaa"}
    rep2 = executor.RolloutReport("r-c", "gpu", False, "failed", Plan("r-c", "gpu", "op", []))
    ending.conclude("rollback", rep2, {"mainpc": _answer([same], ok=True)}, {"rollout_id": "r-c"}, time.monotonic(), "inv/fleet.yml")
    assert rep2.state == "noop" and executor.exit_code([rep2.state]) == 0


@pytest.fixture
def inv():
    from pathlib import Path

    return load(Path(__file__).resolve().parents[1] / "inventory" / "fleet.yml")


def test_filters_that_name_nothing_are_input_errors_with_the_valid_names(inv):
    first = inv.phases[1]
    other_host = next(h for h in inv.fleet.hosts if h not in targets.phase_hosts(inv, first.name))
    with pytest.raises(targets.TargetError, match=r"--hosts nohost: no such host .*; hosts: "):
        targets.check(inv, first.name, ["nohost"])
    with pytest.raises(targets.TargetError, match=rf"--hosts {other_host}: phase {first.name} has no service there; its hosts: "):
        targets.check(inv, first.name, [other_host])
    with pytest.raises(targets.TargetError, match=rf"--service nosvc: not a service of phase {first.name}; its services: "):
        targets.check(inv, first.name, None, "nosvc")
    targets.check(inv, first.name, targets.phase_hosts(inv, first.name), first.services[0])
    with pytest.raises(executor.RolloutError, match="no such host"):
        executor.rollback(inv, first.name, hosts=["nohost"])


def test_a_dry_run_that_a_freeze_would_refuse_exits_3():
    rep = executor.RolloutReport("r", "gpu", True, "dry-run", Plan("r", "gpu", "op", []))
    rep.frozen = True
    assert executor.exit_code([executor.report_state(rep)]) == 3


def test_freeze_records_carry_no_secret_value(host_state, daemon, secret_dir):
    failed_release(daemon)
    assert SECRET not in json.dumps(freeze.all_freezes())


def test_history_shows_what_the_hosts_reported_after_an_interruption(tmp_path, monkeypatch):
    from playbooks import ledger

    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    ledger.append("started", rollout_id="r-1", phase="gpu")
    ledger.append("interrupted", rollout_id="r-1", phase="gpu", reason="Ctrl-C")
    assert ledger.rollouts()[0]["final"].startswith("interrupted by the operator")
    assert ledger.pending() == {"r-1"}
    last = {"rollout_id": "r-1", "state": "finished", "outcome": {"state": "good", "services": [{"service": "svc", "outcome": "reverted"}]}}
    ledger.observe("mainpc", last)
    ledger.observe("mainpc", last)  # once per host, however often fab status looks
    e = ledger.rollouts()[0]
    assert e["final"] == "reverted" and "interrupted by the operator" in e["note"] and "finished on mainpc (svc reverted" in e["note"]
    assert len([r for r in ledger.read() if r["kind"] == "observed"]) == 1
    ledger.append("started", rollout_id="r-2")
    ledger.append("finished", rollout_id="r-2", final="committed")
    assert ledger.pending() == {"r-1"}, "a finished rollout leaves nothing pending"


def test_an_interrupted_rollout_whose_hosts_ended_apart_is_a_split_phase_that_needs_an_operator(tmp_path, monkeypatch):
    """Found by two exploratory runs: the controller killed (or Ctrl-C) between mainpc's commit and pc2's failure; the
    phase-wide revert never ran (mainpc on the new release, pc2 back on the old) and history said `reverted`."""
    from playbooks import ledger
    from playbooks.ending import Interrupted

    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    ledger.append("started", rollout_id="r-s", phase="core", policy="revert-phase")
    ledger.append("interrupted", rollout_id="r-s", phase="core", reason="Ctrl-C")
    for h, o in (("mainpc", "committed"), ("pc2", "reverted")):
        ledger.observe(h, {"rollout_id": "r-s", "state": "finished", "outcome": {"state": "good", "services": [
            {"service": f"core-{h}", "outcome": o}]}})
    e = ledger.rollouts()[0]
    assert e["final"] == "needs-operator", e
    assert e["note"].endswith("the phase is split: committed on mainpc, failed on pc2; its phase-wide revert (revert-phase,"
                              " the controller's) did not reach mainpc: fab rollback -p core -H mainpc sends it back, or fix"
                              " the release and roll the phase out again"), e["note"]
    ledger.append("started", rollout_id="r-t", phase="core", policy="stop")  # --on-failure stop: apart is what was asked
    for h, o in (("mainpc", "committed"), ("pc2", "reverted")):
        ledger.observe(h, {"rollout_id": "r-t", "state": "finished", "outcome": {"state": "good", "services": [
            {"service": f"core-{h}", "outcome": o}]}})
    assert next(x for x in ledger.rollouts() if x["rollout_id"] == "r-t")["final"] == "reverted"
    words = str(Interrupted("r-s", "core", ["mainpc", "pc2"], "revert-phase"))
    assert "The phase-wide revert (--on-failure revert-phase) is this controller's and will not run" in words
    assert "fab rollback -p core -H HOSTS" in words and "will not run" not in str(Interrupted("r", "core", ["mainpc"], "revert-phase"))


def test_a_finished_rollout_that_lost_a_host_takes_that_host_s_outcome_once_status_reads_it(tmp_path, monkeypatch):
    """Found by an exploratory run: a rollout that lost pc2's link ended needs-operator (right then); fab status later read
    that pc2 had reverted, and fab history still said needs-operator with no note."""
    from playbooks import ledger

    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    ledger.append("started", rollout_id="r-L", phase="cpu", policy="revert-phase")
    ledger.append("finished", rollout_id="r-L", phase="cpu", final="needs-operator", unobserved=["pc2"],
                  services=[{"host": "mainpc", "service": "a", "outcome": "reverted"}])
    assert ledger.rollouts()[0]["final"] == "needs-operator" and ledger.pending() == {"r-L"}
    ledger.observe("mainpc", {"rollout_id": "r-L", "state": "finished", "outcome": {"state": "good", "services": [
        {"service": "a", "outcome": "committed"}]}})  # a host the command did hear: its record stands
    ledger.observe("pc2", {"rollout_id": "r-L", "state": "finished", "outcome": {"state": "good", "services": [
        {"service": "b", "outcome": "reverted"}]}})
    e = ledger.rollouts()[0]
    assert e["final"] == "reverted", e
    assert "the command ended needs-operator (no outcome from pc2); fab status read later: pc2 ended b reverted (host good)" in e["note"]
    assert len([r for r in ledger.read() if r["kind"] == "observed"]) == 1
    assert ledger.pending() == set(), "every host it waited for was heard: its marker goes"
    # From an independent read: a host that failed without per-service rows (another needs-operator line) keeps the
    # command's state; only what was not observed is replaced by what status read later.
    ledger.append("started", rollout_id="r-M", phase="cpu", policy="revert-phase")
    ledger.append("finished", rollout_id="r-M", phase="cpu", final="needs-operator", unobserved=["pc2"],
                  needs_operator=["pc2: no outcome observed (link lost)", "node3: the host reported a failure without"
                                  " per-service outcomes: x"], services=[{"host": "mainpc", "service": "a", "outcome": "committed"}])
    ledger.observe("pc2", {"rollout_id": "r-M", "state": "finished", "outcome": {"state": "good", "services": [
        {"service": "b", "outcome": "committed"}]}})
    m = next(x for x in ledger.rollouts() if x["rollout_id"] == "r-M")
    assert m["final"] == "needs-operator" and "fab status read later: pc2 ended b committed" in m["note"], m
    # a marker damaged by a crash does not break every later status
    (tmp_path / "pending" / "r-broken").write_text("")
    assert "r-broken" in ledger.pending()


def test_an_interrupted_rollback_that_refused_a_service_is_refused_in_history_as_when_finished(tmp_path, monkeypatch):
    """From an independent read: the controller's ending made such a rollback `refused` (3), but a rollback the operator
    left with Ctrl-C, observed later by fab status, still read `reverted` in fab history."""
    from playbooks import ledger

    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    ledger.append("started", rollout_id="r-rb", phase="cpu", rollback=True)
    ledger.append("interrupted", rollout_id="r-rb", phase="cpu", reason="Ctrl-C")
    ledger.observe("pc2", {"rollout_id": "r-rb", "state": "finished", "outcome": {"state": "good", "services": [
        {"service": "a", "outcome": "reverted"}, {"service": "b", "outcome": "refused"}]}})
    assert ledger.rollouts()[0]["final"] == "refused"


def test_a_recovery_on_a_host_says_more_than_a_later_status_of_it(tmp_path, monkeypatch):
    from playbooks import ledger

    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    ledger.append("started", rollout_id="r-9")
    ledger.append("recovered", rollout_id="r-9", host="mainpc", state="good", services={"svc": "reverted"})
    ledger.observe("mainpc", {"rollout_id": "r-9", "state": "finished",
                              "outcome": {"state": "good", "services": [{"service": "svc", "outcome": "reverted"}]}})
    e = ledger.rollouts()[0]
    assert e["final"] == "reverted" and "recovered on mainpc (svc reverted; host good)" in e["note"]


def test_orphans_are_fleetroll_containers_the_inventory_no_longer_places():
    from playbooks.status import orphans

    cs = [{"name": "rag-api", "service": "rag-api", "tag": "T1", "status": "running"},
          {"name": "old-api", "service": "old-api", "tag": "T0", "status": "exited", "rollout_id": "r-0"},
          {"name": "rag-api--kept-1a2b3c4d", "service": "rag-api", "tag": "T0", "status": "exited"}]
    got = orphans(cs, ["rag-api"])
    assert [o["name"] for o in got] == ["old-api"] and got[0]["rollout_id"] == "r-0"
    assert orphans(cs, ["rag-api", "old-api"]) == []


def test_a_restart_s_next_step_says_what_is_true_of_that_outcome():
    """Found on the lab: a restart refused because the container was removed by hand said 'the old container serves again'."""
    from playbooks.ending import next_step

    gone = {"service": "vision-api", "outcome": "refused", "check": "not-running"}
    line = next_step("restart", "mainpc", gone, "gpu-mainpc", "inv.yml")
    assert "serves again" not in line and "fab rollout --phase gpu-mainpc" in line, line
    # Found by an exploratory run: a bare `fab rollback` there goes back one version *before* the last commit.
    assert "fab rollback -p gpu-mainpc -s vision-api -H mainpc --to TAG" in line and "(its last committed" not in line
    reverted = {"service": "vision-api", "outcome": "reverted", "check": "health-deadline"}
    assert next_step("restart", "mainpc", reverted, "gpu-mainpc", "inv.yml").endswith("the old container serves again")
    foreign = {"service": "vision-api", "outcome": "refused", "check": "foreign-container"}
    assert "serves again" not in next_step("restart", "mainpc", foreign, "gpu-mainpc", "inv.yml")


def test_a_failed_release_that_wrote_no_log_lines_is_not_sent_to_fab_logs():
    """Found by an exploratory run: a degraded release (no log lines) was reverted and the next step said
    `fab logs -s vision-api`, which shows the old container now running, not the one that failed."""
    from playbooks.ending import next_step

    s = {"service": "vision-api", "action": "replace", "outcome": "reverted", "check": "health-deadline", "details": {},
         "gate": {"last": {"status": 200, "body": '{"status": "degraded"}'}}}
    line = next_step("rollout", "mainpc", s, "gpu", "inv.yml")
    assert "fab logs" not in line and "it wrote no log lines; its last /health answer is above (that container is gone)" in line
    # Found by another: 'its last /health answer is above' where no answer was printed (nothing ever answered; a GPU check)
    refused = {**s, "gate": {"last": {"reason": "no answer (connection refused)"}}}
    assert "its last /health probe is above" in next_step("rollout", "mainpc", refused, "gpu", "inv.yml")
    assert "what failed is said above" in next_step("rollout", "mainpc", {**s, "gate": {}}, "gpu", "inv.yml")
    # not frozen (the daemon went away): no 'fix the image', which the line above it contradicted
    away = next_step("rollout", "mainpc", {**s, "at_fault": False}, "gpu", "inv.yml")
    assert "fix the image" not in away and "the same release may go again: fab rollout --phase gpu" in away


def test_a_refused_rollback_or_restart_is_not_sent_to_logs_and_a_rollback_again():
    """Found by an exploratory run: a rollback refused because the version's image was gone said 'next: fab logs …;
    fab versions … then fab rollback … --to TAG'; a restart refused for a missing secret said 'fab logs'."""
    from playbooks.ending import next_step

    s = {"service": "embed-api", "action": "revert", "outcome": "refused", "check": "image-gone"}
    line = next_step("rollback", "pc2", s, "cpu-pc2", "inv.yml")
    assert line.startswith("nothing was changed") and "fab logs" not in line and "fab rollout --phase cpu-pc2" in line
    s = {"service": "core-pc2", "action": "restart", "outcome": "refused", "check": "container-config"}
    line = next_step("restart", "pc2", s, "core-infra", "inv.yml")
    assert "fab logs" not in line and "fab restart -s core-pc2 -H pc2" in line


def test_a_rollback_with_a_host_that_does_not_answer_changes_nothing_anywhere(inv, tmp_path, monkeypatch):
    """Found by an exploratory run: pc2 unreachable, the rollback of a service on mainpc and pc2 reverted mainpc and left
    the two replicas on different versions. Now refused before anything changes, naming the rollback of the others."""
    from types import SimpleNamespace

    from playbooks import hostcalls, rollback, transport

    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    phase = next(p for p in inv.phases if len(targets.phase_hosts(inv, p.name)) > 1)  # core-infra: mainpc and pc2
    hosts = targets.phase_hosts(inv, phase.name)

    def on_hosts(inv, hs, op, request, **kw):
        return {h: (SimpleNamespace(answer=None, ok=False, error="no answer within 3s") if h == hosts[-1]
                    else SimpleNamespace(answer={"ok": True, "data": {"docker": {"containers": []}}}, ok=True, error=""))
                for h in hs}

    ran = []
    monkeypatch.setattr(transport, "on_hosts", on_hosts)
    monkeypatch.setattr(rollback, "run_on_hosts", lambda *a, **k: ran.append(a) or {})
    monkeypatch.setattr(rollback, "record_recoveries", lambda facts: None)
    monkeypatch.setattr(hostcalls, "record_recoveries", lambda facts: None)
    rep = rollback.rollback(inv, phase.name)
    assert ran == [] and rep.state == "refused" and executor.exit_code([rep.state]) == 3
    text = "\n".join(rep.messages)
    assert f"FAILED {hosts[-1]}: no answer within 3s" in text and "nothing was changed" in text, text
    assert f"or roll back the others alone: fab rollback -p {phase.name} -H {','.join(hosts[:-1])}" in text


def test_a_rollback_through_a_manual_freeze_says_it_goes_ahead(inv, tmp_path, monkeypatch):
    """Found by an exploratory run: rollback went through 'gpu maint' without a word, though the freeze 'blocks every rollout'."""
    from types import SimpleNamespace

    from playbooks import rollback, transport

    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    phase = inv.phases[0]
    frozen = {"freezes": [{"phase": phase.name, "by": "alice", "reason": "gpu maint", "auto": False, "ts": 0}],
              "docker": {"containers": []}}
    monkeypatch.setattr(transport, "on_hosts", lambda inv, hs, op, request, **kw: {
        h: SimpleNamespace(answer={"ok": True, "data": frozen}, ok=True, error="") for h in hs})
    monkeypatch.setattr(rollback, "run_on_hosts", lambda *a, **k: {})
    monkeypatch.setattr(rollback, "record_recoveries", lambda facts: None)
    monkeypatch.setattr(rollback, "conclude", lambda kind, report, *a, **k: report)
    rep = rollback.rollback(inv, phase.name)
    assert any(m.startswith(f"note: phase {phase.name} is frozen on ") and "'gpu maint'); a rollback goes ahead" in m
               for m in rep.messages), rep.messages



def test_versions_offers_no_rollback_to_what_already_runs():
    """Found by an exploratory run: after restarts each restart row offered 'rollback --to' the running tag (a no-op)."""
    from playbooks.render import versions_text

    run = {"tag": "20261104-4444444", "digest": "sha256:" + "d" * 64}
    rows = [{"tag": t, "digest": d, "ts": i, "rollout_id": f"r-{i}", "operator": "op", "kind": k, "outcome": "committed",
             "image_present": True, "running": r}
            for i, (t, d, k, r) in enumerate([(run["tag"], run["digest"], "restart", False), (run["tag"], run["digest"], "rollout", True),
                                              ("20261103-3333333", "sha256:" + "c" * 64, "rollout", False)])]
    text = versions_text({"replicas": [{"service": "svc", "host": "pc2", "running": run, "versions": rows}]})
    lines = text.splitlines()
    assert "same as running" in next(x for x in lines if "r-0" in x)
    assert "running" in next(x for x in lines if "r-1" in x)
    assert "rollback --to" in next(x for x in lines if "r-2" in x)
    assert sum("rollback --to" in x for x in lines) == 1


def test_a_host_held_by_a_prune_is_said_to_be_pruning_not_in_a_rollout():
    """Found by a review: a rollout planned during fab prune read 'in the middle of rollout r…-prune-…', 'Follow it'."""
    from playbooks.in_motion import _line as busy_line

    line = busy_line("pc2", {"rollout_id": "r20261201T000000Z-prune-1a2b3c", "holder": "op", "pid": 7, "time": 0})
    assert "is pruning images (fab prune" in line and "Follow it" not in line and "in the middle of rollout" not in line


def test_a_swarm_task_that_failed_is_not_said_to_have_written_nothing():
    """Found by an exploratory run: 'it wrote no log lines' for a Swarm task whose logs said 'ansi crash' (nobody had
    read them; fab logs reads them through the manager)."""
    from playbooks.ending import next_step

    s = {"service": "multi", "action": "replace", "outcome": "reverted", "check": "swarm-rollback", "engine": "swarm"}
    line = next_step("rollout", "pc2", s, "sw-multi", "inv.yml")
    assert "wrote no log lines" not in line and "what its task wrote: fab logs -s multi -H pc2" in line, line


def test_back_to_back_restarts_of_one_version_are_one_row_with_their_count():
    """Found by an exploratory run: fifty restarts made fifty-one rows of one tag in fab versions."""
    from playbooks.render import versions_text

    run = {"tag": "20261104-4444444", "digest": "sha256:" + "d" * 64}
    old = ("20261103-3333333", "sha256:" + "c" * 64)

    def row(i, tag, digest, kind, outcome="committed", running=False):
        return {"tag": tag, "digest": digest, "ts": i, "rollout_id": f"r-{i}", "operator": "op", "kind": kind,
                "outcome": outcome, "image_present": True, "running": running}

    rows = [row(0, *run.values(), "restart", running=True), *(row(i, *run.values(), "restart") for i in range(1, 50)),
            row(50, *run.values(), "rollout"), row(51, *old, "restart"), row(52, *old, "restart", outcome="reverted"),
            row(53, *old, "restart")]
    lines = versions_text({"replicas": [{"service": "svc", "host": "pc2", "running": run, "versions": rows}]}).splitlines()
    body = [x for x in lines[2:] if x.strip() and not set(x.strip()) <= set("-+ ")]
    assert len(body) == 6, lines  # running; 49 restarts as one; the rollout; and three rows that each say something apart
    assert "restart x49 (newest)" in next(x for x in body if "r-1 " in x) and not any("r-2 " in x for x in body)
    assert "r-0 " in body[0] and "running" in body[0] and "x" not in body[0].split()[5]


def test_a_release_whose_transaction_was_cut_short_is_not_called_failed_in_its_row():
    """Found by an exploratory run: after fab unlock --force mid-gate the row said 'T2 (failed) -> T1' while the words
    under it said 'nothing judged the release'."""
    from playbooks.render import _row_refs

    s = {"service": "svc", "action": "replace", "outcome": "reverted", "check": "recovered", "at_fault": False,
         "tried_tag": "T2", "after_tag": "T1", "after_digest": "sha256:" + "1" * 64, "revert_gate": {"ok": True}}
    assert _row_refs(s) == "T2 (interrupted, not judged) -> T1@111111111111"
    assert _row_refs({**s, "at_fault": True}) == "T2 (failed) -> T1@111111111111"  # it was seen failing before the cut


def test_an_unfinished_rollout_s_marker_goes_once_every_host_it_changed_has_been_heard(tmp_path, monkeypatch):
    """Every fab status sends the pending rollouts to the hosts; a marker that never went made that work last for good."""
    from playbooks import ledger

    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    plan = {"steps": [{"host": "mainpc", "action": "replace"}, {"host": "pc2", "action": "replace"},
                      {"host": "node3", "action": "noop"}]}
    ledger.append("started", rollout_id="r-k", phase="core", plan=plan)
    ledger.append("interrupted", rollout_id="r-k", phase="core", reason="Ctrl-C")
    done = {"state": "finished", "outcome": {"state": "good", "services": [{"service": "a", "outcome": "committed"}]}}
    ledger.observe("mainpc", {"rollout_id": "r-k", **done})
    assert ledger.pending() == {"r-k"}, "pc2 has not been heard yet"
    ledger.observe("pc2", {"rollout_id": "r-k", **done})
    assert ledger.pending() == set() and ledger.rollouts()[0]["final"] == "committed"
