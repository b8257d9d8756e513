"""Docker create arguments as plain data (Kamal's `commands/` layer): built, never executed, here.

A container's whole configuration is one JSON-able dict, `CreateArgs`:

    {"image", "name", "user", "env", "labels", "ports", "binds", "restart", "gpus", "stop_timeout", "network"}

`network` is the user-defined Docker network of the host's reverse proxy ("" = Docker's default bridge).

It is built two ways — from the inventory's spec for a new release (`from_spec`) and from
`docker inspect` of a running container (`from_inspect`) — and turned into Docker SDK
keyword arguments by one function (`api_kwargs`). Recording `from_inspect(old)` before a
swap is what lets a revert recreate the old container exactly (its own image, env, ports,
volumes and GPU requests), whatever the inventory says today. Pure (tested without Docker),
except `problems()`, which judges bind sources and the user's gid by what they are on this host.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import posixpath
import stat
from pathlib import Path
from typing import Any

from . import contract, paths, secrets

CreateArgs = dict[str, Any]


def gpus_count(gpus: Any) -> int:
    """Inventory `gpus` (0, N or "all") as Docker's DeviceRequest count (-1 = all, 0 = none)."""
    if gpus == "all":
        return -1
    return int(gpus or 0)


def labels_for(spec: dict, tag: str, digest: str, rollout_id: str, phase: str, operator: str, git_sha: str,
               prev_tag: str = "", prev_digest: str = "") -> dict[str, str]:
    return {
        contract.MANAGED: "true",
        contract.SERVICE: spec["name"],
        contract.TAG: tag,
        contract.DIGEST: digest,
        contract.ROLLOUT_ID: rollout_id,
        contract.PHASE: phase,
        contract.SPEC_HASH: spec.get("spec_hash", ""),
        contract.PREV_TAG: prev_tag,
        contract.PREV_DIGEST: prev_digest,
        contract.GIT_SHA: git_sha,
        contract.OPERATOR: operator,
        contract.HEALTH: json.dumps(spec.get("health") or {}, sort_keys=True, separators=(",", ":")),
    }


def from_spec(spec: dict, image: str, labels: dict[str, str]) -> CreateArgs:
    """The container a release asks for. `image` is an image id or a digest reference."""
    binds = []
    for vol in spec.get("volumes") or []:
        src, dst, *mode = vol.split(":")
        binds.append(f"{src}:{dst}:{mode[0] if mode else 'rw'}")
    env = spec.get("env") or {}
    secret_keys = secrets.refs(env)
    return {
        "image": image,
        "name": spec["name"],
        "user": spec.get("user") or contract.IMAGE_USER,
        # The exact digest this container runs, for the start-up report (observability).
        # Secret references stay references here; the agent resolves them at create time.
        "env": {**env, "FLEETROLL_IMAGE_DIGEST": labels.get(contract.DIGEST, "")},
        "labels": {**labels, **({contract.SECRET_ENV: json.dumps(secret_keys, sort_keys=True)} if secret_keys else {})},
        "ports": {k: str(v) for k, v in (spec.get("ports") or {}).items()},
        "binds": binds,
        "restart": spec.get("restart", "unless-stopped"),
        "gpus": gpus_count(spec.get("gpus")),
        "stop_timeout": int(spec.get("stop_timeout", 10)),
        "network": spec.get("network") or "",
    }


def network_of(hc: dict) -> str:
    """The user-defined network a container was created on ("" for Docker's default bridge, host or none)."""
    mode = hc.get("NetworkMode") or ""
    return "" if mode in ("", "default", "bridge", "host", "none") or mode.startswith("container:") else mode


def from_inspect(attrs: dict) -> CreateArgs:
    """The configuration a running container was created with, as `docker inspect` shows it.

    Env and labels include what the image contributed; recreating from the same image
    with them is the same container. Only the first host binding of each port is used,
    as fleetroll publishes each port once.
    """
    cfg = attrs.get("Config") or {}
    hc = attrs.get("HostConfig") or {}
    try:
        from_secret = json.loads((cfg.get("Labels") or {}).get(contract.SECRET_ENV) or "{}")
    except ValueError:
        from_secret = {}
    env: dict[str, Any] = {}
    for item in cfg.get("Env") or []:
        k, _, v = item.partition("=")
        # A value that came from a secret is recorded as its reference, never as itself.
        ref = secrets.ref_from_label(from_secret[k]) if k in from_secret else None
        env[k] = ref if ref is not None else v
    ports = {}
    for port, bindings in (hc.get("PortBindings") or {}).items():
        if bindings:
            b = bindings[0]
            ports[port] = f"{b['HostIp']}:{b.get('HostPort', '')}" if b.get("HostIp") else str(b.get("HostPort", ""))
    gpus = 0
    for req in hc.get("DeviceRequests") or []:
        if ["gpu"] in (req.get("Capabilities") or []) or any("gpu" in c for c in (req.get("Capabilities") or [])):
            gpus = int(req.get("Count", 0))
    restart = (hc.get("RestartPolicy") or {}).get("Name") or "no"
    return {
        "image": attrs.get("Image", ""),
        "name": (attrs.get("Name") or "").lstrip("/"),
        "user": cfg.get("User") or "",
        "env": env,
        "labels": dict(cfg.get("Labels") or {}),
        "ports": ports,
        "binds": list(hc.get("Binds") or []),
        "restart": restart,
        "gpus": gpus,
        "stop_timeout": int(cfg.get("StopTimeout") or 10),
        "network": network_of(hc),
    }


def _port_binding(value: str) -> Any:
    """'8001' -> 8001; '127.0.0.1:8001' -> ('127.0.0.1', 8001), as the SDK takes them."""
    if ":" in value:
        ip, _, port = value.rpartition(":")
        return (ip, int(port))
    return int(value)


def _plain_env(env: dict[str, Any]) -> dict[str, str]:
    unresolved = sorted(secrets.refs(env))
    if unresolved:
        raise ValueError(f"env {', '.join(unresolved)}: secret references must be resolved (secrets.resolve) before create")
    return {k: str(v) for k, v in env.items()}


def api_kwargs(args: CreateArgs) -> tuple[dict[str, Any], dict[str, Any]]:
    """(create_container kwargs, create_host_config kwargs) for the low-level Docker API."""
    binds: dict[str, dict[str, str]] = {}
    for b in args.get("binds") or []:
        src, dst, *mode = b.split(":")
        binds[src] = {"bind": dst, "mode": mode[0] if mode else "rw"}
    gpus = int(args.get("gpus") or 0)
    restart = args.get("restart") or "no"
    host_config = {
        "binds": binds or None,
        "port_bindings": {k: _port_binding(v) for k, v in (args.get("ports") or {}).items()},
        "restart_policy": {"Name": restart} if restart != "no" else None,
        "device_requests": [{"count": gpus, "capabilities": [["gpu"]]}] if gpus else None,
        **({"network_mode": args["network"]} if args.get("network") else {}),
    }
    container = {
        "image": args["image"],
        "name": args["name"],
        "user": args.get("user") or contract.IMAGE_USER,
        "environment": _plain_env(args.get("env") or {}),
        "ports": [(int(k.split("/")[0]), k.split("/")[1] if "/" in k else "tcp") for k in (args.get("ports") or {})],
        "labels": dict(args.get("labels") or {}),
        "stop_timeout": int(args.get("stop_timeout", 10)),
    }
    return container, host_config


def problems(args: CreateArgs) -> list[str]:
    """What in a container about to be created breaks the hard rules (checked on the host, before anything stops).

    Not pure: bind sources are resolved on this host's filesystem (lstat, realpath), and the
    user's gid is compared with this host's privileged groups, the Docker socket's among them.
    """
    from . import proxy

    out = []
    user_problem = contract.user_problem(args.get("user") or "", paths.privileged_gids())
    if user_problem:
        out.append(user_problem)
    config = (args.get("env") or {}).get(proxy.CONFIG_ENV)
    own, allowed = paths.own_dirs(), paths.host_paths()
    for b in args.get("binds") or []:
        src, _, rest = b.partition(":")
        # The proxy's admin socket directory (in the state directory) is the one own path a
        # container sees: the proxy's, checked below as a configuration render() made.
        proxy_run = config is not None and rest.split(":")[0] == proxy.SOCKET_IN_CONTAINER and any(
            src == str(d / "proxy-run") for d in paths.state_dir_candidates())
        p = contract.host_path_problem(src) or bind_problem(src, [] if proxy_run else own, None if proxy_run else allowed)
        if p:
            out.append(p)
    network_problem = contract.network_problem(str(args.get("network") or ""))
    if network_problem:
        out.append(network_problem)
    if config is not None:  # the proxy's configuration, as the controller sent it: only what render() makes
        out += proxy.config_problems(str(config))
    return out


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def bind_problem(src: str, own: list[Path] | list[str], allowed: list[str] | None) -> str | None:
    """Why a bind source must not be mounted, judged by what it is on this host; None if it may.

    The text was checked already (contract.host_path_problem); here every existing component
    is lstat'ed and none may be a symlink (a container with a read-write mount could otherwise
    turn a subdirectory into `-> /` for the next container that mounts it), the resolved path
    must hold none of the agent's own directories nor lie in one (`own`), nor be a device or
    socket, and, when the host names its prefixes (`allowed`), lie under one after resolution.
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
        return (f"host path {src!r} is not under a prefix this host allows (FLEETROLL_HOST_PATHS:"
                f" {':'.join(allowed) or 'none'})")
    return None


def redacted(args: CreateArgs, key: bytes) -> CreateArgs:
    """The same configuration with each env value replaced by a short keyed hash (names stay).

    Equal values give equal hashes on one host, so a changed value is still visible in a
    record without the value itself ever being written there.
    """
    if not args:
        return args
    return {**args, "env": redact_env(args.get("env") or {}, key)}


def redact_record(value: Any, key: bytes) -> Any:
    """A journal record (or anything nested in one) with every `env` mapping's values redacted.

    Walks dicts and lists: an old or tried configuration, a `services` list of outcomes, a
    record yet to be invented — whatever carries an `env` leaves the host as names and hashes.
    """
    if isinstance(value, dict):
        return {k: redact_env(v, key) if k == "env" and isinstance(v, dict) else redact_record(v, key) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_record(v, key) for v in value]
    return value


def redacted_record(value: Any) -> Any:
    """redact_record with this host's journal key: what a record looks like when it leaves the host."""
    from .journal import redaction_key

    return redact_record(value, redaction_key())


def redact_env(env: dict[str, Any], key: bytes) -> dict[str, Any]:
    """Names stay, references stay (they are not secret), values become short keyed hashes."""
    return {k: v if secrets.is_ref(v) else "hmac:" + hmac.new(key, str(v).encode(), hashlib.sha256).hexdigest()[:12]
            for k, v in env.items()}


def prev_of(labels: dict[str, str]) -> tuple[str, str]:
    """(`<old tag>-prev`, old digest): how a container being replaced is pinned, from its own labels."""
    return f"{labels.get(contract.TAG) or 'unknown'}-prev", labels.get(contract.DIGEST, "")


def kept_name(service: str, rollout_id: str) -> str:
    """The name an old container waits under while its successor is gated."""
    return f"{service}--kept-{hashlib.sha256(rollout_id.encode()).hexdigest()[:8]}"


def health_of(labels: dict[str, str], fallback: dict) -> dict:
    """The health settings a container was started with (a label), else the given ones."""
    try:
        h = json.loads(labels.get(contract.HEALTH) or "")
    except ValueError:
        return fallback
    return h if isinstance(h, dict) and h.get("port") else fallback


# Set by fleetroll itself on every container; their changes are reported as the image/digest change, not as config.
OWN_ENV = {"FLEETROLL_IMAGE_DIGEST"}


def diff(running: CreateArgs, spec: dict, image_env: dict[str, str] | None = None) -> list[str]:
    """What a release changes in a running container's configuration, one line per change, no env value ever (pure).

    `running` comes from `from_inspect`; `spec` is the planned container spec. Env keys the
    image itself sets (same value as the image's) are not the inventory's and are left out.
    """
    out: list[str] = []
    image_env = image_env or {}
    have = {k: v for k, v in (running.get("env") or {}).items() if k not in OWN_ENV and image_env.get(k) != v}
    want = {k: v for k, v in (spec.get("env") or {}).items() if k not in OWN_ENV}
    for k in sorted(set(have) | set(want)):
        if k not in have:
            out.append(f"env {k}: added")
        elif k not in want:
            out.append(f"env {k}: removed")
        else:
            hr, wr = secrets.is_ref(have[k]), secrets.is_ref(want[k])
            if hr != wr:
                out.append(f"env {k}: {'now' if wr else 'no longer'} a secret reference")
            elif wr and have[k] != want[k]:
                out.append(f"env {k}: another secret ({json.dumps(want[k], sort_keys=True)})")
            elif not wr and str(have[k]) != str(want[k]):
                out.append(f"env {k}: value changed")
    have_ports = {k: str(v) for k, v in (running.get("ports") or {}).items()}
    want_ports = {k: str(v) for k, v in (spec.get("ports") or {}).items()}
    for k in sorted(set(have_ports) | set(want_ports)):
        if have_ports.get(k) != want_ports.get(k):
            out.append(f"port {k}: {have_ports.get(k) or '(none)'} -> {want_ports.get(k) or '(none)'}")
    have_binds = set(running.get("binds") or [])
    want_binds = set(from_spec({**spec, "env": {}}, "", {})["binds"])
    out += [f"volume {b}: added" for b in sorted(want_binds - have_binds)]
    out += [f"volume {b}: removed" for b in sorted(have_binds - want_binds)]
    pairs = [("gpus", running.get("gpus", 0), gpus_count(spec.get("gpus"))),
             ("user", running.get("user") or contract.IMAGE_USER, spec.get("user") or contract.IMAGE_USER),
             ("restart", running.get("restart") or "no", spec.get("restart", "unless-stopped")),
             ("stop_timeout", int(running.get("stop_timeout") or 10), int(spec.get("stop_timeout", 10))),
             ("network", running.get("network") or "(default)", spec.get("network") or "(default)")]
    out += [f"{name}: {a} -> {b}" for name, a, b in pairs if a != b]
    have_h = health_of(running.get("labels") or {}, {})
    want_h = spec.get("health") or {}
    def shown(v: Any) -> str:
        return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)

    for k in sorted(set(have_h) | set(want_h)):
        if have_h.get(k) != want_h.get(k):
            out.append(f"health.{k}: {shown(have_h.get(k))} -> {shown(want_h.get(k))}")
    return out
