"""fab history shows who froze, thawed and pruned, beside the rollouts (found missing by an exploratory run)."""

from __future__ import annotations

from playbooks import ledger, render


def test_freeze_thaw_and_prune_are_rows_of_fab_history(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    ledger.append("freeze", phase="cpu-pc2", operator="alice", reason="maintenance window", hosts=["pc2"], ok=True)
    ledger.append("thaw", phase="cpu-pc2", operator="bob", reason="done", hosts=["pc2", "mainpc"], ok=False)
    ledger.append("prune", operator="carol", hosts=["pc2"], keep=3, dry_run=True, removed={})
    ledger.append("prune", operator="carol", hosts=["pc2"], keep=2, dry_run=False, removed={"pc2": [["a"], ["b"]]})
    rows = ledger.rollouts()
    assert [(r["phase"], r["operator"], r["final"]) for r in rows] == [
        ("cpu-pc2", "alice", "frozen"), ("cpu-pc2", "bob", "thawed (not on every host)"), ("(prune)", "carol", "2 image(s) removed")]
    text = render.history_text(rows, "ledger.jsonl")
    assert "fab freeze on pc2: 'maintenance window'" in text and "fab thaw on pc2, mainpc: 'done'" in text
    assert "fab prune --keep 2 on pc2" in text and "--keep 3" not in text, "a dry run changed nothing: not a row"


def test_a_thaw_of_a_name_no_phase_has_and_no_host_froze_is_exit_1_not_thawed(tmp_path, monkeypatch):
    """Found by a review: `fab thaw --phase gpu-mainp` (a typo) answered 'not frozen here' on each host, exit 0, and
    history said 'thawed' while gpu-mainpc stayed frozen."""
    from types import SimpleNamespace

    from playbooks import operate, transport
    from playbooks.inventory import load

    from .conftest import ROOT

    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    inv = load(ROOT / "inventory" / "fleet.yml")
    monkeypatch.setattr(transport, "on_hosts", lambda inv, hosts, op, req, **kw: {
        h: SimpleNamespace(answer={"ok": True, "msg": "gpu-mainp was not frozen here", "changed": False}, ok=True, error="")
        for h in hosts})
    ok, lines = operate.set_freeze(inv, "gpu-mainp", "typo", thaw=True)
    assert not ok and "no host holds a freeze of phase 'gpu-mainp', and phases.yml has no such phase" in lines[-1], lines
    assert "gpu-mainpc" in lines[-1] and ledger.rollouts() == []
    monkeypatch.setattr(transport, "on_hosts", lambda inv, hosts, op, req, **kw: {
        h: SimpleNamespace(answer={"ok": True, "msg": "gpu-mainpc was not frozen here", "changed": False}, ok=True, error="")
        for h in hosts})
    assert operate.set_freeze(inv, "gpu-mainpc", "nothing there", thaw=True)[0]
    assert ledger.rollouts()[-1]["final"] == "nothing was frozen"


def test_a_partial_freeze_or_thaw_names_only_the_hosts_it_changed_and_those_that_did_not_answer(tmp_path, monkeypatch):
    """Found by an exploratory run: `fab freeze -p core-infra` with pc2 unreachable said "freeze is incomplete", yet
    history read "fab freeze on mainpc, pc2"; a thaw of pc2's freeze read "fab thaw on mainpc, pc2, bad-driver"."""
    from types import SimpleNamespace

    from playbooks import operate, transport
    from playbooks.inventory import load

    from .conftest import ROOT

    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    inv = load(ROOT / "inventory" / "fleet.yml")
    down = SimpleNamespace(answer=None, ok=False, error="ssh: connect to host pc2: No route to host")
    monkeypatch.setattr(transport, "on_hosts", lambda inv, hosts, op, req, **kw: {
        h: down if h == "pc2" else SimpleNamespace(answer={"ok": True, "msg": "frozen", "changed": True}, ok=True, error="")
        for h in hosts})
    ok, _ = operate.set_freeze(inv, "core-infra", "maint window")
    assert not ok and ledger.read()[-1]["failed"] == ["pc2"]
    row = ledger.rollouts()[-1]
    assert row["final"] == "frozen (not on every host)"
    assert row["note"] == "fab freeze on mainpc (pc2 did not answer: not frozen there): 'maint window'", row["note"]
    ledger.append("freeze", phase="core-infra", operator="al", reason="w", hosts=["mainpc", "pc2"], ok=False, changed=["mainpc"])
    assert ledger.rollouts()[-1]["note"] == "fab freeze on mainpc (pc2 did not answer: not frozen there): 'w'", "a record before failed"
    ledger.append("thaw", phase="cpu-pc2", operator="al", reason="done", hosts=["mainpc", "pc2", "bad-driver"], ok=True,
                  changed=["pc2"], failed=[])
    assert (ledger.rollouts()[-1]["final"], ledger.rollouts()[-1]["note"]) == ("thawed", "fab thaw on pc2: 'done'")
    ledger.append("thaw", phase="cpu-pc2", operator="al", reason="d", hosts=["mainpc", "pc2"], ok=False, changed=[], failed=["pc2"])
    row = ledger.rollouts()[-1]
    assert row["final"] == "nothing thawed (not every host answered)"
    assert row["note"] == "fab thaw on no host (pc2 did not answer: a freeze there stays): 'd'", row["note"]
    text = render.history_text(ledger.rollouts(), "ledger.jsonl")
    assert "fab freeze on mainpc, pc2" not in text and "fab thaw on mainpc" not in text
