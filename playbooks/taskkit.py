"""What every Fabric task shares: task options with one meaning, input errors as one-line exits, the inventory.

Start-up cost matters here: every `fab`/`fleetroll` command imports this module before it does
anything, so it imports invoke and the standard library only. The inventory (pydantic, PyYAML),
the SSH stack (paramiko, Fabric's Connection) and the output code are imported by the task
that needs them, when it runs (tests/test_startup_unit.py keeps it so).
"""

from __future__ import annotations

import functools
import os
import sys
import types
from pathlib import Path

from .errors import RolloutError
from .inventory_path import CHECKOUT_INVENTORY, default_inventory  # noqa: F401 - where callers have always found them
from .program import as_run, program, run_as  # noqa: F401  (program: re-exported for the tasks)


def _import_invoke() -> types.ModuleType:
    """invoke, without importing unittest.mock (and the asyncio it pulls in): ~30 ms of every command.

    invoke/context.py runs `from unittest.mock import Mock` at import time, only for MockContext,
    a helper for the tests of invoke's users that no fleetroll command touches. While invoke is
    first imported, a stand-in takes unittest.mock's place in sys.modules; its Mock builds the
    real one when called, and any other name it is asked for loads the real module. The stand-in
    leaves sys.modules as soon as invoke is in, so a later `import unittest.mock` (pytest, a test)
    gets the real module. Under `fab`, Fabric has imported invoke already and this does nothing.
    """
    if "invoke" in sys.modules or "unittest.mock" in sys.modules:
        import invoke

        return invoke
    stand_in = types.ModuleType("unittest.mock")

    def real() -> types.ModuleType:
        if sys.modules.get("unittest.mock") is stand_in:
            del sys.modules["unittest.mock"]
        import unittest.mock

        return unittest.mock

    def other(name: str):
        if name.startswith("__"):  # the import system asks for __path__ and the like: a plain module has none
            raise AttributeError(name)
        return getattr(real(), name)

    stand_in.Mock = lambda *a, **kw: real().Mock(*a, **kw)
    stand_in.__getattr__ = other
    sys.modules["unittest.mock"] = stand_in
    try:
        import invoke
    finally:
        if sys.modules.get("unittest.mock") is stand_in:
            del sys.modules["unittest.mock"]
    return invoke


invoke = _import_invoke()
Exit = invoke.Exit


def _ctrl_c_is_the_tasks_once_they_run() -> None:
    """Give SIGINT back to Python when invoke starts executing tasks (program.interrupted_while_starting took it).

    On invoke's Executor, which Fabric's subclasses: every task of `fab` and `fleetroll`, the lab's
    included, then sees Ctrl-C as KeyboardInterrupt. A task that handles it says what happens next
    (a rollout: the hosts finish on their own) and exits 130; one that does not (status, details, …)
    left invoke to turn it into exit 1 with no word: here it is exit 130, said.
    """
    if getattr(invoke.Executor.execute, "_fleetroll", False):
        return
    original = invoke.Executor.execute

    def execute(self, *tasks):
        import signal

        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return original(self, *tasks)
        except KeyboardInterrupt:
            raise Exit("interrupted (Ctrl-C)", code=130) from None

    execute._fleetroll = True
    invoke.Executor.execute = execute


_ctrl_c_is_the_tasks_once_they_run()

# One meaning per short flag across every task; every other option is long only.
SHORT_FLAGS = {"inventory": "i", "hosts": "H", "host": "H", "phase": "p", "service": "s", "json": "j", "yes": "y",
               "follow": "f", "dry_run": "n"}


class FleetTask(invoke.Task):
    """A task whose short flags come from SHORT_FLAGS, never from invoke's first-free-letter guess."""

    def arg_opts(self, name, default, taken_names):
        opts = super().arg_opts(name, default, taken_names)
        short = SHORT_FLAGS.get(name)
        if short and short not in taken_names:
            opts["names"].append(short)
        return opts


# --- the program the operator ran ------------------------------------------------------

# program(), as_run(): playbooks/program.py (render.say uses them too, without this module's imports)


def name_the_program(ns, name: str) -> None:
    """Run as `name`: every task's docstring and option help, and every hint from here on, name it."""
    run_as(name)
    for t in ns.tasks.values():
        t.__doc__ = as_run(t.__doc__ or "")
        t.help = {k: as_run(v) for k, v in t.help.items()}
    for sub in ns.collections.values():
        name_the_program(sub, name)


def one_line_errors(body):
    """Bad input (InventoryError) or a refused operation (RolloutError) ends the task as one line and exit 1.

    Both carry the operator's text already (an InventoryError one problem a line); a traceback
    would only bury it. Every task gets this through `task` below, so none repeats the except.
    Every message that leaves a task this way names the program that ran (as_run).
    """

    @functools.wraps(body)
    def run(*args, **kwargs):
        try:
            return body(*args, **kwargs)
        except Exit as exc:
            message, code = exc.message, exc.code
        except RolloutError as exc:
            message, code = str(exc), 1
        except KeyboardInterrupt:  # a task that does not say more about it (status, details, …): said, 130, JSON too
            message, code = "interrupted (Ctrl-C)", 130
        except Exception as exc:
            # Imported here: the inventory module is loaded whenever one of its errors exists, and
            # importing it at the top would cost every command pydantic's start-up.
            from .inventory import InventoryError

            if not isinstance(exc, InventoryError):
                raise
            message, code = str(exc), 1
        message = as_run(message) if message else message  # a hint naming `fab …`, in the words of the program run
        if message and code and kwargs.get("json"):
            # A script asked for JSON: the error is a JSON object on stdout too (the line stays on stderr for people),
            # as an invalid inventory's always was, not plain text and an empty stdout.
            from . import render

            render.dump_json({"error": message, "exit_code": code, **({"interrupted": True} if code == 130 else {})})
        raise Exit(message, code=code) from None

    return run


def task(*args, **kwargs):
    """invoke's @task, with FleetTask's short flags and one_line_errors around the body (bare or with options)."""
    kwargs.setdefault("klass", FleetTask)
    kwargs.setdefault("auto_shortflags", False)
    if len(args) == 1 and callable(args[0]) and not isinstance(args[0], invoke.Task):
        return invoke.task(one_line_errors(args[0]), **kwargs)
    return lambda body: invoke.task(*args, **kwargs)(one_line_errors(body))


def load_inventory(path: str | None, as_json: bool = False):
    """The loaded inventory, or exit 1 saying why (as a JSON object on stdout when the script asked for JSON)."""
    from . import render
    from .inventory import InventoryError, load

    if path is not None and not str(path).strip():  # -i "" (a script's unset variable): not "the default inventory"
        raise Exit("--inventory '' names no file: give --inventory FILE, or leave it out for $FLEETROLL_INVENTORY or"
                   " ./inventory/fleet.yml", code=1)
    chosen = path or default_inventory()
    if not Path(chosen).exists():
        msg = (f"no inventory at {chosen}: give --inventory FILE, set FLEETROLL_INVENTORY, or run where"
               " inventory/fleet.yml is")
        if as_json:
            render.dump_json({"error": msg, "inventory": chosen, "problems": [msg]})
            raise Exit(code=1)
        raise Exit(msg, code=1)
    try:
        return load(chosen)
    except InventoryError as exc:
        if as_json:  # a script asked for JSON: it gets JSON, on stdout, and exit 1
            render.dump_json({"error": "inventory is not valid", "inventory": str(chosen), "problems": exc.problems})
            raise Exit(code=1) from None
        raise Exit("inventory is not valid:\n" + "\n".join(f"  {p}" for p in exc.problems), code=1) from None


def required(value, option: str, example: str) -> str:
    """A task option every run needs (a flag, not a positional, so `fab TASK --help` prints help)."""
    if value is None or not str(value).strip():  # blank is not a reason, a phase or a service
        raise Exit(f"--{option} is required, e.g. {example}", code=1)
    return str(value)


def whole_number(value, option: str) -> int | None:
    """A numeric option: one line naming it and what it takes, not a traceback."""
    if value in (None, ""):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise Exit(f"--{option} must be a whole number, not {value!r}", code=1) from None
    if n < 1:
        raise Exit(f"--{option} must be 1 or more, not {n}", code=1)
    return n


def host_list(value: str | None) -> list[str] | None:
    """The hosts -H names; None when it was not given. Given but naming none (-H "", -H ",": a script's unset
    variable) is an error, never "every host"."""
    if value is None or value is True:
        return None
    names = [h.strip() for h in str(value).split(",") if h.strip()]
    if not names:
        raise Exit(f"--hosts {value!r} names no host: give -H NAME[,NAME...], or leave --hosts out for every host", code=1)
    return names


def quiet_when_the_reader_leaves() -> None:
    """`fab --list | head -1`, `fab TASK --help | head -3`: the reader leaves; stop quietly, with no traceback.

    invoke prints help and task lists itself, so the BrokenPipeError escapes from its code, not
    ours: the process's hook for an uncaught exception ends it quietly (exit 1, as render's
    closed-pipe path does), and at exit what is still buffered for stdout goes to /dev/null
    instead of raising again during interpreter shutdown. SIGPIPE stays ignored (Python's
    default): a controller talking SSH must get EPIPE from a dead socket as an error, not die.
    """
    import atexit

    def to_devnull() -> None:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass

    previous = sys.excepthook

    def hook(kind, exc, tb):
        if issubclass(kind, BrokenPipeError):
            to_devnull()
            return
        previous(kind, exc, tb)

    def flush() -> None:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            to_devnull()
        except (OSError, ValueError):
            pass

    sys.excepthook = hook
    atexit.register(flush)
