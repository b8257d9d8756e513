"""lab.up after a crash cleans up first; lab.down leaves nothing behind. Runs last (it replaces the lab)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from playbooks.lab import fleet

from . import conftest

pytestmark = pytest.mark.lab


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
        assert "frl-bad-driver" not in netns and "frl-pc2" in netns
    finally:
        fleet.down()
    assert fleet.leftovers() == []
    assert not fleet.LAB_DIR.exists()
