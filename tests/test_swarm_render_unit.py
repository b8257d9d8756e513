"""The stack renderer: inventory + phase -> compose v3.8 for `docker stack deploy` (pure; no host, no daemon)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from playbooks.inventory import load
from playbooks.swarm import render

FLEET = """\
registry: {host: reg.example:5000, org: acme}
engine: swarm
swarm: {healthcheck: wget}
defaults: {host_paths: [/srv/models]}
hosts:
  mainpc:
    address: 10.0.0.1
    gpus: {model: RTX 4090, count: 1, compute_capability: "8.9"}
  pc2: {address: 10.0.0.2}
  node03: {address: 10.0.0.3}
groups:
  workers: [pc2, node03]
services:
  llm:
    image: family-torch-cu121
    tag: 20250817-abc1234
    host: mainpc
    ports: ["8000:9000"]
    env: {MACHINE: mainpc, HF_TOKEN: {secret: hf_token, as: file}, PROMPT: "costs $5 or ${PRICE}"}
    gpus: all
    volumes: ["/srv/models/llm:/models:ro", "llm-cache:/cache"]
    restart: on-failure
    stop_timeout: 20
    health: {port: 8000, path: /healthz, healthy_deadline: 90, min_healthy_time: 15, interval: 0.25}
  api:
    image: family-cpu-py311
    tag: 20250817-abc1234
    group: workers
    ports: ["8080:8080"]
    update: {max_parallel: 1}
    health: {port: 8080}
"""
PHASES = "phases:\n  - name: one\n    services: [llm, api]\n"
DOCKER = shutil.which("docker") or "docker"
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def inv(tmp_path):
    (tmp_path / "fleet.yml").write_text(FLEET)
    (tmp_path / "phases.yml").write_text(PHASES)
    return load(tmp_path / "fleet.yml")


def test_image_by_digest_and_by_tag_said_aloud(inv):
    r = render.render(inv, "one", {"llm": DIGEST})
    assert r.stack == "fr-one" and r.doc["version"] == "3.8"
    assert r.doc["services"]["llm"]["image"] == f"reg.example:5000/acme/family-torch-cu121:20250817-abc1234@{DIGEST}"
    assert r.doc["services"]["api"]["image"] == "reg.example:5000/acme/family-cpu-py311:20250817-abc1234"
    assert any(n.startswith("api: image by tag (20250817-abc1234): no digest resolved") for n in r.notes), r.notes
    assert not any(n.startswith("llm: image by tag") for n in r.notes)


def test_a_secret_file_is_the_ssh_push_s_path_and_a_swarm_secret_named_by_the_manager(inv):
    """KEY=/run/secrets/NAME under both engines; the Swarm secret's name is the one the manager's agent gave."""
    versioned = "fr_hf_token_0123456789ab"
    r = render.render(inv, "one", secret_names={"hf_token": versioned})
    llm = r.doc["services"]["llm"]
    assert llm["environment"]["HF_TOKEN"] == "/run/secrets/hf_token" and "HF_TOKEN_FILE" not in llm["environment"]
    assert llm["secrets"] == [{"source": versioned, "target": "hf_token", "uid": "10001", "gid": "10001", "mode": 0o400}]
    assert r.doc["secrets"] == {versioned: {"external": True}} and r.secrets == {versioned: "hf_token"}
    assert llm["environment"]["MACHINE"] == "mainpc" and llm["environment"]["FLEETROLL_HOST"] == "mainpc"
    assert render.secret_refs(inv, "one") == ["hf_token"]
    assert not any("shown as fr_NAME" in n for n in r.notes)
    # a new value is a new name, so a new spec: Swarm updates the service (its secrets are immutable)
    rotated = render.render(inv, "one", secret_names={"hf_token": "fr_hf_token_ba9876543210"})
    spec = render.SPEC_LABEL
    assert rotated.doc["services"]["llm"]["deploy"]["labels"][spec] != llm["deploy"]["labels"][spec]
    # without the manager's names (fab swarm.render) the placeholder is said aloud
    shown = render.render(inv, "one")
    assert shown.doc["services"]["llm"]["secrets"][0]["source"] == "fr_hf_token"
    assert any(n.startswith("secrets hf_token shown as fr_NAME") for n in shown.notes), shown.notes


def test_a_secret_in_the_environment_is_refused_with_the_fix(tmp_path):
    (tmp_path / "fleet.yml").write_text(FLEET.replace("{secret: hf_token, as: file}", "{secret: hf_token}"))
    (tmp_path / "phases.yml").write_text(PHASES)
    # Refused at load now (an inventory rule, said before any preflight); render keeps its own refusal behind it.
    from playbooks.inventory import InventoryError

    with pytest.raises(InventoryError, match=r"services\.llm\.env\.HF_TOKEN: Swarm cannot put a secret's value"
                       r".*fix: \{secret: NAME, as: file\}"):
        load(tmp_path / "fleet.yml")


def test_ports_are_host_mode_and_the_healthcheck_probes_the_container_port(inv):
    r = render.render(inv, "one")
    llm = r.doc["services"]["llm"]
    assert llm["ports"] == [{"target": 9000, "published": 8000, "protocol": "tcp", "mode": "host"}]
    hc = llm["healthcheck"]
    assert hc["test"][:3] == ["CMD", "/bin/sh", "-c"] and hc["test"][4:6] == ["probe", "http://127.0.0.1:9000/healthz"]
    # health.interval 0.25 s is the SSH gate's poll; Swarm's probe is an exec in the container: at least 1 s apart, and
    # 5 s to answer (an exec on a loaded host takes seconds; 2 s killed healthy tasks in a loaded lab)
    assert hc["interval"] == "1s" and hc["timeout"] == "5s" and hc["start_period"] == "90s" and hc["retries"] == 3
    assert llm["deploy"]["endpoint_mode"] == "dnsrr"


def test_placement_by_node_label_never_by_hostname(inv):
    r = render.render(inv, "one")
    llm, api = r.doc["services"]["llm"]["deploy"], r.doc["services"]["api"]["deploy"]
    assert llm["mode"] == "replicated" and llm["replicas"] == 1
    assert llm["placement"]["constraints"] == ["node.labels.fleetroll.member == true", "node.labels.fleetroll.host == mainpc",
                                               "node.labels.fleetroll.gpu == true"]
    # group workers = pc2 + node03: one task on each, every other inventory host excluded (constraints are ANDed)
    assert api["mode"] == "global"
    assert api["placement"]["constraints"] == ["node.labels.fleetroll.member == true", "node.labels.fleetroll.host != mainpc"]
    assert not any("hostname" in c for s in r.doc["services"].values() for c in s["deploy"]["placement"]["constraints"])


def test_replicas_run_n_tasks_over_the_hosts_at_most_one_each(inv):
    svc = inv.fleet.services["api"].model_copy(update={"replicas": 1})
    fleet = inv.fleet.model_copy(update={"services": {**inv.fleet.services, "api": svc}})
    api = render.render(type(inv)(fleet, inv.phases, inv.path, inv.phases_path), "one").doc["services"]["api"]["deploy"]
    assert api["mode"] == "replicated" and api["replicas"] == 1 and api["placement"]["max_replicas_per_node"] == 1
    assert api["placement"]["constraints"] == ["node.labels.fleetroll.member == true", "node.labels.fleetroll.host != mainpc"]


def test_update_and_rollback_from_update_and_health(inv):
    r = render.render(inv, "one")
    api, llm = r.doc["services"]["api"]["deploy"], r.doc["services"]["llm"]["deploy"]
    assert api["update_config"] == {"parallelism": 1, "delay": "0s", "failure_action": "rollback", "monitor": "10s",
                                    "max_failure_ratio": 0, "order": "stop-first"}
    assert api["rollback_config"]["failure_action"] == "continue" and api["rollback_config"]["parallelism"] == 1
    assert llm["update_config"]["monitor"] == "15s" and llm["update_config"]["parallelism"] == 0
    assert r.orders["api"][0] == "stop-first" and "host-mode port" in r.orders["api"][1]
    assert llm["restart_policy"] == {"condition": "on-failure"} and api["restart_policy"] == {"condition": "any"}


def test_volumes_user_gpus_and_stop_grace(inv):
    llm = render.render(inv, "one").doc["services"]["llm"]
    assert llm["volumes"] == [{"type": "bind", "source": "/srv/models/llm", "target": "/models", "read_only": True},
                              {"type": "volume", "source": "llm-cache", "target": "/cache", "read_only": False}]
    assert render.render(inv, "one").doc["volumes"] == {"llm-cache": {"name": "llm-cache"}}
    assert llm["user"] == "10001:10001" and llm["stop_grace_period"] == "20s"
    assert llm["environment"]["NVIDIA_VISIBLE_DEVICES"] == "all"


def test_a_bind_mount_breaking_the_hard_rules_is_refused_by_the_same_check(inv, tmp_path, monkeypatch):
    # The loader refuses it first; the renderer applies agent/contract.py again, not a copy of it. The check is
    # spied on (its answer for this path decided here), so the test reads nothing of the machine it runs on.
    from agent import contract

    bad = str(tmp_path / "forbidden")
    asked = []

    def check(src, allowed=None):
        asked.append((src, tuple(allowed or ())))
        return f"host path {src!r} is refused by the contract" if src == bad else None

    monkeypatch.setattr(contract, "host_path_problem", check)
    svc = inv.fleet.services["llm"].model_copy(update={"volumes": [f"{bad}:/ssl:ro", "llm-cache:/cache"]})
    fleet = inv.fleet.model_copy(update={"services": {**inv.fleet.services, "llm": svc}})
    with pytest.raises(render.RenderError, match=r"services\.llm\.volumes: host path .*forbidden' is refused by the contract"):
        render.render(type(inv)(fleet, inv.phases, inv.path, inv.phases_path), "one")
    assert asked == [(bad, ("/srv/models",))]  # binds only, with the inventory's prefixes; named volumes are not host paths


class _Health:
    """A local /health server answering each path as a service would: 200 ok, 200 degraded, 500."""

    BODIES = {"/ok": (200, b'{"status": "ok"}'), "/tight": (200, b'{"status":"ok"}'), "/degraded": (200, b'{"status":"degraded"}'),
              "/err": (500, b'{"status":"ok"}')}

    def __enter__(self):
        import http.server
        import threading

        bodies = self.BODIES

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                code, body = bodies[self.path]
                self.send_response(code)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = http.server.HTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.srv.server_port}"

    def __exit__(self, *exc):
        self.srv.shutdown()


WANT = {"/ok": 0, "/tight": 0, "/degraded": 1, "/err": 1}


def test_python_probe_judges_status_and_body_like_the_gate(inv, tmp_path):
    """Run the rendered python probe against a local server: 200 + ok passes; degraded and 500 fail."""
    with _Health() as base:
        for path, want in WANT.items():
            rc = subprocess.run([sys.executable, "-c", render.PYTHON_PROBE, f"{base}{path}", "2"],
                                capture_output=True, timeout=10).returncode
            assert (rc == 0) == (want == 0), (path, rc)


@pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="needs busybox (the lab's images are made of it)")
def test_wget_probe_judges_status_and_body_like_the_gate_under_busybox(inv, tmp_path):
    """The rendered busybox probe, exactly as Swarm runs it (`/bin/sh -c PROBE probe URL`, busybox sh and wget only).

    Debian's busybox wget has no -T (it segfaulted on it in the lab image, and Swarm killed every
    healthy task): the probe must use only what busybox has, and Docker's timeout bounds it.
    """
    hc = render.render(inv, "one").doc["services"]["api"]["healthcheck"]
    assert hc["test"][:3] == ["CMD", "/bin/sh", "-c"] and hc["timeout"].endswith("s")  # Docker bounds each probe
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for applet in ("sh", "wget"):
        (bindir / applet).symlink_to("/bin/busybox")
    with _Health() as base:
        for path, want in WANT.items():
            argv = [str(bindir / "sh"), *hc["test"][2:4], "probe", f"{base}{path}"]
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10, env={"PATH": str(bindir)})
            assert out.returncode == want, (path, out.returncode, out.stderr)


def test_labels_carry_what_was_deployed_and_the_hash_ignores_them(inv):
    a = render.render(inv, "one", {"llm": DIGEST}).doc["services"]["llm"]
    b = render.render(inv, "one", {"llm": "sha256:" + "cd" * 32}).doc["services"]["llm"]
    assert a["deploy"]["labels"][render.DIGEST_LABEL] == DIGEST and a["deploy"]["labels"][render.TAG_LABEL] == "20250817-abc1234"
    assert a["deploy"]["labels"][render.SPEC_LABEL] != b["deploy"]["labels"][render.SPEC_LABEL]
    assert render.service_hash(a) == a["deploy"]["labels"][render.SPEC_LABEL]


@pytest.mark.skipif(not shutil.which("docker"), reason="needs the docker CLI (no daemon)")
def test_docker_stack_config_accepts_the_rendered_file(inv, tmp_path):
    """The docker CLI's own compose loader validates the stack; it needs no daemon (DOCKER_HOST points nowhere)."""
    f = tmp_path / "stack.yml"
    f.write_text(render.to_yaml(render.render(inv, "one", {"llm": DIGEST})))
    env = {"PATH": "/usr/bin:/bin", "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock", "HOME": str(tmp_path)}
    out = subprocess.run([DOCKER, "stack", "config", "-c", str(f)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    back = yaml.safe_load(out.stdout)
    assert back["services"]["llm"]["deploy"]["placement"]["constraints"][1] == "node.labels.fleetroll.host == mainpc"
    assert back["services"]["api"]["ports"][0]["mode"] == "host" and back["secrets"]["fr_hf_token"]["external"] is True
    # compose interpolates $ in every value: what Swarm gets back is the probe and the env exactly as rendered
    assert back["services"]["api"]["healthcheck"]["test"][3] == render.WGET_PROBE
    assert back["services"]["llm"]["environment"]["PROMPT"] == "costs $5 or ${PRICE}"
    # and it does refuse what is not compose: the test would catch a renderer that wrote nonsense
    f.write_text(render.to_yaml(render.render(inv, "one")).replace("endpoint_mode:", "endpoint_modes:"))
    bad = subprocess.run([DOCKER, "stack", "config", "-c", str(f)], capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode != 0 and "endpoint_modes" in bad.stderr


def test_fab_swarm_render_prints_the_stack(inv):
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([str(Path(sys.executable).with_name("fab")), "swarm.render", "-p", "one", "-i", str(inv.path)],
                         cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = yaml.safe_load(out.stdout)
    assert set(doc["services"]) == {"llm", "api"} and out.stdout.startswith("# stack fr-one: docker stack deploy")
