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
