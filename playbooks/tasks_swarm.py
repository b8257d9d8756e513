"""Fabric tasks for `engine: swarm` (swarm.render); rollouts of swarm phases are `fab rollout`.

Thin like playbooks/tasks.py: each parses its options and calls playbooks/swarm/.
"""

from __future__ import annotations

from .taskkit import Exit, invoke, task
from .taskkit import load_inventory as _inventory
from .taskkit import required as _required


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
swarm.add_task(swarm_render, "render")
