"""Hard rules on both sides: what the inventory refuses is refused again on the host (issue 21).

Networks: a container joins fleetroll's own bridge network or Docker's default bridge, never
`host`, `none`, `container:<other>` or another network.
"""

from __future__ import annotations

import pytest

from agent import container_args, contract

from .test_proxy_unit import FLEET, problems


def _args(network: str) -> dict:
    return {"image": "sha256:x", "name": "web", "user": contract.IMAGE_USER, "env": {}, "labels": {}, "ports": {},
            "binds": [], "restart": "unless-stopped", "gpus": 0, "stop_timeout": 10, "network": network}


@pytest.mark.parametrize("network", ["host", "none", "container:db", "container:", "other", "Fleetroll", "fleetrollx",
                                     "docker_gwbridge", "ingress", "fleetroll\nx"])
def test_the_host_refuses_other_networks(network):
    out = container_args.problems(_args(network))
    assert len(out) == 1 and repr(network) in out[0] and "fleetroll's own bridge network" in out[0], out


@pytest.mark.parametrize("network", ["", "bridge", "fleetroll", "fleetroll-web", "fleetroll_2"])
def test_the_host_accepts_fleetrolls_own_and_the_default_bridge(network):
    assert container_args.problems(_args(network)) == []


@pytest.mark.parametrize("network,why", [("host", "the host's own network"), ("none", "no network"),
                                         ("'container:db'", "another container's network namespace"),
                                         ("other", "not fleetroll's own bridge network"),
                                         ("bridge", "default bridge, where the proxy cannot reach containers by name")])
def test_the_inventory_refuses_a_proxy_network_that_is_not_fleetrolls_own(tmp_path, network, why):
    text = FLEET.replace("reverse_proxy: {service: edge}", f"reverse_proxy: {{service: edge, network: {network}}}")
    out = problems(tmp_path, text)
    line = next(x for x in out.splitlines() if "reverse_proxy.network" in x)
    assert line.startswith(f"{tmp_path / 'fleet.yml'}:2: reverse_proxy.network: "), line
    assert why in line and "fix: leave it out" in line, line


def test_the_inventory_accepts_a_named_fleetroll_network(tmp_path):
    from playbooks.inventory import load

    from .test_proxy_unit import write

    inv = load(write(tmp_path, FLEET.replace("reverse_proxy: {service: edge}", "reverse_proxy: {service: edge, network: fleetroll-web}")))
    assert inv.fleet.health_spec("web")["network"] == "fleetroll-web"
