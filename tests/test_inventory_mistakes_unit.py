"""Inventory mistakes an exploratory operator run made, each refused at load with file, field and fix, nothing asked of a host.

Before: `healthy_deadline: .inf` gated a failing release forever with its old container stopped; a NUL in an env value,
`x/../cpu-svc` as an image and a `..` container path passed load and failed (or worse, worked) on the host; a service in
no phase was never deployed and nothing said so; a placement error printed the service's whole env; "quote it" fixes
quoted YAML's conversion (COUNTRY: "False") instead of what was written (NO); a Latin-1 byte gave a traceback; an alias
bomb hung the loader.
"""

from __future__ import annotations

import time

import pytest

from playbooks.inventory import load

from .test_inventory import BASE, PHASES, problems, write

SVC = "    health: {port: 8080}\n"


def _with(extra: str, health: str = "{port: 8080}") -> str:
    return BASE.replace(SVC, f"    health: {health}\n{extra}")


@pytest.mark.parametrize("health", ["{port: 8080, healthy_deadline: .inf}", "{port: 8080, healthy_deadline: 1e9}",
                                    "{port: 8080, min_healthy_time: .inf}", "{port: 8080, interval: .nan}",
                                    "{port: 8080, interval: 1e9}"])
def test_unbounded_gate_settings_are_refused(tmp_path, health):
    out = problems(tmp_path, _with("", health))
    assert len(out) == 1 and "services.api.health." in out[0] and "fix:" in out[0], out


@pytest.mark.parametrize("env, says", [
    ('{NUL: "a\\0b"}', "env NUL: the value holds a NUL character"),
    ("{'BAD NAME': x}", "env name 'BAD NAME' is not a variable name"),
    ("{'A=B': y}", "env name 'A=B' is not a variable name"),
    ("{FLEETROLL_HOST: mainpc}", "env FLEETROLL_HOST: variables starting with FLEETROLL_ are set by fleetroll itself"),
])
def test_env_names_and_values_a_container_cannot_hold_are_refused_without_repeating_values(tmp_path, env, says):
    out = problems(tmp_path, _with(f"    env: {env}\n"))
    assert len(out) == 1 and says in out[0] and "services.api.env" in out[0], out
    assert "a\\x00b" not in out[0] and "mainpc}" not in out[0]


def test_a_placement_error_does_not_print_the_services_env(tmp_path):
    fleet = _with("    env: {DB_PASSWORD: hunter2-s3cr3t}\n    hosts: [mainpc]\n")
    out = problems(tmp_path, fleet)
    assert any("exactly one of host" in p for p in out), out
    assert not any("hunter2" in p for p in out), out


@pytest.mark.parametrize("image", ["x/../cpu-svc", "cpu-svc/", "a//b", "-svc", "svc..x"])
def test_image_names_docker_would_refuse_are_refused(tmp_path, image):
    out = problems(tmp_path, BASE.replace("image: family-cpu-py311", f"image: '{image}'"))
    assert len(out) == 1 and "services.api.image" in out[0] and "is not a repository path" in out[0], out


def test_a_container_path_with_dot_dot_is_refused(tmp_path):
    out = problems(tmp_path, _with("    volumes: ['models:/data/../../etc']\n"))
    assert len(out) == 1 and "container path '/data/../../etc' has a '..' component" in out[0] and "'/etc'" in out[0], out
    load(write(tmp_path, _with("    volumes: ['models:/models/', 'cache:/a/./b']\n")))  # harmless: Docker takes them


@pytest.mark.parametrize("host, says", [("http://10.0.0.5:5000", "has a scheme: give HOST[:PORT] alone ('10.0.0.5:5000'); plain HTTP"
                                         " is insecure: true"), ("ghcr.io/acme", "must be HOST[:PORT]")])
def test_a_registry_host_with_a_scheme_or_path_is_refused(tmp_path, host, says):
    out = problems(tmp_path, BASE.replace("host: ghcr.io", f"host: '{host}'"))
    assert len(out) == 1 and "registry.host" in out[0] and says in out[0], out


def test_unquoted_yaml_scalars_get_a_fix_quoting_what_was_written(tmp_path):
    out = problems(tmp_path, BASE.replace('ports: ["8080:8080"]', "ports: [22:22, 8080:8080]").replace(
        "    host: mainpc\n", "    host: mainpc\n    restart: no\n"))
    text = "\n".join(out)
    assert 'quote it as written (- "22:22"); unquoted, YAML read it as a number' in text, out
    assert 'quote it as written (restart: "no"); unquoted, YAML read it as a boolean' in text, out
    out = problems(tmp_path, _with("    env: {COUNTRY: NO, VERSION: 1.10}\n"))
    assert len(out) == 2 and all('exactly as written' in p for p in out), out
    assert not any('"False"' in p or '"1.1"' in p for p in out), "never YAML's conversion as the value to write"


def test_a_file_that_is_not_utf8_is_one_line_naming_the_byte_and_the_fix(tmp_path):
    path = write(tmp_path, BASE)
    path.write_bytes(b"# caf\xe9\n" + BASE.encode())
    with pytest.raises(Exception) as exc:
        load(path)
    assert exc.value.problems == [f"{path}:1: not UTF-8 text (byte 0xe9); fix: save the file as UTF-8 (an editor's"
                                  " 'encoding' setting, or iconv -f latin1 -t utf-8)"]


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
    t0 = time.monotonic()
    out = problems(tmp_path, BASE + bomb)
    assert "expands to more than 1,000,000 values" in out[0] and time.monotonic() - t0 < 30, out


def test_a_service_in_no_phase_is_refused(tmp_path):
    fleet = BASE + "  batch:\n    image: family-cpu-py311\n    tag: 20250817-abc1234\n    host: pc2\n    health: {port: 8080}\n" \
                   "    ports: ['8080:8080']\n"
    out = problems(tmp_path, fleet)
    assert len(out) == 1 and out[0].startswith(
        f"{tmp_path / 'phases.yml'}:1: phases: service 'batch' of the inventory is in no phase, so no rollout would"
        " deploy it; fix: add it to a phase's services: (or remove it from the inventory)"), out
    load(write(tmp_path, fleet, PHASES.replace("[api]", "[api, batch]")))


def test_a_phase_behind_the_proxy_before_the_proxys_own_phase_is_refused(tmp_path):
    fleet = BASE.replace("    ports: [\"8080:8080\"]\n", "    proxy: {listen: '18080', port: 8080}\n").replace(
        "services:\n", "reverse_proxy: {service: edge}\nservices:\n  edge:\n    image: fleetroll-proxy\n    tag: 20250817-abc1234\n"
                       "    host: mainpc\n    health: {port: 8404}\n")
    phases = "phases:\n  - name: web\n    services: [api]\n  - name: edge\n    services: [edge]\n"
    out = problems(tmp_path, fleet, phases)
    assert any("'api' sits behind the proxy 'edge', whose phase 'edge' comes later; fix: move phase 'edge' before 'web'" in p
               for p in out), out
    load(write(tmp_path, fleet, "phases:\n  - name: edge\n    services: [edge]\n  - name: web\n    services: [api]\n"))


def test_a_public_key_as_key_filename_says_so_and_names_the_private_one(tmp_path):
    """Found by an exploratory run: OpenSSH's 'others can read it; fix: chmod 600 id_ed25519.pub' sent the operator astray."""
    pub = tmp_path / "id_ed25519.pub"
    pub.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl op@laptop\n")
    out = problems(tmp_path, BASE.replace("    address: 10.0.0.1\n", f"    address: 10.0.0.1\n    key_filename: {pub}\n"))
    assert len(out) == 1 and f"hosts.mainpc.key_filename: {pub} is a public key" in out[0], out
    assert f"fix: point it at the private key beside it ({tmp_path / 'id_ed25519'})" in out[0]


def test_https_spoken_to_a_plain_http_registry_names_registry_insecure():
    """Found by an exploratory run: 'insecure: false' against an HTTP registry said only '[SSL: WRONG_VERSION_NUMBER] ...
    (fix: check the registry is up ...)'."""
    from playbooks.preflight import _image_checks

    inv = load(write_default())
    s = inv.phases[0].services[0]
    err = "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)"
    out = _image_checks(inv, "mainpc", [s], None, {inv.image_ref(s): {"ok": False, "kind": "unreachable", "error": err}})
    assert out[0].status == "fail" and "set registry.insecure: true" in out[0].fix, out
    out = _image_checks(inv, "mainpc", [s], None, {inv.image_ref(s): {"ok": False, "kind": "unreachable", "error": "timed out"}})
    assert "insecure" not in out[0].fix


def write_default():
    from .test_inventory import ROOT

    return ROOT / "inventory" / "fleet.yml"


def _behind_proxy(name: str = "api", listen: str = "18080") -> str:
    return BASE.replace("  api:\n", f"  {name}:\n").replace("    ports: [\"8080:8080\"]\n", f"    proxy: {{listen: '{listen}', port: 8080}}\n").replace(
        "services:\n", "reverse_proxy: {service: edge}\nservices:\n  edge:\n    image: fleetroll-proxy\n    tag: 20250817-abc1234\n"
                       "    host: mainpc\n    health: {port: 8404}\n")


EDGE_FIRST = "phases:\n  - name: edge\n    services: [edge]\n  - name: one\n    services: [{}]\n"


def test_a_listen_port_equal_to_the_proxys_health_port_is_refused(tmp_path):
    """Found by an exploratory run: both frontends bound :8404 and the kernel split clients between them."""
    out = problems(tmp_path, _behind_proxy(listen="8404"), EDGE_FIRST.format("api"))
    assert any("services.api.proxy.listen: 8404 is the proxy's own health port" in p for p in out), out


@pytest.mark.parametrize("name", ["a..b", "web."])
def test_a_proxied_service_whose_name_is_no_dns_name_is_refused(tmp_path, name):
    """Found by an exploratory run: after a proxy restart 'a..b' went to 127.0.0.1 and 'web.' to the container of 'web'."""
    out = problems(tmp_path, _behind_proxy(name=name), EDGE_FIRST.format(f"'{name}'"))
    assert any(f"{name!r} is not a host name" in p for p in out), out


def test_a_listen_port_clash_names_proxy_listen_not_ports(tmp_path):
    """Found by an exploratory run: a clash between a proxy.listen and another service's port said 'services.web.ports'."""
    fleet = _behind_proxy(listen="9000") + "  other:\n    image: family-cpu-py311\n    tag: 20250817-abc1234\n" \
                                           "    host: mainpc\n    ports: ['9000:9000']\n    health: {port: 9000}\n"
    out = problems(tmp_path, fleet, "phases:\n  - name: edge\n    services: [edge]\n  - name: one\n    services: [api, other]\n")
    clash = [p for p in out if "host port 9000/tcp on mainpc is already published" in p]
    assert clash and ("services.api.proxy.listen:" in clash[0] or "services.other.ports:" in clash[0]), out
    assert not any("services.api.ports:" in p for p in clash), out


def test_a_secret_given_as_env_on_a_swarm_phase_is_refused_at_load(tmp_path):
    """Found by an exploratory run: preflight passed and the Swarm rollout refused 'cannot put a secret's value in the
    environment'. It is a rule of the inventory: said at load."""
    fleet = _with("    env: {API_KEY: {secret: apikey}}\n").replace("registry:", "swarm: {managers: [mainpc]}\nregistry:")
    out = problems(tmp_path, fleet, "phases:\n  - name: one\n    engine: swarm\n    services: [api]\n")
    assert any("services.api.env.API_KEY: Swarm cannot put a secret's value in the environment" in p for p in out), out
    load(write(tmp_path, fleet.replace("{secret: apikey}", "{secret: apikey, as: file}"),
               "phases:\n  - name: one\n    engine: swarm\n    services: [api]\n"))


def test_a_wrong_key_in_a_secret_reference_is_one_error_at_that_key(tmp_path):
    """Found by an exploratory run: `{secret: tok, as: files}` gave two errors, one of them 'should be a valid string'."""
    out = problems(tmp_path, BASE.replace(SVC, SVC + "    env: {TOK: {secret: tok, as: files}}\n"))
    assert len(out) == 1 and "services.api.env.TOK.as: Input should be 'env' or 'file' (got 'files')" in out[0], out


def test_a_compute_capability_that_is_no_major_minor_says_what_it_must_look_like(tmp_path):
    """Found by an exploratory run: quoting "8.90" as advised gave 'String should match pattern ^\\d+\\.\\d$'."""
    out = problems(tmp_path, BASE.replace('compute_capability: "8.9"', 'compute_capability: "8.90"'))
    assert len(out) == 1 and "compute_capability '8.90' must be MAJOR.MINOR with one digit after the dot" in out[0], out
    assert "pattern" not in out[0]
