"""`fab explain`: the chain is joined from faked pieces, and every missing link is said where it belongs (no hosts)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest

from playbooks import explain
from playbooks.errors import RolloutError
from playbooks.inventory import load

ROOT = Path(__file__).resolve().parents[1]
INV = load(ROOT / "inventory" / "fleet.yml")
HOST, SVC = "mainpc", "llm-inference"
TAG = INV.fleet.services[SVC].tag
DIGEST = "sha256:" + "ab" * 32
SHA = "0123456789abcdef0123456789abcdef01234567"
CURRENT: dict = {}  # the inventory the `artifacts` fixture made for the running test
RID = "r20260101T000000Z-gpu-mainpc-1a2b3c"


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    """The inventory's security artifacts and acceptance file, in a temporary directory."""
    # The inventory is frozen: a copy of it whose security artifacts are in the temporary directory.
    sec = INV.fleet.security.model_copy(update={"artifacts": str(tmp_path / "artifacts")})
    CURRENT["inv"] = dataclasses.replace(INV, fleet=INV.fleet.model_copy(update={"security": sec}))
    acc = tmp_path / "risk-acceptances.yml"
    expires = dt.date.today() + dt.timedelta(days=30)
    acc.write_text(f"acceptances:\n  - {{image: {INV.fleet.services[SVC].image}, cve: CVE-2026-0001, owner: ops,"
                   f" reason: not reachable, expires: {expires}}}\n")
    monkeypatch.setenv("FLEETROLL_ACCEPTANCES", str(acc))
    where = tmp_path / "artifacts" / INV.fleet.services[SVC].image / TAG
    where.mkdir(parents=True)
    return where


def write_sbom(where: Path, packages: int = 12) -> None:
    (where / "sbom.spdx.json").write_text(json.dumps({"spdxVersion": "SPDX-2.3", "packages": [{"name": f"p{i}"} for i in range(packages)]}))


def write_trivy(where: Path, digest: str = DIGEST) -> None:
    (where / "trivy.json").write_text(json.dumps({
        "SchemaVersion": 2, "Metadata": {"RepoDigests": [f"{INV.repo(SVC)}@{digest}"]},
        "Results": [{"Target": "img", "Vulnerabilities": [{"VulnerabilityID": "CVE-2026-0001", "Severity": "HIGH", "PkgName": "zlib",
                                                           "InstalledVersion": "1.2"}]}]}))


def container(git_sha: str = SHA, rollout_id: str = RID) -> dict:
    return {"name": SVC, "id": "c0ffee", "image": f"{INV.repo(SVC)}:{TAG}", "tag": TAG, "digest": DIGEST, "status": "running",
            "running": True, "restart_count": 0, "git_sha": git_sha, "rollout_id": rollout_id, "operator": "ana@laptop",
            "prev": {"tag": "20251201-aaaaaaa-prev", "digest": "sha256:" + "cd" * 32, "pinned": True}}  # the pin's tag, as details says


LEDGER = [{"rollout_id": RID, "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:01:00Z", "operator": "ana@laptop",
           "phase": "gpu-mainpc", "final": "committed", "elapsed_s": 60.0, "timings": {HOST: {"connect_s": 0.2, "work_s": 41.5, "calls": 3}},
           "services": [{"host": HOST, "service": SVC, "outcome": "committed", "order": "stop-first",
                         "gate": {"ok": True, "phase": "passed", "reason": "", "time_to_healthy_s": 12.5, "elapsed_s": 42.0}}]}]
VERSIONS = {"host": HOST, "versions": [{"tag": "20251201-aaaaaaa", "digest": "sha256:" + "cd" * 32, "ts": 1.0, "rollout_id": "r-old",
                                        "operator": "bo", "outcome": "committed", "image_present": True}]}
HEALTH = {"healthy": True, "text": "healthy", "restarts": 0, "sha_drift": ""}
NOOP = {"action": "noop", "reason": "already running this digest with this configuration", "changes": [], "phase": "gpu-mainpc"}


def answer(c: dict | None, reported=(SHA, ""), entries=LEDGER, frozen=()) -> dict:
    sbom, trivy = explain.security_facts(CURRENT["inv"], SVC, TAG, DIGEST)
    rollout = explain.ledger_facts(entries, (c or {}).get("rollout_id", ""), HOST, SVC)
    details = {"container": c, "kept": [], "inventory_tag": TAG, "frozen": list(frozen)}
    return explain.assemble(HOST, SVC, details, HEALTH, NOOP, VERSIONS, sbom, trivy, rollout, reported, "/l/ledger.jsonl")


def test_a_complete_chain_names_every_link_and_nothing_missing(artifacts):
    write_sbom(artifacts)
    write_trivy(artifacts)
    out = answer(container(), frozen=["phase gpu-mainpc frozen by ana: 'ASR demo' (blocks every rollout of the phase)"])
    assert out["missing"] == []
    assert out["git"] == {"label": SHA, "reported": SHA, "not_reported": "", "agree": True}
    assert out["sbom"]["packages"] == 12 and out["trivy"]["status"] == "warn"
    assert out["trivy"]["accepted"][0]["cve"] == "CVE-2026-0001"
    assert out["rollout"]["gate"]["time_to_healthy_s"] == 12.5 and out["rollout"]["timings"]["work_s"] == 41.5
    assert out["revert_to"]["rollout_id"] == "r-old"
    text = explain.explain_text(out)
    assert out["trivy"]["for_running_digest"] is True and out["trivy"]["digest"] == DIGEST
    for want in (f"image     {TAG}@{DIGEST}", "they agree", f"12 packages, {artifacts / 'sbom.spdx.json'}",
                 f"Trivy     warn for {DIGEST[:19]}",
                 "accepted  CVE-2026-0001 by ops until", f"rollout   {RID}: phase gpu-mainpc, by ana@laptop", "gate      passed (healthy after 12.5s",
                 "work_s 41.50s, calls 3", "revert to 20251201-aaaaaaa-prev@sha256:cdcdcdcdcdcd (pinned on the host); ran from rollout r-old",
                 "frozen    phase gpu-mainpc frozen by ana", "drift     none: already running", "health    healthy: healthy; 0 restarts"):
        assert want in text, (want, text)
    assert "missing" not in text
    json.dumps(out)  # --json prints it as it is


def test_a_missing_sbom_is_said_with_its_path(artifacts):
    write_trivy(artifacts)
    out = answer(container())
    assert out["missing"] == [f"no SBOM at {artifacts / 'sbom.spdx.json'}"]
    assert f"SBOM      no SBOM at {artifacts / 'sbom.spdx.json'}" in explain.explain_text(out)


def test_a_missing_trivy_report_is_said_with_its_path_and_the_gates_policy(artifacts):
    write_sbom(artifacts)
    out = answer(container())
    assert out["missing"] == [f"no Trivy report at {artifacts / 'trivy.json'}"]
    assert out["trivy"]["status"] in ("warn", "refuse")  # the gate's own verdict under the inventory's policy
    text = explain.explain_text(out)
    assert f"Trivy     no Trivy report at {artifacts / 'trivy.json'} (the gate's policy for a missing report: " in text


def test_a_report_of_another_digest_under_the_tag_is_not_shown_as_the_running_ones(artifacts):
    write_sbom(artifacts)
    other = "sha256:" + "ef" * 32  # the tag was pushed again: its report scanned the image it named before
    write_trivy(artifacts, other)
    out = answer(container())
    assert out["trivy"]["present"] is True and out["trivy"]["for_running_digest"] is False
    assert out["trivy"]["accepted"] == [], "an acceptance of a finding in another image is not this one's"
    assert "not the planned" in out["trivy"]["why_not"] and other[:19] in out["trivy"]["why_not"]
    assert out["missing"] == [f"no Trivy report for the running digest {DIGEST[:19]}: the one at {artifacts / 'trivy.json'}"
                              f" does not count ({out['trivy']['why_not']})"]
    text = explain.explain_text(out)
    assert f"Trivy     no report for the running digest {DIGEST[:19]}" in text and "accepted  " not in text, text


def test_a_revision_label_and_a_reported_sha_that_disagree_are_called_out(artifacts):
    out = answer(container(git_sha="fedcba9876543210"), reported=(SHA, ""))
    assert out["git"]["agree"] is False
    assert "they DISAGREE" in explain.explain_text(out)
    short = answer(container(git_sha=SHA), reported=(SHA[:7], ""))
    assert short["git"]["agree"] is True  # a short SHA and its full form are one commit


def test_no_collector_report_is_not_reported_and_not_compared(artifacts):
    out = answer(container(), reported=(None, "not reported: no observability collector in the inventory"))
    assert out["git"]["agree"] is None
    assert "git       image label 0123456789ab; not reported: no observability collector in the inventory" in explain.explain_text(out)


def test_no_ledger_record_of_the_rollout_that_started_it(artifacts):
    out = answer(container(rollout_id="r20250101T000000Z-by-hand-000000"), entries=[])
    assert out["rollout"] is None
    assert any(m.startswith("no ledger record of the rollout that started it (r20250101T000000Z-by-hand-000000)") for m in out["missing"])
    assert "rollout   no ledger record of the rollout that started it" in explain.explain_text(out)


def test_no_container_says_so_and_still_shows_drift_and_health(artifacts):
    out = answer(None)
    assert out["missing"] == [f"no container named {SVC} on {HOST}: nothing runs to explain"]
    assert explain.explain_text(out).startswith(f"{SVC} on {HOST}: no container (inventory tag {TAG})")


def test_an_unreadable_step_or_health_is_unknown_with_the_reason(artifacts):
    out = answer(container())
    out["drift"], out["health"] = {"error": "mainpc: facts not read: timeout"}, {"error": "mainpc: status not read: refused"}
    text = explain.explain_text(out)
    assert "drift     unknown: mainpc: facts not read: timeout" in text and "health    unknown: mainpc: status not read" in text


@pytest.mark.parametrize("target, says", [
    (None, "give the container as HOST/SERVICE"), ("mainpc", "give the container as HOST/SERVICE"),
    ("nohost/llm-inference", "no host 'nohost'"), ("mainpc/nosvc", "no service 'nosvc'"),
])
def test_a_target_not_in_the_inventory_is_one_line_naming_the_valid_ones(target, says):
    with pytest.raises(RolloutError) as err:
        explain.parse_target(INV, target)
    assert says in str(err.value) and "\n" not in str(err.value)
    assert "mainpc" in str(err.value)


def test_a_name_the_inventory_does_not_know_points_at_where_an_orphan_is_listed_and_removed():
    """Noticed on the lab: fab explain HOST/ORPHAN only said 'no service'; status lists orphans, remove removes them."""
    with pytest.raises(RolloutError) as err:
        explain.parse_target(INV, "mainpc/old-api")
    assert "fab status -H mainpc lists it (ORPHAN" in str(err.value) and "fab remove -s old-api -H mainpc" in str(err.value)


def test_a_service_placed_elsewhere_names_where_it_runs():
    other = next(h for h in INV.fleet.hosts if SVC not in INV.services_for(None, [h]))
    with pytest.raises(RolloutError, match=f"does not place {SVC} on {other}; it runs on {HOST}"):
        explain.parse_target(INV, f"{other}/{SVC}")
    assert explain.parse_target(INV, f"{HOST}/{SVC}") == (HOST, SVC)


# --- the host is asked on one SSH connection and one agent process -------------------------------------------------

LABELLED = "0a1b2c3" + "d" * 33  # the revision the inventory's tag names (…-0a1b2c3)


class _Conn:
    """A connection that never touches the network; transport.Pool checks it is still up."""

    def __init__(self, host: str):
        self.host, self.is_connected, self.client = host, True, self

    def get_transport(self):
        return self

    def is_active(self):
        return True

    def close(self):
        pass


def _answers(inv) -> dict:
    """What a host's agent says to each of explain's ops (the shapes agent/ops.py answers in)."""
    c = {**container(git_sha=LABELLED), "started_at": "2026-01-01T00:00:00Z"}
    report = {"host": HOST, "service": SVC, "git_sha": LABELLED, "started_at": "2026-01-01T00:00:01Z"}
    return {
        "details": {"services": {SVC: {"container": c, "kept": []}}, "freezes": []},
        "status": {"docker": {"ok": True, "containers": [c]}, "health": {SVC: {"ok": True}}, "last": None,
                   "collector": {"ok": True, "services": [report]}},
        "versions": {"running": {"tag": TAG}, "versions": VERSIONS["versions"]},
        # The image resolves to the digest that runs; the running container has no configuration label: a replace.
        "facts": {"images": {inv.image_ref(SVC): {"ok": True, "digest": DIGEST}}, "docker": {"containers": [c]}},
    }


@pytest.fixture
def wire(monkeypatch):
    """Count SSH connections per host and the agent sessions each call ran on (no hosts, no SSH)."""
    from playbooks import transport

    seen: dict = {"connects": [], "calls": []}

    def connect(target):
        seen["connects"].append(target)
        return _Conn(target)

    def call(self, op, args, timeout, on_event=None):
        if self.chan is None:  # the first request starts the agent process; later ones are lines on its stdin
            self.chan = object()
            seen.setdefault("agents", []).append(self.host)
        seen["calls"].append((self.host, id(self), op, args))
        data = _answers(CURRENT["inv"])[op]
        return transport.CallResult(host=self.host, ok=True, answer={"ok": True, "data": data})

    monkeypatch.setattr(transport.Target, "from_inventory", classmethod(lambda cls, inv, h: h))
    monkeypatch.setattr(transport, "connect", connect)
    monkeypatch.setattr(transport, "client_for", lambda inv: "paramiko")
    monkeypatch.setattr(transport.AgentSession, "call", call)
    monkeypatch.setattr(transport.AgentSession, "close", lambda self: setattr(self, "chan", None))
    return seen


def collector_on(host: str) -> None:
    """The running test's inventory with the observability collector placed on `host`."""
    coll, inv = INV.fleet.observability.collector, CURRENT["inv"]
    services = {**inv.fleet.services, coll: inv.fleet.services[coll].model_copy(update={"host": host})}
    CURRENT["inv"] = dataclasses.replace(inv, fleet=inv.fleet.model_copy(update={"services": services}))


def test_explain_asks_its_four_questions_on_one_ssh_session(artifacts, wire):
    write_sbom(artifacts)
    write_trivy(artifacts)
    collector_on(HOST)  # the collector's answer then comes with the host's own status
    out = explain.gather(CURRENT["inv"], HOST, SVC)
    assert wire["connects"] == [HOST], "one SSH connection to the host, not one per question"
    assert wire["agents"] == [HOST], "one agent process, every question a line on it"
    assert [op for _h, _s, op, _a in wire["calls"]] == ["details", "status", "versions", "facts"]
    assert len({s for _h, s, _op, _a in wire["calls"]}) == 1
    # and the answers were joined as before: each question's part of the chain is there
    assert out["image"]["digest"] == DIGEST and out["missing"] == [f"no ledger record of the rollout that started it ({RID})"
                                                                     f" in {out['ledger']}"]
    assert out["health"] == {"healthy": True, "text": "healthy", "restarts": 0, "sha_drift": ""}
    assert out["git"]["reported"] == LABELLED and out["git"]["agree"] is True
    assert out["revert_to"]["rollout_id"] == "r-old" and out["drift"]["action"] == "replace"
    assert out["sbom"]["packages"] == 12 and out["trivy"]["status"] == "warn"
    status_args = next(a for _h, _s, op, a in wire["calls"] if op == "status")
    assert list(status_args["health"]) == [SVC] and "collector_port" in status_args


def test_a_collector_on_another_host_is_asked_on_that_hosts_own_session(artifacts, wire):
    other = next(h for h in INV.fleet.hosts if h != HOST)
    collector_on(other)
    out = explain.gather(CURRENT["inv"], HOST, SVC)
    assert sorted(wire["connects"]) == sorted([HOST, other]) and sorted(wire["agents"]) == sorted([HOST, other])
    assert [op for h, _s, op, _a in wire["calls"] if h == HOST] == ["details", "status", "versions", "facts"]
    assert [(op, "collector_port" in a) for h, _s, op, a in wire["calls"] if h == other] == [("status", True)]
    assert out["git"]["reported"] == LABELLED


def test_a_rollout_the_controller_was_interrupted_in_says_so_and_how_the_hosts_ended_it(artifacts):
    """Found by an exploratory run: explain said 'finished never recorded' of a rollout cut short by Ctrl-C."""
    cut = [{**LEDGER[0], "finished": None, "interrupted": "2026-01-01T00:00:30Z", "final": "committed",
            "note": "interrupted by the operator at 2026-01-01T00:00:30Z; the hosts ended it on their own: finished on"
                    f" {HOST} ({SVC} committed; host committed)"}]
    text = explain.explain_text(answer(container(), entries=cut))
    assert "started 2026-01-01T00:00:00Z, the controller was interrupted at 2026-01-01T00:00:30Z; committed" in text, text
    assert "the hosts ended it on their own" in text and "never recorded" not in text
    killed = [{**LEDGER[0], "finished": None, "final": "unfinished (controller stopped before the end)"}]
    assert "the controller never recorded its end; unfinished" in explain.explain_text(answer(container(), entries=killed))


def test_drift_beside_a_freeze_says_the_freeze_may_refuse_it(artifacts):
    """Found by an exploratory run: 'drift: a rollout would replace' right under 'frozen … refuses' read as a contradiction."""
    out = answer(container(), frozen=["phase gpu-mainpc frozen by ana: 'ASR demo' (blocks every rollout of the phase)"])
    out["drift"] = {"action": "replace", "reason": "new image", "phase": "gpu-mainpc", "changes": []}
    assert "would replace: new image; a freeze below may refuse it" in explain.explain_text(out)
    out = answer(container())
    out["drift"] = {"action": "replace", "reason": "new image", "phase": "gpu-mainpc", "changes": []}
    assert "freeze below" not in explain.explain_text(out)


def test_a_container_a_rollback_recreated_names_the_rollback_beside_the_configurations_rollout(artifacts):
    """Found by an exploratory run: after fab rollback, explain named only the original rollout (finished long before the
    container was created); the container's own created-by label names the rollback that made it."""
    out = answer(container())
    out["rollout"]["recreated_by"] = {"rollout_id": "r-back", "started": "2026-01-02T00:00:00Z", "operator": "bo",
                                      "final": "reverted"}
    text = explain.explain_text(out)
    assert (f"made by   r-back (bo, 2026-01-02T00:00:00Z, reverted), which recreated {RID}'s configuration") in text, text
