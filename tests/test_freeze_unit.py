"""Phase freezes: the host writes one after an automatic revert; the controller's decision is pure (no hosts)."""

from __future__ import annotations

import pytest

from agent import freeze
from playbooks.freezes import blocking
from playbooks.plan import Plan, Step

from .test_transaction_unit import NEW_D, REPO, run, running_old, spec, step

pytestmark = pytest.mark.usefixtures("host_state")


def plan(**tags: str) -> Plan:
    return Plan("r-next", "gpu", "op", [Step("mainpc", s, "replace", new_tag=t) for s, t in tags.items()])


def planned(s: dict) -> Plan:
    """The plan a controller would make for spec `s` on mainpc (the host fingerprints the same spec)."""
    return Plan("r-next", "gpu", "op", [Step("mainpc", s["name"], "replace", new_tag=s["tag"], new_digest=s["digest"], spec=s)])


def facts() -> dict:
    return {"mainpc": {"freezes": freeze.all_freezes()}}


def test_a_reverted_release_freezes_its_phase_against_that_digest_and_configuration_on_the_host(daemon):
    running_old(daemon)
    daemon.image(REPO, NEW_D, behaviour="bad")
    out = run(daemon, [step(spec())])
    s = out["services"][0]
    assert s["outcome"] == "reverted" and s["frozen"]
    f = freeze.read("gpu")
    assert f["auto"] and f["releases"] == {"svc": "20261126-bbbbbbb"} and f["rollout_id"] == "r-new"
    assert f["failed"]["svc"] == {"tag": "20261126-bbbbbbb", "digest": NEW_D, "config": freeze.config_fingerprint(spec())}
    # the same image with the same configuration again is stopped ...
    msgs = blocking(planned(spec()), facts(), "inv/fleet.yml")
    assert len(msgs) == 1 and "svc:20261126-bbbbbbb@" in msgs[0] and "fab thaw --phase gpu" in msgs[0] and "r-new" in msgs[0]
    assert ("automatically: rollout r-new failed: svc:20261126-bbbbbbb failed with its configuration and was reverted to"
            " its previous version.") in msgs[0], msgs[0]  # the host's words for how it ended
    # ... a new image, or the same image with another configuration, goes ahead
    assert blocking(planned(spec(tag="20261127-ccccccc", digest="sha256:" + "c" * 64)), facts(), "inv/fleet.yml") == []
    assert blocking(planned(spec(env={"MACHINE": "mainpc", "FIXED": "1"})), facts(), "inv/fleet.yml") == []


def test_a_config_only_failure_does_not_condemn_the_good_tag(daemon):
    """Same tag, a bad env value: reverted and frozen against that pair; the fixed env with the same tag commits."""
    running_old(daemon)
    daemon.image(REPO, NEW_D)
    bad = spec(env={"MACHINE": "mainpc", "FAKE_HEALTH": "bad"})
    assert run(daemon, [step(bad)])["services"][0]["outcome"] == "reverted"
    assert len(blocking(planned(bad), facts(), "inv/fleet.yml")) == 1, "the same pair again is refused"
    fixed = spec(env={"MACHINE": "mainpc"})
    assert blocking(planned(fixed), facts(), "inv/fleet.yml") == []
    out = run(daemon, [step(fixed)], rid="r-fixed")
    assert out["ok"] and out["services"][0]["outcome"] == "committed"
    assert freeze.read("gpu") is None, "the commit lifts the automatic freeze"


def test_a_container_removed_by_someone_else_mid_gate_is_reverted_but_freezes_nothing(daemon, monkeypatch):
    from agent.transaction import Transaction

    old = running_old(daemon)
    daemon.image(REPO, NEW_D)
    real_gate = Transaction._gate

    def remove_then_gate(self, c, h, service, **kw):
        if c.id != old:
            daemon.containers.by_id.pop(c.id)  # `docker rm -f` by hand, mid-gate
        return real_gate(self, c, h, service, **kw)

    monkeypatch.setattr(Transaction, "_gate", remove_then_gate)
    s = run(daemon, [step(spec())])["services"][0]
    assert s["outcome"] == "reverted" and not s["at_fault"] and not s["frozen"]
    assert "removed by someone else" in s["message"]
    assert freeze.read("gpu") is None


def test_a_freeze_from_before_fingerprints_still_blocks_by_tag():
    freeze.write("gpu", "old", "op", auto=True, releases={"svc": "20261126-bbbbbbb"}, rollout_id="r-0")
    assert len(blocking(planned(spec()), facts(), "inv/fleet.yml")) == 1
    assert blocking(planned(spec(tag="20261127-ccccccc")), facts(), "inv/fleet.yml") == []


def test_a_clean_commit_lifts_an_automatic_freeze_but_never_a_manual_one(daemon):
    running_old(daemon)
    freeze.write("gpu", "reverted earlier", "op", auto=True, releases={"svc": "20261120-eeeeeee"}, rollout_id="r-0")
    daemon.image(REPO, NEW_D)
    assert run(daemon, [step(spec())])["ok"]
    assert freeze.read("gpu") is None
    freeze.write("gpu", "GPU driver upgrade tonight", "alice@laptop")
    daemon.image(REPO, "sha256:" + "c" * 64)
    assert run(daemon, [step(spec(tag="20261127-ccccccc", digest="sha256:" + "c" * 64))], rid="r-2")["ok"]
    assert freeze.read("gpu")["reason"] == "GPU driver upgrade tonight"
    # nor does a later automatic revert overwrite the manual freeze's reason: it waits under it
    freeze.write("gpu", "auto", "op", auto=True, releases={"svc": "x"})
    assert not freeze.read("gpu")["auto"] and freeze.read("gpu")["kept_auto"]["releases"] == {"svc": "x"}


def test_manual_freeze_blocks_every_rollout_of_its_phase_only():
    facts = {"mainpc": {"freezes": [{"phase": "gpu", "reason": "driver upgrade", "by": "alice@laptop", "ts": 0, "auto": False}]},
             "pc2": {"freezes": [{"phase": "cpu", "reason": "x", "by": "b", "ts": 0, "auto": False}]}}
    msgs = blocking(plan(svc="20261127-ccccccc"), facts, "inv/fleet.yml")
    assert len(msgs) == 1 and "frozen on mainpc by alice@laptop" in msgs[0] and "'driver upgrade'" in msgs[0]


def test_thaw_records_what_it_removed():
    freeze.write("gpu", "why", "alice")
    removed = freeze.thaw("gpu", "bob", "done")
    assert removed["reason"] == "why" and freeze.read("gpu") is None
    assert freeze.thaw("gpu", "bob", "again") is None
    with pytest.raises(ValueError):
        freeze.write("../etc", "x", "y")


def test_a_manual_freeze_over_an_automatic_one_keeps_it_and_its_thaw_brings_it_back(daemon):
    """Freeze for maintenance, thaw after: the release that failed before must still be refused (it was let through)."""
    from agent import ops

    running_old(daemon)
    daemon.image(REPO, NEW_D, behaviour="bad")
    assert run(daemon, [step(spec())])["services"][0]["frozen"]
    facts = lambda: {"mainpc": {"freezes": freeze.all_freezes()}}  # noqa: E731
    bad = planned(spec())
    r = ops.freeze_op({"phase": "gpu", "reason": "GPU driver maintenance", "operator": "alice"})
    assert r["ok"] and "the automatic freeze against svc:20261126-bbbbbbb (rollout r-new) stays under it" in r["msg"], r["msg"]
    r = ops.freeze_op({"phase": "gpu", "reason": "longer maintenance", "operator": "bob"})
    assert "replacing the freeze by alice ('GPU driver maintenance')" in r["msg"] and "stays under it" in r["msg"], r["msg"]
    assert "frozen on mainpc by bob" in blocking(plan(svc="20261127-ccccccc"), facts(), "inv")[0]  # manual: every release
    r = ops.freeze_op({"phase": "gpu", "reason": "maintenance done", "operator": "bob", "thaw": True})
    assert "thawed gpu (the freeze by bob); the automatic freeze against svc:20261126-bbbbbbb" in r["msg"], r["msg"]
    assert "fab thaw --phase gpu again" in r["msg"]
    assert freeze.read("gpu")["auto"] and len(blocking(bad, facts(), "inv")) == 1, "the failed release is refused again"
    assert blocking(plan(svc="20261127-ccccccc"), facts(), "inv") == [], "and only it"
    r = ops.freeze_op({"phase": "gpu", "reason": "the failure was the host's", "operator": "bob", "thaw": True})
    assert r["msg"] == "thawed gpu" and freeze.read("gpu") is None


def test_an_automatic_freeze_under_a_manual_one_waits_there_and_a_commit_lifts_only_it():
    freeze.write("gpu", "driver upgrade", "alice")
    top = freeze.write("gpu", "rollout r-1 failed: ...", "op", auto=True, releases={"svc": "T1"}, rollout_id="r-1",
                       failed={"svc": {"tag": "T1", "digest": "sha256:1", "config": "cfg:x"}})
    assert not top["auto"] and top["reason"] == "driver upgrade" and top["kept_auto"]["releases"] == {"svc": "T1"}
    assert freeze.thaw("gpu", "op", "rollout r-2 committed", only_auto=True)["rollout_id"] == "r-1"
    now = freeze.read("gpu")
    assert now["reason"] == "driver upgrade" and "kept_auto" not in now, "the manual freeze stays, without the lifted one"
    assert freeze.thaw("gpu", "op", "again", only_auto=True) is None


def test_automatic_freezes_add_up_per_service_and_a_commit_lifts_only_its_own_services():
    """A canary failing on B must not let A's release that failed here before through; A's later commit lifts only A."""
    a = {"a": {"tag": "A1", "digest": "sha256:a", "config": "cfg:a"}}
    b = {"b": {"tag": "B1", "digest": "sha256:b", "config": "cfg:b"}}
    freeze.write("gpu", "rollout r-1 failed: a:A1 ...", "op", auto=True, releases={"a": "A1"}, rollout_id="r-1", failed=a)
    rec = freeze.write("gpu", "rollout r-2 failed: b:B1 ...", "op", auto=True, releases={"b": "B1"}, rollout_id="r-2", failed=b)
    assert rec["failed"] == {**a, **b} and rec["releases"] == {"a": "A1", "b": "B1"} and rec["rollout_id"] == "r-2"
    assert rec["reason"] == "rollout r-2 failed: b:B1 ...; still refused from earlier failures: a (rollout r-1)"
    assert rec["rollouts"] == {"a": "r-1", "b": "r-2"}
    removed = freeze.thaw("gpu", "op", "rollout r-3 committed", only_auto=True, services=["a"])
    assert set(removed["failed"]) == {"a"} and set(freeze.read("gpu")["failed"]) == {"b"}, "b's failed release stays refused"
    # and its words are b's alone: status said 'frozen after rollout r-2 failed: ...; still refused ... a' with a lifted
    left = freeze.read("gpu")
    assert left["rollout_id"] == "r-2" and left["reason"] == ("b:B1 failed in rollout r-2 and stays refused (a went ahead"
                                                              " since: rollout r-3 committed)"), left["reason"]
    assert freeze.thaw("gpu", "op", "rollout r-4 committed", only_auto=True, services=["c"]) is None
    assert freeze.thaw("gpu", "op", "rollout r-5 committed", only_auto=True, services=["b"]) and freeze.read("gpu") is None
    # the same under a manual freeze: both wait there, and are lifted the same way
    freeze.write("gpu", "driver upgrade", "alice")
    freeze.write("gpu", "r-6 a", "op", auto=True, releases={"a": "A1"}, rollout_id="r-6", failed=a)
    top = freeze.write("gpu", "r-7 b", "op", auto=True, releases={"b": "B1"}, rollout_id="r-7", failed=b)
    assert top["reason"] == "driver upgrade" and set(top["kept_auto"]["failed"]) == {"a", "b"}
    freeze.thaw("gpu", "op", "r-8 committed", only_auto=True, services=["b"])
    now = freeze.read("gpu")
    assert now["reason"] == "driver upgrade" and set(now["kept_auto"]["failed"]) == {"a"}
    assert now["kept_auto"]["rollout_id"] == "r-6" and now["kept_auto"]["reason"].startswith("a:A1 failed in rollout r-6")


def test_a_service_that_fails_again_keeps_its_earlier_failed_release_refused(monkeypatch):
    """Found by an exploratory run: rag-api's release failed (frozen), then a configuration-only change of it failed too;
    the second block replaced the first, and the release that had failed first was planned '0 blocked' and deployed
    again (another outage). Both stay refused; a third failure's words do not nest the earlier ones."""
    first = {"tag": "T2", "digest": "sha256:new", "config": "cfg:1"}
    second = {"tag": "T1", "digest": "sha256:old", "config": "cfg:2"}
    freeze.write("gpu", "rollout r-1 failed: svc:T2", "op", auto=True, releases={"svc": "T2"}, rollout_id="r-1",
                 failed={"svc": first})
    rec = freeze.write("gpu", "rollout r-2 failed: svc:T1", "op", auto=True, releases={"svc": "T1"}, rollout_id="r-2",
                       failed={"svc": second})
    assert rec["failed"] == {"svc": second} and rec["also_failed"] == {"svc": [{**first, "rollout_id": "r-1"}]}
    assert freeze.blocks_of(rec, "svc") == [second, {**first, "rollout_id": "r-1"}]  # each names the rollout it failed in
    import playbooks.freezes as fz

    for block, blocked in ((first, True), (second, True), ({**first, "config": "cfg:3"}, False)):
        monkeypatch.setattr(fz, "config_fingerprint", lambda spec, c=block["config"]: c)  # the plan's spec, fingerprinted
        st = Step("mainpc", "svc", "replace", new_tag=block["tag"], new_digest=block["digest"], spec={})
        assert fz.repeats(rec, st) is blocked, block
    again = freeze.write("gpu", "rollout r-3 failed: svc:T2", "op", auto=True, releases={"svc": "T2"}, rollout_id="r-3",
                         failed={"svc": first})
    assert freeze.blocks_of(again, "svc") == [first, {**second, "rollout_id": "r-2"}] and "still refused" not in again["reason"]
    freeze.thaw("gpu", "op", "rollout r-4 committed", only_auto=True, services=["svc"])
    assert freeze.read("gpu") is None  # a clean commit of the service lifts every block of it


def test_a_failed_release_past_what_a_freeze_keeps_is_said_no_longer_refused_never_silently():
    """Left open last session: an automatic freeze keeps a service's newest failed releases (MAX_BLOCKS more than the
    one that failed last); the next one dropped the oldest silently, and that release could be deployed again unsaid."""
    blocks = [{"tag": f"T{i}", "digest": f"sha256:{i}", "config": f"cfg:{i}"} for i in range(freeze.MAX_BLOCKS + 3)]
    for i, block in enumerate(blocks):
        rec = freeze.write("gpu", f"rollout r-{i} failed: svc:T{i}", "op", auto=True, releases={"svc": f"T{i}"},
                           rollout_id=f"r-{i}", failed={"svc": block})
    kept = freeze.blocks_of(rec, "svc")
    assert len(kept) == freeze.MAX_BLOCKS + 1 and kept[0] == blocks[-1] and {b["tag"] for b in kept} == {
        f"T{i}" for i in range(2, freeze.MAX_BLOCKS + 3)}
    assert rec["dropped"] == {"svc": 2}
    assert (f"svc: its 2 oldest failed release(s) are no longer refused (a freeze keeps a service's {freeze.MAX_BLOCKS + 1}"
            " newest)") in rec["reason"], rec["reason"]
    assert rec["reason"].count("no longer refused") == 1  # rebuilt each time, not nested
    freeze.thaw("gpu", "op", "rollout r-99 committed", only_auto=True, services=["svc"])
    assert freeze.read("gpu") is None


def test_an_automatic_freeze_under_a_manual_one_is_said_as_such():
    from agent import ops

    freeze.write("gpu", "driver upgrade", "alice")
    r = ops.freeze_op({"phase": "gpu", "operator": "op", "auto": True, "rollout_id": "r-1", "releases": {"a": "A1"},
                       "failed": {"a": {"tag": "A1", "digest": "sha256:a", "config": "cfg:a"}}, "reason": "r-1 failed"})
    assert r["msg"] == "froze gpu automatically, under the freeze by alice (in force once that is thawed)", r["msg"]


def test_a_plan_with_nothing_to_change_still_names_the_manual_freeze_that_holds_its_phase():
    """Found by an exploratory run: under a manual freeze, a rollout with nothing to change exited 0 and never said so."""
    from playbooks import freezes
    from playbooks.plan import Plan

    facts = {"pc2": {"freezes": [{"phase": "rep", "by": "ana", "ts": 0, "reason": "driver upgrade"}]},
             "mainpc": {"freezes": [{"phase": "rep", "auto": True, "reason": "rollout r1 failed"}]}}
    [note] = freezes.idle_notes(Plan("r2", "rep", "op", []), facts, "inv.yml")
    assert note.startswith("note: phase rep is frozen on pc2 by ana") and "'driver upgrade'" in note and "fab thaw --phase rep" in note


def test_a_freeze_under_a_phase_name_phases_yml_no_longer_has_still_holds_its_host():
    """Found by an exploratory run: renaming a phase in phases.yml walked past its freeze, and `fab thaw --phase OLD` then
    failed with 'no phase named'. It holds every rollout on its host until thawed by that name."""
    facts = {"mainpc": {"freezes": [{"phase": "gpu", "reason": "storage migration", "by": "alice", "ts": 0, "auto": False}]}}
    renamed = Plan("r-next", "gpu-main", "op", [Step("mainpc", "svc", "replace", new_tag="20261127-ccccccc")])
    msgs = blocking(renamed, facts, "inv/fleet.yml", ["gpu-main", "cpu"])
    assert len(msgs) == 1 and "mainpc is frozen under phase 'gpu', which phases.yml no longer names" in msgs[0], msgs
    assert "fab thaw --phase gpu --reason" in msgs[0] and "'storage migration'" in msgs[0]
    assert blocking(renamed, facts, "inv/fleet.yml", ["gpu-main", "gpu"]) == [], "another existing phase's freeze: its own"


def test_an_automatic_freeze_follows_its_service_into_another_phase(daemon):
    """The failed release moved (with its service) into another phase is still the failed release."""
    running_old(daemon)
    daemon.image(REPO, NEW_D, behaviour="bad")
    assert run(daemon, [step(spec())])["services"][0]["outcome"] == "reverted"
    moved = Plan("r-next", "other", "op", [Step("mainpc", "svc", "replace", new_tag=spec()["tag"], new_digest=NEW_D, spec=spec())])
    msgs = blocking(moved, facts(), "inv/fleet.yml", ["other"])
    assert len(msgs) == 1 and "failed on mainpc with this configuration under phase 'gpu'" in msgs[0], msgs
    assert "fab thaw --phase gpu" in msgs[0]
    fixed = Plan("r-next", "other", "op", [Step("mainpc", "svc", "replace", new_tag="20261127-ccccccc",
                                                new_digest="sha256:" + "c" * 64, spec=spec(tag="20261127-ccccccc"))])
    assert blocking(fixed, facts(), "inv/fleet.yml", ["other"]) == []


def test_with_hosts_naming_some_of_the_phase_a_freeze_on_the_others_holds_them(monkeypatch):
    """Found by an exploratory run: pc2 held the freeze; `fab rollout -p P -H mainpc` (newly placed there) committed."""
    from types import SimpleNamespace

    from playbooks import freezes, transport

    inv = SimpleNamespace(select_hosts=lambda hosts, phase=None: ["mainpc", "pc2", "node3"],
                          services_for=lambda phase, hosts: ["batch"], repo=lambda s: f"reg/{s}")
    frozen = {"freezes": [{"phase": "cpu", "reason": "maintenance window", "by": "alice", "ts": 0, "auto": False}]}
    asked = []

    def on_hosts(inv, hosts, op, request, timeout=None, pool=None):
        asked.extend(hosts)
        assert request("pc2") == {"services": {"batch": "reg/batch"}}, "only the phase's own containers are described"
        return {"pc2": SimpleNamespace(answer={"data": frozen}, ok=True, error=""),
                "node3": SimpleNamespace(answer=None, ok=False, error="connection refused")}

    monkeypatch.setattr(transport, "on_hosts", on_hosts)
    block, notes = freezes.on_other_hosts(inv, "cpu", ["mainpc"], "inv/fleet.yml")
    assert asked == ["pc2", "node3"]
    assert len(block) == 1 and "phase cpu is frozen on pc2 by alice" in block[0] and "the hosts --hosts names included" in block[0]
    assert notes == ["note: could not ask node3 (also in phase cpu, not in --hosts) whether the phase is frozen there:"
                     " connection refused"]


def test_with_hosts_a_release_that_failed_on_another_host_of_the_phase_is_refused(monkeypatch, tmp_path):
    """Found by an exploratory run: a canary interrupted before the controller spread its freeze left mainpc free, and
    `fab rollout -p P -H mainpc` would deploy the release that had failed (and froze) on pc2."""
    from types import SimpleNamespace

    from agent.freeze import config_fingerprint
    from playbooks import freezes, transport
    from playbooks.plan import container_spec

    from .test_restart_unit import replicated_inventory

    inv = replicated_inventory(tmp_path)
    bad = "sha256:" + "b" * 64
    there = config_fingerprint(container_spec(inv, "rag-api", "pc2"))
    rec = {"phase": "cpu-pc2", "auto": True, "ts": 0, "rollout_id": "r-canary", "reason": "rollout r-canary reverted",
           "failed": {"rag-api": {"tag": "T9", "digest": bad, "config": there}}}
    monkeypatch.setattr(transport, "on_hosts", lambda inv, hosts, op, request, **kw: {
        h: SimpleNamespace(answer={"data": {"freezes": [rec]}}, ok=True, error="") for h in hosts})
    phase = next(p.name for p in inv.phases if "rag-api" in p.services)
    step = Step("mainpc", "rag-api", "replace", new_tag="T9", new_digest=bad, spec=container_spec(inv, "rag-api", "mainpc"))
    block, _ = freezes.on_other_hosts(inv, phase, ["mainpc"], "inv/fleet.yml", plan=Plan("r-next", phase, "op", [step]))
    assert len(block) == 1 and block[0].startswith("rag-api:T9@bbbbbbbbbbbb failed on pc2 (phase cpu-pc2 frozen there") \
        and "refused on mainpc too" in block[0], block
    fixed = Step("mainpc", "rag-api", "replace", new_tag="T10", new_digest="sha256:" + "c" * 64, spec=step.spec)
    assert freezes.on_other_hosts(inv, phase, ["mainpc"], "x", plan=Plan("r-next", phase, "op", [fixed]))[0] == []


def test_a_partly_lifted_freeze_still_names_every_release_it_refuses_and_what_it_dropped():
    """Found by review: the words rebuilt after a partial lift named only each remaining service's newest failure,
    not its earlier failed releases (still refused) nor that its oldest were no longer refused."""
    a = [{"tag": f"A{i}", "digest": f"sha256:a{i}", "config": f"cfg:a{i}"} for i in range(freeze.MAX_BLOCKS + 3)]
    for i, block in enumerate(a):
        freeze.write("gpu", f"rollout r-{i} failed: a:A{i}", "op", auto=True, releases={"a": f"A{i}"}, rollout_id=f"r-{i}",
                     failed={"a": block})
    b = {"tag": "B1", "digest": "sha256:b", "config": "cfg:b"}
    freeze.write("gpu", "rollout r-50 failed: b:B1", "op", auto=True, releases={"b": "B1"}, rollout_id="r-50", failed={"b": b})
    freeze.thaw("gpu", "op", "rollout r-51 committed", only_auto=True, services=["b"])
    words = freeze.read("gpu")["reason"]
    last = freeze.MAX_BLOCKS + 2
    assert words.startswith(f"a:A{last} failed in rollout r-{last} and stays refused, as does A{last - 1} (rollout r-{last - 1})")
    assert all(f"A{i} (rollout r-{i})" in words for i in range(2, last)) and "A1 " not in words, words
    assert "a: its 2 oldest failed release(s) are no longer refused" in words and words.endswith(
        "(b went ahead since: rollout r-51 committed)"), words
