"""Where the agent keeps its state on a host.

Journal and lock live under one state directory. Real hosts use /var/lib/fleetroll (or
~/.local/state/fleetroll for a non-root user); lab hosts share one filesystem, so each
lab host's sshd sets FLEETROLL_STATE_DIR to a directory of its own.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    env = os.environ.get("FLEETROLL_STATE_DIR")
    if env:
        p = Path(env)
    elif os.geteuid() == 0:
        p = Path("/var/lib/fleetroll")
    else:
        p = Path.home() / ".local" / "state" / "fleetroll"
    p.mkdir(parents=True, exist_ok=True)
    return p
