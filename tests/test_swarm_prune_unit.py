"""`fab prune` with swarm phases: Swarm secrets of earlier values go once neither a current nor a previous spec names
them, never one fleetroll did not make, never one made in the last minutes (a fake manager; no hosts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from playbooks import ledger, operate, render
from playbooks.errors import RolloutError
from playbooks.inventory import load
from playbooks.swarm import deploy, prune

from .test_swarm_down_unit import FLEET, PHASES

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
OLD = (NOW - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
NEW = (NOW - timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")


def secret(sid: str, name: str, created: str = OLD, ours: bool = True) -> dict:
    return {"ID": sid, "CreatedAt": created, "Spec": {"Name": name, "Labels": {"io.fleetroll.secret": "tok"} if ours else {}}}


def service(current: list[dict], previous: list[dict] | None = None) -> dict:
    def spec(refs):
        return {"TaskTemplate": {"ContainerSpec": {"Secrets": refs}}}

    return {"Spec": spec(current), **({"PreviousSpec": spec(previous)} if previous is not None else {})}


def test_only_fleetroll_s_secrets_no_spec_names_and_old_enough_go():
    secrets = [secret("s1", "fr_tok_aaaaaaaaaaaa"), secret("s2", "fr_tok_bbbbbbbbbbbb"), secret("s3", "fr_tok_cccccccccccc"),
               secret("s4", "fr_tok_dddddddddddd", created=NEW), secret("s5", "db_password", ours=False),
               secret("s6", "fr_tok_eeeeeeeeeeee", created="garbled"), secret("s7", "fr_tok_ffffffffffff", created="0001-01-01T00:00:00Z")]
    services = [service([{"SecretID": "s3", "SecretName": "fr_tok_cccccccccccc"}],
                        previous=[{"SecretName": "fr_tok_bbbbbbbbbbbb"}])]  # Swarm's rollback would need s2
    gone, kept = prune.unused(secrets, services, NOW)
    assert gone == [("s1", "fr_tok_aaaaaaaaaaaa")]
    why = {k["name"]: k["why"] for k in kept}
    assert set(why) == {"fr_tok_bbbbbbbbbbbb", "fr_tok_cccccccccccc", "fr_tok_dddddddddddd", "fr_tok_eeeeeeeeeeee",
                        "fr_tok_ffffffffffff"}, "an unreadable or never-set CreatedAt is not 'old'"
    assert "previous spec" in why["fr_tok_bbbbbbbbbbbb"] and "15 min" in why["fr_tok_dddddddddddd"]
    assert "db_password" not in why, "a secret fleetroll did not make is not even listed"


def test_docker_times_are_read_with_their_offset_and_go_s_zero_time_is_unknown():
    assert prune.docker_time("2026-11-30T10:00:00.663248305+01:00") == datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    assert prune.docker_time("2026-11-30T09:00:00Z") == prune.docker_time("2026-11-30T09:00:00.5Z").replace(microsecond=0)
    assert prune.docker_time("0001-01-01T00:00:00Z") is None and prune.docker_time("yesterday") is None


class Manager:
    """A manager's docker, as the commands prune runs answer; `refuse` names secrets Docker will not remove."""

    name = "mainpc"

    def __init__(self, refuse: tuple[str, ...] = ()):
        long_ago = "2026-11-30T07:00:00.5Z"  # two hours before the manager's clock below
        self.secrets = [secret("s1", "fr_tok_aaaaaaaaaaaa", long_ago), secret("s2", "fr_tok_bbbbbbbbbbbb", long_ago)]
        self.clock = "2026-11-30T10:00:00.000000001+01:00"  # the manager's time, not the controller's
        self.services = [service([{"SecretID": "s2"}])]
        self.refuse, self.ran, self.closed = refuse, [], False

    def lines(self, argv):
        self.ran.append(argv)
        if argv[:3] == ["docker", "secret", "ls"]:
            assert argv[-1] == "label=io.fleetroll.secret"
            return [s["ID"] for s in self.secrets]
        assert argv[:3] == ["docker", "service", "ls"]
        return ["svc1"]

    def json(self, argv):
        self.ran.append(argv)
        if argv[:2] == ["docker", "info"]:
            return self.clock
        return self.secrets if argv[:3] == ["docker", "secret", "inspect"] else self.services

    def run(self, argv, check=True):
        self.ran.append(argv)
        assert argv[:3] == ["docker", "secret", "rm"] and not check
        return (1, "", f"Error response from daemon: secret {argv[3]} is in use") if argv[3] in self.refuse else (0, argv[3], "")


    def close(self):
        self.closed = True


@pytest.fixture
def inv(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger.jsonl"))
    (tmp_path / "fleet.yml").write_text(FLEET)
    (tmp_path / "phases.yml").write_text(PHASES)
    monkeypatch.setattr(operate.transport, "on_hosts", lambda inv, hosts, op, args, **kw: {})  # no image prune here
    return load(tmp_path / "fleet.yml")


def test_fab_prune_removes_the_unused_secret_through_a_manager_and_ledgers_it(inv, monkeypatch):
    m = Manager()
    monkeypatch.setattr(deploy, "open_manager", lambda inv: m)
    dry = operate.prune(inv, dry_run=True)
    assert dry["swarm"]["removed"] == ["fr_tok_aaaaaaaaaaaa"] and not any(a[:3] == ["docker", "secret", "rm"] for a in m.ran)
    out = operate.prune(inv)
    assert out["swarm"]["removed"] == ["fr_tok_aaaaaaaaaaaa"] and out["swarm"]["failed"] == [] and m.closed
    assert ["docker", "secret", "rm", "s1"] in m.ran and ["docker", "secret", "rm", "s2"] not in m.ran  # by ID
    assert ledger.read()[-1]["swarm_secrets_removed"] == ["fr_tok_aaaaaaaaaaaa"]
    text = render.prune_text(out)
    assert "swarm (through mainpc): removed 1 Swarm secret(s)" in text and "kept fr_tok_bbbbbbbbbbbb" in text
    # a prune limited to hosts does not touch the swarm's secrets
    assert "swarm" not in operate.prune(inv, hosts=["pc2"])


def test_a_manager_whose_clock_says_the_secret_is_young_keeps_it(inv, monkeypatch):
    m = Manager()
    m.clock = "2026-11-30T07:05:00Z"  # five minutes after the secrets were made, whatever the controller's clock says
    monkeypatch.setattr(deploy, "open_manager", lambda inv: m)
    out = operate.prune(inv)
    assert out["swarm"]["removed"] == [] and {k["name"] for k in out["swarm"]["kept"]} == {"fr_tok_aaaaaaaaaaaa",
                                                                                         "fr_tok_bbbbbbbbbbbb"}


def test_a_secret_docker_refuses_and_a_swarm_with_no_manager_are_said(inv, monkeypatch):
    monkeypatch.setattr(deploy, "open_manager", lambda inv: Manager(refuse=("s1",)))
    out = operate.prune(inv)
    assert out["swarm"]["removed"] == [] and out["swarm"]["failed"][0]["name"] == "fr_tok_aaaaaaaaaaaa"
    assert "FAILED fr_tok_aaaaaaaaaaaa: Error response from daemon" in render.prune_text(out)

    def none(inv):
        raise RolloutError("no swarm manager answers: mainpc: connection refused; fix: fab swarm.form")

    monkeypatch.setattr(deploy, "open_manager", none)
    out = operate.prune(inv)
    assert out["swarm"]["error"].startswith("no swarm manager answers")
    assert "swarm: Swarm secrets not pruned: no swarm manager answers" in render.prune_text(out)


def test_a_dry_run_says_what_the_images_weigh_not_zero_freed():
    """Found on the lab: the dry run said '0 MB freed' and the real run then freed 16 MB."""
    from playbooks import render

    host = {"reachable": True, "ok": True, "removed": [{"image": "sha256:1", "names": ["r/a:t1"], "size": 9_000_000},
                                                       {"image": "sha256:2", "names": ["r/a:t2"], "size": 7_000_000}],
            "kept": [], "failed": [], "freed_bytes": 0}
    text = render.prune_text({"dry_run": True, "hosts": {"pc2": host}})
    assert "pc2: would remove 2 image(s) of 16 MB in all" in text and "freed" not in text, text
    assert "removed 2 image(s), 16 MB freed" in render.prune_text({"hosts": {"pc2": {**host, "freed_bytes": 16_000_000}}})
