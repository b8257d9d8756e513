"""Inventory schema and cross-field rules, with no hosts."""

from __future__ import annotations

from pathlib import Path

import pytest

from playbooks.inventory import InventoryError, load, tag_problem

ROOT = Path(__file__).resolve().parent.parent

BASE = """\
registry:
  host: ghcr.io
  org: acme
hosts:
  mainpc:
    address: 10.0.0.1
    gpus: {model: RTX, count: 1, compute_capability: "8.9"}
  pc2:
    address: 10.0.0.2
services:
  api:
    image: family-cpu-py311
    tag: 20250817-abc1234
    host: mainpc
    ports: ["8080:8080"]
    health: {port: 8080}
"""
PHASES = "phases:\n  - name: one\n    services: [api]\n"


def write(tmp_path: Path, fleet: str, phases: str = PHASES) -> Path:
    (tmp_path / "fleet.yml").write_text(fleet)
    (tmp_path / "phases.yml").write_text(phases)
    return tmp_path / "fleet.yml"


def problems(tmp_path, fleet, phases=PHASES) -> list[str]:
    with pytest.raises(InventoryError) as exc:
        load(write(tmp_path, fleet, phases))
    return exc.value.problems


def test_default_inventory_and_phases_load():
    inv = load(ROOT / "inventory" / "fleet.yml")
    assert [p.name for p in inv.phases] == ["core-infra", "gpu-mainpc", "cpu-pc2"]
    assert inv.fleet.registry.host == "ghcr.io"
    assert inv.fleet.hosts["mainpc"].gpus.min_driver == "535"
    assert inv.image_ref("llm-inference").startswith("ghcr.io/example-org/family-torch-cu121:")
    assert inv.select_hosts(None, "gpu-mainpc") == ["mainpc"]


def test_valid_minimal_inventory(tmp_path):
    inv = load(write(tmp_path, BASE))
    assert inv.fleet.services["api"].health.path == "/health"
    assert inv.fleet.services["api"].user == "10001:10001"


def test_unknown_key_names_file_line_field_and_fix(tmp_path):
    out = problems(tmp_path, BASE.replace("    host: mainpc\n", "    host: mainpc\n    hots: x\n"))
    assert len(out) == 1
    assert out[0].startswith(f"{tmp_path / 'fleet.yml'}:15: services.api.hots: unknown key")
    assert "fix: remove it or check its spelling" in out[0]


def test_wrong_type(tmp_path):
    out = problems(tmp_path, BASE.replace("    address: 10.0.0.2\n", "    address: 10.0.0.2\n    port: twenty-two\n"))
    assert "hosts.pc2.port" in out[0] and ":10:" in out[0] and "twenty-two" in out[0]


@pytest.mark.parametrize("tag", ["latest", "2025-08-17-abc1234", "20250817-ABC1234", "20250817-abc12", "20251340-abc1234"])
def test_bad_tags_refused(tmp_path, tag):
    out = problems(tmp_path, BASE.replace("20250817-abc1234", tag))
    assert "services.api.tag" in out[0] and ":13:" in out[0]
    assert tag_problem(tag)


def test_good_tag():
    assert tag_problem("20250817-" + "a" * 40) is None


def test_port_collision_on_one_host(tmp_path):
    extra = BASE + """\
  web:
    image: family-cpu-py311
    tag: 20250817-abc1234
    host: mainpc
    ports: ["8080:9000"]
    health: {port: 8080}
"""
    out = problems(tmp_path, extra, "phases:\n  - name: one\n    services: [api, web]\n")
    assert any("host port 8080/tcp on mainpc is already published by service 'api'" in p for p in out)
    assert any(":21:" in p and "services.web.ports" in p for p in out)


def test_same_port_on_two_hosts_is_fine(tmp_path):
    extra = BASE + """\
  web:
    image: family-cpu-py311
    tag: 20250817-abc1234
    host: pc2
    ports: ["8080:8080"]
    health: {port: 8080}
"""
    load(write(tmp_path, extra, "phases:\n  - name: one\n    services: [api, web]\n"))


def test_service_on_unknown_host(tmp_path):
    out = problems(tmp_path, BASE.replace("host: mainpc", "host: pc3"))
    assert "services.api.host: unknown host 'pc3'" in out[0] and "mainpc, pc2" in out[0]


def test_gpu_request_on_host_without_gpus(tmp_path):
    out = problems(tmp_path, BASE.replace("host: mainpc", "host: pc2").replace("    ports:", "    gpus: all\n    ports:"))
    assert "requests a GPU but host 'pc2' lists no gpus" in out[0]


def test_health_port_must_be_published(tmp_path):
    out = problems(tmp_path, BASE.replace("health: {port: 8080}", "health: {port: 9999}"))
    assert "health.port: 9999 is not one of the service's published host ports" in out[0]


def test_phase_names_unknown_service(tmp_path):
    out = problems(tmp_path, BASE, "phases:\n  - name: one\n    services: [api, ghost]\n")
    assert f"{tmp_path / 'phases.yml'}:3: phases[0].services: 'ghost' is not a service" in out[0]


def test_service_in_two_phases(tmp_path):
    out = problems(tmp_path, BASE, "phases:\n  - name: one\n    services: [api]\n  - name: two\n    services: [api]\n")
    assert "already in phase 'one'" in out[0]


def test_unknown_phase_lists_known_ones(tmp_path):
    inv = load(write(tmp_path, BASE))
    with pytest.raises(InventoryError, match="no phase named 'nope'; phases in order are: one"):
        inv.phase("nope")


def test_yaml_syntax_error_has_line(tmp_path):
    out = problems(tmp_path, BASE + "  broken: [\n")
    assert "not valid YAML" in out[0] and "fleet.yml:" in out[0]


def test_many_errors_reported_together(tmp_path):
    bad = BASE.replace("host: mainpc", "host: nowhere").replace("health: {port: 8080}", "health: {port: 8080, colour: red}")
    out = problems(tmp_path, bad)
    assert any("colour" in p for p in out)


def test_twenty_hosts_validate(tmp_path):
    hosts = "".join(f"  h{i:02d}:\n    address: 10.0.1.{i}\n" for i in range(20))
    svcs = "".join(
        f"  s{i:02d}:\n    image: x\n    tag: 20250817-abc1234\n    host: h{i:02d}\n    ports: ['80:80']\n    health: {{port: 80}}\n"
        for i in range(20)
    )
    doc = f"registry: {{org: acme}}\nhosts:\n{hosts}services:\n{svcs}"
    inv = load(write(tmp_path, doc, "phases:\n  - name: all\n    services: [" + ", ".join(f"s{i:02d}" for i in range(20)) + "]\n"))
    assert len(inv.select_hosts(None, "all")) == 20


def test_tool_never_writes_the_inventory(tmp_path):
    path = write(tmp_path, BASE)
    before = path.stat().st_mtime_ns, path.read_bytes()
    load(path)
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before
