"""Fabric tasks for `engine: swarm` (swarm.form, swarm.leave, swarm.render, swarm.down); rollouts of swarm phases are `fab rollout`.

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


@task(help={"phase": "the swarm phase whose stack to take down", "yes": "do not ask", "json": "print the result as JSON",
            "wait": "seconds to wait until no node runs a task of it (default 120)", "inventory": "inventory file"})
def swarm_down(c, phase=None, yes=False, json=False, wait=None, inventory=None):
    """Take a swarm phase's stack down through a manager and wait until no node runs a task of it (the way back to SSH)."""
    from . import render, transport
    from .swarm import deploy, down
    from .swarm.remote import open_host
    from .taskio import ask_unless_yes
    from .taskkit import whole_number

    inv = _inventory(inventory, json)
    phase = _required(phase, "phase", "fab swarm.down -p web")
    stack, wait_s = down.check(inv, phase), whole_number(wait, "wait") or 120  # both before any host is reached
    ask_unless_yes(yes, f"take the stack {stack} down (every service of phase {phase} stops on every node)?")
    manager, nodes = deploy.open_manager(inv), {}
    try:
        for h in inv.select_hosts(None, phase):  # every node is asked, so each one's tasks are seen gone, not assumed
            nodes[h] = manager if h == manager.name else open_host(inv, h)
        rep = down.down(inv, phase, manager, nodes, wait_s=float(wait_s))
    except transport.TransportError as exc:
        raise Exit(f"{exc}; nothing was taken down (every node of the phase must answer, to see its tasks gone)", code=1) from None
    finally:
        for h in {id(x): x for x in (manager, *nodes.values())}.values():
            h.close()
    if json:
        render.dump_json(rep.to_json())
    else:
        render.say("\n".join(rep.lines))
    if not rep.ok:
        raise Exit(code=1)


swarm = invoke.Collection("swarm")
swarm.add_task(swarm_form, "form")
swarm.add_task(swarm_leave, "leave")
swarm.add_task(swarm_render, "render")
swarm.add_task(swarm_down, "down")
