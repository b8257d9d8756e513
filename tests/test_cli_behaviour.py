"""The CLI under help, bad input and closed pipes: help for every task, one-line errors, no tracebacks (no hosts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAB = str(Path(sys.executable).with_name("fab"))
from playbooks.tasks import ns  # noqa: E402

TASKS = sorted(ns.task_names)  # every task there is, so a new one cannot miss its help


def fab(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([FAB, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, input=stdin)


@pytest.mark.parametrize("task", TASKS)
def test_task_help_prints_help_and_runs_nothing(task):
    r = fab(task, "--help")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Usage: fab" in r.stdout and "Traceback" not in r.stderr


@pytest.mark.parametrize("args,says", [
    (["rollout", "--phase", "gpu-mainpc", "--max-parallel", "abc"], "--max-parallel must be a whole number, not 'abc'"),
    (["preflight", "--max-parallel", "0"], "--max-parallel must be 1 or more"),
    (["history", "--limit", "x"], "--limit must be a whole number, not 'x'"),
    (["unlock", "--host", "nosuchhost", "--reason", "r"], "--hosts names nosuchhost, not in the inventory"),
    (["unlock", "--host", "mainpc"], "--reason is required"),
    (["rollback"], "--phase is required"),
    (["freeze", "--phase", "gpu-mainpc"], "--reason is required"),
    (["thaw", "--reason", "r"], "--phase is required"),
    (["freeze", "--phase", "no-such-phase", "--reason", "r"], "no-such-phase"),
    (["lab.release"], "--service is required"),
    (["build"], "--family is required"),
    (["runbook", "no/such.md"], "no such runbook"),
])
def test_bad_input_is_one_line_and_exit_1(args, says):
    r = fab(*args)
    assert r.returncode == 1, r.stdout + r.stderr
    assert says in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_closed_pipe_ends_quietly(tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text("".join(f'{{"kind":"started","rollout_id":"r{i}","time":"t","phase":"p"}}\n' for i in range(3000)))
    # fab history --json | head -c 10, as two processes joined by a real pipe (no shell)
    writer = subprocess.Popen([FAB, "history", "--json", "--limit", "3000"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**__import__("os").environ, "FLEETROLL_LEDGER": str(ledger)})
    reader = subprocess.run(["head", "-c", "10"], stdin=writer.stdout, capture_output=True, timeout=60)
    writer.stdout.close()
    err = writer.stderr.read().decode()
    writer.wait(timeout=60)
    assert len(reader.stdout) == 10
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_numeric_options_with_defaults_are_checked_by_us_not_the_parser():
    r = fab("lab.up", "--hosts", "many")
    assert r.returncode == 1 and "--hosts must be a whole number, not 'many'" in r.stderr and "Traceback" not in r.stderr


def test_short_flags_mean_one_thing_in_every_task():
    import re

    from playbooks.tasks import SHORT_FLAGS

    seen: dict[str, set[str]] = {}
    for name in TASKS:
        for short, long in re.findall(r"^\s+-(\w)(?: \w+)?, --([\w-]+)", fab(name, "--help").stdout, re.M):
            seen.setdefault(short, set()).add(long)
            assert SHORT_FLAGS.get(long.replace("-", "_")) == short, (name, short, long)
    assert all(len(longs) == 1 or longs == {"host", "hosts"} for longs in seen.values()), seen
