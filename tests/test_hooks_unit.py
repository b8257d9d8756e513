"""Operator hooks beside the inventory: run with the rollout on stdin, a timeout, no shell (no hosts)."""

from __future__ import annotations

import json

from playbooks import hooks


def hook(tmp_path, name: str, body: str, mode: int = 0o755):
    d = tmp_path / "hooks"
    d.mkdir(exist_ok=True)
    p = d / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(mode)
    return tmp_path / "fleet.yml"


def test_absent_hook_is_a_pass_and_runs_nothing(tmp_path):
    r = hooks.run(tmp_path / "fleet.yml", "pre-rollout", {})
    assert r.ok and not r.ran


def test_hook_reads_the_rollout_on_stdin_and_its_variables(tmp_path):
    inv = hook(tmp_path, "post-rollout", 'cat > "$(dirname "$0")/seen.json"; echo "$FLEETROLL_PHASE $FLEETROLL_STATE" > "$(dirname "$0")/env.txt"\n')
    r = hooks.run(inv, "post-rollout", {"rollout_id": "r1", "phase": "gpu", "state": "committed", "plan": {"steps": []}})
    assert r.ok and r.ran
    assert json.loads((tmp_path / "hooks/seen.json").read_text())["rollout_id"] == "r1"
    assert (tmp_path / "hooks/env.txt").read_text().strip() == "gpu committed"


def test_failing_timing_out_and_unrunnable_hooks_fail_with_a_reason(tmp_path):
    inv = hook(tmp_path, "pre-rollout", 'echo "change window closed" >&2\nprintf "\\033[2Jx\\n"\nexit 3\n')
    r = hooks.run(inv, "pre-rollout", {})
    assert not r.ok and r.detail.startswith("exit 3") and "change window closed" in r.detail and "\x1b" not in r.detail
    inv = hook(tmp_path, "on-revert", "sleep 5\n")
    r = hooks.run(inv, "on-revert", {}, timeout=0.3)
    assert not r.ok and "did not finish within 0.3 s" in r.detail
    inv = hook(tmp_path, "post-rollout", "exit 0\n", mode=0o644)
    r = hooks.run(inv, "post-rollout", {})
    assert not r.ok and "not an executable file; fix: chmod +x" in r.detail
