"""Fabric tasks for `engine: swarm` (swarm.form, swarm.leave, swarm.render); rollouts of swarm phases are `fab rollout`.

Thin like playbooks/tasks.py: each parses its options and calls playbooks/swarm/.
"""

from __future__ import annotations

from .taskkit import Exit, invoke, task
from .taskkit import host_list as _hosts
from .taskkit import load_inventory as _inventory
from .taskkit import required as _required


@task(help={"hosts": "only these hosts (default: every host of the inventory); the first manager always takes part",
            "inventory": "inventory file"})
def swarm_form(c, hosts=None, inventory=None):
    """Form the swarm from the inventory over fleetroll's SSH: init on the first manager, join the rest, label each node."""
    from . import render
    from .swarm import form

    rep = form.form(_inventory(inventory), _hosts(hosts))
    render.say("\n".join(rep.lines))
    if not rep.ok:
        raise Exit(code=1)


@task(help={"hosts": "only these hosts (default: every host of the inventory)", "inventory": "inventory file"})
def swarm_leave(c, hosts=None, inventory=None):
    """Each host leaves the swarm (docker swarm leave --force; its swarm tasks stop): workers first, managers last."""
    from . import render
    from .swarm import form

    rep = form.leave(_inventory(inventory), _hosts(hosts))
    render.say("\n".join(rep.lines))
    if not rep.ok:
        raise Exit(code=1)


@task(help={"phase": "the phase whose stack to print", "inventory": "inventory file"})
def swarm_render(c, phase=None, inventory=None):
    """Print the phase's Swarm stack (compose v3.8 YAML) as a rollout would deploy it, by tag (a rollout pins digests)."""
    from . import render
    from .swarm import render as stack

    inv = _inventory(inventory)
    phase = _required(phase, "phase", "fab swarm.render -p gpu-mainpc")
    try:
        render.say(stack.to_yaml(stack.render(inv, phase)).rstrip("\n"))
    except stack.RenderError as exc:
        raise Exit(f"{inv.path}: {exc}", code=1) from None


swarm = invoke.Collection("swarm")
swarm.add_task(swarm_form, "form")
swarm.add_task(swarm_leave, "leave")
swarm.add_task(swarm_render, "render")
