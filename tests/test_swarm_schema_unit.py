"""`engine: swarm` in the inventory: where it is said, what it defaults to, and what Swarm cannot run (no hosts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from playbooks.inventory import InventoryError, load

BASE = """\
registry: {host: reg.example:5000, org: acme}
hosts:
  mainpc:
    address: 10.0.0.1
    gpus: {model: RTX, count: 1, compute_capability: "8.9"}
  pc2: {address: 10.0.0.2}
services:
  api:
    image: family-cpu-py311
    tag: 20250817-abc1234
    hosts: [mainpc, pc2]
    ports: ["8080:8080"]
    health: {port: 8080}
"""
PHASES = "phases:\n  - name: one\n    services: [api]\n"


def write(tmp_path: Path, fleet: str, phases: str = PHASES) -> Path:
    (tmp_path / "fleet.yml").write_text(fleet)
    (tmp_path / "phases.yml").write_text(phases)
    return tmp_path / "fleet.yml"


def problems(tmp_path: Path, fleet: str, phases: str = PHASES) -> list[str]:
    with pytest.raises(InventoryError) as e:
        load(write(tmp_path, fleet, phases))
    return e.value.problems


def test_engine_defaults_to_ssh_and_the_first_host_manages(tmp_path):
    inv = load(write(tmp_path, BASE))
    assert inv.fleet.engine == "ssh" and inv.fleet.engine_of(inv.phase("one")) == "ssh"
    assert inv.fleet.swarm_managers() == ["mainpc"] and inv.fleet.swarm.healthcheck == "python"


def test_a_phase_engine_wins_over_the_inventory_s(tmp_path):
    inv = load(write(tmp_path, "engine: swarm\n" + BASE, "phases:\n  - {name: one, services: [api], engine: ssh}\n"))
    assert inv.fleet.engine_of(inv.phase("one")) == "ssh"
    inv = load(write(tmp_path, BASE, "phases:\n  - {name: one, services: [api], engine: swarm}\n"))
    assert inv.fleet.engine_of(inv.phase("one")) == "swarm"


def test_an_unknown_engine_names_file_line_field_and_choices(tmp_path):
    out = problems(tmp_path, BASE, "phases:\n  - {name: one, services: [api], engine: nomad}\n")
    assert len(out) == 1 and out[0].startswith(f"{tmp_path / 'phases.yml'}:2: phases[0].engine:"), out
    assert "'ssh'" in out[0] and "'swarm'" in out[0]


def test_unknown_swarm_manager_is_named_with_the_known_hosts(tmp_path):
    out = problems(tmp_path, "swarm: {managers: [gpu9]}\n" + BASE)
    assert len(out) == 1 and out[0].startswith(f"{tmp_path / 'fleet.yml'}:1: swarm.managers: unknown host(s) gpu9;"
                                                " fix: name hosts from hosts: (mainpc, pc2)"), out


@pytest.mark.parametrize("edit,expect", [
    (lambda t: t.replace('["8080:8080"]', '["10.0.0.9:8080:8080"]'), "binds one address; Swarm publishes a port on every"),
    (lambda t: t.replace("    health: {port: 8080}", "    update: {order: start-first}\n    health: {port: 8080}"),
     "start-first with a host-mode published port stalls"),
    (lambda t: t.replace("    health: {port: 8080}", "    update: {canary: 1}\n    health: {port: 8080}"), "has no canary"),
])
def test_what_swarm_cannot_run_is_refused_at_load_on_a_swarm_phase_only(tmp_path, edit, expect):
    fleet = edit(BASE)
    out = problems(tmp_path, "engine: swarm\n" + fleet)
    assert any(expect in p and p.startswith(f"{tmp_path / 'phases.yml'}:2: phases[0]: phase 'one' runs on engine: swarm")
               and "fix:" in p for p in out), out
    if "start-first" not in fleet:  # (the SSH engine refuses start-first without a proxy for reasons of its own)
        load(write(tmp_path, fleet))  # the same service on the SSH engine loads


def test_the_repository_inventory_still_loads_on_ssh():
    inv = load(Path(__file__).resolve().parent.parent / "inventory" / "fleet.yml")
    assert all(inv.fleet.engine_of(p) == "ssh" for p in inv.phases)


def test_replicas_is_swarm_s_and_fits_its_hosts(tmp_path):
    with_replicas = BASE.replace("    hosts: [mainpc, pc2]\n", "    hosts: [mainpc, pc2]\n    replicas: 1\n")
    inv = load(write(tmp_path, "engine: swarm\n" + with_replicas))
    assert inv.fleet.services["api"].replicas == 1
    ssh = problems(tmp_path, with_replicas)
    assert any("phase 'one' runs on engine: ssh" in p and "services.api.replicas cannot be kept" in p for p in ssh), ssh
    many = problems(tmp_path, "engine: swarm\n" + with_replicas.replace("replicas: 1", "replicas: 3"))
    assert any("services.api.replicas: 3 tasks over 2 host(s)" in p and "fix: replicas <=" in p for p in many), many
    one = problems(tmp_path, "engine: swarm\n" + BASE.replace("    hosts: [mainpc, pc2]\n", "    host: mainpc\n    replicas: 1\n"))
    assert any("with host: there is no other host to reschedule to" in p for p in one), one


def test_swarm_names_must_be_one_dns_label_and_unique_in_a_fleet_that_uses_swarm(tmp_path):
    """fr-<phase>_<service> names the Swarm service and tasks.fr-<phase>_<service> is what the proxies resolve: with `_`
    allowed in both names, two pairs can meet, and a long pair exceeds a DNS label."""
    two = BASE + """\
  b_web:
    image: family-cpu-py311
    tag: 20250817-abc1234
    hosts: [mainpc]
    ports: ["8081:8080"]
    health: {port: 8081}
"""
    clash = "phases:\n  - {name: a_b, services: [api]}\n  - {name: a, services: [b_api]}\n"
    fleet = two.replace("b_web:", "b_api:")
    got = problems(tmp_path, "swarm: {managers: [mainpc]}\n" + fleet, clash)
    assert len(got) == 1 and "make the Swarm name fr-a_b_api, as phase 'a_b' and service 'api' do" in got[0], got
    assert "phases.yml:3: phases[1]" in got[0] and "fix: rename one" in got[0]
    assert load(write(tmp_path, fleet, clash)).phase("a") is not None, "a fleet without Swarm has no such names"
    long_phase = "p" * 60
    got = problems(tmp_path, BASE, f"phases:\n  - {{name: {long_phase}, services: [api], engine: swarm}}\n")
    assert any(f"fr-{long_phase}_api (67 characters)" in p and "shorten" in p for p in got), got
    got = problems(tmp_path, BASE, "phases:\n  - {name: v1.2, services: [api], engine: swarm}\n")
    assert any("fr-v1.2_api, whose '.' would split" in p for p in got), got
