"""Per-host timings: the split of a first call, the sums, the table and the JSON (pure)."""

from __future__ import annotations

from playbooks import timings
from playbooks.timings import HostTimes


def test_a_first_call_splits_into_start_and_work_by_the_agents_own_clock():
    assert timings.first_call(1.5, 0.25) == (1.25, 0.25)
    assert timings.first_call(0.3, 0.5) == (0.0, 0.3), "two clocks: never more work than the controller waited"
    for unknown in (None, "0.2", True, -1):
        assert timings.first_call(1.0, unknown) == (None, None), unknown


def test_times_add_up_and_unknown_stays_unknown_only_alone():
    a = HostTimes(wait_s=0.5, connect_s=0.25, start_s=0.5, agent_s=0.125, calls=1)
    b = HostTimes(agent_s=2.0, calls=1)
    assert a.add(b) == HostTimes(wait_s=0.5, connect_s=0.25, start_s=0.5, agent_s=2.125, calls=2)
    assert HostTimes().add(HostTimes()).agent_s is None
    assert HostTimes(agent_s=1.23456789).to_json() == {"wait_s": 0.0, "connect_s": None, "start_s": None, "agent_s": 1.2346,
                                                      "calls": 0, "ahead": 0}


def test_the_table_puts_the_slowest_host_first_and_sums_the_work():
    times = {"pc2": HostTimes(wait_s=0.0, connect_s=0.05, start_s=0.25, agent_s=0.125, calls=1),
             "mainpc": HostTimes(wait_s=1.5, connect_s=0.5, start_s=0.75, agent_s=3.0, calls=3),
             "node03": HostTimes(wait_s=2.0, connect_s=1.0, calls=0)}
    out = timings.text(times, wall_s=4.5).splitlines()
    assert out[0].split() == ["host", "slot", "wait", "ssh", "connect", "shell+agent", "start", "agent", "work", "calls"]
    assert [line.split()[0] for line in out[1:5]] == ["mainpc", "node03", "pc2", "(sum)"]
    assert out[1].split() == ["mainpc", "1.500", "0.500", "0.750", "3.000", "3"]
    assert out[2].split() == ["node03", "2.000", "1.000", "?", "?", "0"], "never answered: not measured, not zero"
    assert out[4].split() == ["(sum)", "3.500", "1.550", "1.000", "3.125", "4"]
    assert "(the command took 4.500 s)" in out[5] and "not time waited" in out[5]
    assert len({len(line) for line in out[:5]}) == 1, "columns line up"
    assert len(out) == 6, "no logins started ahead: no word about them"


def test_logins_started_ahead_of_the_commands_clock_are_said():
    times = {"a": HostTimes(connect_s=0.1, calls=1, ahead=1), "b": HostTimes(connect_s=0.1, calls=1)}
    assert "1 of 2 hosts' logins started while the command itself was starting up" in timings.text(times)
    assert HostTimes(ahead=1).add(HostTimes(ahead=1)).ahead == 2


def test_json_is_per_host():
    assert timings.to_json({"h": HostTimes(connect_s=0.1, calls=1)}) == {
        "h": {"wait_s": 0.0, "connect_s": 0.1, "start_s": None, "agent_s": None, "calls": 1, "ahead": 0}}


def test_the_ledgers_finished_record_carries_each_hosts_timings(tmp_path, monkeypatch):
    from playbooks import ending, ledger, transport
    from playbooks.plan import Plan

    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    rep = ending.RolloutReport("r-t", "core", False, "failed", Plan("r-t", "core", "op", []))
    rep.timings = {"pc2": HostTimes(wait_s=0.5, connect_s=0.25, start_s=0.5, agent_s=1.0, calls=2)}
    answered = transport.CallResult(host="pc2", ok=True, answer={"protocol": transport.PROTOCOL, "ok": True, "data": {"services": []}})
    ending.conclude("rollout", rep, {"pc2": answered}, {"rollout_id": "r-t", "phase": "core"}, 0.0, "inv/fleet.yml")
    finished = [r for r in ledger.read() if r["kind"] == "finished"]
    assert finished[-1]["timings"] == {"pc2": {"wait_s": 0.5, "connect_s": 0.25, "start_s": 0.5, "agent_s": 1.0, "calls": 2,
                                               "ahead": 0}}
    assert rep.to_json()["timings"] == finished[-1]["timings"]
