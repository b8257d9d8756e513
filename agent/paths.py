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


# --- what no container may mount (container_args.problems) --------------------------------

AGENT_DIR_NAME = ".fleetroll"  # the agent's archive and unpacked tree, under the SSH user's home
LOCK_DIRS = (Path("/var/lock"), Path("/run/lock"))


def _home() -> Path:
    try:
        return Path.home()
    except (KeyError, RuntimeError):  # no HOME and no passwd entry: the cwd is where SSH put us
        return Path.cwd()


def state_dir_candidates() -> list[Path]:
    """Every directory state_dir() may choose, found without creating any of them."""
    out = [SYSTEM_DIR, _home() / ".local" / "state" / "fleetroll"]
    if os.environ.get("FLEETROLL_STATE_DIR"):
        out.insert(0, Path(os.environ["FLEETROLL_STATE_DIR"]))
    return out


def own_dirs() -> list[Path]:
    """The agent's own directories: its state (journals, keys, the proxy's admin socket), its locks, its code.

    A container that could see one of them (or a directory above one) could forge a journal,
    take the host lock or replace the agent; no bind mount may name them.
    """
    out = [*state_dir_candidates(), *LOCK_DIRS, _home() / AGENT_DIR_NAME]
    if os.environ.get("FLEETROLL_LOCK_DIR"):
        out.append(Path(os.environ["FLEETROLL_LOCK_DIR"]))
    return out


def host_paths() -> list[str] | None:
    """Bind-mount prefixes this host allows (FLEETROLL_HOST_PATHS, ':'-separated, set where the agent's
    environment is set, e.g. sshd's SetEnv); None when the host names none (the inventory's
    defaults.host_paths then bound the text, and the host checks what it resolves to)."""
    raw = os.environ.get("FLEETROLL_HOST_PATHS")
    if raw is None:
        return None
    return [p for p in raw.split(":") if p]


def privileged_gids() -> dict[int, str]:
    """{gid: what it is} of this host's groups whose members control the host: never a container's gid."""
    import grp

    from .contract import PRIVILEGED_GROUPS

    out = {0: "group 'root'"}
    for name in PRIVILEGED_GROUPS:
        try:
            out.setdefault(grp.getgrnam(name).gr_gid, f"group {name!r}")
        except KeyError:
            pass
    gid = socket_gid()
    if gid:  # root's group is root's whoever owns the socket
        try:
            name = grp.getgrgid(gid).gr_name
        except KeyError:
            name = str(gid)
        out[gid] = f"the Docker socket's group ({name!r})"
    return out
