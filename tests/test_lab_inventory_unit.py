"""The lab inventory `fab lab.up --with-proxy` writes (issue 23): docs/zero-downtime.md promises it
loads and rolls out in two commands, `fab rollout -p edge` then `fab rollout -p web`, so it must pass
the validator and place the proxy's phase before the phase of the service behind it. No lab needed:
the lab's hosts are planned, not started (as tests/test_names_unit.py does).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import fleet as labfleet
from lab.inventory import add_proxy_to_inventory, build_inventory, write_inventory
from playbooks.inventory import load

PROXY_TAG = "20261101-0a1b2c3"


def _state(tmp_path: Path, count: int = 2) -> labfleet.LabState:
    """A planned lab of `count` hosts whose key and known_hosts live in tmp_path."""
    (tmp_path / "id").write_text("")
    return labfleet.LabState(hosts=labfleet.plan_hosts(count), known_hosts=str(tmp_path / "known_hosts"),
                             key=str(tmp_path / "id"))


def _check_edge_then_web(inv) -> None:
    """What the walkthrough relies on: edge before web, ports 8404 and 18080, web's gate on its container port."""
    names = [p.name for p in inv.phases]
    assert names.index("edge") < names.index("web"), names
    assert inv.phase("edge").services == ["edge-proxy"] and inv.phase("web").services == ["web"]
    fleet = inv.fleet
    assert fleet.reverse_proxy.service == "edge-proxy"
    proxy, web = fleet.services["edge-proxy"], fleet.services["web"]
    assert proxy.health.port == fleet.reverse_proxy.health_port == 8404
    assert set(fleet.hosts_of("edge-proxy")) == {"mainpc", "pc2"}
    assert fleet.hosts_of("web") == ["pc2"]
    assert (web.image, web.proxy.listen, web.proxy.port, web.health.port) == ("cpu-svc", "18080", 8080, 8080)
    assert web.update.drain_s == 0.5


def test_the_with_proxy_inventory_loads_with_edge_before_web(tmp_path):
    path = write_inventory(_state(tmp_path), {"cpu-svc": "20261101-a1b2c3d"}, tmp_path / "inv", proxy_tag=PROXY_TAG)
    inv = load(path)
    _check_edge_then_web(inv)
    assert inv.fleet.services["edge-proxy"].tag == PROXY_TAG
    assert inv.fleet.services["web"].tag == inv.fleet.services["embed-api"].tag == "20261101-a1b2c3d"
    assert [p.name for p in inv.phases][:3] == ["core-infra", "gpu-mainpc", "cpu-pc2"]  # the lab's phases unchanged


def test_adding_the_proxy_to_a_written_lab_inventory_gives_the_same_documents(tmp_path):
    """lab.up writes its inventory first and adds the proxy once the image is pushed: same result as building it in."""
    state, tags = _state(tmp_path), {"cpu-svc": "20261101-a1b2c3d"}
    path = add_proxy_to_inventory(write_inventory(state, tags, tmp_path / "inv"), PROXY_TAG)
    _check_edge_then_web(load(path))
    fleet, phases = build_inventory(state, tags, proxy_tag=PROXY_TAG)
    written = load(write_inventory(state, tags, tmp_path / "direct", proxy_tag=PROXY_TAG))
    assert load(path).fleet.services == written.fleet.services
    assert [p.name for p in load(path).phases] == [p["name"] for p in phases["phases"]]


def test_a_one_host_lab_is_refused_saying_the_proxy_needs_pc2(tmp_path):
    with pytest.raises(ValueError, match="mainpc and pc2.*--count 2"):
        build_inventory(_state(tmp_path, count=1), {}, proxy_tag=PROXY_TAG)


def test_without_a_proxy_tag_the_lab_inventory_has_no_proxy(tmp_path):
    inv = load(write_inventory(_state(tmp_path), {}, tmp_path / "inv"))
    assert inv.fleet.reverse_proxy is None
    assert {"edge-proxy", "web"}.isdisjoint(inv.fleet.services)
    assert [p.name for p in inv.phases] == ["core-infra", "gpu-mainpc", "cpu-pc2"]
