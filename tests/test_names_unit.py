"""Names cannot inject (issue 21): one pattern for service, host, phase and group names, checked in
the inventory and again by the agent before a name reaches HAProxy's configuration or runtime API.

Every proxy configuration the test inventories produce is checked line by line against the
agent's strict grammar (agent/proxy.py CONFIG_LINES) and, when the `haproxy` binary is on this
machine (Debian's haproxy 2.6, as in the proxy image), with `haproxy -c -f FILE` as well.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from agent import container_args, contract, proxy
from lab import fleet as labfleet
from lab.inventory import build_inventory
from playbooks.inventory import load
from playbooks.plan import container_spec

from .test_proxy_unit import FLEET, PHASES, write

ROOT = Path(__file__).resolve().parent.parent
BAD = ["web\n    stats socket ipv4@0.0.0.0:9999 level admin\nfrontend x", "a;b", "a b", "a#b", "Web", "-web", "web\n", "x" * 64, ""]


# --- the inventory ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a;b", "web\nfrontend x", "a b", "Web"])
@pytest.mark.parametrize("kind", ["service", "host", "group", "phase"])
def test_a_name_with_a_newline_or_semicolon_is_refused_naming_file_line_field_and_fix(tmp_path, kind, bad):
    fleet, phases = yaml.safe_load(FLEET), yaml.safe_load(PHASES)
    if kind == "service":
        fleet["services"][bad] = fleet["services"].pop("plain")
        phases["phases"][1]["services"] = ["web", "llm", bad]
    elif kind == "host":
        fleet["hosts"][bad] = {"address": "10.0.0.3"}
    elif kind == "group":
        fleet["groups"] = {bad: ["pc2"]}
    else:
        phases["phases"][1]["name"] = bad
    (tmp_path / "fleet.yml").write_text(yaml.safe_dump(fleet, sort_keys=False))
    (tmp_path / "phases.yml").write_text(yaml.safe_dump(phases, sort_keys=False))
    from playbooks.inventory import InventoryError

    with pytest.raises(InventoryError) as exc:
        load(tmp_path / "fleet.yml")
    line = next(x for x in exc.value.problems if f"{kind} name {bad!r} is not a plain name" in x)
    where = "phases.yml" if kind == "phase" else "fleet.yml"
    assert line.startswith(f"{tmp_path / where}:") and "; fix: rename it" in line, line
    assert "\n" not in line, "the problem itself must stay one line"


def test_every_name_in_the_repository_and_lab_inventories_fits_the_pattern(tmp_path):
    for inv in _inventories(tmp_path):
        names = [*inv.fleet.hosts, *inv.fleet.services, *inv.fleet.groups, *(p.name for p in inv.phases)]
        assert names and all(contract.NAME_RE.fullmatch(n) for n in names), (inv.path, names)


# --- the agent: configuration and runtime-API commands ---------------------------------------


@pytest.mark.parametrize("bad", BAD)
def test_the_agent_refuses_to_render_or_command_a_name_that_is_not_plain(bad):
    with pytest.raises(proxy.ProxyError, match="not a plain name"):
        proxy.render([proxy.Route(bad, "18080", 8080)], 8404)
    with pytest.raises(proxy.ProxyError, match="not a plain name"):
        proxy.backend(bad)
    sent = []

    class Recorder(proxy.Runtime):
        def cmd(self, line):
            sent.append(line)
            return ""

    with pytest.raises(proxy.ProxyError, match="not a plain name"):
        Recorder(Path("/nonexistent")).point(bad, "172.18.0.5", 8080)
    with pytest.raises(proxy.ProxyError, match="not a plain name"):
        Recorder(Path("/nonexistent")).retire(bad, "172.18.0.5", 8080)
    assert sent == [], "nothing reached the runtime API"


@pytest.mark.parametrize("listen,port", [("18080; x", 8080), ("1.2.3.4 x:18080", 8080), ("18080", "8080\nx"), ("a:18080", 80)])
def test_listen_and_ports_are_checked_too(listen, port):
    with pytest.raises(proxy.ProxyError):
        proxy.render([proxy.Route("web", listen, port)], 8404)


def test_runtime_commands_take_only_an_ip_address_and_a_port():
    state = ("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight"
             " srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state"
             " srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port\n"
             "3 be_web 1 a 172.18.0.4 2 0 1 1 5 1 0 2 0 0 0 0 web 8080\n"
             "3 be_web 2 b 127.0.0.1 2 1 0 1 5 1 0 2 0 0 0 0 - 8080\n")
    sent = []

    class Recorder(proxy.Runtime):
        def cmd(self, line):
            sent.append(line)
            return state

    for addr in ("172.18.0.5; disable server be_x/a", "172.18.0.5\nshutdown", "web"):
        with pytest.raises(proxy.ProxyError, match="not an IP address"):
            Recorder(Path("/nonexistent")).point("web", addr, 8080)
    with pytest.raises(proxy.ProxyError, match="not a port"):
        Recorder(Path("/nonexistent")).point("web", "172.18.0.5", "8080; shutdown")
    assert not any(";" in c and "set server" in c for c in sent)


def test_the_host_refuses_a_forged_proxy_configuration(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETROLL_STATE_DIR", str(tmp_path))
    (tmp_path / "proxy-run").mkdir()
    good = proxy.render([proxy.Route("web", "18080", 8080)], 8404)
    args = {"user": contract.IMAGE_USER, "binds": [f"{tmp_path}/proxy-run:{proxy.SOCKET_IN_CONTAINER}:rw"],  # the proxy's
            "network": "fleetroll", "env": {proxy.CONFIG_ENV: good}}
    assert container_args.problems(args) == []
    forged = good.replace("    maxconn 4096\n", "    maxconn 4096\n    stats socket ipv4@0.0.0.0:9999 level admin\n")
    out = container_args.problems({**args, "env": {proxy.CONFIG_ENV: forged}})
    assert out and "lines render() never writes" in out[0] and "9999" in out[0]
    twice = good + good[good.index("\nfrontend fe_web") + 1:]
    assert "names one service twice" in container_args.problems({**args, "env": {proxy.CONFIG_ENV: twice}})[0]
    swapped = good.replace("    stats timeout 30s\n    maxconn 4096\n", "    maxconn 4096\n    stats timeout 30s\n")
    assert "not one render() makes" in container_args.problems({**args, "env": {proxy.CONFIG_ENV: swapped}})[0]


# --- every proxy configuration the test inventories produce ----------------------------------


def _inventories(tmp_path: Path):
    """The inventories the tests use: the repository's (with the proxy its comments describe),
    test_proxy_unit's FLEET, and the lab's (2 hosts + bad-driver, and 20 hosts) with the
    zero-downtime test's proxied services."""
    (tmp_path / "unit").mkdir()
    out = [load(write(tmp_path / "unit", FLEET))]
    repo = yaml.safe_load((ROOT / "inventory" / "fleet.yml").read_text())
    repo["reverse_proxy"] = {"service": "fleetroll-proxy"}
    repo["services"]["fleetroll-proxy"] = {"image": "fleetroll-proxy", "tag": "20250817-0a1b2c3", "hosts": ["mainpc", "pc2"],
                                           "health": {"port": 8404}}
    llm = repo["services"]["llm-inference"]
    llm.pop("ports")
    llm.update(proxy={"listen": "8000", "port": 8000}, gpu_memory_gb=14)
    phases = yaml.safe_load((ROOT / "inventory" / "phases.yml").read_text())
    phases["phases"][0]["services"].insert(0, "fleetroll-proxy")
    d = tmp_path / "repo"
    d.mkdir()
    (d / "known_hosts").write_text("")
    (d / "fleet.yml").write_text(yaml.safe_dump(repo, sort_keys=False))
    (d / "phases.yml").write_text(yaml.safe_dump(phases, sort_keys=False))
    out.append(load(d / "fleet.yml"))
    for count, extras in ((2, ["bad-driver"]), (20, [])):
        d = tmp_path / f"lab{count}"
        d.mkdir()
        (d / "id").write_text("")
        state = labfleet.LabState(hosts=labfleet.plan_hosts(count, extras), known_hosts=str(d / "known_hosts"), key=str(d / "id"))
        doc, ph = build_inventory(state, {})
        doc["reverse_proxy"] = {"service": "edge-proxy"}
        doc["services"]["edge-proxy"] = {"image": "fleetroll-proxy", "tag": "20261101-a1b2c3d", "hosts": ["mainpc", "pc2"],
                                         "health": {"port": 8404}}
        doc["services"]["web"] = {"image": "cpu-svc", "tag": "20261101-a1b2c3d", "host": "pc2",
                                  "proxy": {"listen": "18090", "port": 8080}, "health": {"port": 8080}}
        doc["services"]["llm-edge"] = {"image": "torch-svc", "tag": "20261101-a1b2c3d", "host": "mainpc", "gpus": "all",
                                       "gpu_memory_gb": 14.0, "proxy": {"listen": "18091", "port": 8080}, "health": {"port": 8080}}
        ph["phases"] += [{"name": "edge", "services": ["edge-proxy"]}, {"name": "web", "services": ["web"]},
                         {"name": "llm-edge", "services": ["llm-edge"]}]
        (d / "fleet.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
        (d / "phases.yml").write_text(yaml.safe_dump(ph, sort_keys=False))
        out.append(load(d / "fleet.yml"))
        d = tmp_path / f"lab{count}-swarm"  # the same with swarm: the proxy resolves each service's Swarm tasks too
        d.mkdir()
        (d / "id").write_text("")
        doc["swarm"] = {"managers": ["mainpc"], "healthcheck": "wget"}
        ph["phases"][-2]["engine"] = "swarm"  # web on Swarm behind the SSH push's proxy; llm-edge on the SSH push
        (d / "fleet.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
        (d / "phases.yml").write_text(yaml.safe_dump(ph, sort_keys=False))
        out.append(load(d / "fleet.yml"))
    return out


def test_every_rendered_proxy_configuration_parses(tmp_path):
    haproxy = shutil.which("haproxy")
    checked = swarm = 0
    for inv in _inventories(tmp_path):
        rp = inv.fleet.reverse_proxy
        assert rp is not None
        for host in inv.fleet.hosts_of(rp.service):
            cfg = container_spec(inv, rp.service, host)["env"][proxy.CONFIG_ENV]
            lines = cfg.split("\n")
            assert lines[-1] == ""
            for ln in lines[:-1]:
                assert any(g.fullmatch(ln) for g in proxy.CONFIG_LINES), f"{inv.path} {host}: {ln!r}"
            assert proxy.config_problems(cfg) == []
            if haproxy:
                f = tmp_path / f"{host}.cfg"
                f.write_text(cfg)
                r = subprocess.run([haproxy, "-c", "-f", str(f)], capture_output=True, text=True, timeout=30)
                assert r.returncode == 0 and "Configuration file is valid" in r.stdout, r.stdout + r.stderr
            checked += 1
            swarm += "server-template task" in cfg
    assert checked >= 7 and swarm >= 2
