"""Timing a command the way an operator waits for it: a fresh process, from spawn to exit.

A figure taken inside one Python process after the inventory is loaded leaves out the
interpreter, the imports, the inventory and the exit. Here every fleetroll measure is the
installed `fleetroll` program run as a child; os.wait4 gives that child's own CPU seconds and
peak resident memory (ru_maxrss), so the controller's cost per host can be shown to stay linear.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin"


@dataclass
class Ran:
    wall_s: float
    cpu_s: float  # user + system of the child alone
    maxrss_mb: float
    rc: int
    out: str
    err: str
    machine_cpu_s: float = 0.0  # every CPU's busy time while it ran: on the lab that includes the hosts' side

    def json(self) -> dict:
        return json.loads(self.out)


def run(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> Ran:
    """Run argv with its output captured (temporary files, so a pipe never stalls it); time it from spawn to exit."""
    with open(os.devnull, "rb") as null, _spool() as out, _spool() as err:
        busy0 = machine_busy_s()
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=null, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        busy = machine_busy_s() - busy0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Ran(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode,
                   out.read().decode(errors="replace"), err.read().decode(errors="replace"), busy)


def machine_busy_s() -> float:
    """CPU seconds every core of this machine has spent busy since boot (/proc/stat, idle and iowait left out).

    The lab's hosts share this machine: the difference across a command is what the command cost the whole
    fleet (its own process, the hosts' sshd, shells, agents, dockerds, the registry), plus whatever else ran.
    """
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _spool():
    import tempfile

    return tempfile.TemporaryFile()


# An installed fleetroll runs from bytecode compiled at install. A shell with PYTHONDONTWRITEBYTECODE set (as some CI
# and sandboxes have) would make every run compile the controller from source: the children keep their bytecode here.
PYCACHE = Path(os.environ.get("TMPDIR", "/tmp")) / "fleetroll-bench-pycache"


def operator_env(env: dict[str, str] | None = None) -> dict[str, str]:
    out = {**(env if env is not None else os.environ), "PYTHONPYCACHEPREFIX": str(PYCACHE)}
    out.pop("PYTHONDONTWRITEBYTECODE", None)
    return out


def fleetroll(*args: str, env: dict[str, str] | None = None) -> Ran:
    """The installed entry point (`pip install` puts it on PATH), not `fab`: what an operator's own repository runs."""
    return run([str(BIN / "fleetroll"), *args], env=operator_env(env))


def warm() -> None:
    """One run that fills the bytecode cache, so no measured run pays for compiling."""
    run([str(BIN / "fleetroll"), "--help"], env=operator_env())
    run([str(BIN / "python"), "-c", "import playbooks.executor, playbooks.rollout, playbooks.runner, playbooks.transport,"
         " playbooks.inventory, playbooks.render, playbooks.plan, playbooks.images.security"], env=operator_env(), cwd=str(BIN.parent.parent))
