"""What a container about to be created must not be, judged on this host, before anything stops (issue 21).

The inventory checks the text; here the same rules are checked again for every create,
whatever made the configuration (a plan, a journal, `docker inspect`), by what things are
on this host: bind sources resolved (no symlink on the way, never the agent's own
directories, under the prefixes in force: the plan's and the host's own), the user's gid
against this host's privileged groups, the network, the proxy's configuration, and whether
this host can give the container its secret files. Not pure, by design: container_args.py
is the pure part.
"""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

from . import contract, paths, secrets

TYPE_CHECKING = False  # importing typing costs every agent call ~2.5 ms; Any is only ever an annotation here
if TYPE_CHECKING:
    from typing import Any


def problems(args: dict[str, Any], plan_host_paths: list[str] | None = None) -> list[str]:
    """What in a container about to be created breaks the hard rules (checked on the host, before anything stops).

    Not pure: bind sources are resolved on this host's filesystem (lstat, realpath), the
    user's gid is compared with this host's privileged groups, the Docker socket's among them,
    and secret files need this host's tmpfs directory. `plan_host_paths` are the prefixes the
    plan sent (the inventory's defaults.host_paths; None from a caller that has no plan):
    a bind source must resolve under them *and* under the host's own (paths.allowed_prefixes).
    """
    from . import proxy, secret_files

    out = paths.plan_prefix_problems(plan_host_paths)
    if out:
        plan_host_paths = []  # a malformed list is refused, and opens nothing meanwhile
    user_problem = contract.user_problem(args.get("user") or "", paths.privileged_gids())
    if user_problem:
        out.append(user_problem)
    config = (args.get("env") or {}).get(proxy.CONFIG_ENV)
    own, host_own = paths.own_dirs(), paths.host_paths()
    run_dirs = {str(d / "proxy-run") for d in paths.state_dir_candidates()}
    allowed = paths.allowed_prefixes(plan_host_paths, host_own)
    if plan_host_paths is not None and host_own is not None:
        source = (f"defaults.host_paths: {', '.join(plan_host_paths) or 'none'} and FLEETROLL_HOST_PATHS:"
                  f" {':'.join(host_own) or 'none'} meet in {', '.join(allowed or []) or 'nothing'}")
    else:
        source = (f"defaults.host_paths: {', '.join(plan_host_paths) or 'none'}" if plan_host_paths is not None
                  else f"FLEETROLL_HOST_PATHS: {':'.join(host_own or []) or 'none'}")
    for b in args.get("binds") or []:
        if secrets.in_mount_dir(b):
            out.append(f"bind {b!r}: {secrets.MOUNT_DIR} in the container is where fleetroll mounts secret files;"
                       " mount the volume somewhere else")
            continue
        src, _, rest = b.partition(":")
        # The proxy's admin socket directory (in the state directory) is the one own path a
        # container sees: the proxy's, checked below as a configuration render() made.
        proxy_run = config is not None and rest.split(":")[0] == proxy.SOCKET_IN_CONTAINER and src in run_dirs
        p = contract.host_path_problem(src) or bind_problem(src, [] if proxy_run else own, None if proxy_run else allowed,
                                                            source)
        if p:
            out.append(p)
    if config is not None and not any(b.partition(":")[0] in run_dirs for b in args.get("binds") or []):
        out.append(f"env {proxy.CONFIG_ENV} is the reverse proxy's own configuration, and this container does not mount the"
                   " proxy's admin socket directory as the agent's proxy does: it is not the proxy; fix: remove"
                   f" {proxy.CONFIG_ENV} from its env (only reverse_proxy.service carries it, rendered by fleetroll)")
    out += secret_files.problems(args)
    network_problem = contract.network_problem(str(args.get("network") or ""))
    if network_problem:
        out.append(network_problem)
    if config is not None:  # the proxy's configuration, as the controller sent it: only what render() makes
        out += proxy.config_problems(str(config))
    return out


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def bind_problem(src: str, own: list[Path] | list[str], allowed: list[str] | None, source: str = "") -> str | None:
    """Why a bind source must not be mounted, judged by what it is on this host; None if it may.

    The text was checked already (contract.host_path_problem); here every existing component
    is lstat'ed and none may be a symlink (a container with a read-write mount could otherwise
    turn a subdirectory into `-> /` for the next container that mounts it), the resolved path
    must hold none of the agent's own directories nor lie in one (`own`), nor be a device or
    socket, and, when prefixes are in force (`allowed`, named by `source`), lie under one after resolution.
    Missing trailing components are left to Docker, which creates them as directories.
    """
    if not src.startswith("/"):
        return None  # a named volume
    cur = "/"
    for part in [p for p in src.split("/") if p]:
        cur = posixpath.join(cur, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            break
        except OSError as exc:
            return f"host path {src!r}: cannot check {cur} ({exc.strerror}); refused"
        if stat.S_ISLNK(st.st_mode):
            try:
                to = os.readlink(cur)
            except OSError:
                to = "?"
            return (f"host path {src!r} has a symlink at {cur} (-> {to!r}); a bind source must be real directories all"
                    " the way down, or whoever can write beside it decides what the container sees")
        if cur == src and (stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
            return f"host path {src!r} is a device or a socket, which no container may mount"
    real = os.path.realpath(src)
    problem = contract.host_path_problem(real) if real != src else None
    if problem or real != src:
        return problem or f"host path {src!r} resolves to {real!r}; refused"
    for d in own:
        for form in dict.fromkeys((str(d), os.path.realpath(d))):
            if _within(real, form) or _within(form, real):
                where = "is" if real == form else "is under" if _within(real, form) else "contains"
                return (f"host path {src!r} {where} {form}, the agent's own state, lock or code directory, which no"
                        " container may mount")
    if allowed is not None and not any(_within(real, a) or _within(real, os.path.realpath(a)) for a in allowed):
        return f"host path {src!r} is not under a prefix this host allows ({source or ':'.join(allowed) or 'none'})"
    return None


def swarm_network_problem(container: dict[str, Any], network: dict[str, Any]) -> str | None:
    """Why `container` must not join the overlay `network` (`docker inspect` of each); None if it may.

    problems() lets a container be created only on fleetroll's bridge or the default bridge. The one exception
    is joined after creation: the SSH push's proxy, on the overlay `fab swarm.form` made (fr-proxy: overlay, swarm
    scope, attachable, fleetroll's label), so it can serve a phase's Swarm tasks while the phase moves between the
    engines. Only the proxy: its configuration is checked line by line (proxy.config_problems) and it publishes
    nothing but the listen ports; any other container on that overlay would reach every task of every stack on it.
    """
    from . import proxytasks

    problem = proxy_problem(container)
    if problem:
        return (f"{problem}: only the proxy joins the overlay {proxytasks.SWARM_NETWORK} (a container may join only"
                " fleetroll's bridge network or the default bridge)")
    key, value = proxytasks.SWARM_NETWORK_LABEL
    got = (network.get("Name"), network.get("Driver"), network.get("Scope"), bool(network.get("Attachable")),
           (network.get("Labels") or {}).get(key))
    if got != (proxytasks.SWARM_NETWORK, "overlay", "swarm", True, value):
        return (f"network {network.get('Name')!r} is not the overlay fab swarm.form makes (name, driver, scope, attachable,"
                f" label: {got}); fix: fab swarm.form (it says how to make it again)")
    return None


def proxy_problem(container: dict[str, Any], run_dir: str | None = None) -> str | None:
    """Why `container` (`docker inspect`) is not the proxy this agent made and talks to; None if it is.

    Not a name from a request, nor a label anyone can give a `docker run`: the container carries fleetroll's label and
    the created-by label the agent's transaction sets, mounts `run_dir` (default: this agent's <state>/proxy-run, where
    the runtime API it drives has its socket) at the proxy's socket path, and its configuration is one render() makes
    (proxy.config_problems). problems() lets no other container have that mount or that configuration. Whether it runs,
    and under its service's name, is the caller's (agent/handover.py find_proxy): a restored proxy joins the overlay
    again from what it was inspected as.
    """
    from . import proxy
    from .motion import CREATED_BY

    cfg, hc = container.get("Config") or {}, container.get("HostConfig") or {}
    labels, name = cfg.get("Labels") or {}, str(container.get("Name") or "?").lstrip("/")
    env = dict(str(e).partition("=")[::2] for e in cfg.get("Env") or [])
    run_dir = run_dir or str(paths.state_dir() / "proxy-run")
    why = ("not labelled as a container fleetroll made" if labels.get(contract.MANAGED) != "true" or not labels.get(CREATED_BY)
           else f"does not mount the agent's {run_dir} at {proxy.SOCKET_IN_CONTAINER}" if not any(
               str(b).split(":")[:2] == [run_dir, proxy.SOCKET_IN_CONTAINER] for b in hc.get("Binds") or []) else
           f"has no {proxy.CONFIG_ENV}" if proxy.CONFIG_ENV not in env else
           "; ".join(proxy.config_problems(env[proxy.CONFIG_ENV])))
    return f"container {name!r} is not fleetroll's proxy ({why})" if why else None
