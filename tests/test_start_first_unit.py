"""Start-first swaps, switch-back and recovery behind the proxy, with the fake daemon's networks and a fake proxy.

The lab runs the same branches with a real HAProxy (tests/test_lab_zero_downtime.py); these
need no host. A service behind the proxy sits on the proxy network with no published port;
the gate probes it at its own address there; the proxy is switched only after it passed.
"""

from __future__ import annotations

import pytest

from agent import container_args, contract, journal, proxy, recovery
from agent import transaction as tx_mod
from agent.transaction import Transaction

from .fakedocker import FakeDaemon, FakeProxy
from .test_transaction_unit import FAST, NEW_D, OLD_D, REPO, by_service, die_at, only, run

pytestmark = pytest.mark.usefixtures("host_state")
NET = "fleetroll"


@pytest.fixture
def edge(monkeypatch, daemon: FakeDaemon) -> FakeProxy:
    p = FakeProxy()
    monkeypatch.setattr(proxy, "Runtime", p.runtime)
    return p


def proxied_spec(tag="20261126-bbbbbbb", digest=NEW_D, env=None) -> dict:
    return {"name": "web", "repo": REPO, "tag": tag, "digest": digest, "spec_hash": "h-" + tag, "ports": {},
            "env": env or {"MACHINE": "pc2"}, "volumes": [], "user": "10001:10001", "gpus": 0, "restart": "unless-stopped",
            "stop_timeout": 1, "network": NET, "proxy": {"listen": 18080, "port": 8080},
            "health": {**FAST, "port": 8080, "network": NET, "proxied": True}}


def serving_old(d: FakeDaemon, p: FakeProxy) -> str:
    """The old release on the proxy network, started as a transaction starts one, and served by the proxy."""
    s = proxied_spec("20261101-aaaaaaa", OLD_D, {"MACHINE": "pc2", "OLD_ONLY": "1"})
    img = d.image(REPO, OLD_D)
    d.images.by_id[img.id] = img
    d.networks.create(NET)
    labels = container_args.labels_for(s, s["tag"], OLD_D, "r-old", "web", "op", "aaaaaaa")
    ckw, hkw = container_args.api_kwargs(container_args.from_spec(s, img.id, labels))
    cid = d.api.create_container(**ckw, host_config=d.api.create_host_config(**hkw))["Id"]
    c = d.containers.get(cid)
    c.start()
    p.live["web"], p.slot["web"] = f"{c.address}:8080", "a"
    return cid


def swap(s: dict) -> dict:
    return {"action": "replace", "spec": s, "current_tag": "20261101-aaaaaaa", "current_digest": OLD_D, "order": "start-first"}


def test_start_first_gates_the_new_one_beside_the_old_then_switches_then_stops_the_old(daemon, edge):
    old = serving_old(daemon, edge)
    old_addr = f"{daemon.containers.by_id[old].address}:8080"
    seen = {}
    real_gate = Transaction._gate

    def look(self, c, h, service, **kw):
        seen["old_running_during_gate"] = daemon.containers.by_id[old].running
        seen["proxy_during_gate"] = edge.live["web"]
        return real_gate(self, c, h, service, **kw)

    Transaction._gate = look
    try:
        daemon.image(REPO, NEW_D)
        r = by_service(run(daemon, [swap(proxied_spec())]))["web"]
    finally:
        Transaction._gate = real_gate
    assert r["outcome"] == "committed" and r["order"] == "start-first" and r["switch"]["switched"]
    new = only(daemon, "web")
    assert seen["old_running_during_gate"], "start-first: the old one serves while the new one is gated"
    assert seen["proxy_during_gate"] == old_addr, "the proxy served the old one until the new one passed"
    assert edge.live["web"] == f"{new.address}:8080" and old not in daemon.containers.by_id


def test_a_failed_start_first_gate_never_touches_the_proxy_and_the_old_one_never_stopped(daemon, edge):
    old = serving_old(daemon, edge)
    before = edge.live["web"]
    daemon.image(REPO, NEW_D, behaviour="bad")
    out = run(daemon, [swap(proxied_spec())])
    r = by_service(out)["web"]
    assert r["outcome"] == "reverted" and not r["switch"].get("switched")
    assert edge.switches == [] and edge.live["web"] == before
    assert only(daemon, "web").id == old and daemon.containers.by_id[old].running
    steps = [rec["step"] for rec in journal.read("r-new") if rec.get("service") == "web"]
    assert "stop-old" not in steps, "the old container was never stopped"


def test_a_proxy_that_does_not_confirm_the_switch_restores_and_switches_back(daemon, edge):
    old = serving_old(daemon, edge)
    daemon.image(REPO, NEW_D)
    edge.fail_next = "the proxy did not switch web"
    r = by_service(run(daemon, [swap(proxied_spec())]))["web"]
    assert r["outcome"] == "reverted" and "did not switch" in r["message"]
    assert only(daemon, "web").id == old and edge.live["web"] == f"{daemon.containers.by_id[old].address}:8080"


def test_a_revert_behind_the_proxy_brings_the_old_configuration_back_beside_then_switches_back(daemon, edge):
    serving_old(daemon, edge)
    daemon.image(REPO, NEW_D)
    assert by_service(run(daemon, [swap(proxied_spec())]))["web"]["outcome"] == "committed"
    committed = only(daemon, "web")
    rev = {"action": "revert", "spec": proxied_spec(), "expect_rollout_id": "r-new", "order": "start-first"}
    r = by_service(run(daemon, [rev], rid="r-new-revert", policy="revert-service"))["web"]
    assert r["outcome"] == "reverted" and r["after_tag"] == "20261101-aaaaaaa"
    back = only(daemon, "web")
    assert back.id != committed.id and back.labels[contract.ROLLOUT_ID] == "r-old"
    assert edge.live["web"] == f"{back.address}:8080", "the proxy serves the recreated old configuration"


def test_recovery_after_death_once_the_proxy_switched_ends_on_one_release_the_proxy_serves(daemon, edge, monkeypatch):
    """Killed right after the switch (revert-phase, nothing committed yet): recovery restores the old one beside and switches back."""
    old = serving_old(daemon, edge)
    daemon.image(REPO, NEW_D)
    die_at(daemon, "switched", {"rollout_id": "r-int", "phase": "web", "operator": "op", "on_failure": "revert-phase",
                                "steps": [swap(proxied_spec())]})
    assert edge.live["web"] != f"{daemon.containers.by_id[old].address}:8080", "the proxy had switched to the new one"
    monkeypatch.setattr(tx_mod, "docker_client", lambda timeout=120: daemon)
    out = recovery.recover_pending()
    assert out[0]["services"] == {"web": "reverted"} and out[0]["state"] == "good"
    assert only(daemon, "web").id == old and edge.live["web"] == f"{daemon.containers.by_id[old].address}:8080"
    # the switch back asked no drain: the new container's slot (b) was waited on for requests in flight before it went
    assert edge.switches[-1][1] == f"{daemon.containers.by_id[old].address}:8080" and edge.idle_waits[-1] == ("web", ("b",))


def test_a_proxy_unreadable_while_waiting_for_requests_in_flight_does_not_fail_the_switch_back(daemon, edge, monkeypatch):
    """The wait after a switch is advisory: `show stat` failing (wait_idle says why) is journalled, and the revert
    ends reverted, the new container removed, as it did before the wait existed."""
    old = serving_old(daemon, edge)
    daemon.image(REPO, NEW_D)
    die_at(daemon, "switched", {"rollout_id": "r-unread", "phase": "web", "operator": "op", "on_failure": "revert-phase",
                                "steps": [swap(proxied_spec())]})
    edge.idle_answer = "the proxy's runtime API did not answer"
    monkeypatch.setattr(tx_mod, "docker_client", lambda timeout=120: daemon)
    out = recovery.recover_pending()
    assert out[0]["services"] == {"web": "reverted"} and out[0]["state"] == "good"
    assert only(daemon, "web").id == old and edge.live["web"] == f"{daemon.containers.by_id[old].address}:8080"
    drains = [r for r in journal.read("r-unread") if r["step"] == "drain"]
    assert drains and drains[-1]["idle"] == "the proxy's runtime API did not answer", drains


def test_the_rollback_and_restart_plans_follow_the_services_order(tmp_path):
    """fab rollback and fab restart swap start-first behind the proxy, as a rollout does (no NVML: GPU budgets go stop-first)."""
    from playbooks.inventory import load
    from playbooks.rollback import swap_order_of as _order

    from .test_proxy_unit import FLEET, write

    inv = load(write(tmp_path, FLEET))
    order, why, drain = _order(inv, "web", True)
    assert (order, drain) == ("start-first", 1.0) and "behind the proxy" in why
    assert _order(inv, "plain", True)[0] == "stop-first", "not behind the proxy: its clients reach the container itself"
    assert _order(inv, "llm", True)[0] == "stop-first", "a GPU budget and no NVML facts: stop-first"
    assert _order(inv, "web", False)[0] == "stop-first", "nothing runs: started, gated, then served"


def test_stop_first_behind_the_proxy_serves_nothing_until_the_new_one_passed(daemon, edge, monkeypatch):
    """Found by an exploratory run: stop-first behind the proxy left the live slot on the old container's address, which
    Docker gave to the new container: a degraded release answered clients for its whole gate. The slot goes to
    maintenance before the old one stops; the restore's switch back makes a slot ready again."""
    old = serving_old(daemon, edge)
    daemon.image(REPO, NEW_D, behaviour="bad")
    seen = {}
    real_gate = Transaction._gate

    def look(self, c, h, service, **kw):
        seen.setdefault("during_gate", edge.live.get("web"))
        return real_gate(self, c, h, service, **kw)

    monkeypatch.setattr(Transaction, "_gate", look)
    r = by_service(run(daemon, [{**swap(proxied_spec()), "order": "stop-first"}]))["web"]
    assert r["outcome"] == "reverted" and r["order"] == "stop-first", r
    assert seen["during_gate"] is None, "no server while the new one is gated"
    assert edge.states and edge.states[0][2] == "maint"
    assert only(daemon, "web").id == old and edge.live["web"] == f"{daemon.containers.by_id[old].address}:8080"
