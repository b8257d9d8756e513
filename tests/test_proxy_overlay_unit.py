"""The proxy's own stop-first swap once it is on the overlay fr-proxy, with the fake daemon (no hosts).

Docker refuses to rename a running container attached to a swarm overlay, so the old proxy is stopped and taken off
fr-proxy before it is renamed aside; the new one joins after its gate; a restore joins the old one again. A backend
the old proxy served by Swarm tasks only fails the swap when the new proxy serves none of them. The lab runs the same
swap with real dockerd (tests/test_lab_swarm_handover.py).
"""

from __future__ import annotations

import pytest

from agent import container_args, docker_errors, freeze, journal, proxy, proxyswitch, recovery, vocabulary
from agent import transaction as tx_mod
from agent.proxy import Slot

from .fakedocker import FakeDaemon, FakeProxy
from .test_transaction_unit import NEW_D, OLD_D, REPO, by_service, die_at, only, run

pytestmark = pytest.mark.usefixtures("host_state")
NET = proxyswitch.proxytasks.SWARM_NETWORK
CONFIG = proxy.render([proxy.Route("web", "18080", 8080, proxyswitch.proxytasks.Tasks("fr-web", "/health", 2))], 8404)
HEALTH = {"port": 8404, "path": "/health", "healthy_deadline": 0.3, "min_healthy_time": 0.1, "interval": 0.02}


class TasksProxy(FakeProxy):
    """The proxy's runtime with one backend, be_web, served by Swarm tasks only (no SSH container of web here)."""

    def __init__(self, tasks_up: bool = True) -> None:
        super().__init__()
        self.tasks_up, self.states = tasks_up, []

    def servers(self) -> dict:
        task = Slot("task1", "10.0.1.5", 8080, 0, 2) if self.tasks_up else Slot("task1", "-", 8080, 0, 0)
        return {"be_web": {"a": Slot("a", "-", 8080, 1, 0), "b": Slot("b", "-", 8080, 1, 0, 0), "task1": task}}

    def set_state(self, service: str, names: list[str], state: str) -> None:
        self.states.append((service, tuple(names), state))


@pytest.fixture
def edge(monkeypatch, daemon: FakeDaemon) -> TasksProxy:
    p = TasksProxy()
    monkeypatch.setattr(proxy, "Runtime", p.runtime)
    monkeypatch.setattr(proxyswitch, "TASKS_WAIT_S", 0.3)
    daemon.swarm = True
    daemon.overlays.add(NET)
    return p


def proxy_spec(tag="20261126-bbbbbbb", digest=NEW_D, stop_timeout=1) -> dict:
    return {"name": "edge", "role": "proxy", "repo": REPO, "tag": tag, "digest": digest, "spec_hash": f"h-{tag}-{stop_timeout}",
            "ports": {"8404/tcp": 8404}, "env": {proxy.CONFIG_ENV: CONFIG}, "volumes": [], "user": "10001:10001", "gpus": 0,
            "restart": "unless-stopped", "stop_timeout": stop_timeout, "health": HEALTH}


def old_proxy_on_overlay(d: FakeDaemon) -> str:
    """The running proxy, started as a transaction starts one, joined to fr-proxy (as a move to Swarm leaves it)."""
    s = proxy.host_spec(proxy_spec("20261101-aaaaaaa", OLD_D))
    img = d.image(REPO, OLD_D)
    d.images.by_id[img.id] = img
    labels = {**container_args.labels_for(s, s["tag"], OLD_D, "r-old", "edge", "op", "aaaaaaa"), tx_mod.CREATED_BY: "r-old"}
    ckw, hkw = container_args.api_kwargs(container_args.from_spec(s, img.id, labels))
    cid = d.api.create_container(**ckw, host_config=d.api.create_host_config(**hkw))["Id"]
    d.containers.get(cid).start()
    assert proxyswitch.attach(d, d.containers.get(cid)) == f"joined {NET}"
    return cid


def step(s: dict) -> dict:
    return {"action": "replace", "spec": s, "current_tag": "20261101-aaaaaaa", "current_digest": OLD_D}


def records(step_name: str, rid: str = "r-new") -> list[dict]:
    return [x for x in journal.read(rid) if x["step"] == step_name]


def test_docker_refuses_to_rename_a_running_container_on_the_overlay_as_the_fake_models_it(daemon, edge):
    c = daemon.containers.get(old_proxy_on_overlay(daemon))
    with pytest.raises(docker_errors.APIError, match="Could not add service state for endpoint"):
        c.rename("edge--kept-x")
    c.stop()
    c.rename("edge--kept-x")  # stopped: renamed whatever networks it is on, as dockerd does


def test_a_proxy_on_the_overlay_is_upgraded_stopped_and_off_it_before_its_rename_and_the_new_one_joins(daemon, edge):
    old = old_proxy_on_overlay(daemon)
    daemon.image(REPO, OLD_D)  # the same image, another stop_timeout: a configuration change of the proxy
    out = run(daemon, [step(proxy_spec("20261101-aaaaaaa", OLD_D, stop_timeout=3))], phase="edge")
    r = by_service(out)["edge"]
    assert out["ok"] and r["outcome"] == "committed", r
    new = only(daemon, "edge")
    assert new.id != old and NET in new.joined and old not in daemon.containers.by_id
    left = records(vocabulary.Step.PROXY_OVERLAY)
    assert [(x["action"], x["container"], x["served_by_tasks"]) for x in left] == [("left", old, ["web"])]
    steps = [x["step"] for x in journal.read("r-new") if x.get("service") == "edge"]
    assert steps[steps.index("set-aside"):steps.index("start-new")] == ["set-aside", "proxy-overlay", "stop-old"], steps
    backends = records(vocabulary.Step.PROXY_BACKENDS)[-1]
    assert backends["pointed"] == {"web": "swarm tasks"} and backends["overlay"] == f"joined {NET}"
    assert ("web", ("a", "b"), "maint") in edge.states


def test_a_new_proxy_that_fails_its_gate_gives_way_to_the_old_one_back_on_the_overlay(daemon, edge):
    old = old_proxy_on_overlay(daemon)
    daemon.image(REPO, NEW_D, behaviour="bad")
    out = run(daemon, [step(proxy_spec())], phase="edge")
    r = by_service(out)["edge"]
    assert r["outcome"] == "reverted" and r["at_fault"], r
    back = only(daemon, "edge")
    assert back.id == old and back.running and NET in back.joined, "restored, renamed back, started, on fr-proxy again"
    assert [x["action"] for x in records(vocabulary.Step.PROXY_OVERLAY)] == ["left", "rejoined"]


@pytest.mark.parametrize("why", ["join refused", "no task up"])
def test_a_service_served_by_its_tasks_through_the_old_proxy_and_by_none_through_the_new_fails_the_swap(daemon, edge, why):
    old = old_proxy_on_overlay(daemon)
    daemon.image(REPO, NEW_D)
    real_stop = tx_mod.Transaction._stop_old

    def then_break(self, r, c):  # the old proxy served web's tasks until it stopped; the new one will not
        real_stop(self, r, c)
        if why == "no task up":
            edge.tasks_up = False
        else:
            daemon.fail["network.connect"] = docker_errors.APIError("could not attach to network fr-proxy")

    tx_mod.Transaction._stop_old = then_break
    try:
        out = run(daemon, [step(proxy_spec())], phase="edge")
    finally:
        tx_mod.Transaction._stop_old = real_stop
    r = by_service(out)["edge"]
    assert r["outcome"] == "reverted" and "web was served by its Swarm tasks" in r["message"], r
    assert only(daemon, "edge").id == old and NET in daemon.containers.by_id[old].joined
    assert not records(vocabulary.Step.PROXY_BACKENDS), "nothing claimed for web"


def test_a_backend_nothing_served_before_is_said_unserved_not_swarm_tasks_and_does_not_wait(daemon, edge):
    """The first rollout of the proxy in a swarm fleet: web runs nowhere yet. Committed, and the journal says so."""
    edge.tasks_up = False
    daemon.image(REPO, NEW_D)
    out = run(daemon, [{"action": "create", "spec": proxy_spec()}], phase="edge")
    assert by_service(out)["edge"]["outcome"] == "committed", out
    assert records(vocabulary.Step.PROXY_BACKENDS)[-1]["pointed"] == {"web": "unserved: no container here, no Swarm task UP yet"}


def test_a_rename_docker_refuses_reverts_but_freezes_nothing(daemon, edge):
    old_proxy_on_overlay(daemon)
    daemon.image(REPO, NEW_D)
    daemon.fail["container.rename"] = docker_errors.APIError("Could not add service state for endpoint edge--kept-1 to"
                                                             " cluster on rename: an entry with the same key already exists")
    out = run(daemon, [step(proxy_spec())], phase="edge")
    r = by_service(out)["edge"]
    assert r["outcome"] == "reverted" and not r["at_fault"] and not r["frozen"], r
    assert "refused to rename" in r["message"] and freeze.read("edge") is None


def test_recovery_after_death_with_the_old_proxy_off_the_overlay_puts_it_back_on_it(daemon, edge, monkeypatch):
    old = old_proxy_on_overlay(daemon)
    daemon.image(REPO, NEW_D)
    die_at(daemon, "start-new", {"rollout_id": "r-int", "phase": "edge", "operator": "op", "on_failure": "revert-phase",
                                 "steps": [step(proxy_spec())]})
    assert NET not in daemon.containers.by_id[old].joined, "it had left fr-proxy to be set aside"
    monkeypatch.setattr(tx_mod, "docker_client", lambda timeout=120: daemon)
    out = recovery.recover_pending()
    assert out[0]["services"] == {"edge": "reverted"}, out
    back = only(daemon, "edge")
    assert back.id == old and back.running and NET in back.joined
