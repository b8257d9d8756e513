"""Each `docker` command fleetroll runs for Swarm, as an argument list (Kamal's commands layer). Pure.

Nothing here knows about SSH: remote.py runs these on a host. No shell string is ever built
from inventory data; every value is one argv element.
"""

from __future__ import annotations

from .render import GPU_LABEL, HOST_LABEL, MEMBER_LABEL

SWARM_PORT = 2377


def info() -> list[str]:
    """The daemon's swarm state: LocalNodeState, NodeID, ControlAvailable, Cluster.ID, RemoteManagers."""
    return ["docker", "info", "--format", "{{json .Swarm}}"]


def init(address: str) -> list[str]:
    return ["docker", "swarm", "init", "--advertise-addr", address, "--listen-addr", f"{address}:{SWARM_PORT}"]


def join_token(role: str) -> list[str]:
    return ["docker", "swarm", "join-token", "-q", role]


def join(token: str, address: str, manager_address: str) -> list[str]:
    return ["docker", "swarm", "join", "--token", token, "--advertise-addr", address, "--listen-addr",
            f"{address}:{SWARM_PORT}", f"{manager_address}:{SWARM_PORT}"]


def leave() -> list[str]:
    return ["docker", "swarm", "leave", "--force"]


def node_labels(node_id: str, host: str, gpus: dict | None) -> list[str]:
    """Label a node with the inventory's name for it (and its GPUs): placement reads these, never node.hostname."""
    argv = ["docker", "node", "update", "--label-add", f"{HOST_LABEL}={host}", "--label-add", f"{MEMBER_LABEL}=true"]
    if gpus:
        argv += ["--label-add", f"{GPU_LABEL}=true", "--label-add", f"{GPU_LABEL}.count={gpus['count']}",
                 "--label-add", f"{GPU_LABEL}.cc={gpus['compute_capability']}"]
    return [*argv, node_id]


def node_rm(node_id: str) -> list[str]:
    return ["docker", "node", "rm", "--force", node_id]


def node_ids() -> list[str]:
    return ["docker", "node", "ls", "-q"]


def inspect(ids: list[str], kind: str | None = None) -> list[str]:
    """docker inspect of nodes, services or tasks, as one JSON array."""
    if kind in ("node", "service"):
        return ["docker", kind, "inspect", *ids]
    return ["docker", "inspect", *ids]


def stack_services(stack: str) -> list[str]:
    return ["docker", "service", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={stack}"]


def service_tasks(service_id: str) -> list[str]:
    return ["docker", "service", "ps", "-q", "--no-trunc", service_id]


def stack_deploy(stack: str) -> list[str]:
    """Deploy the stack read from stdin; digests are pinned by fleetroll, so the manager never asks the registry."""
    return ["docker", "stack", "deploy", "--resolve-image", "never", "-c", "-", stack]


def stack_rm(stack: str) -> list[str]:
    return ["docker", "stack", "rm", stack]


def stack_networks(stack: str) -> list[str]:
    return ["docker", "network", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={stack}"]


def stack_containers(stack: str) -> list[str]:
    """The containers of the stack's tasks on this node (a task's container can outlive its service while it stops)."""
    return ["docker", "ps", "-q", "--filter", f"label=com.docker.stack.namespace={stack}"]


def service_rm(name: str) -> list[str]:
    return ["docker", "service", "rm", name]

