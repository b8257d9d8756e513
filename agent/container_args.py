"""Docker create arguments as plain data (Kamal's `commands/` layer): built, never executed, here.

A container's whole configuration is one JSON-able dict, `CreateArgs`:

    {"image", "name", "user", "env", "labels", "ports", "binds", "restart", "gpus", "stop_timeout", "network"}

`network` is the user-defined Docker network of the host's reverse proxy ("" = Docker's default bridge).
`secret_dir` is set only for the create call itself (secret_files.materialize): the host's tmpfs
directory of this container's secret files, mounted read-only at /run/secrets as a HostConfig.Mounts
bind (secrets.secret_mount says why not a Binds string). It is never
recorded: `from_inspect` leaves that mount out, so a recreation makes a directory of its own.

It is built two ways — from the inventory's spec for a new release (`from_spec`) and from
`docker inspect` of a running container (`from_inspect`) — and turned into Docker SDK
keyword arguments by one function (`api_kwargs`). Recording `from_inspect(old)` before a
swap is what lets a revert recreate the old container exactly (its own image, env, ports,
volumes and GPU requests), whatever the inventory says today. Pure (tested without Docker);
what a container must not be on this host (`problems`, re-exported here) is host_checks.py's.
"""

from __future__ import annotations

import json

from . import contract, secrets
from .digests import sha256
from .host_checks import bind_problem, problems  # noqa: F401 - re-exported: callers know them here

TYPE_CHECKING = False  # importing typing costs every agent call ~2.5 ms; Any is only ever an annotation here
if TYPE_CHECKING:
    from typing import Any

CreateArgs = dict[str, "Any"]  # "Any" as a string: no typing import at run time


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
    file_secrets = any(secrets.is_file_ref(secrets.ref_from_label(v)) for v in from_secret.values())
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
        # The secret files' mount is the agent's own, made afresh for each container: not configuration.
        "binds": [b for b in hc.get("Binds") or [] if not (file_secrets and secrets.in_mount_dir(b))],
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


def _secret_files_in_place(args: CreateArgs) -> None:
    """The last guard before Docker: every env key a secret file is given by holds that file's path, never its value.

    The container's label says which keys are secret files; if secret_files.materialize did not
    run (or a configuration disagrees with its label), the value would be in `docker inspect`.
    """
    try:
        recorded = json.loads((args.get("labels") or {}).get(contract.SECRET_ENV) or "{}")
    except ValueError:
        recorded = {}
    files = secrets.file_refs({k: secrets.ref_from_label(v) for k, v in recorded.items()})
    env = args.get("env") or {}
    wrong = sorted(k for k, name in files.items() if env.get(k) != secrets.file_path(name))
    if wrong or (files and not args.get("secret_dir")):
        raise ValueError(f"env {', '.join(wrong or sorted(files))}: a secret given as a file must be made a file"
                         " (secret_files.materialize) before create; its value never goes into the environment")


def api_kwargs(args: CreateArgs) -> tuple[dict[str, Any], dict[str, Any]]:
    """(create_container kwargs, create_host_config kwargs) for the low-level Docker API."""
    _secret_files_in_place(args)
    binds: dict[str, dict[str, str]] = {}
    for b in args.get("binds") or []:
        src, dst, *mode = b.split(":")
        binds[src] = {"bind": dst, "mode": mode[0] if mode else "rw"}
    gpus = int(args.get("gpus") or 0)
    restart = args.get("restart") or "no"
    host_config = {
        "binds": binds or None,
        # A Mounts bind, never a Binds string: a missing directory (a reboot cleared /run) then stops the start.
        **({"mounts": [secrets.secret_mount(str(args["secret_dir"]))]} if args.get("secret_dir") else {}),
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
    import hmac  # here, not at the top: it loads OpenSSL, which most agent calls never need

    return {k: v if secrets.is_ref(v) else "hmac:" + hmac.new(key, str(v).encode(), sha256).hexdigest()[:12]
            for k, v in env.items()}


def prev_of(labels: dict[str, str]) -> tuple[str, str]:
    """(`<old tag>-prev`, old digest): how a container being replaced is pinned, from its own labels."""
    return f"{labels.get(contract.TAG) or 'unknown'}-prev", labels.get(contract.DIGEST, "")


def kept_name(service: str, rollout_id: str) -> str:
    """The name an old container waits under while its successor is gated."""
    return f"{service}--kept-{sha256(rollout_id.encode()).hexdigest()[:8]}"


GATE_TIMINGS = ("healthy_deadline", "min_healthy_time", "interval")  # how long a gate waits and watches: not the container's


def config_hash(spec: dict, digest: str) -> str:
    """Identity of what should run: the configuration (without digest and hash) plus the exact image digest.

    The controller labels each container with it (plan.spec_hash); here so that a restart can relabel one.
    """
    blob = json.dumps({"spec": spec, "digest": digest}, sort_keys=True).encode()
    return sha256(blob).hexdigest()[:16]


def gate_only_keys(health_label: str, label_hash: str, digest: str, spec: dict) -> list[str]:
    """The gate timings that are all a container's configuration differs from `spec` in, else [] (pure).

    They change how long a swap waits and watches, not the container: no reason to stop a service (a GPU model that
    takes minutes to load) to change them. Found by comparing the container's configuration hash (`label_hash`) with
    the hash `spec` has with the container's own timings (its health label). The planner's no-op and the restart's
    relabelling both ask this.
    """
    try:
        was = json.loads(health_label or "")
    except ValueError:
        return []
    if not isinstance(was, dict) or not digest:
        return []
    now = spec.get("health") or {}
    changed = [k for k in GATE_TIMINGS if k in was and was[k] != now.get(k)]
    base = {k: v for k, v in spec.items() if k not in ("digest", "spec_hash")}
    same_but_timings = config_hash({**base, "health": {**now, **{k: was[k] for k in changed}}}, digest) == label_hash
    return changed if changed and same_but_timings else []


def relabel_for_timings(labels: dict[str, str], spec: dict) -> dict[str, str] | None:
    """The labels a restart gives the fresh container when only the gate's timings changed, else None (pure).

    The restart that gates with the new values records them, and the configuration hash they give, so the planner
    and status see the inventory's configuration from then on; anything else keeps its labels.
    """
    if not gate_only_keys(labels.get(contract.HEALTH, ""), labels.get(contract.SPEC_HASH, ""), labels.get(contract.DIGEST, ""), spec):
        return None
    base = {k: v for k, v in spec.items() if k not in ("digest", "spec_hash")}
    return {**labels, contract.HEALTH: json.dumps(spec.get("health") or {}, sort_keys=True, separators=(",", ":")),
            contract.SPEC_HASH: config_hash(base, labels.get(contract.DIGEST, ""))}


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
    shown_gpus = {-1: "all", 0: "none"}  # Docker's count: -1 is every card (found leaking as 'gpus: -1 -> 1')
    have_g, want_g = running.get("gpus", 0), gpus_count(spec.get("gpus"))
    pairs = [("gpus", shown_gpus.get(have_g, have_g), shown_gpus.get(want_g, want_g)),
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
