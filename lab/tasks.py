"""The lab's Fabric tasks (lab.up, lab.down, lab.release), registered by the repository's fabfile.py only.

The lab is a test fleet and an operator's sandbox, not part of the controller: the installed
`fleetroll` wheel neither ships nor lists these tasks, and no module of playbooks/ or agent/
imports `lab` (tests/test_structure_unit.py). Thin like playbooks/tasks.py; the lab's own
modules are imported when a task runs, so `fab --list` stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from playbooks.taskkit import Exit, invoke, task
from playbooks.taskkit import required as _required
from playbooks.taskkit import whole_number as _int

if TYPE_CHECKING:
    from .model import LabState


@task(help={"count": "number of lab hosts (mainpc, pc2, node03, ...); -H means hosts by name everywhere, so this is --count",
            "extras": "extra hosts, e.g. bad-driver",
            "with-observability": "also build the CPU family, collector and hello from this commit and add them",
            "with-proxy": "also build and push the fleetroll-proxy image and add phases edge (the proxy) and web"
                          " (a service behind it at pc2:18080): docs/zero-downtime.md"})
def lab_up(c, count=None, extras="", with_observability=False, with_proxy=False):
    """Start the lab fleet: a netns per host with sshd + dockerd, a registry, fake NVML."""
    from playbooks import render
    from playbooks.images.build import BuildError

    from . import fleet

    n = _int(count, "count") or 2
    if with_proxy and n < 2:
        raise Exit("lab.up --with-proxy: the proxy runs on mainpc and pc2; use --count 2 or more", code=1)
    try:
        state = fleet.up(n, [e for e in extras.split(",") if e], observability=with_observability)
    except BuildError as exc:
        raise Exit(f"lab.up failed building images: {exc}", code=1) from None
    except fleet.LabError as exc:
        raise Exit(f"lab.up failed: {exc}", code=1) from None
    if with_proxy:
        _add_proxy(state)
    render.say(f"lab up: {', '.join(h.name for h in state.hosts)}; registry {state.registry}")
    render.say(f"inventory: {state.inventory}")
    if with_proxy:
        address = state.host("pc2").address
        render.say(f"try: fab rollout -p edge -i {state.inventory} && fab rollout -p web -i {state.inventory};"
                   f" then curl http://{address}:18080/health")
    else:
        render.say(f"try: fab preflight --inventory {state.inventory}")


def _add_proxy(state: LabState) -> None:
    """Push the proxy image and add phases edge and web to the lab's inventory (lab.up --with-proxy).

    Done after fleet.up has written the inventory: only --with-proxy pays the minute the families'
    pipeline takes to build the image. On failure the lab stays up without them, and the message says so.
    """
    from playbooks.images.build import BuildError

    from . import images
    from .inventory import add_proxy_to_inventory

    try:
        tag = images.push_proxy(state)
        add_proxy_to_inventory(Path(state.inventory), tag)
    except (BuildError, OSError, ValueError) as exc:
        raise Exit(f"lab.up --with-proxy: the lab is up but the proxy is not in its inventory: {exc};"
                   " fix that and rerun fab lab.up --with-proxy (or fab lab.down)", code=1) from None


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
