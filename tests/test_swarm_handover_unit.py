"""The SSH push's proxy serving Swarm tasks too, and the hand-over between the engines (pure; no host)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent import handover as agent_handover
from agent import host_checks, proxy, proxytasks
from playbooks import transport
from playbooks.inventory import load
from playbooks.plan import container_spec
from playbooks.swarm import down, form, handover
from playbooks.swarm import proxy as swarm_proxy

from .test_swarm_proxy_unit import FLEET, FakeLead, write

SSH_EDGE = "phases:\n  - {name: edge, engine: ssh, services: [edge]}\n  - {name: web, engine: ENGINE, services: [web, api]}\n"
NO_SWARM = FLEET.replace("swarm: {healthcheck: wget}\n", "")


def inv_of(tmp_path: Path, engine: str = "ssh", fleet: str = FLEET):
    d = tmp_path / f"{engine}-{len(fleet)}"
    d.mkdir(exist_ok=True)
    return load(write(d, fleet, SSH_EDGE.replace("ENGINE", engine)))


def config(inv, host: str = "pc2") -> str:
    return container_spec(inv, "edge", host)["env"][proxy.CONFIG_ENV]


# --- the lines ------------------------------------------------------------------------------------------------


def test_a_fleet_that_uses_swarm_gives_each_backend_its_tasks_and_one_without_keeps_today_s_text(tmp_path):
    cfg = config(inv_of(tmp_path))
    assert "resolvers docker\n    nameserver dns 127.0.0.11:53\n" in cfg and proxytasks.RETRY_ON + "\n" in cfg
    web = cfg[cfg.index("\nbackend be_web") + 1:].split("\n\n")[0].split("\n")
    assert web == ["backend be_web", "    option httpchk GET /healthz", "    http-check expect status 200",
                   "    server a web:8080 init-addr libc,127.0.0.1", "    server b 127.0.0.1:8080 weight 0",
                   "    server-template task 1-16 tasks.fr-web_web:8080 resolvers docker init-addr none resolve-prefer ipv4"
                   " check inter 1s fall 2 rise 1"]
    assert "tasks.fr-web_api:9000" in cfg and "server-template task 1-16 " in cfg  # api: one task; the same 16 slots
    plain = config(inv_of(tmp_path, fleet=NO_SWARM))
    assert plain == proxy.render([proxy.Route("web", "18080", 8080), proxy.Route("api", "18081", 9000)], 8404)
    assert "resolvers" not in plain and "server-template" not in plain and "retry-on" not in plain


def test_the_lines_are_the_same_whichever_engine_runs_the_phase_so_a_move_never_recreates_the_proxy(tmp_path):
    assert config(inv_of(tmp_path, "ssh")) == config(inv_of(tmp_path, "swarm"))
    assert config(inv_of(tmp_path, "ssh"), "mainpc") == config(inv_of(tmp_path, "swarm"), "mainpc")


def test_the_host_accepts_the_task_lines_it_renders_and_haproxy_parses_them(tmp_path):
    cfg = config(inv_of(tmp_path))
    assert proxy.config_problems(cfg) == []
    haproxy = shutil.which("haproxy")
    if haproxy:
        (tmp_path / "h.cfg").write_text(cfg)
        r = subprocess.run([haproxy, "-c", "-f", str(tmp_path / "h.cfg")], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("old,new", [
    ("tasks.fr-web_web:8080", "tasks.evil.example:8080"),  # another name to resolve
    ("tasks.fr-web_web:8080", "tasks.fr-web_api:8080"),  # another service's tasks in web's backend
    ("tasks.fr-web_web:8080", "tasks.fr-web_web:22"),  # another port than the service's
    ("nameserver dns 127.0.0.11:53", "nameserver dns 10.0.0.9:53"),  # another resolver
    ("task 1-16 tasks.fr-web_web", "task 1-999 tasks.fr-web_web"),  # more slots than the inventory's
    ("check inter 1s fall 2 rise 1\n", "check inter 1s fall 2 rise 1 backup\n"),
    ("GET /healthz", "GET /healthz HTTP/1.1\\r\\nHost:\\ x"),
    ("    option httpchk GET /healthz\n", ""),  # the check gone: tasks would serve unchecked
])
def test_the_host_refuses_task_lines_it_would_not_have_rendered(tmp_path, old, new):
    cfg = config(inv_of(tmp_path))
    forged = cfg.replace(old, new, 1)
    assert forged != cfg and proxy.config_problems(forged), forged


def test_a_task_line_added_to_a_fleet_without_swarm_or_repeated_is_refused(tmp_path):
    cfg = config(inv_of(tmp_path))
    line = next(ln for ln in cfg.split("\n") if ln.startswith("    server-template"))
    assert proxy.config_problems(cfg.replace(line, line + "\n" + line))
    plain = config(inv_of(tmp_path, fleet=NO_SWARM))
    assert proxy.config_problems(plain.replace("weight 0\n", "weight 0\n" + line + "\n", 1))


@pytest.mark.parametrize("tasks", [proxytasks.Tasks("fr-we.b", "/health", 2), proxytasks.Tasks("web", "/health", 2),
                                   proxytasks.Tasks("fr-web", "/a b", 2), proxytasks.Tasks("fr-web", "/h;x", 2),
                                   proxytasks.Tasks("fr-web", "/health", 0), proxytasks.Tasks("fr-web", "/health", 9999)])
def test_render_refuses_a_task_token_it_cannot_check(tasks):
    with pytest.raises(proxy.ProxyError):
        proxy.render([proxy.Route("web", "18080", 8080, tasks)], 8404)


# --- the overlay -------------------------------------------------------------------------------------------------


def _proxy_container(managed: str = "true", env: str = "") -> dict:
    """The proxy as the agent makes it: fleetroll's labels, the agent's socket directory, a configuration render() makes."""
    from agent import paths
    from agent.motion import CREATED_BY

    cfg = proxy.render([proxy.Route("web", "18080", 8080)], 8404)
    return {"Name": "/edge", "State": {"Running": True},
            "Config": {"Labels": {"io.fleetroll.managed": managed, "io.fleetroll.service": "edge", CREATED_BY: "r1"},
                       "Env": [env or f"{proxy.CONFIG_ENV}={cfg}"]},
            "HostConfig": {"Binds": [f"{paths.state_dir() / 'proxy-run'}:{proxy.SOCKET_IN_CONTAINER}:rw"]}}


def _network(**over) -> dict:
    return {"Name": "fr-proxy", "Driver": "overlay", "Scope": "swarm", "Attachable": True,
            "Labels": {"io.fleetroll.network": "proxy"}, **over}


def test_only_the_proxy_joins_only_the_overlay_swarm_form_makes(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETROLL_STATE_DIR", str(tmp_path))
    assert host_checks.swarm_network_problem(_proxy_container(), _network()) is None
    assert "not fleetroll's proxy" in host_checks.swarm_network_problem(_proxy_container(env="X=1"), _network())
    forged = host_checks.swarm_network_problem(_proxy_container(env=proxy.CONFIG_ENV + "=x"), _network())
    assert "not fleetroll's proxy" in forged and "render() never writes" in forged, forged
    assert "not fleetroll's proxy" in host_checks.swarm_network_problem(_proxy_container(managed="false"), _network())
    for bad in ({"Attachable": False}, {"Driver": "bridge"}, {"Labels": {}}, {"Name": "other"}, {"Scope": "local"}):
        assert "fab swarm.form" in host_checks.swarm_network_problem(_proxy_container(), _network(**bad)), bad


def test_swarm_form_makes_the_overlay_attachable_and_remakes_an_old_one_only_when_nothing_uses_it():
    assert "--attachable" in swarm_proxy.network_create()
    unused = FakeLead((0, "overlay swarm\n"), attachable="false\n")
    assert "again, attachable" in form.proxy_network(unused) and unused.ran[-1] == swarm_proxy.network_create()
    used = FakeLead((0, "overlay swarm\n"), attachable="false\n", rm=(1, "network is in use by service fr-web_web"))
    said = form.proxy_network(used)
    assert said.startswith("FAILED") and "in use" in said and "fix: fab swarm.down" in said
    assert swarm_proxy.network_create() not in used.ran


# --- the hand-over: the controller's decisions --------------------------------------------------------------------


def test_the_hand_over_is_planned_for_services_behind_the_ssh_push_s_proxy_only(tmp_path):
    inv = inv_of(tmp_path, "swarm")
    assert handover.plan(inv, "web") == {"mainpc": {"web": 2}, "pc2": {"web": 2, "api": 1}}
    assert handover.plan(inv, "edge") == {}
    (tmp_path / "all").mkdir()
    all_swarm = load(write(tmp_path / "all", FLEET, SSH_EDGE.replace("engine: ssh", "engine: swarm").replace("ENGINE", "swarm")))
    assert handover.plan(all_swarm, "web") == {}  # the proxy on Swarm: no SSH proxy to hand over on


def test_swarm_down_takes_a_phase_back_on_the_ssh_push_behind_its_proxy(tmp_path):
    assert down.check(inv_of(tmp_path, "ssh"), "web") == "fr-web"
    with pytest.raises(Exception, match="runs on the SSH push"):
        down.check(inv_of(tmp_path, "ssh"), "edge")


def _result(host: str, outcomes: dict[str, str]) -> transport.CallResult:
    return transport.CallResult(host=host, ok=True, answer={"data": {"services": [{"service": s, "outcome": o}
                                                                                    for s, o in outcomes.items()]}})


def test_only_a_service_swarm_committed_everywhere_is_handed_over():
    ok = {"mainpc": _result("mainpc", {"web": "committed"}), "pc2": _result("pc2", {"web": "committed", "api": "noop"})}
    assert handover.committed(ok, "web") == "" and handover.committed(ok, "api") == ""
    bad = {**ok, "pc2": _result("pc2", {"web": "removed"})}
    assert handover.committed(bad, "web") == "pc2: removed"
    assert handover.committed(ok, "other") == "not followed by this rollout"
    facts = {"pc2": {"docker": {"containers": [{"name": "web", "running": True}, {"name": "api", "running": False}]}}}
    assert handover.pushed(facts, "pc2", "web") and not handover.pushed(facts, "pc2", "api")
    assert not handover.pushed(facts, "mainpc", "web")


def test_a_proxy_that_did_not_answer_or_runs_nowhere_is_a_failure_said_by_host():
    got = handover.said({"a": transport.CallResult(host="a", ok=False, answer=None, error="timeout"),
                         "b": transport.CallResult(host="b", ok=True, answer={"data": {"proxy": "absent"}})})
    assert "no answer: timeout" in got["a"][""]["message"] and "no proxy runs on b" in got["b"][""]["message"]
    locked = handover.said({"c": transport.CallResult(host="c", ok=False, answer={"ok": False, "msg": "host is locked by x",
                                                                                 "data": {"locked": {"holder": "x"}}})})
    assert locked == {"c": {"": {"ok": False, "message": "host is locked by x"}}}


# --- the hand-over: what the agent does on the proxy ---------------------------------------------------------------

HEAD = ("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight"
        " srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state"
        " srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port\n")


class FakeProxy(proxy.Runtime):
    """HAProxy's runtime API as a table: `set server ... state` changes it; every command line is recorded."""

    def __init__(self, rows: dict[str, tuple[str, int, int, int]]):
        super().__init__(Path("/nonexistent"))
        self.rows, self.sent = rows, []  # name -> (addr, op, admin, weight)

    def cmd(self, line: str) -> str:
        self.sent.append(line)
        for part in line.split("; "):
            if part.startswith("set server be_web/"):
                name, state = part.split("/")[1].split()[0], part.split()[-1]
                addr, op, _admin, weight = self.rows[name]
                self.rows[name] = (addr, op, {"ready": 0, "drain": 8, "maint": 1}[state], weight)
        return HEAD + "".join(f"3 be_web {i} {n} {a} {op} {adm} {w} 1 5 1 0 2 0 0 0 0 - 8080\n"
                              for i, (n, (a, op, adm, w)) in enumerate(self.rows.items()))


def ssh_serving(tasks_up: bool) -> FakeProxy:
    t = ("10.0.1.5", 2, 0, 1) if tasks_up else ("-", 0, 32, 1)
    return FakeProxy({"a": ("172.18.0.4", 2, 0, 1), "b": ("127.0.0.1", 2, 1, 0), "task1": t, "task2": ("-", 0, 32, 1)})


def test_to_swarm_drains_slots_a_b_only_once_the_proxy_sees_the_tasks_up(monkeypatch):
    monkeypatch.setattr(agent_handover.time, "sleep", lambda s: None)
    rt = ssh_serving(tasks_up=True)
    got = agent_handover._one(rt, "to-swarm", "web", 1, 0.0, 0.5, lambda: {"172.18.0.4:8080"})
    assert got["before"]["ssh"] == ["172.18.0.4:8080"] and got["changed"], got
    assert got["ok"] and got["after"]["ssh"] == [] and got["after"]["tasks"] == ["10.0.1.5:8080"], got
    changes = [c for c in rt.sent if c.startswith("set")]
    assert changes == ["set server be_web/a state drain", "set server be_web/a state maint; set server be_web/b state maint"]
    rt = ssh_serving(tasks_up=False)
    got = agent_handover._one(rt, "to-swarm", "web", 1, 0.0, 0.5)
    assert not got["ok"] and "slots a/b left serving" in got["message"]
    assert not any(c.startswith("set") for c in rt.sent), rt.sent


def test_to_ssh_drains_the_task_slots_only_while_an_ssh_container_serves(monkeypatch):
    monkeypatch.setattr(agent_handover.time, "sleep", lambda s: None)
    rt = ssh_serving(tasks_up=True)
    got = agent_handover._one(rt, "to-ssh", "web", 1, 0.0, 0.5, lambda: {"172.18.0.4:8080"})
    assert got["ok"] and got["after"]["tasks"] == [] and got["after"]["ssh"] == ["172.18.0.4:8080"], got
    rt = FakeProxy({"a": ("172.18.0.4", 2, 1, 1), "b": ("127.0.0.1", 2, 1, 0), "task1": ("10.0.1.5", 2, 0, 1)})
    got = agent_handover._one(rt, "to-ssh", "web", 1, 0.0, 0.5, lambda: {"172.18.0.4:8080"})
    assert not got["ok"] and "no SSH container of web serves" in got["message"] and not any(c.startswith("set") for c in rt.sent)


def test_a_proxy_started_without_task_lines_refuses_the_hand_over():
    rt = FakeProxy({"a": ("172.18.0.4", 2, 0, 1), "b": ("127.0.0.1", 2, 1, 0)})
    with pytest.raises(proxy.ProxyError, match="no Swarm task slots"):
        agent_handover._one(rt, "attach", "web", 1, 0.0, 0.5)


def test_only_names_render_made_go_into_a_state_command():
    rt = ssh_serving(tasks_up=True)
    rt.set_state("web", ["a", "task2", "x; shutdown", "task1\nshow"], "maint")
    assert [c for c in rt.sent if c.startswith("set")] == ["set server be_web/a state maint; set server be_web/task2 state maint"]
    with pytest.raises(proxy.ProxyError):
        rt.set_state("web", ["a"], "ready; shutdown")


def _answers(ok: bool):
    """handover.call, faked: every host answers every service with `ok` (and two tasks up when ok)."""
    calls = []

    def call(inv, moving, action, pool=None, **_kw):
        calls.append((action, {h: dict(d) for h, d in moving.items()}))
        after = {"ssh": [], "tasks": ["10.0.1.5:8080", "10.0.1.6:8080"]} if ok else {"ssh": ["172.18.0.4:8080"], "tasks": []}
        return {h: transport.CallResult(host=h, ok=ok, answer={"ok": ok, "data": {"proxy": "edge", "services": {
            s: {"ok": ok, "after": after, "message": "" if ok else "0 of 2 Swarm task(s) UP"} for s in d}}})
            for h, d in moving.items()}
    return calls, call


def test_the_ssh_container_goes_only_after_its_proxy_drained_it_and_a_left_one_goes_on_the_next_noop_rollout(
        tmp_path, monkeypatch):
    from playbooks import ledger, operate
    from playbooks.plan import NOOP, Plan, Step

    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    removed = []
    monkeypatch.setattr(operate, "remove", lambda inv, s, h, reason="": removed.append((s, h)) or {"removed": [{"name": s}]})
    inv = inv_of(tmp_path, "swarm")
    facts = {"pc2": {"docker": {"containers": [{"name": "web", "running": True}]}}}
    calls, call = _answers(ok=False)
    monkeypatch.setattr(handover, "call", call)
    results = {h: _result(h, {"web": "committed", "api": "committed"} if h == "pc2" else {"web": "committed"})
               for h in ("mainpc", "pc2")}
    lines = handover.to_swarm(inv, "web", "r1", handover.plan(inv, "web"), results, facts)
    assert calls == [("to-swarm", {"pc2": {"web": 2}})] and removed == [], calls  # only where an SSH container runs
    assert "FAILED hand-over web on pc2: 0 of 2" in lines[0] and "serves on" in lines[0]
    calls, call = _answers(ok=True)
    monkeypatch.setattr(handover, "call", call)
    steps = [Step(host=h, service=s, action=NOOP) for h in ("mainpc", "pc2") for s in ("web",)]
    lines = handover.leftovers(inv, "web", Plan(rollout_id="r2", phase="web", operator="t", steps=steps), facts)
    assert [a for a, _ in calls] == ["attach", "to-swarm"] and removed == [("web", "pc2")], (calls, removed)
    assert any("hand-over web on pc2: the proxy serves 2 Swarm task(s)" in ln for ln in lines), lines
    assert [r["to"] for r in ledger.read() if r.get("kind") == "handover"] == ["swarm", "swarm"]


def test_the_agent_hands_over_only_under_the_host_lock_and_checks_its_request(monkeypatch):
    from agent import lock

    def busy(holder, rid):
        raise lock.Locked({"holder": "ops@laptop", "rollout_id": "r-ssh-swap"})

    monkeypatch.setattr(lock, "acquire", busy)
    got = agent_handover.handover_op({"action": "to-swarm", "proxy": "edge", "services": {"web": 2}})
    assert not got["ok"] and "nothing handed over" in got["msg"] and got["data"]["locked"]["holder"] == "ops@laptop"
    for bad in ({"action": "shutdown", "proxy": "edge"}, {"action": "to-ssh", "proxy": "edge;x", "services": {"web": 1}},
                {"action": "to-ssh", "proxy": "edge", "services": {"web\nshow": 1}}):
        assert not agent_handover.handover_op(bad)["ok"] and "bad request" in agent_handover.handover_op(bad)["msg"]
