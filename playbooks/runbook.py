"""Executable runbooks: the ops runbook's steps, run in order, recorded in the ledger.

A runbook is Markdown. Each step is a level-3 heading `### <id> — <title>` followed by
prose, one fenced `sh` block (the command) and a line starting `Success:` (what success
looks like). A block written ```` ```sh expect-exit=1 ```` is a step whose command must
fail that way (a deliberate bad release). Parsing is pure; running shows each step,
asks unless --yes, stops at the first failing step with its output, and resumes with --from.
The commands are the operator's own text, run by bash as they would type them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import ledger, procgroup

HEADING = re.compile(r"^###\s+(?P<id>[a-z0-9][a-z0-9-]*)\s+[—-]+\s+(?P<title>.+?)\s*$")
FENCE = re.compile(r"^```sh(?P<opts>[^\n`]*)$")


class RunbookError(Exception):
    pass


@dataclass
class Step:
    id: str
    title: str
    command: str
    success: str
    expect_exit: int = 0
    line: int = 0


@dataclass
class StepResult:
    id: str
    ok: bool
    exit_code: int
    expected: int
    elapsed_s: float
    output_tail: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def parse(text: str, source: str = "runbook") -> list[Step]:
    steps: list[Step] = []
    lines = text.splitlines()
    i = 0
    current: dict | None = None
    while i < len(lines):
        m = HEADING.match(lines[i])
        if m:
            if current:
                steps.append(_finish(current, source))
            current = {"id": m["id"], "title": m["title"], "line": i + 1, "command": None, "success": "", "expect": 0}
        elif current is not None and (f := FENCE.match(lines[i])):
            if current["command"] is not None:
                raise RunbookError(f"{source}:{i + 1}: step {current['id']!r} has a second sh block; one command block per step")
            body = []
            i += 1
            while i < len(lines) and lines[i] != "```":
                body.append(lines[i])
                i += 1
            if i == len(lines):
                raise RunbookError(f"{source}:{current['line']}: step {current['id']!r}: code block never closed")
            current["command"] = "\n".join(body)
            em = re.search(r"expect-exit=(\d+)", f["opts"])
            current["expect"] = int(em[1]) if em else 0
        elif current is not None and lines[i].startswith("Success:"):
            # The whole paragraph: a Success: text wrapped over lines was cut after its first line.
            text = [lines[i].removeprefix("Success:").strip()]
            while i + 1 < len(lines) and lines[i + 1].strip() and not HEADING.match(lines[i + 1]) and not FENCE.match(lines[i + 1]):
                i += 1
                text.append(lines[i].strip())
            current["success"] = " ".join(text)
        i += 1
    if current:
        steps.append(_finish(current, source))
    ids = [s.id for s in steps]
    dupes = {x for x in ids if ids.count(x) > 1}
    if dupes:
        raise RunbookError(f"{source}: step ids must be unique; repeated: {', '.join(sorted(dupes))}")
    if not steps:
        raise RunbookError(f"{source}: no steps (### <id> — <title> headings with an ```sh block)")
    return steps


def _finish(cur: dict, source: str) -> Step:
    if cur["command"] is None:
        raise RunbookError(f"{source}:{cur['line']}: step {cur['id']!r} has no ```sh block")
    if not cur["success"]:
        raise RunbookError(f"{source}:{cur['line']}: step {cur['id']!r} does not say what success looks like (a 'Success:' line)")
    return Step(cur["id"], cur["title"], cur["command"], cur["success"], cur["expect"], cur["line"])


def select(steps: list[Step], start: str | None) -> list[Step]:
    if not start:
        return steps
    ids = [s.id for s in steps]
    if start not in ids:
        raise RunbookError(f"--from {start!r}: no such step; steps are: {', '.join(ids)}")
    return steps[ids.index(start):]


def run(path: Path, start: str | None = None, yes: bool = False, confirm=None, out=None, cwd: Path | None = None) -> list[StepResult]:
    out = out or sys.stdout
    steps = select(parse(path.read_text(), str(path)), start)
    # Scratch space of this run alone (steps must not share fixed paths in /tmp with other runs or users); mode 0700.
    parent = ledger.path().parent / "runbooks"
    parent.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"runbook-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-", dir=parent))
    rid = run_dir.name
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", "FLEETROLL_RUN_DIR": str(run_dir)}
    print(f"runbook {path}: run {rid}, scratch directory {run_dir}", file=out)
    results: list[StepResult] = []
    for n, step in enumerate(steps, 1):
        print(f"\n== step {n}/{len(steps)}: {step.id} — {step.title}", file=out)
        print("\n".join(f"   $ {line}" for line in step.command.splitlines()), file=out)
        print(f"   success: {step.success}", file=out, flush=True)
        if not yes and not (confirm or _ask)(step):
            print(f"stopped before {step.id}; resume with: fab runbook {path} --from {step.id}", file=out)
            break
        t0 = time.monotonic()
        try:
            code, lines = _execute(step.command, cwd, env)
        except _Interrupted as cut:  # recorded as interrupted, not lost: the ledger says where the run stopped
            elapsed = time.monotonic() - t0
            ledger.append("runbook-step", rollout_id=rid, runbook=str(path), step=step.id, ok=False, exit_code=cut.code,
                          expected=step.expect_exit, elapsed_s=round(elapsed, 2), output_tail=cut.lines[-80:], interrupted=True)
            print("\n".join(f"   | {line}" for line in cut.lines[-15:]), file=out)
            print(f"INTERRUPTED step {step.id} (Ctrl-C) after {elapsed:.1f}s: fleetroll {cut.stopped}; recorded in the ledger"
                  f" as interrupted\ncheck what it had done, then resume with: fab runbook {path} --from {step.id}", file=out, flush=True)
            raise KeyboardInterrupt from None
        elapsed = time.monotonic() - t0
        ok = code == step.expect_exit
        res = StepResult(step.id, ok, code, step.expect_exit, round(elapsed, 2), lines[-80:])
        results.append(res)
        ledger.append("runbook-step", rollout_id=rid, runbook=str(path), step=step.id, ok=ok, exit_code=code,
                      expected=step.expect_exit, elapsed_s=res.elapsed_s, output_tail=lines[-80:])
        print("\n".join(f"   | {line}" for line in lines[-15:]), file=out)
        if not ok:
            print(f"FAILED step {step.id}: exit {code}, expected {step.expect_exit} ({elapsed:.1f}s)\n"
                  f"fix it, then resume with: fab runbook {path} --from {step.id}", file=out)
            break
        print(f"   ok ({elapsed:.1f}s)", file=out, flush=True)
    return results


class _Interrupted(Exception):
    """Ctrl-C while a step ran: its process group is stopped; what it had printed and how it ended."""

    def __init__(self, code: int | None, lines: list[str], stopped: str) -> None:
        super().__init__(stopped)
        self.code, self.lines, self.stopped = code, lines, stopped


def _execute(command: str, cwd: Path | None, env: dict[str, str]) -> tuple[int, list[str]]:
    """Run a step's command by bash in a session of its own: (exit code, output lines).

    Ctrl-C reaches only the foreground process group, and bash starts `cmd &` with SIGINT
    ignored: an exploratory run's `sleep 200 &` outlived the runbook. So the step gets a group
    of its own, and Ctrl-C here stops that whole group (procgroup) before it goes on, as _Interrupted.
    """
    with subprocess.Popen(["bash", "-eo", "pipefail", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True) as proc:
        try:
            output, _ = proc.communicate()
        except KeyboardInterrupt:
            stopped = procgroup.stop(proc, ctrl_c_first=True)
            raise _Interrupted(proc.returncode, procgroup.output_after_stop(proc)[0].splitlines(), stopped) from None
    return proc.returncode, output.splitlines()


def _ask(step: Step) -> bool:
    if not sys.stdin.isatty():
        raise RunbookError("no terminal to confirm steps on; re-run with --yes")
    return input(f"run step {step.id}? [y/N] ").strip().lower() in ("y", "yes")
