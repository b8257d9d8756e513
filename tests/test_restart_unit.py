"""`fab restart` of a replicated service: one replica after another, a failure stops it, a manual freeze is named.

Found by an exploratory run: `fab restart` took one --host, so a service on mainpc and pc2 needed a command per host
(and nothing kept two of them from running at once), and a restart through a manual freeze said nothing of it.
"""

from __future__ import annotations

import pytest

from agent import freeze
from playbooks import restart as restart_mod
from playbooks import targets, transport
from playbooks.errors import RolloutError
from playbooks.inventory import load

from .test_transaction_unit import by_service, run, running_old, spec


def _answer(host: str, outcome: str) -> transport.CallResult:
    svc = {"service": "rag-api", "action": "restart", "outcome": outcome, "after_tag": "t1",
           "check": "health-http" if outcome != "committed" else "", "message": "" if outcome == "committed" else "HTTP 500"}
    return transport.CallResult(host=host, ok=outcome == "committed",
                                answer={"protocol": transport.PROTOCOL, "ok": outcome == "committed", "data": {"services": [svc]}})


def _replicated(inv) -> tuple[str, list[str]]:
    name = next(s for s in inv.fleet.services if len(inv.fleet.hosts_of(s)) > 1)
    return name, list(inv.fleet.hosts_of(name))


def replicated_inventory(tmp_path):
    """The repository's inventory with rag-api on both hosts."""
    import shutil
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "inventory"
    for f in ("fleet.yml", "phases.yml"):
        shutil.copy(src / f, tmp_path / f)
    fleet = tmp_path / "fleet.yml"
    text = fleet.read_text()
    one = '  rag-api:\n    image: family-cpu-py311\n    tag: 20250817-0a1b2c3\n    host: pc2\n'
    assert one in text
    fleet.write_text(text.replace(one, one.replace("host: pc2", "hosts: [mainpc, pc2]")))
    return load(fleet)


@pytest.fixture
def inv(tmp_path):
    return replicated_inventory(tmp_path)


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """Each host call the restart makes, in order; the hosts named in `failing` answer a reverted restart."""
    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    seen: list[list[str]] = []
    failing: set[str] = set()

    def run_on_hosts(inv, plan, hosts, args_for, *a):
        seen.append(list(hosts))
        for h in hosts:
            assert [s["action"] for s in args_for(h)["steps"]] == ["restart"]
        return {h: _answer(h, "reverted" if h in failing else "committed") for h in hosts}

    monkeypatch.setattr(restart_mod, "run_on_hosts", run_on_hosts)
    return seen, failing


def test_every_replica_is_restarted_one_host_after_another(inv, calls):
    seen, _ = calls
    name, hosts = _replicated(inv)
    rep = restart_mod.restart(inv, name)
    assert seen == [[h] for h in hosts], seen  # one call per host, in the inventory's order, never two at once
    assert rep.state == "committed" and rep.ok
    assert [m for m in rep.messages if "restarted in a fresh container" in m] == [
        f"{h} rag-api: restarted in a fresh container, proven healthy (t1)" for h in hosts]


def test_the_first_replica_that_fails_stops_the_restart_and_the_rest_are_named(inv, calls):
    seen, failing = calls
    name, hosts = _replicated(inv)
    failing.add(hosts[0])
    rep = restart_mod.restart(inv, name)
    assert seen == [[hosts[0]]], seen  # the others were never asked
    assert rep.state == "reverted" and not rep.ok
    text = "\n".join(rep.messages)
    assert (f"not restarted: {name} on {', '.join(hosts[1:])} (the restart stopped at {hosts[0]}" in text
            and f"fab restart -s {name} -H {','.join(hosts[1:])}" in text), text


def test_hosts_limit_the_replicas_and_a_host_without_one_is_an_input_error(inv, calls):
    seen, _ = calls
    name, hosts = _replicated(inv)
    restart_mod.restart(inv, name, hosts=[hosts[-1]])
    assert seen == [[hosts[-1]]]
    other = next(h for h in inv.fleet.hosts if h not in hosts) if len(inv.fleet.hosts) > len(hosts) else None
    single = next(s for s in inv.fleet.services if len(inv.fleet.hosts_of(s)) == 1)
    outside = other or next(h for h in inv.fleet.hosts if h not in inv.fleet.hosts_of(single))
    with pytest.raises(RolloutError, match=f"{single} has no replica on {outside}; it runs on "):
        targets.replica_hosts(inv, single, [outside])


def test_a_restart_through_a_manual_freeze_goes_ahead_and_says_so(host_state, daemon):
    old = running_old(daemon)
    freeze.write("gpu", "gpu maint", "alice")
    r = by_service(run(daemon, [{"action": "restart", "spec": spec()}], policy="revert-service"))["svc"]
    assert r["outcome"] == "committed" and r["new_container"] != old
    assert r["message"] == ("phase gpu is frozen here by alice ('gpu maint'); the restart went ahead all the same"
                            " (the same release afresh; a freeze holds new releases)")


def test_an_automatic_freeze_is_not_a_note_for_a_restart(host_state, daemon):
    running_old(daemon)
    freeze.write("gpu", "svc failed its gate", "op", auto=True, releases={"svc": "x"})
    r = by_service(run(daemon, [{"action": "restart", "spec": spec()}], policy="revert-service"))["svc"]
    assert r["outcome"] == "committed" and r["message"] == ""
