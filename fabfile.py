"""fleetroll's Fabric entry point: `fab --list` from the repository root.

`fab` is Fabric's program: it has imported invoke, Fabric and paramiko before it reads this
file. What only `fab` needs lives here, not in playbooks/ (the installed `fleetroll` command
runs the same tasks on invoke alone, playbooks/cli.py), and so do the lab's tasks (lab.*,
lab/tasks.py): the lab belongs to the repository, not to the installed tool.
"""

import atexit
import gc
import sys

from playbooks import prewarm
from playbooks.inventory_path import default_inventory
from playbooks.program import interrupted_while_starting, keep_bytecode

keep_bytecode()  # Fabric's program turned bytecode caching off just before it imported this file (program.py)
interrupted_while_starting()  # Ctrl-C from here until a task's body runs: exit 130, not invoke's silent 1

# The hosts' logins start now, while the tasks' modules and the inventory load (playbooks/prewarm.py);
# and the exit skips the collector's walk over every imported object (as playbooks/cli.py does).
prewarm.start(sys.argv[1:], default_inventory)
atexit.register(gc.freeze)

from fabric.executor import Executor  # noqa: E402

from lab.tasks import lab  # noqa: E402
from playbooks.taskkit import SHORT_FLAGS, invoke, quiet_when_the_reader_leaves  # noqa: E402
from playbooks.tasks import ns as fleet_tasks  # noqa: E402


def with_lab(fleet: invoke.Collection) -> invoke.Collection:
    """The fleet's tasks and the lab's (lab.*): `fab` runs in the repository, where lab/ is.

    A new collection, so the one the installed `fleetroll` command uses (playbooks.tasks.ns)
    never gains lab tasks, whichever modules a process has imported.
    """
    out = invoke.Collection()
    for name, t in fleet.tasks.items():
        out.add_task(t, name)
    for c in fleet.collections.values():
        out.add_collection(c)
    out.add_collection(lab)
    out.configure(fleet.configuration())
    return out


ns = with_lab(fleet_tasks)


def _exec_keeps_its_remainder() -> None:
    """`fab exec -s S -- CMD`: Fabric would take what follows `--` as a shell command for core -H hosts.

    For our exec task the remainder is the container's argv (read from sys.argv, exactly as
    split), so Fabric's own use of it is switched off for that task alone. invoke's executor
    (the `fleetroll` command) does nothing with the remainder, so it needs no such patch.
    """
    if getattr(Executor.expand_calls, "_fleetroll", False):
        return
    original = Executor.expand_calls

    def expand_calls(self, calls, apply_hosts=True):
        names = {getattr(getattr(c, "task", c), "name", "") for c in calls}
        if "exec" in names and self.core.remainder:
            saved, self.core.remainder = self.core.remainder, ""
            try:
                return original(self, calls, apply_hosts)
            finally:
                self.core.remainder = saved
        return original(self, calls, apply_hosts)

    expand_calls._fleetroll = True
    Executor.expand_calls = expand_calls


# What Fabric reads our short flags as, before a task or after one that lacks them (its core options).
FABRIC_MEANS = {"-i": "--identity", "-H": "--hosts", "-f": "--config", "-p": "--prompt-for-login-password"}


def flags_before_the_task(argv: list[str], tasks: set[str]) -> str:
    """The one-line error for a fleetroll short flag given before the task name, where Fabric reads it as its own ("" if none).

    `fab -i FILE status` read ./inventory/fleet.yml (-i was Fabric's --identity) and
    `fab -H mainpc status` silently showed every host (-H was Fabric's --hosts): each short
    flag must mean one thing (README). Pure: tested without running `fab`.
    """
    ours = {f"-{v}" for v in SHORT_FLAGS.values()}
    for i, arg in enumerate(argv[1:], 1):
        if arg in tasks or arg.split("=")[0] in tasks:
            return ""
        flag = arg.split("=")[0]
        if flag in ours:
            task = next((a for a in argv[i + 1:] if a in tasks), "TASK")
            own = f" (before the task, {flag} is Fabric's own {FABRIC_MEANS[flag]})" if flag in FABRIC_MEANS else ""
            return f"fab: put {flag} after the task name: fab {task} {flag} …{own}"
    return ""


def flags_the_task_lacks(argv: list[str], flags_of: dict[str, dict[str, bool]]) -> str:
    """The one-line error for a fleetroll flag after a task that has no such option ("" if none); pure.

    invoke hands a flag the task lacks to Fabric's core options: `fab freeze -p P -H mainpc` froze every host of P
    (Fabric's --hosts, the task run once per host named: `-H mainpc,pc2` thawed twice) and `fab status -p P` said
    "No idea what 'P' is!" (-p: Fabric's --prompt-for-login-password). flags_of: task -> {flag: takes a value}.
    """
    ours = {f"-{v}" for v in SHORT_FLAGS.values()} | set(FABRIC_MEANS.values())
    task, value_next = "", False
    for arg in argv[1:]:
        if arg == "--":
            return ""
        if value_next:
            value_next = False
        elif arg in flags_of:
            task = arg
        elif task and arg.split("=")[0] in flags_of[task]:
            value_next = flags_of[task][arg.split("=")[0]] and "=" not in arg
        elif task and arg.split("=")[0] in ours:
            flag = arg.split("=")[0]
            fabric = f" (here Fabric would read it as its own {FABRIC_MEANS[flag]})" if flag in FABRIC_MEANS else ""
            return f"fab: {task} has no {flag} option{fabric}; fab {task} --help lists its options"
    return ""


def _flags_of(collection: invoke.Collection) -> dict[str, dict[str, bool]]:
    """task -> {flag: takes a value}. invoke's get_arguments() pops each option's help as it reads it (invoke 2.2): the
    help is put back, or every `fab TASK --help` printed its options without their help text."""
    out = {}
    for name in collection.task_names:
        task = collection[name]
        helps = dict(task.help)
        args = task.get_arguments()
        task.help = helps
        out[name] = {("-" if len(n) == 1 else "--") + n.replace("_", "-"): a.takes_value for a in args for n in a.names}
    return out


_exec_keeps_its_remainder()
quiet_when_the_reader_leaves()
if sys.argv and sys.argv[0].rsplit("/", 1)[-1] == "fab":  # only the `fab` program parses Fabric's core flags
    _misplaced = flags_before_the_task(sys.argv, set(ns.task_names)) or flags_the_task_lacks(sys.argv, _flags_of(ns))
    if _misplaced:
        print(_misplaced, file=sys.stderr)
        sys.exit(1)
