"""An option given but naming nothing (a script's unset variable) is an error, never "everything" or "the default".

Found by an exploratory run: `-H ""` (and `-H ","`) planned the whole phase on every host, and `-i ""` loaded
$FLEETROLL_INVENTORY or ./inventory/fleet.yml instead of failing.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from .conftest import FAB, ROOT

INV = str(ROOT / "inventory" / "fleet.yml")


@pytest.mark.parametrize("argv, says", [
    (["rollout", "-p", "core-infra", "-n", "-H", "", "-i", INV], "--hosts '' names no host"),
    (["preflight", "-H", ",", "-i", INV], "--hosts ',' names no host"),
    (["status", "-i", ""], "--inventory '' names no file"),
])
def test_an_empty_hosts_or_inventory_option_is_exit_1_naming_it(argv, says):
    r = subprocess.run([FAB, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 1 and says in r.stderr, (r.stdout, r.stderr)
    r = subprocess.run([FAB, *argv, "-j"], cwd=ROOT, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 1 and says in json.loads(r.stdout)["error"], (r.stdout, r.stderr)


@pytest.mark.parametrize("argv, says", [
    (["preflight", "-p", "gpu-mainpc", "-H", "pc2", "-i", INV], "--hosts pc2: phase gpu-mainpc has no service there"),
    (["rollback", "-p", "gpu-mainpc", "-s", "llm-inference", "--to", "x;id", "-y", "-i", INV], "--to 'x;id': tag 'x;id' does"),
    (["rollback", "-p", "gpu-mainpc", "--to", "20261201-abcdef0", "-y", "-i", INV], "add -s SERVICE (phase gpu-mainpc: "),
])
def test_preflight_and_rollback_refuse_what_rollout_refuses_before_asking_a_host(argv, says):
    """Found by an exploratory run: preflight -p P -H <host outside P> passed with one host; --to 'x;id' went to the host;
    --to TAG without -s went to every service of the phase: one that had run TAG went back, the others were refused."""
    r = subprocess.run([FAB, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 1 and says in r.stderr, (r.stdout, r.stderr)


@pytest.mark.parametrize("argv, says", [
    (["rollback", "-p", "gpu-mainpc", "-s", "nope", "-i", INV], "--service nope: not a service of phase gpu-mainpc"),
    (["rollback", "-p", "gpu-mainpc", "-H", "pc2", "-i", INV], "pc2"),
    (["rollback", "-s", "llm-inference", "--to", "latest", "-i", INV], "--to 'latest': tag 'latest' does not match"),
    (["restart", "-s", "nope", "-i", INV], "--service 'nope' is not in the inventory"),
    (["restart", "-s", "llm-inference", "-H", "pc2", "-i", INV], "llm-inference has no replica on pc2"),
])
def test_rollback_and_restart_name_bad_input_before_asking_for_confirmation(argv, says):
    """Found by an exploratory run: without -y (a script, no terminal) a bad -s/-H/--to said only "not confirmed (use
    --yes ...)", and at a terminal the operator was asked to confirm a restart of a service that does not exist."""
    r = subprocess.run([FAB, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and says in r.stderr and "not confirmed" not in r.stderr, (r.stdout, r.stderr)
