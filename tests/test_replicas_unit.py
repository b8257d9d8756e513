"""Replicated services and canary/batches, without hosts: inventory rules, one step per replica, the batch order."""

from __future__ import annotations

import pytest

from playbooks import batches
from playbooks.inventory import InventoryError, Update, load
from playbooks.plan import Plan, Step, build_plan, container_spec

HOSTS = "".join(f"  w{i}:\n    address: 10.0.0.{i}\n" for i in range(1, 7))
BASE = f"""\
registry: {{host: reg.example, org: acme}}
hosts:
{HOSTS}  gpu1:
    address: 10.0.1.1
    gpus: {{model: RTX, count: 1, compute_capability: "8.9"}}
groups:
  cpu-workers: [w1, w2, w3, w4, w5, w6]
services:
  embeddings:
    image: family-cpu-py311
    tag: 20261126-abc1234
    group: cpu-workers
    update: {{canary: 1, max_parallel: 2}}
    ports: ["8100:8080"]
    health: {{port: 8100}}
"""
PHASES = "phases:\n  - name: cpu\n    services: [embeddings]\n"


def write(tmp_path, fleet=BASE, phases=PHASES):
    (tmp_path / "fleet.yml").write_text(fleet)
    (tmp_path / "phases.yml").write_text(phases)
    return tmp_path / "fleet.yml"


def problems(tmp_path, fleet, phases=PHASES) -> str:
    with pytest.raises(InventoryError) as exc:
        load(write(tmp_path, fleet, phases))
    return "\n".join(exc.value.problems)


def digests(inv) -> dict:
    ok = {"ok": True, "digest": "sha256:" + "a" * 64}
    return {h: {"images": {inv.image_ref("embeddings"): ok}, "docker": {"containers": []}} for h in inv.fleet.hosts}


def test_a_group_places_one_replica_per_host_each_with_its_own_host_env(tmp_path):
    inv = load(write(tmp_path))
    assert inv.fleet.hosts_of("embeddings") == [f"w{i}" for i in range(1, 7)]
    plan = build_plan(inv, "cpu", digests(inv))
    assert [(s.host, s.service) for s in plan.steps] == [(f"w{i}", "embeddings") for i in range(1, 7)]
    assert container_spec(inv, "embeddings", "w3")["env"]["FLEETROLL_HOST"] == "w3"
    assert plan.steps[0].spec["spec_hash"] != plan.steps[1].spec["spec_hash"]  # each replica's own identity
    assert inv.select_hosts(None, "cpu") == [f"w{i}" for i in range(1, 7)]
    assert inv.replicas("cpu", ["w2", "w5"]) == [("embeddings", "w2"), ("embeddings", "w5")]


def test_canary_then_batches_of_max_parallel_in_inventory_order():
    plan = Plan("r", "cpu", "op", [Step(f"w{i}", "embeddings", "replace") for i in range(1, 7)])
    order = batches.schedule(plan, Update(canary=1, max_parallel=2))
    assert order == [["w1"], ["w2", "w3"], ["w4", "w5"], ["w6"]]
    assert batches.describe(order, Update(canary=1, max_parallel=2))[:2] == ["1/4 canary: w1", "2/4 batch: w2, w3"]
    assert batches.schedule(plan, None) == [[f"w{i}" for i in range(1, 7)]]
    assert batches.schedule(plan, Update(canary=2)) == [["w1", "w2"], ["w3", "w4", "w5", "w6"]]
    # hosts with nothing to change are not batched
    plan.steps[0].action = "noop"
    assert batches.schedule(plan, Update(canary=1, max_parallel=2))[0] == ["w2"]


@pytest.mark.parametrize("edit,says", [
    (lambda s: s.replace("    group: cpu-workers\n", "    group: cpu-workers\n    host: w1\n"), "exactly one of host"),
    (lambda s: s.replace("group: cpu-workers\n    update", "group: gpu-workers\n    update"), "no group 'gpu-workers'"),
    (lambda s: s.replace("[w1, w2, w3, w4, w5, w6]", "[w1, w9]"), "groups.cpu-workers: unknown host(s) w9"),
    (lambda s: s.replace("    group: cpu-workers\n", "    hosts: [w1, w1]\n"), "lists a host twice"),
    (lambda s: s.replace("    group: cpu-workers\n", "    host: w1\n"), "canary and batches need replicas"),
    (lambda s: s.replace('    health: {port: 8100}\n', '    health: {port: 8100}\n    gpus: 1\n'),
     "requests a GPU but host 'w1' lists no gpus: (replica embeddings@w1)"),
])
def test_replica_rules_name_the_field_and_the_fix(tmp_path, edit, says):
    assert says in problems(tmp_path, edit(BASE))


def test_port_collisions_are_per_host_and_name_the_replica(tmp_path):
    other = ("  other:\n    image: family-cpu-py311\n    tag: 20261126-abc1234\n    hosts: [w3]\n"
             "    ports: [\"8100:8080\"]\n    health: {port: 8100}\n")
    text = problems(tmp_path, BASE + other, "phases:\n  - name: cpu\n    services: [embeddings, other]\n")
    assert "host port 8100/tcp on w3 is already published by service 'embeddings@w3'" in text


def test_two_services_with_different_update_blocks_in_one_phase_need_the_phases_own(tmp_path):
    other = ("  other:\n    image: family-cpu-py311\n    tag: 20261126-abc1234\n    hosts: [w1, w2]\n"
             "    update: {canary: 2}\n    ports: [\"8200:8080\"]\n    health: {port: 8200}\n")
    text = problems(tmp_path, BASE + other, "phases:\n  - name: cpu\n    services: [embeddings, other]\n")
    assert "give different update: blocks" in text and "give phase 'cpu' its own update:" in text
    inv = load(write(tmp_path, BASE + other, "phases:\n  - name: cpu\n    update: {canary: 1}\n    services: [embeddings, other]\n"))
    assert inv.update_for("cpu") == Update(canary=1)


def test_the_collector_runs_on_one_host(tmp_path):
    text = problems(tmp_path, BASE + "observability: {collector: embeddings}\n")
    assert "runs on 6 hosts" in text and "give it host: NAME" in text
