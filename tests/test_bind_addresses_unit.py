"""An address the inventory binds ports to that the host does not have fails preflight, before any swap.

Found by an exploratory run: `proxy: {listen: "10.213.6.99:18080"}` on a host without that address passed
preflight; the proxy's swap then stopped the old proxy and Docker could not bind the port.
"""

from __future__ import annotations

from agent.listening import missing_addresses
from playbooks.inventory import load
from playbooks.preflight import _port_checks, bind_addresses, request_args

from .test_proxy_unit import FLEET, write


def test_the_host_is_asked_with_a_bind_as_docker_would(monkeypatch):
    # 127.0.0.1 is every host's; 192.0.2.0/24 is TEST-NET-1, nobody's; a name is not this check's to judge
    assert missing_addresses(["127.0.0.1", "192.0.2.77", "not-an-ip"]) == ["192.0.2.77"]


def test_preflight_asks_for_the_explicit_addresses_of_ports_and_of_the_proxy_s_listen(tmp_path):
    fleet = FLEET.replace('ports: ["9000:9000"]', 'ports: ["10.0.0.2:9000:9000", "0.0.0.0:9001:9001"]')
    inv = load(write(tmp_path, fleet))
    assert bind_addresses(inv, "pc2", inv.services_for(None, ["pc2"])) == ["10.0.0.2"]  # 0.0.0.0 is every address
    # the proxy on mainpc publishes llm's listen address; web's "18080" has none
    assert request_args(inv, "mainpc", None)["addresses"] == ["10.0.0.1"]
    assert "addresses" not in request_args(load(write(tmp_path, FLEET)), "pc2", None)  # nothing to ask: no key at all


def test_a_missing_address_fails_the_port_check_naming_it_and_the_fix(tmp_path):
    inv = load(write(tmp_path, FLEET))
    [c] = _port_checks(inv, "mainpc", ["edge", "llm"], {"ports": [], "docker": {"containers": []},
                                                       "addresses_missing": ["10.0.0.1"]})
    assert c.status == "fail" and c.detail.startswith("10.0.0.1: not an address of mainpc; the inventory binds ports to it")
    assert "ip -brief address" in c.fix
    [ok] = _port_checks(inv, "mainpc", ["edge", "llm"], {"ports": [], "docker": {"containers": []}, "addresses_missing": []})
    assert ok.status == "pass"


def test_ports_are_not_called_someone_else_s_when_docker_did_not_answer(tmp_path):
    """Found by an exploratory run: with dockerd SIGSTOPped, the service's own port read as 'in use: stop what holds it'."""
    inv = load(write(tmp_path, FLEET))
    [c] = _port_checks(inv, "pc2", ["plain"], {"ports": [9000], "docker": {"ok": False, "error": "no answer within 10 s"}})
    assert c.status == "warn" and c.detail.startswith("not checked: Docker did not answer") and "ss -ltnp" not in c.fix
