"""Both SSH clients against the lab's real sshd, and the `fleetroll` command's prewarmed logins.

Every other lab test runs on the default client (OpenSSH wherever `ssh` is on PATH); this
module keeps the paramiko client proven on the same checks, and counts the ssh processes a
command starts (a logging shim in front of the real `ssh`) to show a prewarmed login is the
one the command uses, never a second login beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab import fleet
from playbooks.inventory import load
from playbooks.runner import run_preflight

from .conftest import derive_inventory

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parent.parent
FLEETROLL = str(Path(sys.executable).with_name("fleetroll"))


def _check(rep, host: str, name: str):
    return next(c for c in rep.checks if c.host == host and c.check == name)


@pytest.mark.parametrize("client", ["openssh", "paramiko"])
def test_each_client_passes_preflight_and_refuses_unknown_and_changed_host_keys(lab, tmp_path, client):
    inv = load(derive_inventory(lab, tmp_path / "ok", lambda d: d["ssh"].update(client=client)))
    for _ in range(2):  # the first may upload the agent (a fresh lab); the second is one round trip per host
        rep = run_preflight(inv, hosts=["mainpc", "pc2"])
        assert rep.ok, [(c.host, c.check, c.detail) for c in rep.checks if c.status == "fail"]
    assert [r.round_trips for r in rep.calls.values()] == [1, 1]

    kh = tmp_path / "known_hosts"
    kh.write_text(fleet.host_key_line(lab.host("pc2")))  # mainpc's key missing
    inv = load(derive_inventory(lab, tmp_path / "unknown", lambda d: d["ssh"].update(known_hosts=str(kh), client=client)))
    rep = run_preflight(inv, hosts=["mainpc"])
    assert rep.calls["mainpc"].error_kind == "host-key-unknown"
    assert "never trusts on first use" in _check(rep, "mainpc", "ssh").detail

    other = lab.host("pc2")  # pc2's key recorded under mainpc's address: as if mainpc's key changed
    kh.write_text(fleet.host_key_line(other).replace(other.address, lab.host("mainpc").address))
    inv = load(derive_inventory(lab, tmp_path / "changed", lambda d: d["ssh"].update(known_hosts=str(kh), client=client)))
    rep = run_preflight(inv, hosts=["mainpc"])
    assert rep.calls["mainpc"].error_kind == "host-key-changed"
    assert "HOST KEY CHANGED" in _check(rep, "mainpc", "ssh").detail


@pytest.fixture
def ssh_log(tmp_path):
    """PATH with a `ssh` in front of the real one that logs each start (its target) and then becomes the real ssh."""
    real = shutil.which("ssh")
    assert real, "OpenSSH's client is part of the lab"
    bindir, log = tmp_path / "bin", tmp_path / "ssh.log"
    bindir.mkdir()
    (bindir / "ssh").write_text(f'#!/bin/sh\nfor a; do last="$prev"; prev="$a"; done\necho "$last" >> {log}\n'
                                f'exec {real} "$@"\n')
    (bindir / "ssh").chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
           "FLEETROLL_LEDGER": str(tmp_path / "ledger.jsonl")}
    return env, log


def _started(log: Path) -> list[str]:
    return sorted(log.read_text().split()) if log.exists() else []


def test_the_command_logs_in_once_per_host_with_or_without_prewarm(lab, tmp_path, ssh_log):
    env, log = ssh_log
    inv = derive_inventory(lab, tmp_path / "inv")
    addresses = sorted([lab.host("mainpc").address, lab.host("pc2").address])
    for prewarm in ("1", "0"):
        log.unlink(missing_ok=True)
        r = subprocess.run([FLEETROLL, "preflight", "-i", str(inv), "-H", "mainpc,pc2", "--json", "--timings"], cwd=tmp_path,
                           env={**env, "FLEETROLL_PREWARM": prewarm}, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        out = json.loads(r.stdout)
        assert out["ok"]
        assert _started(log) == addresses, f"prewarm={prewarm}: one ssh per host, the prewarmed one used"
        assert sum(t["ahead"] for t in out["timings"].values()) == (2 if prewarm == "1" else 0), out["timings"]


def test_an_inventory_that_fails_validation_exits_1_and_its_prewarmed_logins_end_having_done_nothing(lab, tmp_path,
                                                                                                        ssh_log):
    env, log = ssh_log
    inv = derive_inventory(lab, tmp_path / "inv", lambda d: d["defaults"].update(disk_min_free_gb=-5))  # invalid: ge=0
    before = _tree(fleet.lab_home(fleet.LAB_USER) / ".fleetroll")
    r = subprocess.run([FLEETROLL, "preflight", "-i", str(inv), "--json"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "disk_min_free_gb" in r.stdout, r.stdout + r.stderr
    assert len(_started(log)) >= 1, "the logins had started before the inventory was checked"
    assert _tree(fleet.lab_home(fleet.LAB_USER) / ".fleetroll") == before, "nothing written on the hosts"


def _tree(top: Path) -> dict[str, int]:
    """Every path under the lab account's ~/.fleetroll (the hosts share it) with its modification time."""
    return {str(p): p.lstat().st_mtime_ns for p in top.rglob("*")} if top.exists() else {}
