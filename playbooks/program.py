"""The command the operator ran, and hints written in its words.

Hints throughout the controller (reports, refusals, help) are written once, as `fab TASK …`,
the repository's command. The installed tool is `fleetroll`: it must not tell its operator to
run a command they may not have (issue 23). Kept apart from the task machinery so that the
one function every report line goes through (render.say) can use it without importing Fabric.
"""

from __future__ import annotations

import re

_PROGRAM = ["fab"]  # `fab` in the repository (fabfile.py); playbooks/cli.py names it `fleetroll`
_FAB_COMMAND = re.compile(r"(?<![\w./-])fab (?=[a-z`-])")


def program() -> str:
    """The command the operator ran: `fab` in the repository, `fleetroll` when installed."""
    return _PROGRAM[0]


def run_as(name: str) -> None:
    _PROGRAM[0] = name


def as_run(text: str) -> str:
    """A help text or hint that says `fab TASK …`, in the words of the program that is running."""
    if not text or program() == "fab":
        return text
    return _FAB_COMMAND.sub(f"{program()} ", text)


def interrupted_while_starting() -> None:
    """Ctrl-C before a task's body runs (imports, the inventory, parsing): exit 130 and say that nothing was asked.

    invoke turns a KeyboardInterrupt it catches into exit 1 with no word, which the README gives to bad
    input; a script would read an operator's Ctrl-C as a broken inventory. Until taskkit hands SIGINT
    back to Python as invoke executes the task, this handler ends the process itself. A login prewarm
    started only waits for a request: the end of its input (this exit) ends it.
    """
    import os
    import signal
    import sys

    if os.path.basename(sys.argv[0] if sys.argv else "") not in ("fab", "fleetroll"):
        return  # imported by something else (a test importing fabfile): its Ctrl-C stays its own

    def handler(signum, frame) -> None:
        os.write(2, b"interrupted while starting; nothing was asked of any host\n")
        os._exit(130)

    signal.signal(signal.SIGINT, handler)


def keep_bytecode() -> None:
    """Undo invoke's `sys.dont_write_bytecode = True` (its default without `--write-pyc`), keeping the interpreter's own.

    invoke sets it while it parses the command line, before the tasks' modules load (they import what they need as they
    run). Every `fab`/`fleetroll` command then compiled ~40 modules from source and cached none of them: 65 ms of each
    command on a 2-core lab machine, every time, for an editable install or a checkout. -B or PYTHONDONTWRITEBYTECODE, the
    operator's own choice, is still obeyed (sys.flags is what the interpreter started with).
    """
    import sys

    sys.dont_write_bytecode = bool(sys.flags.dont_write_bytecode)
