"""The reverse proxy and start-first planning without hosts: HAProxy config, runtime-API switch logic,
the start-first/stop-first choice, the inventory's rules, the planned container specs and the words."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent import container_args
from agent import proxy as agent_proxy
from playbooks import executor, order
from playbooks.inventory import InventoryError, load
from playbooks.plan import Plan, Step, build_plan, container_spec

# --- HAProxy configuration -----------------------------------------------------------------


def test_render_gives_each_route_a_frontend_and_a_two_slot_backend():
    cfg = agent_proxy.render([agent_proxy.Route("web", "18080", 8080), agent_proxy.Route("llm", "10.0.0.5:18000", 8000)], 8404)
    assert "stats socket /run/fleetroll-proxy/admin.sock mode 666 level admin" in cfg
    assert "bind :8404" in cfg and '{\\"status\\":\\"ok\\"}' in cfg
    assert "frontend fe_web\n    bind :18080\n    default_backend be_web" in cfg
    assert "bind 10.0.0.5:18000" in cfg
    # slot a by container name (resolved by the start script), slot b idle: weight 0 is never chosen
    assert "    server a web:8080 init-addr libc,127.0.0.1\n    server b 127.0.0.1:8080 weight 0" in cfg
    # every request is balanced afresh (a drained server gets none), a refused connection is retried elsewhere
    assert "option http-server-close" in cfg and "option redispatch 1" in cfg


STAT = """# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout
fe_web,FRONTEND,,,3,9,,120,0,0
be_web,a,0,0,0,4,,60,0,0
be_web,b,0,0,2,5,,60,0,0
be_web,BACKEND,0,0,2,9,,120,0,0
be_llm,a,0,0,1,1,,1,0,0
"""


def test_requests_in_flight_per_server_from_show_stat():
    assert agent_proxy.parse_sessions(STAT, "be_web") == {"a": 0, "b": 2}
    assert agent_proxy.parse_sessions(STAT, "be_llm") == {"a": 1}
    assert agent_proxy.parse_sessions("garbage\n", "be_web") == {}


def test_a_server_the_proxy_left_is_waited_for_until_its_requests_finish(monkeypatch):
    """A restore switching back (no drain): the new container's requests in flight finish before it is stopped."""
    answers = iter([STAT, STAT, STAT.replace("be_web,b,0,0,2", "be_web,b,0,0,0")])
    rt = agent_proxy.Runtime(path=Path("/nonexistent"))
    monkeypatch.setattr(rt, "cmd", lambda line: next(answers))
    assert rt.wait_idle("web", ["b"], within=5.0) is True
    monkeypatch.setattr(rt, "cmd", lambda line: STAT)
    assert rt.wait_idle("web", ["b"], within=0.05) is False  # still busy at the bound: it stops waiting all the same
    assert rt.wait_idle("web", ["a"], within=5.0) is True
    monkeypatch.setattr(rt, "cmd", lambda line: pytest.fail("nothing to wait on: the proxy is not asked"))
    assert rt.wait_idle("web", [], within=5.0) is True

    def unreadable(line):
        raise agent_proxy.ProxyError("the proxy's runtime API did not answer")

    monkeypatch.setattr(rt, "cmd", unreadable)
    assert rt.wait_idle("web", ["b"], within=5.0) == "the proxy's runtime API did not answer"  # said, not raised
    assert rt.timeout == 5.0  # each command's timeout was cut to what was left of the bound, then put back


STATE = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
4 be_web 1 a 172.18.0.3 2 0 1 1 2 1 0 0 0 0 0 0 - 8080 - 0 0 - - 0
4 be_web 2 b 127.0.0.1 2 0 0 1 2 1 0 0 8 0 0 0 - 8080 - 0 0 - - 0
5 be_llm 1 a 172.18.0.4 2 8 1 1 2 1 0 0 0 0 0 0 - 8000 - 0 0 - - 0
5 be_llm 2 b 172.18.0.9 2 1 1 1 2 1 0 0 0 0 0 0 - 8000 - 0 0 - - 0
"""


def test_show_servers_state_is_parsed_into_slots():
    got = agent_proxy.parse_servers_state(STATE)
    web, llm = got["be_web"], got["be_llm"]
    assert web["a"].live and web["a"].state == "ready" and web["a"].addr == "172.18.0.3" and web["a"].port == 8080
    assert not web["b"].live and web["b"].state == "idle"
    assert llm["a"].state == "drain" and llm["b"].state == "maint" and not llm["a"].live


class FakeHAProxy(agent_proxy.Runtime):
    """The runtime API's commands this module sends, applied to an in-memory backend (one command line at a time)."""

    def __init__(self, ignore: bool = False):
        super().__init__(Path("/nonexistent"))
        self.slots_ = {"a": ["172.18.0.3", 8080, 0, 1], "b": ["127.0.0.1", 8080, 0, 0]}
        self.lines: list[str] = []
        self.ignore = ignore

    def cmd(self, line: str) -> str:
        self.lines.append(line)
        if line.startswith("show servers state"):
            head = STATE.splitlines()[:2]
            rows = [f"4 be_web {i} {n} {a} 2 {adm} {w} 1 2 1 0 0 0 0 0 0 - {p} - 0 0 - - 0"
                    for i, (n, (a, p, adm, w)) in enumerate(self.slots_.items(), 1)]
            return "\n".join(head + rows) + "\n"
        if self.ignore:
            return "Permission denied\n"
        for c in line.split("; "):
            m = re.fullmatch(r"set server be_web/(\w) addr (\S+) port (\d+)", c)
            if m:
                self.slots_[m[1]][0], self.slots_[m[1]][1] = m[2], int(m[3])
            m = re.fullmatch(r"set server be_web/(\w) state (ready|drain|maint)", c)
            if m:
                self.slots_[m[1]][2] = {"ready": 0, "drain": 8, "maint": 1}[m[2]]
            m = re.fullmatch(r"set weight be_web/(\w) (\d+)", c)
            if m:
                self.slots_[m[1]][3] = int(m[2])
        return "\n"


def test_point_readies_the_idle_slot_before_draining_the_live_one_in_one_line():
    rt = FakeHAProxy()
    done = rt.point("web", "172.18.0.7", 8080)
    assert done["switched"] and done["to"] == "b" and done["from"] == ["a"]
    line = next(x for x in rt.lines if x.startswith("set "))
    cmds = line.split("; ")
    assert cmds.index("set server be_web/b state ready") < cmds.index("set server be_web/a state drain")
    assert cmds.index("set weight be_web/b 1") < cmds.index("set server be_web/a state drain")
    rt.retire("web", "172.18.0.7", 8080)
    assert rt.slots_["a"][2] == 1 and rt.slots_["b"][:3] == ["172.18.0.7", 8080, 0]
    # already the only ready server: nothing is sent
    sent = len(rt.lines)
    assert rt.point("web", "172.18.0.7", 8080)["switched"] is False
    assert not any(x.startswith("set ") for x in rt.lines[sent:])
    # and back again: the retired slot is reused
    assert rt.point("web", "172.18.0.3", 8080)["to"] == "a"


def test_a_proxy_that_does_not_confirm_the_switch_is_an_error_not_a_success():
    rt = FakeHAProxy(ignore=True)
    with pytest.raises(agent_proxy.ProxyError, match="did not switch web to 172.18.0.7:8080"):
        rt.point("web", "172.18.0.7", 8080)


def test_an_unreachable_runtime_socket_says_so(tmp_path):
    with pytest.raises(agent_proxy.ProxyError, match="did not answer"):
        agent_proxy.Runtime(tmp_path / "no.sock", timeout=0.5).cmd("show servers state")


def test_the_proxy_host_spec_mounts_its_socket_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETROLL_STATE_DIR", str(tmp_path))
    spec = agent_proxy.host_spec({"role": "proxy", "volumes": []})
    assert spec["volumes"] == [f"{tmp_path}/proxy-run:/run/fleetroll-proxy:rw"]
    assert (tmp_path / "proxy-run").stat().st_mode & 0o777 == 0o777
    assert agent_proxy.host_spec({"volumes": ["x:/y"]}) == {"volumes": ["x:/y"]}


# --- start-first or stop-first -------------------------------------------------------------

NVML = {"ok": True, "gpus": [{"index": 0, "memory_mib": 24576, "memory_used_mib": 24576 - 9 * 1024,
                              "memory_free_mib": 9 * 1024}]}


def choose(**kw):
    args = {"service": "llm", "order": "auto", "proxied": True, "running": True, "gpus_req": "all", "budget_gb": 14.0,
            "reserve_gb": 0.0, "nvml": NVML}
    return order.choose(**{**args, **kw})


def test_auto_is_stop_first_when_the_card_lacks_room_for_a_second_copy():
    d = choose()
    assert d.order == "stop-first" and d.reason == "stop-first, needs 14.0 GB beside the running copy, 9.0 GB free on GPU 0"


def test_auto_is_start_first_when_the_card_has_room():
    nvml = {"ok": True, "gpus": [{"index": 0, "memory_mib": 24576, "memory_free_mib": 20 * 1024}]}
    d = choose(nvml=nvml, reserve_gb=1.5)
    assert d.order == "start-first"
    assert d.reason == "start-first, needs 14.0 GB + 1.5 GB reserve beside the running copy, 20.0 GB free on GPU 0"
    # the reserve counts: 19 GB free is not enough for 14 + 6
    assert choose(nvml=nvml, reserve_gb=6.5).order == "stop-first"


def test_explicit_start_first_that_cannot_fit_is_refused_before_anything_stops():
    d = choose(order="start-first")
    assert d.refused and "only 9.0 GB free on GPU 0" in d.refused and "update.order: auto" in d.refused


def test_the_other_cases_say_why():
    assert choose(proxied=False).reason.startswith("stop-first, not behind the proxy")
    assert choose(order="stop-first").reason == "stop-first, as update.order says"
    assert choose(gpus_req=0, budget_gb=None).order == "start-first"
    assert choose(budget_gb=None).order == "stop-first" and "declares no gpu_memory_gb" in choose(budget_gb=None).reason
    assert choose(budget_gb=None, order="start-first").order == "start-first"
    assert "could not be read" in choose(nvml={"ok": False, "error": "NVML gone"}).reason
    assert choose(nvml={"ok": False, "error": "x"}, order="start-first").refused
    assert choose(running=False).order == "stop-first"
    # gpus: 1 lands on GPU 0 only: GPU 1's free memory does not count
    two = {"ok": True, "gpus": [{"index": 0, "memory_mib": 12288, "memory_free_mib": 2048},
                                {"index": 1, "memory_mib": 24576, "memory_free_mib": 24000}]}
    assert choose(gpus_req=1, nvml=two).order == "stop-first" and "GPU 0" in choose(gpus_req=1, nvml=two).reason


# --- the inventory's rules -------------------------------------------------------------------

FLEET = """\
registry: {host: reg.example, org: acme}
reverse_proxy: {service: edge}
hosts:
  mainpc: {address: 10.0.0.1, gpus: {model: RTX, count: 1, compute_capability: "8.9"}}
  pc2: {address: 10.0.0.2}
services:
  edge:
    image: fleetroll-proxy
    tag: 20250817-abc1234
    hosts: [mainpc, pc2]
    health: {port: 8404}
  web:
    image: cpu
    tag: 20250817-abc1234
    host: pc2
    proxy: {listen: "18080", port: 8080}
    update: {order: start-first, drain_s: 1}
    health: {port: 8080}
  llm:
    image: torch
    tag: 20250817-abc1234
    host: mainpc
    gpus: all
    gpu_memory_gb: 14
    proxy: {listen: "10.0.0.1:18000", port: 8000}
    health: {port: 8000}
  plain:
    image: cpu
    tag: 20250817-abc1234
    host: pc2
    ports: ["9000:9000"]
    health: {port: 9000}
"""
PHASES = "phases:\n  - {name: edge, services: [edge]}\n  - {name: apps, services: [web, llm, plain]}\n"


def write(tmp_path: Path, fleet: str) -> Path:
    (tmp_path / "fleet.yml").write_text(fleet)
    (tmp_path / "phases.yml").write_text(PHASES)
    return tmp_path / "fleet.yml"


def problems(tmp_path: Path, fleet: str) -> str:
    with pytest.raises(InventoryError) as exc:
        load(write(tmp_path, fleet))
    return "\n".join(exc.value.problems)


def test_a_valid_proxied_inventory_loads(tmp_path):
    inv = load(write(tmp_path, FLEET))
    assert inv.fleet.proxied_on("pc2") == ["web"] and inv.fleet.proxied_on("mainpc") == ["llm"]
    assert inv.fleet.update_order("web") == ("start-first", 1.0) and inv.fleet.update_order("plain") == ("auto", 2.0)
    assert inv.fleet.health_spec("web")["network"] == "fleetroll" and inv.fleet.health_spec("web")["proxied"] is True
    assert "network" not in inv.fleet.health_spec("plain")
    assert inv.fleet.health_spec("edge")["network"] == "fleetroll" and "proxied" not in inv.fleet.health_spec("edge")
    assert inv.update_for("apps") is None  # order and drain are not batches


@pytest.mark.parametrize("change,expected", [
    (("    proxy: {listen: \"18080\", port: 8080}\n", "    proxy: {listen: \"18080\", port: 8080}\n    ports: [\"8080:8080\"]\n"),
     "services.web.ports: a service behind the proxy publishes no host port"),
    (("    ports: [\"9000:9000\"]\n", "    ports: [\"9000:9000\"]\n    update: {order: start-first}\n"),
     "services.plain.update.order: start-first runs the new container beside the old one"),
    (("    hosts: [mainpc, pc2]\n", "    hosts: [mainpc]\n"), "services.web.proxy: the proxy 'edge' does not run on pc2"),
    (("reverse_proxy: {service: edge}", "reverse_proxy: {service: edgy}"), "reverse_proxy.service: no service named 'edgy'"),
    (("listen: \"18080\"", "listen: \"80\""), "PORT 1024-65535"),
    (("ports: [\"9000:9000\"]", "ports: [\"18080:9000\"]"), "host port 18080/tcp on pc2 is already published by service 'web'"),
    (("    health: {port: 8404}\n", "    health: {port: 8404}\n    ports: [\"1:1\"]\n"), "services.edge.ports: the proxy publishes"),
    (("    health: {port: 8080}\n", "    health: {port: 9999}\n"), "on proxy.port (8080), not 9999"),
])
def test_proxy_rules_name_the_field_and_the_fix(tmp_path, change, expected):
    old, new = change
    assert old in FLEET
    out = problems(tmp_path, FLEET.replace(old, new, 1))
    assert expected in out and "fix:" in out, out


def test_no_reverse_proxy_section_is_an_error_naming_it(tmp_path):
    out = problems(tmp_path, FLEET.replace("reverse_proxy: {service: edge}\n", ""))
    assert "services.web.proxy: no reverse_proxy: section names the proxy service" in out


# --- the planned specs and the plan -----------------------------------------------------------


def test_specs_behind_the_proxy_publish_nothing_and_the_proxy_publishes_their_ports(tmp_path):
    inv = load(write(tmp_path, FLEET))
    web = container_spec(inv, "web", "pc2")
    assert web["ports"] == {} and web["network"] == "fleetroll" and web["proxy"] == {"listen": "18080", "port": 8080}
    edge_pc2, edge_main = container_spec(inv, "edge", "pc2"), container_spec(inv, "edge", "mainpc")
    assert edge_pc2["role"] == "proxy" and edge_pc2["ports"] == {"18080/tcp": 18080}
    assert edge_main["ports"] == {"18000/tcp": "10.0.0.1:18000"}
    cfg = edge_pc2["env"][agent_proxy.CONFIG_ENV]
    assert "be_web" in cfg and "be_llm" not in cfg  # each host's proxy holds its own services only
    assert "network" not in container_spec(inv, "plain", "pc2")
    args = container_args.from_spec(web, "img", {})
    assert args["network"] == "fleetroll" and container_args.api_kwargs(args)[1]["network_mode"] == "fleetroll"


def facts(free_gib: float, running: dict[str, str]) -> dict:
    out = {}
    for h in ("mainpc", "pc2"):
        out[h] = {"images": {}, "nvml": {"ok": True, "gpus": [{"index": 0, "memory_mib": 24576, "memory_free_mib": int(free_gib * 1024)}]},
                  "docker": {"containers": [{"name": s, "running": True, "tag": "old", "digest": "sha256:" + "0" * 64,
                                             "spec_hash": "x"} for s, host in running.items() if host == h]}}
    return out


def test_the_plan_says_which_order_and_why_per_service(tmp_path):
    inv = load(write(tmp_path, FLEET))
    f = facts(9, {"web": "pc2", "llm": "mainpc", "plain": "pc2"})
    for h in f:
        for s in ("web", "llm", "plain"):
            f[h]["images"][inv.image_ref(s)] = {"ok": True, "digest": "sha256:" + "1" * 64}
    plan = build_plan(inv, "apps", f)
    by = {s.service: s for s in plan.steps}
    assert by["web"].order == "start-first" and by["web"].drain_s == 1.0
    assert by["llm"].order == "stop-first" and by["llm"].order_reason.endswith("9.0 GB free on GPU 0")
    assert by["plain"].order == "stop-first" and "not behind the proxy" in by["plain"].order_reason
    from playbooks.plan import plan_text

    assert "= stop-first, needs 14.0 GB beside the running copy, 9.0 GB free on GPU 0" in plan_text(plan)


def test_the_proxy_s_own_swap_says_which_services_get_no_requests_meanwhile(tmp_path):
    """Found by an exploratory run: the proxy's release said 'not behind the proxy: its clients reach the container
    itself', silent on the services behind it, which get no requests while it is swapped."""
    inv = load(write(tmp_path, FLEET))
    f = facts(9, {"edge": "pc2", "web": "pc2", "plain": "pc2"})
    f["pc2"]["images"][inv.image_ref("edge")] = {"ok": True, "digest": "sha256:" + "1" * 64}
    step = next(s for s in build_plan(inv, "edge", f, hosts=["pc2"]).steps if s.service == "edge")
    assert step.order == "stop-first" and step.order_reason.startswith(
        "stop-first, it is the proxy: nothing sits in front of it, and the services behind it on this host (web) get no"
        " requests between the old one's stop and the new one's start"), step.order_reason


def test_an_explicit_start_first_gpu_service_without_room_is_blocked(tmp_path):
    inv = load(write(tmp_path, FLEET.replace("    gpu_memory_gb: 14\n", "    gpu_memory_gb: 14\n    update: {order: start-first}\n")))
    f = facts(9, {"llm": "mainpc"})
    f["mainpc"]["images"][inv.image_ref("llm")] = {"ok": True, "digest": "sha256:" + "1" * 64}
    step = next(s for s in build_plan(inv, "apps", f, hosts=["mainpc"]).steps if s.service == "llm")
    assert step.action == "blocked" and "only 9.0 GB free on GPU 0" in step.reason


# --- the words --------------------------------------------------------------------------------


def test_swap_notes_come_from_what_the_host_reported():
    plan = Plan("r1", "apps", "op", [Step("pc2", "web", "replace", spec={"proxy": {}}, order="start-first",
                                         order_reason="start-first, behind the proxy and on no GPU")])
    reported = [("pc2", {"service": "web", "action": "replace", "outcome": "committed", "order": "start-first",
                         "switch": {"switched": True, "switch_ms": 0.2}})]
    assert executor.swap_notes(plan, reported) == [
        "pc2 web: start-first, behind the proxy and on no GPU; the proxy switched to it in 0.2 ms"]
    reported[0][1]["outcome"] = "reverted"
    assert executor.swap_notes(plan, reported) == []


def test_status_names_the_container_the_proxy_serves_or_what_is_wrong():
    view = {"ok": True, "backends": {"web": {"serving": ["172.18.0.3:8080"], "slots": {}}}}
    c = {"id": "abcdef123456789", "addresses": {"fleetroll": "172.18.0.3"}}
    assert executor.proxy_route_view(view, "web", c, "fleetroll") == "-> web (abcdef123456) at 172.18.0.3:8080"
    other = {"id": "x", "addresses": {"fleetroll": "172.18.0.9"}}
    assert "which is not the running web container (172.18.0.9)" in executor.proxy_route_view(view, "web", other, "fleetroll")
    assert executor.proxy_route_view({"ok": False, "error": "gone"}, "web", c, "fleetroll") == "proxy not answering: gone"
    assert "no ready server" in executor.proxy_route_view({"ok": True, "backends": {"web": {"serving": []}}}, "web", c, "fleetroll")


def test_a_proxied_service_the_proxy_does_not_serve_is_not_healthy_for_status():
    """Noticed on the lab: with the host's proxy stopped, fab status called web healthy (exit 0) beside a note that the
    proxy did not answer. Its clients reach nothing: not healthy, and the reason says so."""
    from playbooks import status

    c = {"id": "abcdef123456789", "addresses": {"fleetroll": "172.18.0.3"}}
    down, words = status.proxy_route({"ok": False, "error": "connection refused"}, "web", c, "fleetroll")
    assert words == "proxy not answering: connection refused"
    assert status.served_health(True, "healthy", down) == (False, "healthy, but not served: the proxy is not answering")
    up, words = status.proxy_route({"ok": True, "backends": {"web": {"serving": ["172.18.0.3:8080"]}}}, "web", c, "fleetroll")
    assert up == "" and words.startswith("-> web (") and status.served_health(True, "healthy", up) == (True, "healthy")
    elsewhere, _ = status.proxy_route({"ok": True, "backends": {"web": {"serving": ["172.18.0.9:8080"]}}}, "web", c, "fleetroll")
    assert status.served_health(True, "healthy", elsewhere) == (False, "healthy, but not served: the proxy sends its requests elsewhere")
    assert status.served_health(False, "no /health answer", down) == (False, "no /health answer")  # its own reason first


def test_network_round_trips_through_inspect_and_shows_in_the_diff():
    attrs = {"Config": {"Env": [], "Labels": {}}, "HostConfig": {"NetworkMode": "fleetroll"}, "Name": "/web"}
    assert container_args.from_inspect(attrs)["network"] == "fleetroll"
    assert container_args.from_inspect({**attrs, "HostConfig": {"NetworkMode": "default"}})["network"] == ""
    running = container_args.from_inspect({**attrs, "HostConfig": {"NetworkMode": "bridge"}})
    assert "network: (default) -> fleetroll" in container_args.diff(running, {"name": "web", "network": "fleetroll"})


# --- preflight: the proxy must answer, with a backend for each service behind it ---------------


def proxy_check(inv, host, phase, view):
    from playbooks.preflight import _proxy_checks

    return _proxy_checks(inv, host, phase, inv.services_for(phase, [host]), {"proxy": view})


def test_preflight_refuses_services_behind_a_proxy_that_does_not_answer_or_lacks_their_backend(tmp_path):
    inv = load(write(tmp_path, FLEET))
    [c] = proxy_check(inv, "pc2", "apps", {"ok": False, "error": "the proxy's runtime API did not answer"})
    assert c.status == "fail" and "does not answer here" in c.detail and c.fix == f"roll out the proxy first: fab rollout --phase edge --inventory {inv.path}"
    [c] = proxy_check(inv, "pc2", "apps", {"ok": True, "backends": {}})
    assert c.status == "fail" and "no backend for web" in c.detail and "fab rollout --phase edge" in c.fix
    [c] = proxy_check(inv, "pc2", "apps", {"ok": True, "backends": {"web": {}}})
    assert c.status == "pass"
    assert proxy_check(inv, "pc2", "edge", {}) == []  # nothing behind the proxy in that phase


def test_preflight_warns_when_the_proxy_runs_another_configuration_than_the_inventory_s(tmp_path):
    """Found by an exploratory run: web's proxy.listen 18080 -> 18081 and `fab rollout -p web` committed, status said
    healthy, and 18081 refused connections: the listen port is the proxy's configuration, applied by its own phase."""
    from playbooks.plan import container_spec, spec_hash
    from playbooks.preflight import _proxy_checks

    inv = load(write(tmp_path, FLEET))
    digest = "sha256:" + "cd" * 32
    spec = container_spec(inv, "edge", "pc2")
    proxy = {"name": "edge", "tag": inv.fleet.services["edge"].tag, "digest": digest, "spec_hash": spec_hash(spec, digest)}
    view = {"ok": True, "backends": {"web": {}}}

    def check(container):
        return _proxy_checks(inv, "pc2", "apps", inv.services_for("apps", ["pc2"]), {"proxy": view, "docker": {"containers": [container]}})

    assert [c.status for c in check(proxy)] == ["pass"]
    old_routes = {**proxy, "spec_hash": spec_hash({**spec, "env": {**spec["env"], "FLEETROLL_PROXY_CONFIG": "listen 18080"}}, digest)}
    [c] = check(old_routes)
    assert c.status == "warn" and "runs a configuration other than the inventory's" in c.detail and "web" in c.detail
    assert c.fix.startswith("fab rollout --phase edge")
    assert [c.status for c in check({"name": "edge"})] == ["pass"], "no label (started by hand): not this check's to judge"
    [c] = check({**old_routes, "tag": "20250101-0000000"})  # its own tag bumped in the inventory: said as such
    assert c.status == "warn" and f"runs 20250101-0000000, the inventory says {inv.fleet.services['edge'].tag}" in c.detail


def test_a_dry_run_of_every_phase_warns_where_an_earlier_phase_of_the_run_brings_the_proxy(tmp_path):
    """Found by an exploratory run: `fab rollout --all -n` on a fresh fleet refused phase web (exit 3) because the proxy did
    not answer yet, though phase edge, earlier in that very run, would roll it out; the real --all does not meet that."""
    from playbooks.preflight import _proxy_checks

    inv = load(write(tmp_path, FLEET))
    down = {"proxy": {"ok": False, "error": "the proxy's runtime API did not answer"}}
    [c] = _proxy_checks(inv, "pc2", "apps", inv.services_for("apps", ["pc2"]), down, ahead=frozenset({("edge", "pc2")}))
    assert c.status == "warn" and "phase edge, earlier in this run, rolls the proxy out first" in c.detail
    [c] = _proxy_checks(inv, "pc2", "apps", inv.services_for("apps", ["pc2"]), down, ahead=frozenset())
    assert c.status == "fail", "alone (or after other phases only), it is the refusal it always was"
    # edge's dry run would leave the proxy on pc2 as it is (or was frozen, or ran elsewhere): still the refusal
    [c] = _proxy_checks(inv, "pc2", "apps", inv.services_for("apps", ["pc2"]), down, ahead=frozenset({("edge", "mainpc")}))
    assert c.status == "fail"


def test_preflight_wants_the_proxy_before_the_services_behind_it_in_one_phase(tmp_path):
    fleet = write(tmp_path, FLEET)
    (tmp_path / "phases.yml").write_text("phases:\n  - {name: all, services: [web, edge, llm, plain]}\n")
    [c] = proxy_check(load(fleet), "pc2", "all", {})
    assert c.status == "fail" and "lists web before their proxy edge" in c.detail
    (tmp_path / "phases.yml").write_text("phases:\n  - {name: all, services: [edge, web, llm, plain]}\n")
    assert proxy_check(load(fleet), "pc2", "all", {})[0].status == "pass"


def test_the_gate_probes_a_network_container_at_its_address_and_never_the_host_without_one(monkeypatch):
    from agent import health

    h = {"port": 8080, "network": "fleetroll"}
    assert health.url_for(h, "172.18.0.3") == "http://172.18.0.3:8080/health"
    assert health.url_for(h) == "http://no-address-on-fleetroll.invalid:8080/health"
    # said at once, never asked of a resolver (a resolver that does not answer would hold the gate past its timeout)
    import socket

    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(AssertionError("resolver asked")))
    p = health.probe(health.url_for(h), 0.5)
    assert not p.ok and p.reason == "no answer (the container has no address on network fleetroll yet)"
    assert health.url_for({"port": 9000}) == "http://127.0.0.1:9000/health"


def test_an_invalid_edge_service_is_reported_for_its_own_error_not_as_missing(tmp_path):
    """While the edge service was invalid, the validator also said `no service named 'edge'` although it was there."""
    out = problems(tmp_path, FLEET.replace("    health: {port: 8404}\n", "    health: {port: 8404}\n    stop_timeout: -1\n", 1))
    assert "services.edge.stop_timeout" in out and "no service named 'edge'" not in out, out
