"""The hand-over's guards (agent/handover.py): which slot is the SSH container, which container is the proxy, what a
half-done hand-over leaves, and who may carry the proxy's configuration (inventory and host). Pure: fakes, no Docker."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import container_args, contract, host_checks, lock, proxy
from agent import handover as agent_handover
from agent.motion import CREATED_BY
from playbooks.inventory import InventoryError, load

from .test_swarm_handover_unit import FakeProxy, config, inv_of, ssh_serving
from .test_swarm_proxy_unit import FLEET, write

SSH = "172.18.0.4:8080"


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch):
    monkeypatch.setattr(agent_handover.time, "sleep", lambda s: None)


def sets(rt: FakeProxy) -> list[str]:
    return [c for c in rt.sent if c.startswith("set")]


# --- 1. to-ssh counts a slot as the SSH container's only at that container's address ------------------------------

@pytest.mark.parametrize("slot_a,ssh_at", [
    (("127.0.0.1", 2, 0, 1), set()),  # a restarted proxy's slot a: getent found nothing, the fallback
    (("127.0.0.1", 2, 0, 1), {"127.0.0.1:8080"}),  # never 127.0.0.1, whatever is said
    (("10.0.1.9", 2, 0, 1), {SSH}),  # slot a resolved `web` on fr-proxy: a Swarm task, not the running SSH container
    (("172.18.0.4", 2, 0, 1), set()),  # the address of an SSH container that no longer runs
])
def test_to_ssh_refuses_when_the_live_slot_is_not_the_running_ssh_container(slot_a, ssh_at):
    rt = FakeProxy({"a": slot_a, "b": ("127.0.0.1", 2, 1, 0), "task1": ("10.0.1.9", 2, 0, 1), "task2": ("-", 0, 32, 1)})
    got = agent_handover._one(rt, "to-ssh", "web", 1, 0.0, 0.5, lambda: set(ssh_at), phase="web")
    assert not got["ok"] and not got["changed"] and "no SSH container of web serves" in got["message"], got
    assert "fab rollout -p web" in got["message"] and "PHASE" not in got["message"]
    assert sets(rt) == [] and got["after"]["tasks"] == ["10.0.1.9:8080"]


def test_to_ssh_serves_the_ssh_container_and_gives_up_a_slot_at_any_other_address():
    rt = FakeProxy({"a": ("10.0.1.9", 2, 0, 1), "b": ("172.18.0.4", 2, 0, 1), "task1": ("10.0.1.9", 2, 0, 1)})
    got = agent_handover._one(rt, "to-ssh", "web", 1, 0.0, 0.5, lambda: {SSH})
    assert got["ok"] and got["changed"] and got["after"] == {"ssh": [SSH], "other": [], "tasks": [], "task_slots": 1}, got
    assert sets(rt)[0] == "set server be_web/task1 state drain; set server be_web/a state drain"


# --- 3. a hand-over that fails half-way gives the slots back -------------------------------------------------------

def test_the_ssh_container_gone_during_the_drain_sets_the_task_slots_back_to_ready():
    rt = ssh_serving(tasks_up=True)  # task1 ready and UP, task2 in maintenance (never made ready)
    answers = iter([{SSH}])
    got = agent_handover._one(rt, "to-ssh", "web", 1, 0.0, 0.5, lambda: next(answers, set()))
    assert not got["ok"] and got["changed"] and "after the drain no ssh served" in got["message"], got
    assert sets(rt) == ["set server be_web/task1 state drain", "set server be_web/task1 state ready"]
    assert got["after"]["tasks"] == ["10.0.1.5:8080"] and "the proxy now serves" in got["message"]
    assert "tasks 10.0.1.5:8080" in got["message"]


class TasksGoDown(FakeProxy):
    """The tasks stop passing the proxy's check as soon as slots a/b drain (a stack that died meanwhile)."""

    def cmd(self, line: str) -> str:
        if "be_web/a state drain" in line:
            self.rows = {n: (("-", 0, r[2], r[3]) if n.startswith("task") else r) for n, r in self.rows.items()}
        return super().cmd(line)


def test_tasks_gone_during_the_drain_set_slot_a_back_to_ready_and_say_what_serves():
    rt = TasksGoDown({"a": ("172.18.0.4", 2, 0, 1), "b": ("127.0.0.1", 2, 1, 0), "task1": ("10.0.1.5", 2, 0, 1)})
    got = agent_handover._one(rt, "to-swarm", "web", 1, 0.0, 0.5, lambda: {SSH})
    assert not got["ok"] and sets(rt) == ["set server be_web/a state drain", "set server be_web/a state ready"], rt.sent
    assert got["after"]["ssh"] == [SSH] and "set a back to ready" in got["message"] and f"ssh {SSH}" in got["message"]


class MaintFails(FakeProxy):
    """`maint` leaves task1 serving (a proxy that did not take the command)."""

    def cmd(self, line: str) -> str:
        said = super().cmd(line)
        if "be_web/task1 state maint" in line:
            self.rows["task1"] = (*self.rows["task1"][:2], 0, 1)
        return said


def test_a_check_failing_after_the_maintenance_restores_only_the_slots_live_before():
    rt = MaintFails({"a": ("172.18.0.4", 2, 0, 1), "b": ("127.0.0.1", 2, 1, 0), "task1": ("10.0.1.5", 2, 0, 1),
                     "task2": ("-", 0, 1, 1)})
    got = agent_handover._one(rt, "to-ssh", "web", 1, 0.0, 0.5, lambda: {SSH})
    assert not got["ok"] and "after the hand-over the proxy showed" in got["message"], got
    assert sets(rt)[-1] == "set server be_web/task1 state ready" and rt.rows["task2"][2] == 1  # task2 stays in maint


# --- 4. nothing changed is said; the request's times are bounded ---------------------------------------------------

def test_a_step_that_changes_nothing_says_so():
    rt = FakeProxy({"a": ("172.18.0.4", 2, 0, 1), "b": ("127.0.0.1", 2, 1, 0), "task1": ("10.0.1.5", 2, 0, 1)})
    assert agent_handover._one(rt, "attach", "web", 1, 0.0, 0.5)["changed"] is False and sets(rt) == []
    rt = FakeProxy({"a": ("172.18.0.4", 2, 0, 1), "b": ("127.0.0.1", 2, 1, 0), "task1": ("-", 0, 1, 1)})
    got = agent_handover._one(rt, "to-ssh", "web", 1, 0.0, 0.5, lambda: {SSH})
    assert got["ok"] and got["changed"] is False and sets(rt) == [], got


@pytest.mark.parametrize("bad", [
    {"action": "to-swarm", "services": {"web": 1}, "wait_s": 10 ** 9},
    {"action": "to-swarm", "services": {"web": 1}, "drain_s": -1},
    {"action": "to-ssh", "services": {"web": 1}, "drain_s": 31},
    {"action": "to-ssh", "services": {"web": 1}, "wait_s": float("nan")},
    {"action": "to-ssh", "services": {"web": "2; x"}},
    {"action": "attach", "services": {}},
    {"action": "attach"},
])
def test_a_request_out_of_bounds_is_refused_before_the_lock(monkeypatch, bad):
    monkeypatch.setattr(lock, "acquire", lambda *a: pytest.fail("locked for a bad request"))
    got = agent_handover.handover_op(bad)
    assert not got["ok"] and got["msg"].startswith("bad request") and not got["changed"], got


# --- 2. the proxy is the container the agent made; nothing else joins the overlay ----------------------------------

class FakeContainer:
    def __init__(self, name: str, attrs: dict):
        self.name, self.id, self.attrs = name, f"id-{name}", {**attrs, "Name": "/" + name}


def proxy_attrs(run_dir: str, cfg: str, **over) -> dict:
    labels = {contract.MANAGED: "true", contract.SERVICE: "edge", CREATED_BY: "r1", **over.pop("labels", {})}
    return {"Name": "/edge", "State": {"Running": True}, "Config": {"Labels": labels, "Env": [f"{proxy.CONFIG_ENV}={cfg}"]},
            "HostConfig": {"Binds": [f"{run_dir}:{proxy.SOCKET_IN_CONTAINER}:rw"], "NetworkMode": "fleetroll"},
            "NetworkSettings": {"Networks": {"fleetroll": {"IPAddress": "172.18.0.2"}}}, **over}


@pytest.fixture
def host(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETROLL_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state" / "proxy-run").mkdir(parents=True)
    return str(tmp_path / "state" / "proxy-run")


def forged(run_dir: str, cfg: str) -> list[dict]:
    """What a `docker run` can give a container that is not the proxy the agent made."""
    bare = {"Name": "/evil", "State": {"Running": True}, "HostConfig": {}, "Config": {"Labels": {contract.MANAGED: "true"},
                                                                      "Env": [f"{proxy.CONFIG_ENV}=x"]}}
    return [bare, proxy_attrs(run_dir, "x"), proxy_attrs("/tmp/elsewhere", cfg), proxy_attrs(run_dir, cfg, labels={CREATED_BY: ""})]


def test_only_the_container_the_agent_made_as_its_proxy_is_the_proxy(tmp_path, host):
    cfg = config(inv_of(tmp_path))
    assert host_checks.proxy_problem(proxy_attrs(host, cfg)) is None
    for attrs in forged(host, cfg):
        assert "is not fleetroll's proxy" in host_checks.proxy_problem(attrs), attrs
        net = {"Name": "fr-proxy", "Driver": "overlay", "Scope": "swarm", "Attachable": True,
               "Labels": {"io.fleetroll.network": "proxy"}}
        assert "only the proxy joins" in host_checks.swarm_network_problem(attrs, net)


class FakeClient:
    def __init__(self, containers: list[FakeContainer]):
        self.all = {c.name: c for c in containers}
        self.containers = self

    def list(self, filters=None):
        return list(self.all.values())

    def get(self, name):
        return self.all[name]


def run_op(monkeypatch, client: FakeClient, rt: FakeProxy, request: dict) -> tuple[dict, list[str]]:
    from agent import facts, proxyswitch

    joined: list[str] = []
    monkeypatch.setattr(lock, "acquire", lambda *a: type("Held", (), {"release": lambda self: None})())
    monkeypatch.setattr(facts, "docker_client", lambda timeout=30: client)
    monkeypatch.setattr(proxyswitch, "attach", lambda cl, c: joined.append(c.name) or "joined fr-proxy")
    monkeypatch.setattr(proxy, "Runtime", lambda *a, **k: rt)
    return agent_handover.handover_op(request), joined


def test_a_forged_container_named_in_the_request_is_never_attached(tmp_path, host, monkeypatch):
    cfg = config(inv_of(tmp_path))
    evil = FakeContainer("evil", forged(host, cfg)[0])
    rt = ssh_serving(tasks_up=False)
    got, joined = run_op(monkeypatch, FakeClient([evil]), rt, {"action": "attach", "proxy": "evil", "services": {"web": 1}})
    assert joined == [] and got["data"]["proxy"] == "absent" and sets(rt) == [], got
    edge = FakeContainer("edge", proxy_attrs(host, cfg))
    got, joined = run_op(monkeypatch, FakeClient([evil, edge]), rt, {"action": "attach", "proxy": "evil", "services": {"web": 1}})
    assert joined == ["edge"] and got["ok"] and got["changed"] and got["data"]["proxy"] == "edge", got
    for other in (FakeContainer("edge--kept-1", proxy_attrs(host, cfg)),  # a copy set aside, not the proxy that serves
                  FakeContainer("edge", proxy_attrs(host, cfg, State={"Running": False}))):
        assert agent_handover.find_proxy(FakeClient([evil, other])) == (None, ""), other.name
    twin = FakeContainer("edge2", proxy_attrs(host, cfg, labels={contract.SERVICE: "edge2"}))
    got, joined = run_op(monkeypatch, FakeClient([edge, twin]), rt, {"action": "attach", "services": {"web": 1}})
    assert joined == [] and not got["ok"] and "2 containers look like the proxy" in got["msg"], got


def test_the_op_finds_the_ssh_container_on_the_proxy_s_network_and_names_the_phase(tmp_path, host, monkeypatch):
    cfg = config(inv_of(tmp_path))
    web = {"State": {"Running": True}, "Config": {"Labels": {contract.MANAGED: "true", contract.SERVICE: "web"}},
           "NetworkSettings": {"Networks": {"fleetroll": {"IPAddress": "172.18.0.4"}}}}
    client = FakeClient([FakeContainer("edge", proxy_attrs(host, cfg)), FakeContainer("web", web)])
    got, _ = run_op(monkeypatch, client, ssh_serving(tasks_up=True), {"action": "to-ssh", "services": {"web": 1}})
    assert got["ok"] and got["changed"] and got["data"]["services"]["web"]["after"]["ssh"] == [SSH], got
    web["State"]["Running"] = False
    got, _ = run_op(monkeypatch, client, ssh_serving(tasks_up=True), {"action": "to-ssh", "services": {"web": 1}})
    assert not got["ok"] and not got["changed"] and "fab rollout -p web" in got["msg"], got


# --- 2. only the proxy carries the proxy's configuration: the inventory and the host refuse it elsewhere -----------

def test_the_inventory_refuses_the_proxy_configuration_on_another_service(tmp_path):
    fleet = FLEET.replace("    proxy: {listen: \"18080\", port: 8080}\n",
                          f"    proxy: {{listen: \"18080\", port: 8080}}\n    env: {{{proxy.CONFIG_ENV}: x}}\n", 1)
    with pytest.raises(InventoryError) as err:
        load(write(tmp_path, fleet))
    said = [p for p in err.value.problems if proxy.CONFIG_ENV in p]
    assert len(said) == 1 and f"services.web.env.{proxy.CONFIG_ENV}" in said[0] and "fix: remove" in said[0], said
    assert said[0].startswith(f"{Path(tmp_path / 'fleet.yml')}:{fleet.split(chr(10)).index(f'    env: {{{proxy.CONFIG_ENV}: x}}') + 1}:")


def test_the_host_refuses_the_proxy_configuration_on_a_container_without_the_proxy_s_mount(tmp_path, host):
    cfg = config(inv_of(tmp_path))
    args = {"user": contract.IMAGE_USER, "binds": [], "network": "fleetroll", "env": {proxy.CONFIG_ENV: cfg}}
    out = container_args.problems(args)
    assert len(out) == 1 and "not the proxy" in out[0] and f"remove {proxy.CONFIG_ENV}" in out[0], out
    assert container_args.problems({**args, "binds": [f"{host}:{proxy.SOCKET_IN_CONTAINER}:rw"]}) == []
