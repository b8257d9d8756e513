"""A service moved to another host in the inventory: the plan names where this ledger last left it, and how to remove it."""

from __future__ import annotations

from types import SimpleNamespace

from playbooks import moved
from playbooks.plan import CREATE, REPLACE


def _inv(placement: dict[str, list[str]]):
    return SimpleNamespace(fleet=SimpleNamespace(hosts_of=lambda s: placement[s]))


def _plan(*steps: tuple[str, str, str]):
    return SimpleNamespace(steps=[SimpleNamespace(host=h, service=s, action=a) for h, s, a in steps])


LEDGER = [
    {"kind": "finished", "time": "T1", "services": [{"host": "pc2", "service": "rag-api", "outcome": "committed"},
                                                    {"host": "pc2", "service": "embed", "outcome": "failed"}]},
    {"kind": "finished", "time": "T2", "services": [{"host": "pc2", "service": "cache", "action": "noop"}]},
    {"kind": "finished", "time": "T3", "services": [{"host": "pc2", "service": "old", "outcome": "committed"}]},
    {"kind": "removal", "time": "T4", "host": "pc2", "service": "old", "removed": [{"name": "old", "id": "abc"}]},
]


def test_a_created_service_last_left_on_another_host_is_named_with_the_command_that_removes_it():
    inv = _inv({"rag-api": ["mainpc"], "cache": ["mainpc"], "old": ["mainpc"], "embed": ["mainpc"]})
    plan = _plan(("mainpc", "rag-api", CREATE), ("mainpc", "cache", CREATE), ("mainpc", "old", CREATE), ("mainpc", "embed", CREATE))
    out = moved.notes(inv, plan, LEDGER)
    assert len(out) == 2, out
    assert out[0].startswith("cache: this ledger last left it running on pc2 (T2)") and "fab remove -s cache -H pc2" in out[0]
    assert out[1].startswith("rag-api: this ledger last left it running on pc2 (T1)") and "fab remove -s rag-api -H pc2" in out[1]


def test_nothing_is_said_where_the_service_stays_or_nothing_is_created():
    assert moved.notes(_inv({"rag-api": ["mainpc", "pc2"]}), _plan(("mainpc", "rag-api", CREATE)), LEDGER) == []
    assert moved.notes(_inv({"rag-api": ["mainpc"]}), _plan(("mainpc", "rag-api", REPLACE)), records=None) == [], \
        "no create: the ledger is not even read"


def test_a_removal_recorded_by_an_older_version_counts_too():
    old = [{"kind": "finished", "time": "T1", "services": [{"host": "pc2", "service": "rag-api", "outcome": "committed"}]},
           {"kind": "remove", "time": "T2", "host": "pc2", "service": "rag-api", "removed": ["rag-api"]}]
    assert moved.notes(_inv({"rag-api": ["mainpc"]}), _plan(("mainpc", "rag-api", CREATE)), old) == []


def test_the_proxy_moving_to_another_network_warns_that_its_services_wait_for_their_phases():
    """Found by an exploratory run: reverse_proxy.network changed, the edge phase committed, every request to the services
    behind it failed until their phases rolled out; nothing had warned."""
    from playbooks.moved import proxy_network_notes as _proxy_network_notes

    inv = SimpleNamespace(fleet=SimpleNamespace(reverse_proxy=SimpleNamespace(service="edge", network="fleetroll-b"),
                                                proxied_on=lambda h: ["web", "api"]))
    st = SimpleNamespace(host="pc2", service="edge", action=REPLACE, changes=["network: fleetroll -> fleetroll-b"])
    out = _proxy_network_notes(inv, SimpleNamespace(changes=[st]))
    assert out == ["WARNING pc2 edge: the proxy moves to network fleetroll-b; the services behind it here (web, api) stay"
                   " on their network, unreachable through it, until their phases roll out: roll them out right after"
                   " (fab rollout --all runs them in order)"]
    st.changes = ["env MODE: changed"]
    assert _proxy_network_notes(inv, SimpleNamespace(changes=[st])) == []
