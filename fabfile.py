"""fleetroll's Fabric entry point: `fab --list` from the repository root.

`fab` is Fabric's program: it has imported invoke, Fabric and paramiko before it reads this
file. What only `fab` needs lives here, not in playbooks/ (the installed `fleetroll` command
runs the same tasks on invoke alone, playbooks/cli.py).
"""

from fabric.executor import Executor

from playbooks.taskkit import quiet_when_the_reader_leaves
from playbooks.tasks import ns  # noqa: F401


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


_exec_keeps_its_remainder()
quiet_when_the_reader_leaves()
