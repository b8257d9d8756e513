"""The reverse proxy on a swarm phase, rendered (pure; no host): the per-node proxy and the services behind it."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import threading

import pytest
import yaml

from agent.proxy import CONFIG_ENV
from playbooks.inventory import InventoryError, load
from playbooks.swarm import form, proxy, render

FLEET = """\
registry: {host: reg.example:5000, org: acme}
swarm: {healthcheck: wget}
hosts:
  mainpc: {address: 10.0.0.1}
  pc2: {address: 10.0.0.2}
  node03: {address: 10.0.0.3}
reverse_proxy: {service: edge}
services:
  edge:
    image: fleetroll-proxy
    tag: 20250817-abc1234
    hosts: [mainpc, pc2]
    stop_timeout: 5
    health: {port: 8404}
  web:
    image: family-cpu-py311
    tag: 20250817-abc1234
    hosts: [mainpc, pc2]
    stop_timeout: 7
    proxy: {listen: "18080", port: 8080}
    health: {port: 8080, path: /healthz}
  api:
    image: family-cpu-py311
    tag: 20250817-abc1234
    host: pc2
    replicas: null
    proxy: {listen: "18081", port: 9000}
    health: {port: 9000}
"""
PHASES = "phases:\n  - {name: edge, engine: swarm, services: [edge]}\n  - {name: web, engine: swarm, services: [web, api]}\n"


def write(tmp_path, fleet=FLEET, phases=PHASES):
    (tmp_path / "fleet.yml").write_text(fleet)
    (tmp_path / "phases.yml").write_text(phases)
    return tmp_path / "fleet.yml"


@pytest.fixture
def inv(tmp_path):
    return load(write(tmp_path))


def test_a_proxy_or_a_service_behind_it_loads_on_a_swarm_phase(inv):
    assert inv.fleet.engine_of(inv.phase("edge")) == "swarm" and inv.fleet.services["web"].proxy is not None


def test_the_proxy_is_per_node_publishes_each_listen_port_in_host_mode_and_swaps_stop_first(inv):
    r = render.render(inv, "edge")
    e = r.doc["services"]["edge"]
    assert e["deploy"]["mode"] == "global" and e["deploy"]["endpoint_mode"] == "dnsrr"
    assert "node.labels.fleetroll.host != node03" in e["deploy"]["placement"]["constraints"]  # only the hosts it names
    assert e["ports"] == [{"target": 18080, "published": 18080, "protocol": "tcp", "mode": "host"},
                          {"target": 18081, "published": 18081, "protocol": "tcp", "mode": "host"}]
    assert e["networks"] == [proxy.NETWORK] and r.doc["networks"] == {proxy.NETWORK: {"external": True, "name": proxy.NETWORK}}
    assert e["deploy"]["update_config"]["order"] == "stop-first" and "listen ports" in r.orders["edge"][1]
    # the fleetroll-proxy image has bash and no wget: its probe is bash's /dev/tcp whatever swarm.healthcheck says
    assert e["healthcheck"]["test"] == ["CMD", "/bin/bash", "-c", render.PROXY_PROBE, "probe", "8404", "/health"]
    text = e["environment"][CONFIG_ENV]
    assert e["deploy"]["labels"][proxy.CONFIG_HASH_LABEL] == proxy.config_hash(text)


def test_a_service_behind_the_proxy_publishes_nothing_and_starts_first_with_a_grace_period(inv):
    r = render.render(inv, "web")
    w = r.doc["services"]["web"]
    assert "ports" not in w and w["networks"] == [proxy.NETWORK] and w["deploy"]["endpoint_mode"] == "dnsrr"
    assert w["deploy"]["update_config"]["order"] == "start-first" == w["deploy"]["rollback_config"]["order"]
    assert "behind the proxy" in r.orders["web"][1] and w["stop_grace_period"] == "7s"
    assert w["healthcheck"]["test"][-1] == "http://127.0.0.1:8080/healthz"  # the container port, not a host port
    assert CONFIG_ENV not in w["environment"]


def test_the_config_reaches_each_service_s_tasks_by_dns_and_retries_a_stopping_task_elsewhere(inv):
    text = render.render(inv, "edge").doc["services"]["edge"]["environment"][CONFIG_ENV]
    assert "resolvers docker\n    nameserver dns 127.0.0.11:53\n" in text and "hold obsolete 0s" in text
    assert "    retry-on conn-failure empty-response response-timeout\n" in text and "    option redispatch 1\n" in text
    assert ("    server-template task 1-16 tasks.fr-web_web:8080 resolvers docker init-addr none resolve-prefer ipv4"
            " check inter 1s fall 2 rise 1\n") in text
    assert "tasks.fr-web_api:9000" in text and "server-template task 1-16 " in text  # at least 16 slots, whatever the placement
    assert "frontend fe_web\n    bind :18080\n    default_backend be_web\n" in text
    assert "    option httpchk GET /healthz\n" in text and "bind :8404" in text
    assert "stats socket" not in text  # no runtime API on Swarm: nothing switches, DNS does


@pytest.mark.skipif(not shutil.which("haproxy"), reason="needs haproxy to check the configuration")
def test_haproxy_accepts_the_rendered_configuration(inv, tmp_path):
    f = tmp_path / "haproxy.cfg"
    f.write_text(render.render(inv, "edge").doc["services"]["edge"]["environment"][CONFIG_ENV])
    out = subprocess.run(["haproxy", "-c", "-f", str(f)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_changed_route_is_a_new_config_hash_and_a_new_spec(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = render.render(load(write(tmp_path / "a")), "edge")
    b = render.render(load(write(tmp_path / "b", FLEET.replace('"18080"', '"18088"'))), "edge")
    la, lb = a.doc["services"]["edge"]["deploy"]["labels"], b.doc["services"]["edge"]["deploy"]["labels"]
    assert la[proxy.CONFIG_HASH_LABEL] != lb[proxy.CONFIG_HASH_LABEL] and la[render.SPEC_LABEL] != lb[render.SPEC_LABEL]


@pytest.mark.parametrize("name", ["a.b", "we b", "web\n    server x 1.2.3.4:80", "web;x", "Web"])
def test_a_name_that_is_not_plain_or_would_split_the_dns_name_never_reaches_the_config(name):
    with pytest.raises(proxy.ProxyRenderError) as exc:
        proxy._dns_part("service", name)
    assert repr(name) in str(exc.value)


def test_a_name_with_a_dot_is_refused_at_load_and_by_the_render_with_the_fix(tmp_path, monkeypatch):
    from playbooks import inventory_checks
    from playbooks.inventory import InventoryError

    fleet = FLEET.replace("  web:\n", "  we.b:\n").replace("[web, api]", "[we.b, api]")
    phases = PHASES.replace("[web, api]", "[we.b, api]")
    with pytest.raises(InventoryError, match=r"fr-\S+_we\.b, whose '\.' would split"):
        load(write(tmp_path, fleet, phases))
    monkeypatch.setattr(inventory_checks, "_swarm_name_checks", lambda *a: [])  # past the loader: the render's own check
    with pytest.raises(render.RenderError, match=r"has a '\.'.*fix: rename"):
        render.render(load(write(tmp_path, fleet, phases)), "edge")


def test_a_health_path_that_is_not_plain_is_refused_before_haproxy_sees_it(inv):
    svc = inv.fleet.services["web"]
    bad = svc.health.model_copy(update={"path": "/x\n    server evil 1.2.3.4:80"})
    inv.fleet.services["web"] = svc.model_copy(update={"health": bad})
    with pytest.raises(render.RenderError, match="not a plain URL path"):
        render.render(inv, "edge")


def test_the_proxy_on_swarm_refuses_a_service_behind_it_left_on_ssh_but_the_ssh_proxy_serves_swarm_tasks(tmp_path):
    (tmp_path / "a").mkdir()
    ssh_web = PHASES.replace("{name: web, engine: swarm,", "{name: web, engine: ssh,")
    with pytest.raises(render.RenderError, match="no swarm phase runs web.*fix: run both on engine: swarm"):
        render.render(load(write(tmp_path / "a", FLEET, ssh_web.replace("[web, api]", "[web]") + "  - {name: api1, engine: swarm, services: [api]}\n")), "edge")
    (tmp_path / "b").mkdir()  # the reverse is the move between the engines: the SSH push's proxy joins the overlay
    ssh_edge = PHASES.replace("{name: edge, engine: swarm,", "{name: edge, engine: ssh,")
    web = render.render(load(write(tmp_path / "b", FLEET, ssh_edge)), "web").doc["services"]["web"]
    assert web["networks"] == [proxy.NETWORK] and "ports" not in web and web["deploy"]["endpoint_mode"] == "dnsrr"
    assert web["deploy"]["update_config"]["order"] == "start-first"


def test_start_first_for_the_proxy_itself_is_refused(tmp_path):
    fleet = FLEET.replace("    stop_timeout: 5\n    health: {port: 8404}", "    stop_timeout: 5\n    update: {order: start-first}\n"
                          "    health: {port: 8404}")
    try:
        inv = load(write(tmp_path, fleet))
    except InventoryError:
        return  # refused at load already: as good
    with pytest.raises(render.RenderError, match="start-first, but the proxy holds"):
        render.render(inv, "edge")


def test_a_listen_bound_to_one_address_is_refused_at_load_on_a_swarm_phase(tmp_path):
    with pytest.raises(InventoryError) as exc:
        load(write(tmp_path, FLEET.replace('"18080"', '"10.0.0.1:18080"')))
    assert any("proxy.listen: 10.0.0.1:18080 binds one address" in p and "fix:" in p for p in exc.value.problems)


@pytest.mark.skipif(not shutil.which("docker"), reason="needs the docker CLI (no daemon)")
def test_docker_stack_config_accepts_the_proxy_stack(tmp_path):
    inv = load(write(tmp_path, FLEET, "phases:\n  - {name: all, engine: swarm, services: [edge, web, api]}\n"))
    f = tmp_path / "stack.yml"
    f.write_text(render.to_yaml(render.render(inv, "all")))
    env = {"PATH": "/usr/bin:/bin", "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock", "HOME": str(tmp_path)}
    out = subprocess.run([shutil.which("docker") or "docker", "stack", "config", "-c", str(f)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    back = yaml.safe_load(out.stdout)
    assert back["services"]["edge"]["environment"][CONFIG_ENV] == render.render(inv, "all").doc["services"]["edge"]["environment"][CONFIG_ENV]
    assert back["networks"][proxy.NETWORK]["external"] is True


class FakeLead:
    """A manager answering `docker network inspect` as told; records what it was asked to run."""

    def __init__(self, inspect: tuple[int, str], attachable: str = "true\n", rm: tuple[int, str] = (0, "")):
        self.name, self.inspect, self.ran, self.attachable, self.rm = "mainpc", inspect, [], attachable, rm

    def run(self, argv, check=True, **_kw):
        self.ran.append(argv)
        if argv == proxy.network_attachable():
            return 0, self.attachable, ""
        if argv == proxy.network_remove():
            return self.rm[0], "", self.rm[1]
        if argv[:3] == ["docker", "network", "inspect"]:
            return self.inspect[0], self.inspect[1], ""
        return 0, "", ""


def test_swarm_form_makes_the_overlay_once_and_leaves_a_foreign_network_alone():
    absent = FakeLead((1, ""))
    assert "made the overlay network fr-proxy" in form.proxy_network(absent) and absent.ran[-1] == proxy.network_create()
    there = FakeLead((0, "overlay swarm\n"))
    assert "already there; unchanged" in form.proxy_network(there) and len(there.ran) == 2  # and asked if attachable
    bridge = FakeLead((0, "bridge local\n"))
    said = form.proxy_network(bridge)
    assert said.startswith("FAILED mainpc: a network fr-proxy exists but is bridge local") and "fix:" in said
    assert len(bridge.ran) == 1


def test_the_overlay_is_wanted_when_a_swarm_phase_runs_the_proxy_or_a_service_behind_it_or_the_fleet_uses_swarm(inv, tmp_path):
    assert proxy.wanted(inv)
    (tmp_path / "s").mkdir()
    assert not proxy.wanted(load(write(tmp_path / "s", FLEET.replace("swarm: {healthcheck: wget}\n", ""),
                                       PHASES.replace("engine: swarm", "engine: ssh"))))
    (tmp_path / "t").mkdir()  # a fleet that uses Swarm: the SSH push's proxy joins the overlay to serve swarm tasks
    assert proxy.wanted(load(write(tmp_path / "t", FLEET, PHASES.replace("engine: swarm", "engine: ssh"))))


class _Health(http.server.BaseHTTPRequestHandler):
    answers = {"/health": (200, b'{"status":"ok"}'), "/spaced": (200, b'{"status": "ok"}'),
               "/degraded": (200, b'{"status":"degraded"}'), "/error": (500, b'{"status":"ok"}')}

    def do_GET(self):  # noqa: N802 - http.server's name
        code, body = self.answers.get(self.path, (404, b"{}"))
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_a):
        pass


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
def test_the_proxy_probe_passes_only_200_with_status_ok_and_starts_no_process():
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = str(srv.server_address[1])
    try:
        def probe(path: str, at: str = port) -> int:
            return subprocess.run(["bash", "-c", render.PROXY_PROBE, "probe", at, path], capture_output=True, timeout=10).returncode

        assert probe("/health") == 0
        assert [probe(p) for p in ("/spaced", "/degraded", "/error", "/missing")] == [1, 1, 1, 1]  # spaced: not HAProxy's
    finally:
        srv.shutdown()
        srv.server_close()
    assert probe("/health") != 0  # nothing listening
    assert all(w not in render.PROXY_PROBE for w in ("python", "wget", "curl", "cat "))


def test_preflight_checks_the_proxy_swarm_runs_not_the_ssh_push_s_socket(inv):
    from playbooks.swarm import checks

    hosts = ["mainpc", "pc2"]
    text = proxy.config(proxy.backends(inv), 8404)
    running = {"Spec": {"Labels": {proxy.CONFIG_HASH_LABEL: proxy.config_hash(text)}}}
    ok = checks.proxy_checks(inv, "web", hosts, "overlay swarm\n", running)
    assert [(c.host, c.check, c.status) for c in ok] == [("mainpc", "proxy", "pass"), ("pc2", "proxy", "pass")]
    assert "backend for web, api" in ok[0].detail
    stale = checks.proxy_checks(inv, "web", hosts, "overlay swarm", {"Spec": {"Labels": {proxy.CONFIG_HASH_LABEL: "0" * 16}}})
    assert {c.status for c in stale} == {"fail"} and stale[0].fix == "roll the proxy's phase out again first: fab rollout --phase edge"
    absent = checks.proxy_checks(inv, "web", hosts, "overlay swarm", None)
    assert "runs in no stack" in absent[0].detail and absent[0].fix == "fab rollout --phase edge first"
    no_net = checks.proxy_checks(inv, "edge", hosts, "", None)
    assert {c.status for c in no_net} == {"fail"} and "fab swarm.form" in no_net[0].fix
    assert {c.status for c in checks.proxy_checks(inv, "edge", hosts, "overlay swarm", None)} == {"pass"}  # deployed with it


def test_slots_follow_placement_only_in_powers_of_two_from_16_so_a_placement_change_rarely_recreates_a_proxy(tmp_path):
    from agent import proxytasks

    assert [proxytasks.slots_for(n) for n in (0, 1, 2, 8, 9, 16, 17, 100, 500)] == [16, 16, 16, 16, 32, 32, 64, 256, 256]
    web = "    hosts: [mainpc, pc2]\n    stop_timeout: 7\n"
    assert web in FLEET
    invs = []
    for d, hosts in (("one", "[mainpc]"), ("two", "[mainpc, pc2]")):
        (tmp_path / d).mkdir()
        invs.append(load(write(tmp_path / d, FLEET.replace(web, f"    hosts: {hosts}\n    stop_timeout: 7\n"), PHASES)))
    text = [render.render(i, "edge").doc["services"]["edge"]["environment"][CONFIG_ENV] for i in invs]
    assert text[0] == text[1], "moving web from one host to two changed every proxy's configuration"
