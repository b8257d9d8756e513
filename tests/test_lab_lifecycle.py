"""lab.up after a crash cleans up first; lab.down leaves nothing behind. Runs last (it replaces the lab)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from lab import fleet

from . import conftest

pytestmark = [pytest.mark.lab, pytest.mark.stage(3)]  # takes the lab down and up: last


def test_second_up_after_crash_cleans_up_then_down_leaves_nothing(lab):
    # A crash: the controller dies and leaves the lab running, one sshd killed by signal.
    os.kill(int((lab.host("pc2").dir / "sshd.pid").read_text()), signal.SIGKILL)
    t0 = time.monotonic()
    state = fleet.up(2)
    took = time.monotonic() - t0
    conftest._current.clear()
    try:
        assert took < 60, f"lab.up took {took:.1f}s"
        assert [h.name for h in state.hosts] == ["mainpc", "pc2"]
        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"{fleet.NS_PREFIX}bad-driver" not in netns.split() and f"{fleet.NS_PREFIX}pc2" in netns.split()
    finally:
        fleet.down()
    assert fleet.leftovers() == []
    assert not fleet.LAB_DIR.exists()


def test_lab_touches_only_what_it_made():
    """A bystander whose command line mentions the lab directory survives lab.up and lab.down."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    bystander = subprocess.Popen(["bash", "-c", f"sleep 300; true  # reads {fleet.LAB_DIR}/inventory/fleet.yml"])
    try:
        conftest._current.clear()
        fleet.up(1, images=False)
        fleet.down()
        assert bystander.poll() is None, "lab.up/lab.down killed a process it did not start"
        # The README's first command, run the way an operator's script would: through bash -c.
        readme = (root / "README.md").read_text().split("```sh\n", 1)[1].split("\n", 1)[0]
        assert readme.startswith("bash scripts/setup.sh && .venv/bin/fab lab.up")
        # This worker's lab instance (FLEETROLL_LAB_INSTANCE) has its own directory; the command is otherwise the README's.
        readme = readme.replace("/tmp/frlab/", f"{fleet.LAB_DIR}/")
        r = subprocess.run(["bash", "-c", readme], cwd=root, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert "preflight passed" in r.stdout
        assert bystander.poll() is None
    finally:
        fleet.down()
        bystander.kill()
        bystander.wait()
    assert fleet.leftovers() == []


def test_lab_refuses_to_delete_what_it_did_not_make(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    fab = str(Path(__import__("sys").executable).with_name("fab"))
    foreign = tmp_path / "not-a-lab"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    for bad in ("/", "/tmp", str(Path.home()), str(foreign)):
        r = subprocess.run([fab, "lab.down"], cwd=root, capture_output=True, text=True, timeout=60,
                           env={**os.environ, "FLEETROLL_LAB_DIR": bad})
        assert r.returncode == 1 and "refus" in r.stdout + r.stderr, (bad, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
    assert (foreign / "precious.txt").read_text() == "keep me"
    link = tmp_path / "link"
    link.symlink_to(foreign)
    r = subprocess.run([fab, "lab.down"], cwd=root, capture_output=True, text=True, env={**os.environ, "FLEETROLL_LAB_DIR": str(link)})
    assert r.returncode == 1 and "symlink" in r.stdout + r.stderr and (foreign / "precious.txt").exists()
