"""The lab's Fabric tasks (lab.up, lab.down, lab.release), registered by the repository's fabfile.py only.

The lab is a test fleet and an operator's sandbox, not part of the controller: the installed
`fleetroll` wheel neither ships nor lists these tasks, and no module of playbooks/ or agent/
imports `lab` (tests/test_structure_unit.py). Thin like playbooks/tasks.py; the lab's own
modules are imported when a task runs, so `fab --list` stays cheap.
"""

from __future__ import annotations

from pathlib import Path

from playbooks.taskkit import Exit, invoke, task
from playbooks.taskkit import required as _required
from playbooks.taskkit import whole_number as _int


@task(help={"count": "number of lab hosts (mainpc, pc2, node03, ...); -H means hosts by name everywhere, so this is --count",
            "extras": "extra hosts, e.g. bad-driver",
            "with-observability": "also build the CPU family, collector and hello from this commit and add them"})
def lab_up(c, count=None, extras="", with_observability=False):
    """Start the lab fleet: a netns per host with sshd + dockerd, a registry, fake NVML."""
    from playbooks import render
    from playbooks.images.build import BuildError

    from . import fleet

    try:
        state = fleet.up(_int(count, "count") or 2, [e for e in extras.split(",") if e], observability=with_observability)
    except BuildError as exc:
        raise Exit(f"lab.up failed building images: {exc}", code=1) from None
    except fleet.LabError as exc:
        raise Exit(f"lab.up failed: {exc}", code=1) from None
    render.say(f"lab up: {', '.join(h.name for h in state.hosts)}; registry {state.registry}")
    render.say(f"inventory: {state.inventory}")
    render.say(f"try: fab preflight --inventory {state.inventory}")


@task(help={"service": "lab service to release", "variant": "healthy, degraded, http500, crash, hang, root, notini",
            "trivy-cve": "file a Trivy report with this HIGH finding next to the image", "name": "name of the written inventory",
            "healthy-deadline": "override the service's health.healthy_deadline", "min-healthy-time": "override health.min_healthy_time",
            "inventory": "an inventory of your own for the lab (its release is written beside it); default: the lab's"})
def lab_release(c, service=None, variant="healthy", trivy_cve=None, name=None, healthy_deadline=None, min_healthy_time=None,
                inventory=None):
    """Push a new lab image version and write a lab inventory naming it (prints the path)."""
    from playbooks import render

    from . import fleet
    from .release import release

    service = _required(service, "service", "fab lab.release --service llm-api --variant degraded")
    health = {k: float(v) for k, v in (("healthy_deadline", healthy_deadline), ("min_healthy_time", min_healthy_time)) if v}
    try:
        render.say(release(service, variant, trivy_cve, name, health, Path(inventory) if inventory else None))
    except fleet.LabError as exc:
        raise Exit(str(exc), code=1) from None


@task
def lab_down(c):
    """Stop the lab fleet and remove every namespace, process, mount and file it made."""
    from playbooks import render

    from . import fleet

    try:
        fleet.down()
    except fleet.LabError as exc:
        raise Exit(f"lab.down refused: {exc}", code=1) from None
    left = fleet.leftovers()
    if left:
        raise Exit("lab.down left behind: " + ", ".join(left), code=1)
    render.say("lab down: nothing left behind")


lab = invoke.Collection("lab")
lab.add_task(lab_up, "up")
lab.add_task(lab_down, "down")
lab.add_task(lab_release, "release")
