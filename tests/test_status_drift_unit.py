"""`fab status` against what runs: configuration drift beyond the tag, and health probed by the container's own settings.

Found by an exploratory run: after `fab rollback` brought back a configuration with another health port, status probed
the inventory's port and called a healthy container unhealthy; and with ports, env or a proxy's routes changed in the
inventory, its drift column said `-` because it compared tags only.
"""

from __future__ import annotations

import json

import pytest

from agent import ops
from playbooks import status
from playbooks.inventory import load
from playbooks.plan import container_spec, spec_hash

from .conftest import ROOT

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def inv():
    return load(ROOT / "inventory" / "fleet.yml")


def _running(inv, service: str, host: str, spec: dict | None = None) -> dict:
    spec = spec if spec is not None else container_spec(inv, service, host)
    return {"name": service, "tag": inv.fleet.services[service].tag, "digest": DIGEST, "spec_hash": spec_hash(spec, DIGEST)}


def test_a_container_on_the_inventory_s_configuration_has_no_drift_and_one_on_another_does(inv):
    assert status.config_drift(inv, "rag-api", "pc2", _running(inv, "rag-api", "pc2")) == ""
    other = {**container_spec(inv, "rag-api", "pc2"), "ports": {"8080/tcp": "9999"}}
    drift = status.config_drift(inv, "rag-api", "pc2", _running(inv, "rag-api", "pc2", other))
    assert drift.startswith("configuration differs from the inventory") and "fab rollout -p" in drift and "-n" in drift
    assert "started by hand" in status.config_drift(inv, "rag-api", "pc2", {"name": "rag-api", "digest": DIGEST})
    by_hand = {**_running(inv, "rag-api", "pc2"), "restart_policy": "no"}  # docker update --restart=no
    assert status.config_drift(inv, "rag-api", "pc2", by_hand).startswith("its restart policy is no, the inventory says")


@pytest.mark.usefixtures("host_state")
def test_status_probes_a_container_by_the_health_settings_it_was_started_with(monkeypatch):
    from agent import facts, health

    label = json.dumps({"path": "/health", "port": 8101, "healthy_deadline": 30})
    monkeypatch.setattr(facts, "docker_facts", lambda: {"ok": True, "containers": [
        {"name": "rag-api", "health": label, "addresses": {}}, {"name": "embed", "health": "", "addresses": {}}]})
    urls = []
    monkeypatch.setattr(health, "probe", lambda url, timeout: (urls.append(url), health.Probe(True, "ok"))[1])
    monkeypatch.setattr(ops.lock, "read", lambda: None)
    inventory_says = {"path": "/health", "port": 8102}
    ops.status({"health": {"rag-api": inventory_says, "embed": {"path": "/health", "port": 8200}}})
    assert urls == ["http://127.0.0.1:8101/health", "http://127.0.0.1:8200/health"], urls


def test_a_container_fleetroll_did_not_start_under_a_service_s_name_is_named_by_status_and_fails_preflight(inv):
    """Found by an exploratory run: with core-mainpc replaced by a hand-made container, status said 'absent … no
    container', preflight passed and the dry run planned a create; the real rollout was then refused (exit 3)."""
    from playbooks.preflight import FAIL, evaluate

    alien = {"image": "busybox:latest", "status": "running", "id": "fe1e940372a7"}
    row = status._service_row(inv, "pc2", "rag-api", None, {"foreign": {"rag-api": alien}}, None)
    assert row["status"] == "foreign, running" and not row["healthy"] and "fleetroll did not start" in row["health"]
    assert "fe1e940372a7" in row["health"] and row["drift"].startswith("not fleetroll's")
    assert status._service_row(inv, "pc2", "rag-api", None, {}, None)["status"] == "absent"
    facts = {"docker": {"ok": True, "containers": []}, "disk": {"free_gb": 100, "path": "/"}, "foreign": {"rag-api": alien}}
    names = [c for c in evaluate(inv, "pc2", None, facts) if c.check == "names"]
    assert [c.status for c in names] == [FAIL] and "rag-api here is a container fleetroll did not start" in names[0].detail
    assert "docker rm -f rag-api" in names[0].fix


def test_a_port_held_by_fleetroll_s_own_orphan_names_it_and_how_to_remove_it(inv, monkeypatch):
    """Found by an exploratory run: after a service was renamed, preflight blamed 'something else (ss -ltnp)' for the port
    its old container (fleetroll's, now an orphan) still published."""
    from playbooks.preflight import _port_checks

    old = {"name": "old-rag", "running": True, "host_ports": ["8101"]}
    [c] = _port_checks(inv, "pc2", ["rag-api"], {"ports": [8101], "docker": {"containers": [old]}})
    assert c.status == "fail" and "8101 (wanted by rag-api; published by fleetroll's container old-rag)" in c.detail
    assert c.fix == "fab remove -s old-rag -H pc2 (an orphan: the inventory no longer places it here)"
    [c] = _port_checks(inv, "pc2", ["rag-api"], {"ports": [8101], "docker": {"containers": []}})
    assert c.status == "fail" and "ss -ltnp" in c.fix  # held by something that is not fleetroll's: as before
    # two wanted ports held by one orphan, a third by something else: the orphan once, and the others' advice too
    both = {"name": "old-rag", "running": True, "host_ports": ["8101", "8102"]}
    monkeypatch.setattr(type(inv.fleet.services["rag-api"]), "port_pairs", lambda self: [(8101, 8080, "tcp"), (8102, 8081, "tcp"),
                                                                                         (8103, 8082, "tcp")])
    [c] = _port_checks(inv, "pc2", ["rag-api"], {"ports": [8101, 8102, 8103], "docker": {"containers": [both]}})
    assert c.fix.count("fab remove -s old-rag -H pc2") == 1 and "stop what holds the others (ss -ltnp)" in c.fix, c.fix


def test_a_new_port_of_a_running_service_held_by_something_else_fails_preflight(inv):
    """Found by an exploratory run: a listen port added behind the proxy was held by another process; preflight passed
    (the proxy container was running), the proxy's stop-first swap stopped it and failed to bind: every proxied service
    on the host refused connections. The service's own container vouches only for the ports it publishes."""
    from playbooks.preflight import _port_checks

    runs = {"name": "rag-api", "running": True, "host_ports": ["8101"]}
    [c] = _port_checks(inv, "pc2", ["rag-api"], {"ports": [8101], "docker": {"containers": [runs]}})
    assert c.status == "pass", c
    moved = {**runs, "host_ports": ["9999"]}  # runs, but publishes another port than the inventory now wants
    [c] = _port_checks(inv, "pc2", ["rag-api"], {"ports": [8101], "docker": {"containers": [moved]}})
    assert c.status == "fail" and "8101 (wanted by rag-api" in c.detail, c
