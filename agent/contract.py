"""The image contract and the label names, defined once for the agent and the controller.

Every image runs as 10001:10001 with tini as PID 1 (the blueprint); every container
fleetroll starts carries these labels, which is how the planner, status and recovery
know what a container is, which rollout made it and what it replaced.
"""

from __future__ import annotations

import posixpath
import re

IMAGE_USER = "10001:10001"

MANAGED = "io.fleetroll.managed"
SERVICE = "io.fleetroll.service"
TAG = "io.fleetroll.tag"
DIGEST = "io.fleetroll.digest"
ROLLOUT_ID = "io.fleetroll.rollout-id"
PHASE = "io.fleetroll.phase"
SPEC_HASH = "io.fleetroll.spec-hash"
PREV_TAG = "io.fleetroll.prev-tag"
PREV_DIGEST = "io.fleetroll.prev-digest"
GIT_SHA = "io.fleetroll.git-sha"
OPERATOR = "io.fleetroll.operator"
SECRET_ENV = "io.fleetroll.secret-env"  # JSON {ENV_KEY: secret name}: which env values came from host-side secrets
HEALTH = "io.fleetroll.health"  # the health gate settings, JSON: a restored container is gated on its own port
ARCH = "io.fleetroll.cuda-arch-list"
REVISION = "org.opencontainers.image.revision"


def image_problems(user: str, entrypoint: list[str] | None) -> list[tuple[str, str]]:
    """What in an image's config breaks the contract: (what was observed, how to fix it)."""
    out = []
    if (user or "") != IMAGE_USER:
        out.append((f"runs as user {user or 'root (unset)'}, required {IMAGE_USER}", f"set USER {IMAGE_USER} in the Dockerfile"))
    entry = entrypoint or []
    if not entry or "tini" not in entry[0].rsplit("/", 1)[-1]:
        out.append((f"entrypoint {entry or '(none)'} does not start with tini", 'ENTRYPOINT ["tini", "--", ...]'))
    return out


# Host paths no container may see: the host's own configuration, kernel interfaces, devices,
# and the Docker socket (which is root on the host). Checked in the inventory and again on
# the host just before a container is created.
FORBIDDEN_HOST_PATHS = ("/", "/etc", "/proc", "/sys", "/dev", "/boot", "/root", "/var/run/docker.sock", "/run/docker.sock",
                        "/var/run", "/run", "/var/lib/docker")
USER_RE = re.compile(r"[1-9][0-9]{0,9}:[1-9][0-9]{0,9}")
MIN_UID = 1000  # below: system accounts (daemons, the distribution's own users)
# Groups whose members control the host (root, admin logins, raw disks, password hashes, the Docker
# daemon). The host resolves these names (container_args.problems, with the Docker socket's own group);
# the inventory, which cannot ask the host, refuses them at the gids Debian's base-passwd fixes.
PRIVILEGED_GROUPS = ("root", "sudo", "adm", "disk", "shadow", "wheel", "docker")
FIXED_PRIVILEGED_GIDS = {0: "root", 4: "adm", 6: "disk", 27: "sudo", 42: "shadow"}


def user_problem(user: str, privileged_gids: dict[int, str] | None = None) -> str | None:
    """A container user must be a numeric uid:gid: uid >= 1000, gid no privileged group's.

    `privileged_gids` ({gid: what it is}) are the host's own (paths.privileged_gids); the gids
    of FIXED_PRIVILEGED_GIDS are refused everywhere.
    """
    if not USER_RE.fullmatch(user or ""):
        return f"user {user!r} is not a numeric non-root uid:gid (e.g. {IMAGE_USER}); containers never run as root"
    uid, gid = (int(x) for x in user.split(":"))
    if uid < MIN_UID:
        return (f"user {user!r}: uid {uid} is a system account's (below {MIN_UID}); containers run as an unprivileged"
                f" uid of their own (e.g. {IMAGE_USER})")
    bad = {**FIXED_PRIVILEGED_GIDS, **(privileged_gids or {})}
    if gid in bad:
        what = bad[gid] if " " in bad[gid] else f"group {bad[gid]!r}"
        return (f"user {user!r}: gid {gid} is {what}, whose members control the host; a container's gid must be"
                f" no privileged group's (e.g. {IMAGE_USER})")
    return None


# One pattern for every name an operator gives (service, host, phase, group): these names end
# up in container names, labels, HAProxy's configuration and its runtime-API command lines,
# so no whitespace, ';', '#', quote or newline can ever be part of one.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
NAME_RULE = "1-63 characters: lowercase letters, digits, '_', '.', '-', starting with a letter or digit"


def name_problem(kind: str, name: str) -> str | None:
    """Why `name` cannot be a service/host/phase/group name; None if it can."""
    if isinstance(name, str) and NAME_RE.fullmatch(name):
        return None
    return f"{kind} name {name!r} is not a plain name ({NAME_RULE})"


# Networks a container may join: fleetroll's own user-defined bridge (the reverse proxy's, made by
# the agent: "fleetroll" unless the inventory names another "fleetroll-..." one) or Docker's default
# bridge (""). Never `host` (the host's own interfaces and ports, its loopback services), `none`,
# `container:<other>` (another container's network namespace) or any other network.
DEFAULT_NETWORK = "fleetroll"
OWN_NETWORK_RE = re.compile(r"fleetroll(?:[_.-][a-z0-9_.-]{0,53})?")


def network_problem(network: str) -> str | None:
    """Why a container must not be created on `network` ("" = Docker's default bridge); None if it may."""
    if network in ("", "bridge") or OWN_NETWORK_RE.fullmatch(network or ""):
        return None
    if network in ("host", "none") or network.startswith("container:"):
        what = {"host": "the host's own network (its interfaces, ports and loopback services)",
                "none": "no network"}.get(network, "another container's network namespace")
        return f"network {network!r} is {what}; a container may join only fleetroll's own bridge network or the default bridge"
    return (f"network {network!r} is not fleetroll's own bridge network ({DEFAULT_NETWORK!r} or 'fleetroll-NAME') nor the"
            " default bridge; a container may join only those")


def host_path_problem(src: str, allowed: tuple[str, ...] | list[str] | None = None) -> str | None:
    """Why a bind-mount source must not be mounted; None if it may (named volumes are not host paths).

    `allowed` are the prefixes the inventory opened (defaults.host_paths); None skips that
    part (the host side checks only the hard rules, the inventory checks both).
    """
    if not src.startswith("/"):
        return None
    if ".." in src.split("/") or posixpath.normpath(src) != src or "//" in src:
        return f"host path {src!r} is not normalized (no '..', '//' or trailing '/'); write it as {posixpath.normpath(src)!r}"
    for bad in FORBIDDEN_HOST_PATHS:
        if src == bad or (bad != "/" and src.startswith(bad + "/")) or (bad == "/" and src == "/"):
            return f"host path {src!r} is {'' if src == bad else 'under '}{bad}, which no container may mount"
    if allowed is not None and not any(src == a or src.startswith(a.rstrip("/") + "/") for a in allowed):
        opened = ", ".join(allowed) or "none"
        return f"host path {src!r} is not under a prefix the inventory allows (defaults.host_paths: {opened})"
    return None
