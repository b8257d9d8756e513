"""Taking a swarm phase's stack down: `fab swarm.down -p P`, the last step of moving a phase back to the SSH push.

When the SSH push's proxy serves the phase's services (handover.py), each host's proxy first drains the task slots
(the SSH containers, rolled out before, serve on); a proxy with no SSH container serving refuses, nothing taken down.

Through a manager, `docker stack rm fr-<phase>`; then fleetroll watches until Swarm lists no
service of the stack and no node runs a task of it. A task's container can outlive its service
by its stop grace period, and the SSH push's rollout of the same ports must not start before it
is gone, so "down" is said only once both are observed; anything still there when the wait ends
is named, with what to do. Recorded in the ledger either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .. import ledger
from ..errors import RolloutError
from ..inventory import Inventory
from ..plan import operator
from . import commands, handover
from .remote import Host, SwarmCommandError
from .render import stack_name


@dataclass
class DownReport:
    phase: str
    stack: str
    manager: str = ""
    ok: bool = False
    lines: list[str] = field(default_factory=list)
    left: dict[str, Any] = field(default_factory=dict)  # still there when the wait ended (services, networks, containers)

    def to_json(self) -> dict[str, Any]:
        return {"phase": self.phase, "stack": self.stack, "manager": self.manager, "ok": self.ok, "left": self.left,
                "lines": self.lines}


def check(inv: Inventory, phase: str) -> str:
    """The phase's stack name; RolloutError (nothing asked of any host) unless the phase runs on Swarm."""
    ph = inv.phase(phase)
    # A phase back on the SSH push behind its proxy: its stack is what the hand-over back takes down (handover.py).
    if inv.fleet.engine_of(ph) != "swarm" and not handover.plan(inv, phase):
        raise RolloutError(f"phase {phase} runs on the SSH push, not Swarm: nothing to take down with swarm.down;"
                           f" a service's container goes with `fab remove -s SERVICE -H HOST`")
    return stack_name(phase)


def still_there(manager: Host, nodes: dict[str, Host], stack: str) -> dict[str, Any]:
    """What is left of the stack: its services and networks a manager lists, the task containers each node's dockerd runs."""
    left: dict[str, Any] = {}
    for what, argv in (("services", commands.stack_services(stack)), ("networks", commands.stack_networks(stack))):
        found = manager.lines(argv)
        if found:
            left[what] = found
    for name, node in nodes.items():
        running = node.lines(commands.stack_containers(stack))
        if running:
            left.setdefault("containers", {})[name] = running
    return left


def down(inv: Inventory, phase: str, manager: Host, nodes: dict[str, Host], wait_s: float = 120.0,
         poll_s: float = 1.0) -> DownReport:
    """Remove the phase's stack through `manager`; wait until no service of it is listed and no node runs a task of it."""
    stack = check(inv, phase)
    rep = DownReport(phase, stack, manager.name)
    try:
        before = still_there(manager, nodes, stack)
        if not before:
            rep.ok = True
            rep.lines.append(f"{stack}: nothing of it on this swarm ({manager.name} lists no service, "
                             f"{', '.join(nodes)} run no task of it); nothing taken down")
            return _record(rep)
        held, said = handover.to_ssh(inv, phase)  # the SSH push's proxy stops choosing the tasks before they stop
        rep.lines += said
        if not held:
            return _record(rep)
        _remove(manager, stack)
        deadline = time.monotonic() + wait_s
        while (left := still_there(manager, nodes, stack)) and time.monotonic() < deadline:
            if set(left) == {"networks"}:  # its tasks are gone now, so a network Docker could not remove goes now
                manager.run(commands.stack_rm(stack), timeout=60, check=False)
            time.sleep(poll_s)
    except SwarmCommandError as exc:
        rep.lines.append(f"FAILED {exc}; the removal was not seen to its end: look with `docker stack ps {stack}` on"
                         f" {manager.name}, then run fab swarm.down -p {phase} again")
        return _record(rep)
    rep.left, rep.ok = left, not left
    if rep.ok:
        rep.lines.append(f"{stack}: removed through {manager.name}: {len(before.get('services', []))} service(s) gone from"
                         f" the swarm, no task of it running on {', '.join(nodes)}."
                         f" Next: fab rollout -p {phase} with the phase on `engine: ssh`")
    else:
        where = "; ".join(f"{h}: {len(c)} container(s)" for h, c in left.get("containers", {}).items())
        rep.lines.append(f"FAILED {stack}: after {wait_s:g}s, {len(left.get('services', []))} service(s) and"
                         f" {len(left.get('networks', []))} network(s) still listed by {manager.name}"
                         f"{'; ' + where if where else ''}. Look with `docker stack ps {stack}` there, and"
                         f" run fab swarm.down -p {phase} again before rolling the phase out on the SSH push")
    return _record(rep)


def _remove(manager: Host, stack: str) -> None:
    """`docker stack rm`: its services go at once; a network still used by a stopping task makes it exit 1 and stay.

    That exit is not the end of it (the wait re-runs the removal once the tasks are gone); an exit 1 that
    leaves a service listed is, and is raised as the failure it is.
    """
    argv = commands.stack_rm(stack)
    rc, _out, err = manager.run(argv, timeout=60, check=False)
    if rc != 0 and manager.lines(commands.stack_services(stack)):
        raise SwarmCommandError(manager.name, argv, rc, err)


def _record(rep: DownReport) -> DownReport:
    ledger.append("swarm-down", phase=rep.phase, stack=rep.stack, manager=rep.manager, operator=operator(), ok=rep.ok,
                  left=rep.left)
    return rep
