"""What a task asks and shows the operator around a change: the confirmation, Ctrl-C, the reports.

Shared by the fleet's tasks (playbooks/tasks.py), kept apart so that module holds only the
tasks. Like taskkit, it imports the standard library alone at start-up; the output code is
imported when a task runs.
"""

from __future__ import annotations

import os
import signal
import sys

from .taskkit import Exit, as_run


def ask_unless_yes(yes: bool, question: str) -> None:
    """One yes/no before a change; without a terminal, --yes is required."""
    if not yes and not (sys.stdin.isatty() and input(f"{question} [y/N] ").lower().startswith("y")):
        raise Exit("not confirmed (use --yes without a terminal); nothing was changed", code=1)


def confirm_or_yes(yes: bool):
    """Ask before changing hosts, like Kamal; without a terminal, --yes is required."""

    def confirm(plan) -> bool:
        if yes:
            return True
        from .plan import plan_text

        print(as_run(plan_text(plan)), file=sys.stderr)
        if not sys.stdin.isatty():
            print("refusing to change hosts without confirmation: no terminal; re-run with --yes", file=sys.stderr)
            return False
        return input(f"roll out {len(plan.changes)} change(s)? [y/N] ").strip().lower() in ("y", "yes")

    def show(report) -> None:
        """Before the question: the preflight table and every security warning the rollout would go ahead with."""
        if yes:
            return
        from . import render

        if report.preflight is not None:
            print(as_run(render.preflight_text(report.preflight.checks, report.preflight.hosts)), file=sys.stderr)
        for m in report.messages:
            if m.startswith(("security WARN", "preflight WARN")) or "would be refused" in m:
                print(as_run(m), file=sys.stderr)

    confirm.show = show
    return confirm


def interrupted(message: str, as_json: bool = False) -> None:
    """Ctrl-C: say what happens now and leave with 130 at once, not waiting for calls still in flight.

    The hosts' transactions run detached from the SSH session, so leaving cannot strand a host.
    Under --json the same words are a JSON object on stdout too: a script reading it gets an
    answer, not an empty stream.
    """
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))  # a second Ctrl-C while this prints: out at once
    if sys.stderr.isatty():
        sys.stderr.write("\x1b[?25h")  # the live progress display hides the cursor; give it back
    print(f"\n{as_run(message)}", file=sys.stderr, flush=True)
    if as_json:
        from . import render

        render.dump_json({"error": as_run(message), "exit_code": 130, "interrupted": True})
    sys.stdout.flush()
    os._exit(130)


def print_reports(reports, as_json: bool, one_object: bool = False) -> None:
    """--json: rollout always prints {"state", "exit_code", "phases": [...]}, one phase or --all alike; rollback one report."""
    from . import render

    if as_json:
        from agent.vocabulary import State

        from . import executor

        if one_object:  # rollback, restart: their exit code beside the report, as rollout's JSON has it
            r = reports[0]
            render.dump_json({**r.to_json(), "exit_code": 0 if r.ok else executor.exit_code([executor.report_state(r)])})
            return
        states = [executor.report_state(r) for r in reports]
        code = executor.exit_code(states)
        same = [st for st in states if executor.exit_code([st]) == code]
        # Of the states with that code, the one that says most: a phase committed beside one with nothing to do is committed
        worst = next((st for st in (State.COMMITTED, State.CHANGES_PLANNED) if st in same), same[0])
        render.dump_json({"state": worst, "exit_code": code, "phases": [r.to_json() for r in reports]})
        return
    for r in reports:
        render.say(render.rollout_text(r))
