"""`fab swarm.down -p P`: the stack removed through a manager, and said down only once nothing of it is seen (fake hosts)."""

from __future__ import annotations

import json

import pytest

from playbooks.errors import RolloutError
from playbooks.inventory import load
from playbooks.swarm import down

FLEET = """\
registry: {host: reg.example:5000, org: acme}
swarm: {managers: [mainpc], healthcheck: wget}
hosts:
  mainpc: {address: 10.0.0.1}
  pc2: {address: 10.0.0.2}
services:
  web:
    image: family-cpu-py311
    tag: 20250817-abc1234
    hosts: [mainpc, pc2]
    ports: ["9300:8080"]
    health: {port: 9300}
  api:
    image: family-cpu-py311
    tag: 20250817-abc1234
    host: pc2
    ports: ["9400:8080"]
    health: {port: 9400}
"""
PHASES = "phases:\n  - {name: web, engine: swarm, services: [web]}\n  - {name: core, services: [api]}\n"


@pytest.fixture
def inv(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    (tmp_path / "fleet.yml").write_text(FLEET)
    (tmp_path / "phases.yml").write_text(PHASES)
    return load(tmp_path / "fleet.yml")


class Node:
    """One host's docker, as `docker service ls` / `docker ps` answer: a task's container lingers `linger` reads."""

    def __init__(self, name: str, services: list[str], containers: list[str], linger: int = 0, networks: list[str] | None = None):
        self.name, self.services, self.containers, self.linger = name, services, containers, linger
        self.networks = list(networks or [])
        self.ran: list[list[str]] = []
        self.nodes: list[Node] = [self]  # whose containers keep the stack's network in use

    def lines(self, argv):
        self.ran.append(argv)
        if argv[:3] == ["docker", "service", "ls"]:
            return list(self.services)
        if argv[:3] == ["docker", "network", "ls"]:
            return list(self.networks)
        assert argv[:3] == ["docker", "ps", "-q"] and argv[-1] == "label=com.docker.stack.namespace=fr-web"
        if not self.services and self.linger > 0:
            self.linger -= 1
            if self.linger == 0:
                self.containers = []
        return list(self.containers)

    def run(self, argv, timeout=60.0, check=True):
        """docker stack rm: the services go; a network still used by a task's container stays, and the exit is 1."""
        self.ran.append(argv)
        assert argv == ["docker", "stack", "rm", "fr-web"] and not check
        self.services = []
        if self.networks and any(n.containers for n in self.nodes):
            return 1, "", "Failed to remove network n1: network n1 is in use by task t1\nfailed to remove some resources\n"
        self.networks = []
        return 0, "", ""


def ledger(tmp_path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "ledger.jsonl").read_text().splitlines()]


def test_the_stack_is_down_only_once_no_service_is_listed_and_no_node_runs_a_task_of_it(inv, tmp_path):
    manager = Node("mainpc", ["svc1"], ["c1"], linger=3)  # its container outlives the service for a few reads
    pc2 = Node("pc2", [], ["c2"], linger=2)
    rep = down.down(inv, "web", manager, {"mainpc": manager, "pc2": pc2}, wait_s=5, poll_s=0)
    assert rep.ok and rep.left == {} and ["docker", "stack", "rm", "fr-web"] in manager.ran
    assert "removed through mainpc" in rep.lines[0] and "Next: fab rollout -p web" in rep.lines[0]
    rec = ledger(tmp_path)[-1]
    assert (rec["kind"], rec["phase"], rec["stack"], rec["ok"]) == ("swarm-down", "web", "fr-web", True)


def test_a_network_docker_could_not_remove_while_a_task_stopped_goes_with_a_second_removal(inv):
    manager = Node("mainpc", ["svc1"], ["c1"], linger=3, networks=["n1"])
    pc2 = Node("pc2", [], ["c2"], linger=2)
    manager.nodes = [manager, pc2]
    rep = down.down(inv, "web", manager, {"mainpc": manager, "pc2": pc2}, wait_s=5, poll_s=0)
    assert rep.ok and rep.left == {}, rep.lines
    assert sum(a[:3] == ["docker", "stack", "rm"] for a in manager.ran) >= 2, "removed again once the tasks were gone"


def test_a_removal_that_leaves_a_service_listed_is_a_failure_said_at_once(inv):
    class Refusing(Node):
        def run(self, argv, timeout=60.0, check=True):
            self.ran.append(argv)
            return 1, "", "Error response from daemon: rpc error: this node is not a swarm manager\n"

    manager = Refusing("mainpc", ["svc1"], [])
    rep = down.down(inv, "web", manager, {"mainpc": manager}, wait_s=60, poll_s=0)
    assert not rep.ok and rep.lines[0].startswith("FAILED mainpc: `docker stack rm fr-web` failed (exit 1)"), rep.lines


def test_a_container_still_running_when_the_wait_ends_is_named_and_the_stack_is_not_called_down(inv, tmp_path):
    manager = Node("mainpc", ["svc1"], [])
    pc2 = Node("pc2", [], ["c2"], linger=10**6)  # never goes
    rep = down.down(inv, "web", manager, {"mainpc": manager, "pc2": pc2}, wait_s=0.05, poll_s=0.01)
    assert not rep.ok and rep.left == {"containers": {"pc2": ["c2"]}}
    assert rep.lines[0].startswith("FAILED fr-web") and "pc2: 1 container(s)" in rep.lines[0]
    assert ledger(tmp_path)[-1]["ok"] is False


def test_nothing_there_is_nothing_to_remove(inv):
    manager = Node("mainpc", [], [])
    rep = down.down(inv, "web", manager, {"mainpc": manager, "pc2": Node("pc2", [], [])}, wait_s=1, poll_s=0)
    assert rep.ok and not any(a[:3] == ["docker", "stack", "rm"] for a in manager.ran) and "nothing taken down" in rep.lines[0]


def test_a_phase_on_the_ssh_push_is_refused_before_any_host_is_asked(inv):
    with pytest.raises(RolloutError, match="phase core runs on the SSH push.*fab remove"):
        down.check(inv, "core")
