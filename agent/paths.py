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


RUN_DIR = Path("/run/fleetroll")  # on a tmpfs: what must never reach a disk (secret files)


def run_dir() -> Path:
    """The agent's tmpfs directory (FLEETROLL_RUN_DIR, default /run/fleetroll); found, never created, here.

    secret_files.py makes it (as root) or requires it (any other account: root makes it once,
    group of the Docker socket, mode 2770, e.g. by systemd-tmpfiles at boot) and checks it.
    """
    return Path(os.environ.get("FLEETROLL_RUN_DIR") or RUN_DIR)


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
    out = [*state_dir_candidates(), *LOCK_DIRS, _home() / AGENT_DIR_NAME, run_dir()]
    if os.environ.get("FLEETROLL_LOCK_DIR"):
        out.append(Path(os.environ["FLEETROLL_LOCK_DIR"]))
    return out


def host_paths() -> list[str] | None:
    """Bind-mount prefixes this host itself allows (FLEETROLL_HOST_PATHS, ':'-separated, set where the agent's
    environment is set, e.g. sshd's SetEnv); None when the host names none (the plan's prefixes, the
    inventory's defaults.host_paths, then bound what a source may resolve to)."""
    raw = os.environ.get("FLEETROLL_HOST_PATHS")
    if raw is None:
        return None
    return [p for p in raw.split(":") if p]


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def allowed_prefixes(plan: list[str] | None, host: list[str] | None) -> list[str] | None:
    """The bind prefixes in force on this host: the intersection of what the plan says and what the host allows (pure).

    `plan` is the inventory's defaults.host_paths as the controller sent it, `host` this host's
    own list (host_paths()); None on either side means that side sets no bound. A path is
    allowed when it lies under a prefix of each side, so each overlapping pair contributes the
    deeper of the two: a forged plan can narrow what the host allows, never widen it. The
    hard rules (forbidden paths, the agent's own directories, symlinks) apply on top, always.
    """
    if plan is None or host is None:
        return None if plan is None and host is None else list(plan if host is None else host)
    out: list[str] = []
    for p in plan:
        for h in host:
            deeper = h if _under(h, p) else p if _under(p, h) else None
            if deeper is not None and deeper not in out:
                out.append(deeper)
    return out


def plan_prefix_problems(plan: object) -> list[str]:
    """What is wrong with the prefixes a plan sent (pure): they must be a list of absolute, normalized paths."""
    import posixpath

    if plan is None:
        return []
    if not isinstance(plan, list):
        return [f"the plan's host_paths is {type(plan).__name__}, not a list of absolute paths; refused"]
    return [f"the plan's host_paths entry {p!r} is not an absolute normalized path; refused" for p in plan
            if not isinstance(p, str) or not p.startswith("/") or posixpath.normpath(p) != p or "//" in p]


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
