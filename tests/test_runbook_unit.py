"""Runbook parsing and running, on small runbooks written here (no hosts)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from playbooks import ledger, runbook

ROOT = Path(__file__).resolve().parent.parent

GOOD = """# t
### one — first
```sh
echo one
```
Success: prints one

### two — must fail
```sh expect-exit=3
exit 3
```
Success: exits 3

### three — last
```sh
echo three > "$OUT"
```
Success: writes the file
"""


def test_repo_runbook_covers_phases_0_to_8_and_r4():
    steps = runbook.parse((ROOT / "docs" / "runbook.md").read_text())
    ids = [s.id for s in steps]
    for must in ("preflight", "build-families", "audit", "ci-pipeline", "rollout-core-infra", "rollout-gpu-mainpc",
                 "rollout-cpu-pc2", "sbom-sha-check", "bad-release", "operator-rollback", "risk-blocked", "risk-accepted"):
        assert must in ids
    assert next(s for s in steps if s.id == "bad-release").expect_exit == 4
    assert all(s.success for s in steps)


def test_parse_errors_name_the_line():
    with pytest.raises(runbook.RunbookError, match=r"rb:1: step 'x' does not say what success looks like"):
        runbook.parse("### x — t\n```sh\ntrue\n```\n", "rb")
    with pytest.raises(runbook.RunbookError, match="has no ```sh block"):
        runbook.parse("### x — t\nSuccess: y\n", "rb")
    with pytest.raises(runbook.RunbookError, match="second sh block"):
        runbook.parse("### x — t\n```sh\ntrue\n```\n```sh\ntrue\n```\nSuccess: y\n", "rb")
    with pytest.raises(runbook.RunbookError, match="never closed"):
        runbook.parse("### x — t\n```sh\ntrue\n", "rb")
    with pytest.raises(runbook.RunbookError, match="repeated: x"):
        runbook.parse("### x — a\n```sh\ntrue\n```\nSuccess: y\n### x — b\n```sh\ntrue\n```\nSuccess: y\n", "rb")


def test_run_all_steps_with_expected_failure(tmp_path, monkeypatch):
    rb = tmp_path / "rb.md"
    rb.write_text(GOOD)
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    out = io.StringIO()
    res = runbook.run(rb, yes=True, out=out)
    assert [(r.id, r.ok, r.exit_code) for r in res] == [("one", True, 0), ("two", True, 3), ("three", True, 0)]
    assert (tmp_path / "out").read_text() == "three\n"
    steps = [r for r in ledger.read() if r["kind"] == "runbook-step"]
    assert [s["step"] for s in steps] == ["one", "two", "three"] and all(s["ok"] for s in steps)


def test_stops_at_first_failure_and_resumes_with_from(tmp_path, monkeypatch):
    rb = tmp_path / "rb.md"
    rb.write_text(GOOD.replace("echo one", "echo broken >&2; exit 7"))
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    out = io.StringIO()
    res = runbook.run(rb, yes=True, out=out)
    assert [(r.id, r.ok, r.exit_code) for r in res] == [("one", False, 7)]
    text = out.getvalue()
    assert "FAILED step one: exit 7, expected 0" in text and "broken" in text and "--from one" in text
    assert not (tmp_path / "out").exists()
    res = runbook.run(rb, start="three", yes=True, out=io.StringIO())
    assert [r.id for r in res] == ["three"] and (tmp_path / "out").exists()


def test_unknown_from_step():
    with pytest.raises(runbook.RunbookError, match="steps are: one, two, three"):
        runbook.select(runbook.parse(GOOD), "four")


def test_declining_a_step_stops(tmp_path):
    rb = tmp_path / "rb.md"
    rb.write_text(GOOD)
    out = io.StringIO()
    assert runbook.run(rb, confirm=lambda s: False, out=out) == []
    assert "resume with: fab runbook" in out.getvalue()


def test_each_run_gets_its_own_scratch_directory_and_the_repo_runbook_uses_no_fixed_tmp_paths(tmp_path):
    rb = tmp_path / "rb.md"
    rb.write_text('### one — scratch\n```sh\necho x > "$FLEETROLL_RUN_DIR/f" && stat -c %a "$FLEETROLL_RUN_DIR"\n```\nSuccess: y\n')
    runbook.run(rb, yes=True, out=io.StringIO())
    runbook.run(rb, yes=True, out=io.StringIO())
    dirs = sorted((tmp_path / "ledger" / "runbooks").iterdir())  # beside the ledger (conftest gives each test its own)
    assert len(dirs) == 2 and all((d / "f").read_text() == "x\n" for d in dirs)
    out = [r for r in ledger.read() if r["kind"] == "runbook-step"]
    assert all(r["output_tail"] == ["700"] for r in out)
    text = (ROOT / "docs" / "runbook.md").read_text()
    assert "/tmp/fleetroll" not in text


def test_documented_variables_are_the_ones_the_tool_reads(monkeypatch, tmp_path):
    import re

    from playbooks import executor
    from playbooks.inventory import load

    text = (ROOT / "docs" / "runbook.md").read_text()
    documented = set(re.findall(r"^\| `(FLEETROLL_[A-Z_]+)` \|", text, re.M))
    assert {"FLEETROLL_INVENTORY", "FLEETROLL_ACCEPTANCES", "FLEETROLL_RUN_DIR", "FLEETROLL_LAB"} <= documented
    inv = load(ROOT / "inventory" / "fleet.yml")
    monkeypatch.delenv("FLEETROLL_ACCEPTANCES", raising=False)
    assert executor.acceptances_path(inv) == inv.resolve(inv.fleet.security.acceptances)
    monkeypatch.setenv("FLEETROLL_ACCEPTANCES", str(tmp_path / "acc.yml"))
    assert executor.acceptances_path(inv) == tmp_path / "acc.yml"


def test_a_success_text_wrapped_over_lines_is_kept_whole():
    steps = runbook.parse("### one — x\n```sh\ntrue\n```\nSuccess: exit 4 with `FAILED …`,\n`now: …` and the next command.\n\nMore prose.\n")
    assert steps[0].success == "exit 4 with `FAILED …`, `now: …` and the next command."


def test_ctrl_c_stops_the_steps_whole_process_group_and_records_it_as_interrupted(tmp_path, monkeypatch):
    """Found by an exploratory run: on Ctrl-C a step's `sleep 200 &` survived, and the step was not in the ledger."""
    import subprocess
    import time

    from .test_hooks_unit import _gone

    pid_file = tmp_path / "child.pid"
    rb = tmp_path / "rb.md"
    rb.write_text('### long — runs a while\n```sh\nsleep 200 &\necho $! > "$PIDF"\necho started\nsleep 100\n```\nSuccess: y\n')
    monkeypatch.setenv("PIDF", str(pid_file))
    original = subprocess.Popen.communicate

    pressed = []

    def ctrl_c_once(self, *args, **kwargs):  # only the step's own call: other threads of this worker may run commands too
        if self.args[:2] == ["bash", "-eo"] and "$PIDF" in self.args[-1] and not pressed:
            pressed.append(self.pid)
            while not pid_file.exists() or not pid_file.read_text().strip():
                time.sleep(0.02)
            time.sleep(0.1)
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "communicate", ctrl_c_once)
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        runbook.run(rb, yes=True, out=out)
    assert _gone(int(pid_file.read_text())), "the step's background child outlived Ctrl-C"
    text = out.getvalue()
    assert "INTERRUPTED step long (Ctrl-C)" in text and "stopped it and every process it started (process group" in text
    assert "recorded in the ledger as interrupted" in text and "--from long" in text and "| started" in text
    [rec] = [r for r in ledger.read() if r["kind"] == "runbook-step"]
    assert rec["step"] == "long" and rec["interrupted"] is True and rec["ok"] is False and rec["output_tail"] == ["started"]


def _sbom_step_with_a_collector(tmp_path, status: dict) -> tuple[int, list[str], int]:
    """The repo runbook's sbom-sha-check, run as `fab runbook` runs a step, with a fake `fab` answering `status` (and no waits)."""
    import json
    import os

    step = next(s for s in runbook.parse((ROOT / "docs" / "runbook.md").read_text()) if s.id == "sbom-sha-check")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (tmp_path / "status.json").write_text(json.dumps(status))
    fakes = {"fab": f'echo "$*" >> "{tmp_path}/calls"\nif [ "$2" = --json ]; then cat "{tmp_path}/status.json"; else echo table; fi\n',
             "sleep": "exit 0\n"}
    for name, body in fakes.items():
        (bin_ / name).write_text("#!/bin/sh\n" + body)
        (bin_ / name).chmod(0o755)
    (tmp_path / "run").mkdir()
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "FLEETROLL_RUN_DIR": str(tmp_path / "run")}
    code, lines = runbook._execute(step.command, tmp_path, env)
    calls = (tmp_path / "calls").read_text().splitlines()
    return code, lines, calls.count("status --json")


def test_the_sbom_sha_check_step_fails_when_its_check_never_passes(tmp_path):
    """Found by an exploratory run: 20x `AssertionError: collector not answering`, yet the step passed (exit 0): the
    retry loop's `python3 ... && break` swallowed the failure and the last `fab status` decided the step."""
    code, lines, tries = _sbom_step_with_a_collector(tmp_path, {"collector": "down", "hosts": {}})
    assert code != 0 and tries == 20, (code, tries)
    text = "\n".join(lines)
    assert text.count("AssertionError: collector not answering") == 20 and "reported and matching" not in text
    assert "sbom-sha-check FAILED: the check failed all 20 tries" in text


def test_the_sbom_sha_check_step_passes_once_the_check_does(tmp_path):
    ok = {"collector": "ok", "hosts": {"pc2": {"services": {"hello": {"sha_drift": "", "reported_git_sha": "0123456789abcdef"}}}}}
    code, lines, tries = _sbom_step_with_a_collector(tmp_path, ok)
    assert code == 0 and tries == 1 and "reported and matching: hello=0123456789ab" in lines and lines[-1] == "table", lines
