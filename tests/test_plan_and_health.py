"""The planner and the health verdict are pure: tested here without hosts."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.health import verdict
from playbooks.inventory import load
from playbooks.ledger import rollouts
from playbooks.plan import BLOCKED, CREATE, NOOP, REPLACE, build_plan, container_spec, spec_hash

ROOT = Path(__file__).resolve().parent.parent
INV = load(ROOT / "inventory" / "fleet.yml")
DIGEST = "sha256:" + "1" * 64


def facts_with(containers=(), digest=DIGEST, ok=True):
    imgs = {INV.image_ref(s): ({"ok": True, "digest": digest} if ok else {"ok": False, "error": "registry down"}) for s in INV.fleet.services}
    return {h: {"images": imgs, "docker": {"containers": [c for c in containers if c.get("host", h) == h]}} for h in INV.fleet.hosts}


def running(service, digest=DIGEST, tag=None, running=True, same_spec=True):
    spec = container_spec(INV, service)
    h = spec_hash(spec, digest) if same_spec else "other"
    return {"name": service, "tag": tag or INV.fleet.services[service].tag, "digest": digest, "spec_hash": h,
            "running": running, "status": "running" if running else "exited", "host": INV.fleet.services[service].host}


def actions(plan):
    return {s.service: s.action for s in plan.steps}


def test_nothing_running_means_create():
    plan = build_plan(INV, "gpu-mainpc", facts_with())
    assert actions(plan) == {"llm-inference": CREATE, "vision-audio": CREATE}
    assert plan.for_host("mainpc")[0].new_digest == DIGEST


def test_same_digest_and_spec_is_noop():
    plan = build_plan(INV, "gpu-mainpc", facts_with([running("llm-inference"), running("vision-audio")]))
    assert actions(plan) == {"llm-inference": NOOP, "vision-audio": NOOP}
    assert plan.changes == []


def test_a_crash_looping_or_paused_container_of_the_planned_release_is_not_a_noop():
    """Docker says Running for a container between crash-loop restarts and for a paused one: the release is not at work."""
    looping = {**running("llm-inference"), "status": "restarting", "restart_count": 5}
    paused = {**running("vision-audio"), "status": "paused"}
    plan = build_plan(INV, "gpu-mainpc", facts_with([looping, paused]))
    assert actions(plan) == {"llm-inference": REPLACE, "vision-audio": REPLACE}
    reasons = {s.service: s.reason for s in plan.steps}
    assert reasons["llm-inference"] == "container is crash-looping (restarting, 5 restarts so far); start it afresh"
    assert reasons["vision-audio"] == "container is paused; start it afresh"


def test_new_digest_is_replace_with_current_recorded():
    old = "sha256:" + "0" * 64
    plan = build_plan(INV, "gpu-mainpc", facts_with([running("llm-inference", old, "20250101-aaaaaaa"), running("vision-audio")]))
    step = plan.for_host("mainpc")[0]
    assert (step.action, step.current_tag, step.current_digest, step.new_digest) == (REPLACE, "20250101-aaaaaaa", old, DIGEST)
    assert actions(plan)["vision-audio"] == NOOP


def test_config_change_is_replace():
    plan = build_plan(INV, "gpu-mainpc", facts_with([running("llm-inference", same_spec=False), running("vision-audio")]))
    assert actions(plan)["llm-inference"] == REPLACE
    assert "configuration changed" in plan.for_host("mainpc")[0].reason


def test_a_change_of_the_gate_s_timings_alone_replaces_nothing():
    """Found by an exploratory run: healthy_deadline 8 -> 9 replaced the container stop-first (downtime, and on a GPU
    service a model reload) for a setting of the gate, not of the container. It applies from the next swap."""
    import json

    spec = container_spec(INV, "llm-inference")
    was = {**spec["health"], "healthy_deadline": spec["health"]["healthy_deadline"] + 60, "min_healthy_time": 1.0}
    old = {**running("llm-inference"), "spec_hash": spec_hash({**spec, "health": was}, DIGEST), "health": json.dumps(was)}
    plan = build_plan(INV, "gpu-mainpc", facts_with([old, running("vision-audio")]))
    step = plan.for_host("mainpc")[0]
    assert step.action == NOOP and "new health.healthy_deadline, health.min_healthy_time: the gate uses it" in step.reason, step.reason
    from playbooks.plan import gate_note

    assert gate_note(step) == "health.healthy_deadline, health.min_healthy_time: the gate uses it from the next swap"
    # the timings and something of the container (env): replaced, as any configuration change
    other = {**spec, "env": {**spec["env"], "NEW": "1"}, "health": was}
    mixed = {**old, "spec_hash": spec_hash(other, DIGEST)}
    assert actions(build_plan(INV, "gpu-mainpc", facts_with([mixed, running("vision-audio")])))["llm-inference"] == REPLACE
    # a new digest with new timings is a new release, whatever its timings
    moved = {**old, "digest": "sha256:" + "0" * 64, "spec_hash": spec_hash({**spec, "health": was}, "sha256:" + "0" * 64)}
    assert actions(build_plan(INV, "gpu-mainpc", facts_with([moved, running("vision-audio")])))["llm-inference"] == REPLACE
    # crash-looping: started afresh (with the new timings), not left alone
    looping = {**old, "status": "restarting"}
    assert actions(build_plan(INV, "gpu-mainpc", facts_with([looping, running("vision-audio")])))["llm-inference"] == REPLACE


def test_a_restart_policy_changed_by_hand_is_put_back():
    """Found by an exploratory run: `docker update --restart=no` on a service left it a no-op for every rollout and
    `-` in status's drift (its configuration label cannot know): the planner reads the live policy."""
    changed = {**running("llm-inference"), "restart_policy": "no"}
    plan = build_plan(INV, "gpu-mainpc", facts_with([changed, {**running("vision-audio"), "restart_policy": "unless-stopped"}]))
    assert actions(plan) == {"llm-inference": REPLACE, "vision-audio": NOOP}
    assert plan.for_host("mainpc")[0].reason.startswith("its restart policy is no, the inventory says unless-stopped")


def test_stopped_container_is_replaced():
    plan = build_plan(INV, "gpu-mainpc", facts_with([running("llm-inference", running=False), running("vision-audio")]))
    assert actions(plan)["llm-inference"] == REPLACE


def test_unresolved_image_blocks():
    plan = build_plan(INV, "cpu-pc2", facts_with(ok=False))
    assert {s.action for s in plan.steps} == {BLOCKED} and "registry down" in plan.steps[0].reason


def test_plan_limited_to_hosts_and_carries_spec():
    plan = build_plan(INV, "core-infra", facts_with(), hosts=["pc2"])
    assert [s.service for s in plan.steps] == ["fleetroll-collector"]
    spec = plan.steps[0].spec
    assert spec["ports"] == {"9400/tcp": 9400} and spec["digest"] == DIGEST
    assert spec["env"] == {"MACHINE": "pc2", "FLEETROLL_SERVICE": "fleetroll-collector", "FLEETROLL_HOST": "pc2",
                           "FLEETROLL_COLLECTOR_URL": "http://192.168.1.11:9400",
                           # its own report key is derived on the host; the collector alone gets the fleet secret
                           "FLEETROLL_REPORT_KEY": {"report_key": "fleetroll-report-key"},
                           "COLLECTOR_FLEET_KEY": {"secret": "fleetroll-report-key"}}
    assert spec["volumes"] == ["fleetroll-collector-data:/data"]


def test_gpu_request_in_spec():
    assert container_spec(INV, "llm-inference")["gpus"] == "all"


@pytest.mark.parametrize(
    "status,body,ok,reason",
    [
        (200, '{"status":"ok"}', True, "HTTP 200"),
        (200, '{"status": "degraded"}', False, "'degraded'"),
        (500, '{"status":"ok"}', False, "HTTP 500"),
        (200, "OK", False, "not JSON"),
        (200, "[]", False, "not \"ok\""),
        (None, "no answer (timed out after 1s)", False, "timed out"),
    ],
)
def test_health_verdict(status, body, ok, reason):
    v = verdict(status, body)
    assert v.ok is ok and reason in v.reason


def test_ledger_merges_started_and_finished(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "l.jsonl"))
    from playbooks import ledger

    ledger.append("started", rollout_id="r1", phase="p")
    ledger.append("finished", rollout_id="r1", phase="p", final="committed")
    ledger.append("started", rollout_id="r2", phase="p")
    with open(tmp_path / "l.jsonl", "a") as f:
        f.write('{"kind": "finished", "rollout_id": "r2"')  # torn write: ignored
    got = {e["rollout_id"]: e["final"] for e in rollouts()}
    assert got == {"r1": "committed", "r2": "unfinished (controller stopped before the end)"}


def test_history_calls_a_refused_rollout_refused_not_a_controller_that_stopped(tmp_path, monkeypatch):
    """A refusal (frozen phase, failed preflight, a pre-rollout hook) is the rollout's end: nothing was started."""
    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "l.jsonl"))
    from playbooks import ledger
    from playbooks.render import history_text

    ledger.append("refused", rollout_id="r3", phase="p", reason="phase frozen", failures=["frozen on mainpc"])
    (e,) = rollouts()
    assert e["final"] == "refused" and e["note"] == "refused: phase frozen; nothing was changed"
    text = history_text(rollouts(), "l.jsonl")
    assert "refused" in text and "unfinished" not in text and "r3: refused: phase frozen" in text


def test_sha_drift_rules():
    from playbooks.executor import sha_drift

    rep = {"git_sha": "0a1b2c3d4e5f", "started_at": "2026-11-26T06:00:10Z"}
    assert sha_drift("20261126-0a1b2c3", rep, "2026-11-26T06:00:09.5Z") == ""
    assert "tag names 9999999" in sha_drift("20261126-9999999", rep, "2026-11-26T06:00:09Z")
    assert sha_drift("20261126-0a1b2c3", None, "") == "no start-up report"
    assert "stale report" in sha_drift("20261126-0a1b2c3", rep, "2026-11-26T07:00:00Z")


def test_status_health_needs_a_running_container_not_only_a_good_probe():
    from playbooks.executor import service_health

    ok = {"ok": True, "reason": 'HTTP 200 {"status":"ok"}'}
    assert service_health({"running": True, "status": "running", "restart_count": 0}, ok) == (True, "healthy")
    assert service_health({"running": True, "status": "running", "restart_count": 3, "up_s": 3600}, ok) == (True, "healthy (3 restarts)")
    # between two crashes of a crash loop: running, answering, but up only seconds after its last restart
    assert service_health({"running": True, "status": "running", "restart_count": 4, "up_s": 2.0}, ok) == (
        False, "restarted 4 times, up only 2s (crash loop?)")
    # crash-looping: /health answered between crashes, but the container is restarting
    healthy, text = service_health({"running": True, "status": "restarting", "restart_count": 7}, ok)
    assert not healthy and text == "container restarting (7 restarts)"
    assert service_health({"running": False, "status": "exited"}, ok) == (False, "container exited")
    assert service_health(None, ok) == (False, "not running (no container)")
    assert service_health({"running": True, "status": "running"}, {"ok": False, "reason": "HTTP 500"}) == (False, "HTTP 500")
    # caught between two crashes with /health not up yet: the loop is named, the probe's failure beside it
    assert service_health({"running": True, "status": "running", "restart_count": 4, "up_s": 0.4},
                          {"ok": False, "reason": "no answer (Remote end closed connection without response)"}) == (
        False, "restarted 4 times, up only 0s (crash loop?); /health: no answer (Remote end closed connection without response)")


def test_container_uptime_from_dockers_timestamp():
    from agent.facts import summarize_container, up_seconds

    assert up_seconds("2026-11-26T10:00:00.123456789Z", 1795687260.0) == 60.0
    assert up_seconds("", 1.0) is None
    c = summarize_container({"Name": "/x", "State": {"StartedAt": "2026-11-26T10:00:00Z", "Running": True}}, now=1795687230.0)
    assert c["up_s"] == 30.0


@pytest.mark.parametrize("stamp", ["1970-01-01T00:00:00Z", "2000-02-29T12:34:56.5Z", "2024-12-31T23:59:59.999999999Z",
                                   "2100-03-01T00:00:01Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])
def test_uptime_parsed_by_hand_agrees_with_calendar(stamp):
    """facts.up_seconds parses without calendar/time.strptime (their imports cost every agent call ~3 ms)."""
    import calendar
    import time

    from agent.facts import up_seconds

    now = 253402300800.0  # year 10000: every stamp above is in the past
    assert up_seconds(stamp, now) == now - calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))


@pytest.mark.parametrize("stamp", ["", "soon", "2026-13-01T00:00:00Z", "2026-11-26 10:00:00Z", "2026-11-26T25:00:00Z",
                                   "２０２６-11-26T10:00:00Z", None])
def test_a_timestamp_that_is_not_rfc3339_has_no_uptime(stamp):
    from agent.facts import up_seconds

    assert up_seconds(stamp, 1.0) is None


def test_a_long_gate_says_it_is_still_waiting_every_tick(monkeypatch):
    from agent import health

    monkeypatch.setattr(health, "TICK_S", 0.1)
    answers = iter([health.Probe(False, "connection refused")] * 6 + [health.Probe(True, "HTTP 200")] * 100)
    monkeypatch.setattr(health, "probe", lambda url, timeout: next(answers))
    said: list[str] = []
    g = health.gate("http://x/health", healthy_deadline=5, min_healthy_time=0.2, interval=0.05,
                    container_state=lambda: (True, 0, "running"), on_tick=said.append)
    assert g.ok
    waiting = [m for m in said if m.startswith("still gating after")]
    assert waiting and "last probe connection refused" in waiting[0], said


def test_a_gate_probes_last_at_its_deadline_not_up_to_an_interval_after_it(monkeypatch):
    """On a clock of its own (each probe takes 0.01 s): probes every 0.25 s, the last at 3.0 s, failed there."""
    from agent import health

    clock = [100.0]
    probes: list[float] = []

    def probe(url, timeout):
        probes.append(round(clock[0] - 100.0, 3))
        clock[0] += 0.01
        return health.Probe(False, "HTTP 500")

    monkeypatch.setattr(health, "probe", probe)
    # The gate and tenacity (its clock and its naps) both read the time module: one clock for all.
    monkeypatch.setattr(health.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(health.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    g = health.gate("http://x/health", healthy_deadline=3, min_healthy_time=0, interval=0.25,
                    container_state=lambda: (True, 0, "running"))
    assert not g.ok and g.phase == "deadline" and "not healthy within 3s: HTTP 500" in g.reason
    assert probes[-1] == 3.0 and probes[-2] == 2.86  # 0, 0.26, 0.52, ... 2.86, then at the deadline itself
    assert round(g.elapsed_s, 3) == 3.01  # was up to 3.0 + 0.25 + a probe


def test_a_daemon_that_holds_the_state_past_the_deadline_fails_the_gate_and_says_why(monkeypatch):
    """Found by an exploratory run: dockerd stopped 30 s during the gate of a release with a 5 s deadline; the state read
    waited it out, the probe after it passed, and the gate said 'healthy after 30.04s'. Nothing was seen in time."""
    from agent import health
    from agent.motion import points_away

    clock = [100.0]
    monkeypatch.setattr(health, "probe", lambda url, timeout: health.Probe(True, "HTTP 200"))
    monkeypatch.setattr(health.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(health.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    reads = iter([(True, 0, "running"), "stall"] + [(True, 0, "running")] * 100)

    def state():
        got = next(reads)
        if got == "stall":
            clock[0] += 30.0  # the daemon answers 30 s later
            return True, 0, "running"
        return got

    g = health.gate("http://x/health", healthy_deadline=5, min_healthy_time=0, interval=0.25, container_state=state)
    assert not g.ok and g.phase == "deadline", g
    assert "did not answer the container's state for 30s; the 5s deadline passed meanwhile" in g.reason, g.reason
    assert points_away(Exception(), g.reason, {}), "not the release's fault: no freeze"
    # a failing release stays the release's failure however slow the daemon was (found by CI under load: a busy host
    # made a failing release's last attempt late, and 'did not answer' then kept it unfrozen)
    clock[0] = 100.0
    monkeypatch.setattr(health, "probe", lambda url, timeout: health.Probe(False, "HTTP 500"))
    reads = iter([(True, 0, "running"), "stall"] + [(True, 0, "running")] * 100)
    g = health.gate("http://x/health", healthy_deadline=5, min_healthy_time=0, interval=0.25, container_state=state)
    assert not g.ok and g.reason == "not healthy within 5s: HTTP 500", g.reason
    monkeypatch.setattr(health, "probe", lambda url, timeout: health.Probe(True, "HTTP 200"))
    # a state unknown from the start is no '(restarts -1)': the first answer sets what a restart is counted from
    unknown = iter([(False, -1, "unknown (the Docker daemon did not answer)")] + [(True, 4, "running")] * 100)
    g = health.gate("http://x/health", healthy_deadline=5, min_healthy_time=0.5, interval=0.25, container_state=lambda: next(unknown))
    assert g.ok, g


def test_a_new_container_s_restarts_count_from_zero_even_when_the_daemon_misses_the_first_read(monkeypatch):
    """Left open last session: a state unknown at the gate's start let the first answer set the baseline, so a new
    container that crash-restarted before the daemon answered passed. The transaction knows it just created it: 0."""
    from agent import health

    monkeypatch.setattr(health, "probe", lambda url, timeout: health.Probe(True, "HTTP 200"))
    reads = [(False, -1, "unknown (the Docker daemon did not answer)")] + [(True, 1, "running")] * 100
    unknown = iter(reads)
    g = health.gate("http://x/health", healthy_deadline=1, min_healthy_time=0.2, interval=0.05,
                    container_state=lambda: next(unknown), restarts0=0)
    assert not g.ok and "container running, restarted 1 time(s) during the gate" in g.reason, g
    unknown = iter(reads)  # not known (a container brought back): the first answer still sets it, as before
    assert health.gate("http://x/health", healthy_deadline=1, min_healthy_time=0.2, interval=0.05,
                       container_state=lambda: next(unknown)).ok


def test_the_transaction_gates_a_container_it_created_from_zero_restarts(monkeypatch):
    from agent import health, transaction

    seen = {}
    monkeypatch.setattr(health, "gate", lambda *a, **kw: seen.update(kw) or health.GateResult(True, "passed", "ok"))
    tx = transaction.Transaction.__new__(transaction.Transaction)
    monkeypatch.setattr(tx, "_address", lambda c, h: "10.0.0.2", raising=False)
    tx._gate(object(), {"port": 8080}, "svc", restarts0=0)
    assert seen["restarts0"] == 0
    tx._gate(object(), {"port": 8080}, "svc")
    assert seen["restarts0"] is None  # which gates pass 0: tests/test_container_states_unit.py (a swap and its revert)


def test_history_says_a_rollout_s_transaction_was_stopped_by_a_forced_unlock(tmp_path, monkeypatch):
    """Found on the lab: fab unlock --force was recorded only on the host (unlocks.jsonl); fab history never said it."""
    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "l.jsonl"))
    from agent.vocabulary import Record
    from playbooks import ledger, operate

    ledger.append("started", rollout_id="r5", phase="p")
    answer = {"ok": True, "data": {"holder": {"rollout_id": "r5", "pid": 3512, "holder": "ana@laptop"}}}
    operate.record_unlock("pc2", answer, "gate hung on a dead NFS mount")
    ledger.append("finished", rollout_id="r5", phase="p", final="reverted")
    operate.record_unlock("pc2", {"ok": True, "data": {"holder": None}}, "nothing held it")  # nothing stopped: nothing said
    (e,) = rollouts()
    assert e["final"] == "reverted" and "its transaction on pc2 was stopped by fab unlock --force" in e["note"], e
    assert "'gate hung on a dead NFS mount'" in e["note"]
    assert [r["kind"] for r in ledger.read()].count(Record.UNLOCKED) == 1


def test_an_unlock_of_a_lock_not_held_by_one_of_this_ledger_s_rollouts_makes_no_row(tmp_path, monkeypatch):
    """From an independent read: unlocking a stuck remove or a teammate's rollout added a phantom 'unfinished' row."""
    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "l.jsonl"))
    from playbooks import ledger, operate

    ledger.append("finished", rollout_id="r1", phase="p", final="committed")
    operate.record_unlock("pc2", {"data": {"holder": {"rollout_id": "remove-llm-api-1", "pid": 7}}}, "stuck remove")
    assert [e["rollout_id"] for e in rollouts()] == ["r1"]


def test_a_window_check_that_came_late_says_so_not_a_time_inside_the_window(monkeypatch):
    """Found by an exploratory run: dockerd stopped 20 s in the 2 s window of a crashing release; the gate said
    'unhealthy 20.5s into the 2s stability window'. A check inside the window keeps its words."""
    from agent import health

    clock = [100.0]
    monkeypatch.setattr(health, "probe", lambda url, timeout: health.Probe(True, "HTTP 200"))
    monkeypatch.setattr(health.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(health.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))

    def reads(stall_s: float):
        answers = iter([(True, 0, "running"), (True, 0, "running"), "stall"] + [(True, 1, "running")] * 100)

        def state():
            got = next(answers)
            if got == "stall":
                clock[0] += stall_s
                return True, 1, "restarting"
            return got
        return state

    g = health.gate("http://x/health", healthy_deadline=8, min_healthy_time=2, interval=0.25, container_state=reads(20.0))
    assert not g.ok and g.phase == "window", g
    assert g.reason.startswith("unhealthy at the end of the 2s stability window (checked 20.2s after it began): container"), g
    g = health.gate("http://x/health", healthy_deadline=8, min_healthy_time=2, interval=0.25, container_state=reads(0.0))
    assert not g.ok and g.reason.startswith("unhealthy 0.2s into the 2s stability window: container restarting"), g
