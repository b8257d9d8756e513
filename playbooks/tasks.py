"""Fabric tasks: parse options, call library code, turn outcomes into exit codes.

Tasks hold no logic of their own (Fabric/Invoke's thin-task style): everything they
call is importable and tested without a terminal.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from invoke import Collection, Exit, task

from . import render
from .inventory import InventoryError, load

DEFAULT_INVENTORY = Path(__file__).resolve().parent.parent / "inventory" / "fleet.yml"


def _inventory(path: str | None):
    chosen = path or os.environ.get("FLEETROLL_INVENTORY") or str(DEFAULT_INVENTORY)
    try:
        return load(chosen)
    except InventoryError as exc:
        raise Exit("inventory is not valid:\n" + "\n".join(f"  {p}" for p in exc.problems), code=2) from None


def _hosts(value: str | None) -> list[str] | None:
    return [h.strip() for h in value.split(",") if h.strip()] if value else None


@task(
    help={
        "phase": "only the hosts and images this phase needs (see playbooks/phases.yml)",
        "hosts": "comma-separated host names to check (default: all, or the phase's)",
        "json": "print the result as JSON",
        "inventory": "inventory file (default: $FLEETROLL_INVENTORY or inventory/fleet.yml)",
        "max-parallel": "hosts checked at once (default: ssh.max_parallel)",
    }
)
def preflight(c, phase=None, hosts=None, json=False, inventory=None, max_parallel=None):
    """Check every host before a rollout: SSH, Docker, driver, GPUs, images, disk, ports."""
    from .runner import run_preflight

    inv = _inventory(inventory)
    try:
        report = run_preflight(inv, phase, _hosts(hosts), int(max_parallel) if max_parallel else None)
    except InventoryError as exc:
        raise Exit("\n".join(exc.problems), code=2) from None
    if json:
        render.dump_json(report.to_json())
    else:
        print(render.preflight_text(report.checks, report.hosts))
    if not report.ok:
        raise Exit(code=1)


@task(help={"hosts": "number of lab hosts (mainpc, pc2, node03, ...)", "extras": "extra hosts, e.g. bad-driver"})
def lab_up(c, hosts=2, extras=""):
    """Start the lab fleet: a netns per host with sshd + dockerd, a registry, fake NVML."""
    from .lab import fleet

    try:
        state = fleet.up(int(hosts), [e for e in extras.split(",") if e])
    except fleet.LabError as exc:
        raise Exit(f"lab.up failed: {exc}", code=1) from None
    print(f"lab up: {', '.join(h.name for h in state.hosts)}; registry {state.registry}")
    print(f"inventory: {state.inventory}")
    print(f"try: fab preflight --inventory {state.inventory}")


@task
def lab_down(c):
    """Stop the lab fleet and remove every namespace, process, mount and file it made."""
    from .lab import fleet

    fleet.down()
    left = fleet.leftovers()
    if left:
        raise Exit("lab.down left behind: " + ", ".join(left), code=1)
    print("lab down: nothing left behind")


lab = Collection("lab")
lab.add_task(lab_up, "up")
lab.add_task(lab_down, "down")

ns = Collection(preflight, lab)


def main() -> None:  # pragma: no cover - `python -m playbooks` convenience
    from fabric.main import program

    sys.exit(program.run())
