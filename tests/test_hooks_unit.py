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


def _gone(pid: int, within: float = 5.0) -> bool:
    """The process with this pid (one the test's own hook recorded) has ended: absent, or a zombie no one reaped yet."""
    import time

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_a_timed_out_hook_is_stopped_with_every_process_it_started(tmp_path):
    """Found by an exploratory run: a hook's `sleep 300` kept running, re-parented to PID 1, after the timeout."""
    inv = hook(tmp_path, "pre-rollout", 'sleep 300 &\necho $! > "$(dirname "$0")/child.pid"\nsleep 300\n')
    r = hooks.run(inv, "pre-rollout", {}, timeout=0.5)
    assert not r.ok and "did not finish within 0.5 s (FLEETROLL_HOOK_TIMEOUT)" in r.detail
    assert "stopped it and every process it started (process group" in r.detail and "raise FLEETROLL_HOOK_TIMEOUT" in r.detail
    assert _gone(int((tmp_path / "hooks/child.pid").read_text())), "the hook's background child outlived the timeout"


def test_ctrl_c_while_a_hook_runs_stops_its_process_group_too(tmp_path, monkeypatch):
    import subprocess
    import time

    import pytest

    inv = hook(tmp_path, "pre-rollout", 'sleep 300 &\necho $! > "$(dirname "$0")/child.pid"\nsleep 300\n')
    pid_file = tmp_path / "hooks/child.pid"

    original = subprocess.Popen.communicate

    def ctrl_c(self, input=None, timeout=None):  # only the hook's own call: other threads of this worker may run commands too
        if self.args != [str(tmp_path / "hooks/pre-rollout")]:
            return original(self, input, timeout)
        while not pid_file.exists() or not pid_file.read_text().strip():
            time.sleep(0.02)
        raise KeyboardInterrupt

    monkeypatch.setattr(subprocess.Popen, "communicate", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        hooks.run(inv, "pre-rollout", {}, timeout=30)
    assert _gone(int(pid_file.read_text()))
