"""Where the agent keeps its state on a host.

The journal is per host, not per SSH user: an interrupted transaction started by `root`
must be found and recovered by `ops` on the same Docker daemon. So every user who can
reach /var/lib/fleetroll uses it (root creates it group-owned by the Docker socket's
group, mode 2770, so its files are shared by whoever can drive that daemon); only a user
who cannot falls back to ~/.local/state/fleetroll. Lab hosts share one filesystem, so
each lab host's sshd sets FLEETROLL_STATE_DIR to a directory of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

SYSTEM_DIR = Path("/var/lib/fleetroll")


def state_dir() -> Path:
    env = os.environ.get("FLEETROLL_STATE_DIR")
    if env:
        p = Path(env)
    elif os.geteuid() == 0 and not SYSTEM_DIR.exists():
        SYSTEM_DIR.mkdir(mode=0o2770, parents=True)
        gid = socket_gid()
        if gid is not None:
            os.chown(SYSTEM_DIR, -1, gid)
        os.chmod(SYSTEM_DIR, 0o2770)
        p = SYSTEM_DIR
    elif os.access(SYSTEM_DIR, os.W_OK | os.X_OK):
        p = SYSTEM_DIR
    else:
        p = Path.home() / ".local" / "state" / "fleetroll"
    p.mkdir(parents=True, exist_ok=True)
    return p


def docker_endpoint() -> str:
    """The daemon this agent drives, normalized so two spellings of one socket are one key."""
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if host.startswith("unix://"):
        return "unix://" + os.path.realpath(host[len("unix://"):])
    return host


def socket_gid() -> int | None:
    host = docker_endpoint()
    if not host.startswith("unix://"):
        return None
    try:
        return os.stat(host[len("unix://"):]).st_gid
    except OSError:
        return None
