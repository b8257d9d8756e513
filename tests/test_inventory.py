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
    out = problems(tmp_path, BASE.replace("    host: mainpc\n", "    host: mainpc\n    imgae: x\n"))
    assert len(out) == 1
    assert out[0].startswith(f"{tmp_path / 'fleet.yml'}:15: services.api.imgae: unknown key")
    assert "fix: did you mean 'image'? (else remove it)" in out[0]
    far = problems(tmp_path, BASE.replace("    host: mainpc\n", "    host: mainpc\n    zzzz: x\n"))
    assert "fix: remove it or check its spelling" in far[0]


def test_wrong_type(tmp_path):
    out = problems(tmp_path, BASE.replace("    address: 10.0.0.2\n", "    address: 10.0.0.2\n    port: twenty-two\n"))
    assert "hosts.pc2.port" in out[0] and ":10:" in out[0] and "twenty-two" in out[0]


def test_a_value_of_the_wrong_type_for_a_union_field_is_one_line_in_the_inventory_s_words(tmp_path):
    """Found by an exploratory run: env {MACHINE: 42} gave two lines naming pydantic's union branches
    (env.'MACHINE'.str, env.'MACHINE'.'SecretRef')."""
    out = problems(tmp_path, BASE.replace("    health: {port: 8080}\n", "    health: {port: 8080}\n    env: {MACHINE: 42}\n"))
    assert len(out) == 1 and ".str" not in out[0] and "SecretRef" not in out[0], out
    assert "must be a string or a secret reference ({secret: NAME}); fix: put the value in quotes exactly as written" \
        " (MACHINE: \"...\"); unquoted, YAML read it as a number" in out[0], out
    assert "42" not in out[0].split("env.")[1], "an env value is never repeated (it may be a secret)"
    out = problems(tmp_path, BASE.replace("    health: {port: 8080}\n", "    health: {port: 8080}\n    gpus: two\n"))
    assert len(out) == 1 and "services.api.gpus: must be a whole number or 'all' (got 'two')" in out[0], out


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


# --- hardening: nothing the inventory says may give a container root or the host -------------------


@pytest.mark.parametrize("user", ["0:0", "0:10001", "10001:0", "root", "10001", "10001:10001\n", "-1:5", "1e3:1"])
def test_container_user_must_be_numeric_and_not_root(tmp_path, user):
    fleet = BASE.replace("    host: mainpc\n", f"    host: mainpc\n    user: {user!r}\n")
    out = problems(tmp_path, fleet)
    assert any("services.api.user" in p and "numeric non-root uid:gid" in p for p in out), out


@pytest.mark.parametrize("volume,why", [
    ("/etc:/hostetc", "/etc, which no container may mount"),
    ("/var/run/docker.sock:/var/run/docker.sock", "/var/run/docker.sock"),
    ("//:/host", "not normalized"),
    ("/:/host", "is /, which no container may mount"),
    ("/proc:/p", "/proc, which no container may mount"),
    ("/var/../:/h", "not normalized"),
    ("/sys/fs/cgroup:/c", "under /sys"),
    ("/srv/models/../../etc:/m", "not normalized"),
    ("cache:/run/secrets", "where fleetroll mounts secret files"),
    ("/srv/models/x:/run/secrets/./db:ro", "where fleetroll mounts secret files"),
])
def test_host_paths_that_no_container_may_mount(tmp_path, volume, why):
    fleet = BASE.replace("    host: mainpc\n", f"    host: mainpc\n    volumes: [{volume!r}]\n")
    fleet = fleet.replace("hosts:\n", "defaults:\n  host_paths: [/srv/models]\nhosts:\n", 1)
    out = problems(tmp_path, fleet)
    assert any("services.api.volumes" in p and why in p for p in out), out


def test_host_paths_only_under_allowed_prefixes(tmp_path):
    fleet = BASE.replace("    host: mainpc\n", "    host: mainpc\n    volumes: ['/srv/models/llama:/models:ro', '/home/ops/data:/d', 'cache:/cache']\n")
    out = problems(tmp_path, fleet.replace("hosts:\n", "defaults:\n  host_paths: [/srv/models]\nhosts:\n", 1))
    assert len(out) == 1 and "/home/ops/data" in out[0] and "defaults.host_paths: /srv/models" in out[0]
    assert out[0].startswith(f"{tmp_path / 'fleet.yml'}:") and "fix:" in out[0]
    ok = fleet.replace("'/home/ops/data:/d', ", "")
    inv = load(write(tmp_path, ok.replace("hosts:\n", "defaults:\n  host_paths: [/srv/models]\nhosts:\n", 1)))
    assert inv.fleet.services["api"].volumes == ["/srv/models/llama:/models:ro", "cache:/cache"]


@pytest.mark.parametrize("path", ["/he alth", "/health\r\nX-Injected: 1", "health", "/health?x=<script>"])
def test_health_path_is_a_plain_path(tmp_path, path):
    fleet = BASE.replace("health: {port: 8080}", f"health: {{port: 8080, path: {path!r}}}")
    assert any("services.api.health.path" in p for p in problems(tmp_path, fleet))


def test_tag_with_a_trailing_newline_is_refused():
    assert tag_problem("20250817-abc1234\n") is not None and tag_problem("20250817-abc1234") is None


@pytest.mark.parametrize("field,value", [("address", "x -oProxyCommand=touch /tmp/pwned"), ("address", "host;reboot"),
                                         ("user", "ops -oProxyCommand=x"), ("user", "Root"), ("user", "a" * 40)])
def test_host_address_and_user_are_names_not_text(tmp_path, field, value):
    fleet = BASE.replace("    address: 10.0.0.2\n", "    address: 10.0.0.2\n    user: ops\n")
    fleet = fleet.replace("    address: 10.0.0.2\n", f"    address: {value!r}\n" if field == "address" else "    address: 10.0.0.2\n")
    if field == "user":
        fleet = fleet.replace("    user: ops\n", f"    user: {value!r}\n")
    assert any(f"hosts.pc2.{field}" in p for p in problems(tmp_path, fleet))


def test_ports_may_bind_one_address_and_the_gate_probes_it(tmp_path):
    fleet = BASE.replace('ports: ["8080:8080"]', 'ports: ["10.0.0.5:8080:8080", "9090:9090/udp"]')
    inv = load(write(tmp_path, fleet))
    svc = inv.fleet.services["api"]
    assert svc.port_bindings() == [("10.0.0.5", 8080, 8080, "tcp"), ("", 9090, 9090, "udp")]
    assert svc.health_spec()["address"] == "10.0.0.5"
    from playbooks.plan import container_spec

    assert container_spec(inv, "api")["ports"] == {"8080/tcp": "10.0.0.5:8080", "9090/udp": 9090}
    assert "address" not in load(write(tmp_path, BASE)).fleet.services["api"].health_spec()
    bad = BASE.replace('ports: ["8080:8080"]', 'ports: ["10.0.0.300:8080:8080"]')
    assert any("not an IP address" in p for p in problems(tmp_path, bad))


def test_same_port_on_two_addresses_is_fine_but_not_beside_a_wildcard(tmp_path):
    two = BASE + """  web:
    image: family-cpu-py311
    tag: 20250817-abc1234
    host: mainpc
    ports: ["10.0.0.6:8080:8080"]
    health: {port: 8080}
"""
    ph = "phases:\n  - name: one\n    services: [api, web]\n"
    assert any("already published by service 'api'" in p for p in problems(tmp_path, two, ph))
    inv = load(write(tmp_path, two.replace('ports: ["8080:8080"]', 'ports: ["10.0.0.5:8080:8080"]'), ph))
    assert sorted(inv.fleet.services) == ["api", "web"]


def test_report_key_secret_must_be_a_plain_secret_name(tmp_path):
    obs = "observability:\n  collector: api\n  report_key_secret: ../../etc/shadow\n"
    out = problems(tmp_path, BASE + obs)
    assert "observability.report_key_secret" in out[0] and ":19:" in out[0] and "etc/shadow" in out[0]
    inv = load(write(tmp_path, BASE + "observability:\n  collector: api\n"))
    assert inv.fleet.observability.report_key_secret == "fleetroll-report-key"


def test_every_problem_in_one_pass_field_errors_and_cross_checks_together(tmp_path):
    fleet = BASE.replace("    ports: [\"8080:8080\"]\n", "    ports: [\"8080:8080\"]\n    stop_timeout: soon\n") + (
        "  other:\n    image: family-cpu-py311\n    tag: 20250817-abc1234\n    host: nowhere\n    health: {port: 1}\n")
    out = problems(tmp_path, fleet, "phases:\n  - name: one\n    services: [api, other, ghost]\n")
    text = "\n".join(out)
    assert "services.api.stop_timeout" in text  # a field error
    assert "unknown host 'nowhere'" in text  # a cross-check on another service, same pass
    assert "'ghost' is not a service" in text and "'api' is not a service" not in text  # no echo of api's own error


def test_duplicate_keys_are_an_error_naming_both_lines(tmp_path):
    out = problems(tmp_path, BASE.replace("    host: mainpc\n", "    host: mainpc\n    host: pc2\n"))
    assert any("services.api.host: key given twice (lines 14 and 15)" in p for p in out), out


def test_a_merge_key_override_is_not_a_duplicate_and_the_override_wins(tmp_path):
    fleet = BASE.replace("  mainpc:\n    address: 10.0.0.1\n", "  mainpc: &pc\n    address: 10.0.0.1\n").replace(
        "  pc2:\n    address: 10.0.0.2\n", "  pc2:\n    <<: *pc\n    address: 10.0.0.2\n")
    inv = load(write(tmp_path, fleet))
    assert inv.fleet.hosts["pc2"].address == "10.0.0.2" and inv.fleet.hosts["pc2"].gpus.count == 1


def test_two_hosts_on_one_address_and_port_and_a_missing_key_file(tmp_path):
    fleet = BASE.replace("    address: 10.0.0.2\n", "    address: 10.0.0.1\n    key_filename: /nonexistent/id_ed25519\n")
    out = problems(tmp_path, fleet)
    assert any("hosts.pc2.address: 10.0.0.1:22 is also host 'mainpc'" in p for p in out), out
    assert any(":10: hosts.pc2.key_filename: no such file /nonexistent/id_ed25519" in p for p in out), out


def test_a_missing_phases_file_beside_an_inventory_is_an_error_not_a_fallback(tmp_path):
    (tmp_path / "fleet.yml").write_text(BASE)
    with pytest.raises(InventoryError) as exc:
        load(tmp_path / "fleet.yml")
    assert f"{tmp_path / 'phases.yml'}: no phases file beside the inventory" in exc.value.problems[0]


def test_phases_live_beside_the_inventory_and_the_old_place_is_read_once_with_a_note(tmp_path, monkeypatch, capsys):
    """inventory/phases.yml for the repository's inventory too; its old playbooks/phases.yml is read for one release, said aloud."""
    from playbooks import inventory as inventory_mod

    assert inventory_mod.default_phases_path(inventory_mod.REPO_INVENTORY) == inventory_mod.REPO_INVENTORY.parent / "phases.yml"
    repo_inv = tmp_path / "inventory" / "fleet.yml"
    repo_inv.parent.mkdir()
    repo_inv.write_text("")
    old = tmp_path / "old-phases.yml"
    old.write_text("phases: []\n")
    monkeypatch.setattr(inventory_mod, "REPO_INVENTORY", repo_inv)
    monkeypatch.setattr(inventory_mod, "OLD_REPO_PHASES", old)
    assert inventory_mod.default_phases_path(repo_inv) == old
    assert "phases now live beside the inventory" in capsys.readouterr().err
    other = tmp_path / "elsewhere" / "fleet.yml"
    assert inventory_mod.default_phases_path(other) == other.parent / "phases.yml", "never for another inventory"


def test_a_host_named_twice_is_acted_on_once_and_a_list_for_one_host_is_said_so():
    """Found by an exploratory run: preflight -H mainpc,mainpc checked mainpc twice ('2 hosts'); unlock -H mainpc,pc2
    said 'mainpc,pc2, not in the inventory'."""
    inv = load(ROOT / "inventory" / "fleet.yml")
    assert inv.select_hosts(["mainpc", "mainpc", "pc2"]) == ["mainpc", "pc2"]
    with pytest.raises(InventoryError, match="--host takes one host, not a list \\(mainpc,pc2\\)"):
        inv.select_hosts(["mainpc,pc2"], option="--host")
    with pytest.raises(InventoryError, match="names nosuch, not in the inventory"):
        inv.select_hosts(["nosuch"])
