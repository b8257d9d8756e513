"""docs/inventory.md, generated from the inventory's schema: every field of fleet.yml and phases.yml.

Types, defaults and constraints are read from the pydantic models in playbooks/schema.py
(model_fields: annotations, defaults, ge/gt/le/pattern metadata, Literal choices), so they cannot
drift from what the validator enforces. What the models cannot say — what a field is for, an
example, and which check or step reads it — is the prose in DOCS below, keyed by the field's
path. tests/test_inventory_doc_unit.py fails when a field has no entry, an entry names a field
that no longer exists, or docs/inventory.md differs from what this prints:

    .venv/bin/python -m playbooks.inventory_doc > docs/inventory.md
"""

from __future__ import annotations

import json
import os
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import AfterValidator, BaseModel

from agent import contract

from .inventory import DEFAULT_MIN_DRIVER, DOC, KEY_NAMES, Fleet, Phases, field_anchor

REGENERATE = f".venv/bin/python -m playbooks.inventory_doc > {DOC}"
ROOTS = (("fleet.yml", Fleet), ("phases.yml", Phases))


class Doc(NamedTuple):
    what: str  # what the field is for, what it accepts beyond the schema's own constraints
    example: str  # YAML, as the key is written where it goes
    used_by: str  # the checks and steps that read it


@dataclass(frozen=True)
class Row:
    file: str
    path: str
    type: str
    default: str
    constraints: str


# --- reading the schema -----------------------------------------------------------------


def _children(ann: Any, name: str, suffix: str = "") -> list[tuple[str, type[BaseModel]]]:
    """The models a field's type holds, with the path suffix leading to each ('.<name>' for a mapping, '[]' for a list)."""
    origin = get_origin(ann)
    if origin is Annotated:
        return _children(get_args(ann)[0], name, suffix)
    if origin is dict:
        return _children(get_args(ann)[1], name, f"{suffix}.{KEY_NAMES.get(name, '<name>')}")
    if origin is list:
        return _children(get_args(ann)[0], name, f"{suffix}[]")
    if origin in (Union, types.UnionType):
        return [c for a in get_args(ann) for c in _children(a, name, suffix)]
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [(suffix, ann)]
    return []


def _named_key(ann: Any) -> bool:
    """Is this a name checked by inventory._named (HostName, ServiceName, ...)?"""
    return get_origin(ann) is Annotated and any(isinstance(m, AfterValidator) and "_named" in m.func.__qualname__
                                                for m in get_args(ann)[1:])


def type_text(ann: Any) -> str:
    origin = get_origin(ann)
    if origin is Annotated:
        return "name" if _named_key(ann) else type_text(get_args(ann)[0])
    if origin is Literal:
        return "string" if all(isinstance(v, str) for v in get_args(ann)) else "literal"
    if origin in (Union, types.UnionType):
        parts = []
        for a in get_args(ann):
            if a is type(None):
                continue
            parts.append(" or ".join(json.dumps(v) for v in get_args(a)) if get_origin(a) is Literal else type_text(a))
        return " or ".join(parts)
    if origin is list:
        return f"list of {type_text(get_args(ann)[0])}"
    if origin is dict:
        key, value = get_args(ann)
        return f"mapping of {type_text(key)} → {type_text(value)}"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return f"mapping ({', '.join(ann.model_fields)})"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(ann, getattr(ann, "__name__", str(ann)))


def _number(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def constraints_text(model: type[BaseModel], name: str) -> str:
    f = model.model_fields[name]
    out = []
    for m in f.metadata:
        if isinstance(m, Ge):
            out.append(f"≥ {_number(m.ge)}")
        elif isinstance(m, Gt):
            out.append(f"> {_number(m.gt)}")
        elif isinstance(m, Le):
            out.append(f"≤ {_number(m.le)}")
        elif isinstance(m, Lt):
            out.append(f"< {_number(m.lt)}")
        elif getattr(m, "pattern", None):
            out.append(f"matches `{m.pattern}`")
        elif isinstance(m, AfterValidator) and "_named" in m.func.__qualname__:
            out.append(f"a plain name: {contract.NAME_RULE}")
    ann = f.annotation
    if get_origin(ann) is Literal:
        out.append("one of " + ", ".join(f"`{v}`" for v in get_args(ann)))
    if get_origin(ann) is dict and _named_key(get_args(ann)[0]):
        out.append(f"keys are plain names: {contract.NAME_RULE}")
    checked = {fld for d in model.__pydantic_decorators__.field_validators.values() for fld in d.info.fields}
    if name in checked:
        out.append("further rules in the text")
    return "; ".join(out) or "—"


def default_text(model: type[BaseModel], name: str) -> str:
    f = model.model_fields[name]
    if f.is_required():
        return "required"
    if f.default is None:
        return "not set"
    if isinstance(f.default, BaseModel):
        return "its fields' defaults"
    return f"`{json.dumps(f.default)}`"


def rows() -> list[Row]:
    """Every field of both files, depth first in the models' own order."""
    out: list[Row] = []

    def walk(model: type[BaseModel], prefix: str, file: str) -> None:
        for name, f in model.model_fields.items():
            path = prefix + name
            out.append(Row(file, path, type_text(f.annotation), default_text(model, name), constraints_text(model, name)))
            for suffix, sub in _children(f.annotation, name):
                walk(sub, f"{path}{suffix}.", file)

    for file, model in ROOTS:
        walk(model, "", file)
    return out


# --- the prose: what each field is for, an example, what reads it -------------------------

_FORBIDDEN = ", ".join(f"`{p}`" for p in contract.FORBIDDEN_HOST_PATHS)
_GIDS = ", ".join(f"{gid} ({name})" for gid, name in sorted(contract.FIXED_PRIVILEGED_GIDS.items()))
_BATCH = ("Only the batch settings of a phase are one (`phases[].update` wins over its services' own); a phase whose"
          " replicated services give different `canary`/`max_parallel` needs its own `update:`.")

DOCS: dict[str, Doc] = {
    # registry
    "registry": Doc(
        "Where images come from: every service runs `<registry.host>/<registry.org>/<image>:<tag>`.",
        "registry: {host: ghcr.io, org: example-org}",
        "every image reference: preflight `image:<service>`, the plan (tag → digest), the hosts' pulls, `fab build --push`,"
        " `fab prune`."),
    "registry.host": Doc(
        "The registry's host name (and `:port`), without a scheme.",
        "host: ghcr.io",
        "image references (see `registry`)."),
    "registry.org": Doc(
        "The organisation (namespace) under the host; lowercase.",
        "org: example-org",
        "image references (see `registry`)."),
    "registry.insecure": Doc(
        "Plain HTTP instead of HTTPS: for the lab's own registry only. fleetroll's registry queries (made from the hosts)"
        " and `fab build --push` then use `http://`; each host's dockerd must trust the registry too"
        " (`--insecure-registry`), as the lab's dockerd does.",
        "insecure: true",
        "preflight `image:<service>` (the manifest query from the host), the plan, the check before any swap that each tag"
        " still names its planned digest, `fab build --push`."),
    # ssh
    "ssh": Doc(
        "How the controller reaches the hosts.",
        "ssh: {known_hosts: known_hosts, connect_timeout: 5, max_parallel: 10}",
        "every task that contacts a host."),
    "ssh.known_hosts": Doc(
        "fleetroll's own file of pinned host keys, relative to the inventory's directory unless absolute. Only `fab"
        " hostkeys` writes it, and only keys the operator confirmed; a host whose key is missing from it or different is"
        " refused (no trust on first use). `hosts.<name>.known_hosts` overrides it for one host. See"
        " [hosts.md](hosts.md).",
        "known_hosts: known_hosts",
        "every SSH connection (preflight `ssh`, every task); `fab hostkeys` reads it (new / same / CHANGED) and writes it."),
    "ssh.connect_timeout": Doc(
        "Seconds to wait for a host's TCP connection, SSH banner and authentication: an unreachable host is reported"
        " within it, without delaying the others. It also bounds the registry queries the hosts make (the smaller of 5 s"
        " and this + 2 s).",
        "connect_timeout: 5",
        "every SSH connection (preflight `ssh`), `fab hostkeys`'s key scan, preflight `image:<service>`."),
    "ssh.max_parallel": Doc(
        "How many hosts a task contacts at once; `--max-parallel N` overrides it for one command.",
        "max_parallel: 10",
        "preflight, rollout, rollback, status and every other call on many hosts (playbooks/transport.py)."),
    # defaults
    "defaults": Doc(
        "Fleet-wide defaults and limits.",
        "defaults: {disk_min_free_gb: 20}",
        "see its fields."),
    "defaults.disk_min_free_gb": Doc(
        "Free space (GB) each host must have under Docker's data root, unless its `hosts.<name>.disk_min_free_gb` says"
        " otherwise.",
        "disk_min_free_gb: 20",
        "preflight `disk`."),
    "defaults.gpu_memory_reserve_gb": Doc(
        "GPU memory (GB) kept free on every card beyond the services' declared `gpu_memory_gb` (driver, display,"
        " fragmentation).",
        "gpu_memory_reserve_gb: 1.5",
        "preflight `gpu-memory` (every budget placed on a host plus the reserve must fit its cards); the plan's swap"
        " order (`update.order: auto` swaps a GPU service start-first only when its budget plus the reserve is free"
        " beside the running copy; an explicit `start-first` that does not fit is blocked before anything stops)."),
    "defaults.host_paths": Doc(
        "Absolute host directories that services may bind-mount in `volumes:` (they and what is below them); nothing"
        f" else can be bind-mounted. None of them may be, or be under, {_FORBIDDEN}.",
        "host_paths: [/srv/models]",
        "inventory validation of `services.<name>.volumes`; on the host the agent checks each bind source again as it"
        " resolves there, at container create (and against `FLEETROLL_HOST_PATHS` when the host sets it)."),
    # security
    "security": Doc(
        "Where the supply-chain gate (risk R4) finds Trivy reports and risk acceptances. Relative paths are relative"
        " to the inventory's directory.",
        "security: {artifacts: ../artifacts, acceptances: ../security/risk-acceptances.yml, missing_report: refuse}",
        "the security gate of `fab rollout` (playbooks/images/security.py), after the plan and before any host"
        " changes."),
    "security.artifacts": Doc(
        "Directory holding `<image>/<tag>/trivy.json` for each image (the image pipeline writes the SBOM"
        " `sbom.spdx.json` beside it; `fab build` writes to the repository's `artifacts/`, or `$FLEETROLL_ARTIFACTS`)."
        " A report counts only if it is Trivy JSON (SchemaVersion 2) whose `Metadata.RepoDigests` names the digest"
        " the plan will run; HIGH, CRITICAL and UNKNOWN findings block.",
        "artifacts: ../artifacts",
        "the security gate."),
    "security.acceptances": Doc(
        "The risk-acceptance file: entries of `image`, `cve`, `owner`, `reason`, `expires` (and optionally `digest`)"
        " that turn a blocking finding into a warning until they expire. `$FLEETROLL_ACCEPTANCES` overrides this"
        " path. A missing file means no acceptances.",
        "acceptances: ../security/risk-acceptances.yml",
        "the security gate; the ledger records which file a rollout used and every acceptance it relied on."),
    "security.missing_report": Doc(
        "What the gate does with an image that has no report for its digest: `refuse` the step, or `warn` and go on"
        " (the lab's inventory uses `warn`).",
        "missing_report: refuse",
        "the security gate."),
    "security.max_acceptance_days": Doc(
        "How far ahead an acceptance's `expires` may reach; one that reaches further is refused, so every finding is"
        " decided again at least this often.",
        "max_acceptance_days: 90",
        "the security gate."),
    # observability
    "observability": Doc(
        "Start-up reports: every container reports its SBOM and git SHA to a collector service.",
        "observability: {collector: fleetroll-collector}",
        "the plan (env of every container)."),
    "observability.collector": Doc(
        "The service that receives the start-up reports. It must publish a port and run on exactly one host. When set,"
        " every container gets `FLEETROLL_COLLECTOR_URL` (`http://<the collector host's address>:<its first published"
        " host port>`) and `FLEETROLL_REPORT_KEY` (its own report key).",
        "collector: fleetroll-collector",
        "inventory validation; the plan."),
    "observability.report_key_secret": Doc(
        "Name of a secret file on the hosts (in the secrets directory, `/etc/fleetroll/secrets` by default) holding the"
        " fleet's report secret; needed on every host that runs a service, and on the collector's, when a collector is"
        " set. Each container gets only a key derived from it for its own host, service and digest; the collector alone"
        " gets the secret itself (`COLLECTOR_FLEET_KEY`).",
        "report_key_secret: fleetroll-report-key",
        "the plan; the agent at container create (agent/secrets.py)."),
    # engine and swarm
    "engine": Doc(
        "Who runs a phase's release: `ssh` (fleetroll's own push: each host's agent swaps, gates and reverts) or `swarm`"
        " (Docker Swarm schedules the phase's stack, fleetroll renders it, gates it before and follows it to the end)."
        " `phases[].engine` overrides it for one phase. Preflight, the security gate, freezes and hooks run the same for"
        " both. See [swarm.md](swarm.md).",
        "engine: swarm",
        "`fab rollout` (which engine a phase goes to), `fab swarm.render`, `fab status`; load-time checks of what Swarm"
        " cannot run (no canary, no address-bound ports, no start-first with a host port, no proxy yet)."),
    "swarm": Doc(
        "How phases with `engine: swarm` run: which hosts manage the swarm and how the rendered healthcheck probes"
        " `/health`. Only read when some phase runs on Swarm, and by `fab swarm.form`/`swarm.leave`.",
        "swarm: {managers: [mainpc], healthcheck: python}",
        "`fab swarm.form`, `fab swarm.leave`, `fab swarm.render`, rollouts of swarm phases."),
    "swarm.managers": Doc(
        "Hosts `fab swarm.form` makes managers; the first initialises the swarm (`--advertise-addr` its `address`), the"
        " others join as managers, every other host as a worker. Empty: the inventory's first host. Keep an odd number"
        " (1, 3, 5) for a Raft quorum.",
        "managers: [mainpc]",
        "`fab swarm.form` (init and joins), rollouts of swarm phases and `fab status` (the stack is deployed and read"
        " through the first manager that answers)."),
    "swarm.healthcheck": Doc(
        "What the rendered Swarm healthcheck runs inside the image to judge `health:` as fleetroll's gate does (HTTP 200"
        " and a JSON body with `status: ok`): `python` runs `python3 -c` and parses the body (the family images carry"
        " Python); `wget` runs busybox `sh` + `wget` and matches `\"status\":\"ok\"` in the body (images without Python,"
        " such as the lab's).",
        "healthcheck: wget",
        "`fab swarm.render` and swarm rollouts (the stack's `healthcheck:`)."),
    # hosts
    "hosts": Doc(
        "The machines, by name: the names `-H/--hosts`, placement (`host:`, `hosts:`, `groups:`) and every report use."
        " Adding and replacing a host: [hosts.md](hosts.md).",
        "hosts: {mainpc: {address: 192.168.1.10, user: ops}}",
        "every task."),
    "hosts.<name>.address": Doc(
        "IP address or DNS name of the host's sshd. Two hosts may not share an address and port.",
        "address: 192.168.1.10",
        "SSH (every task); `fab hostkeys` (the known_hosts entry is the address, or `[address]:port`); the collector's"
        " URL."),
    "hosts.<name>.port": Doc(
        "The host's SSH port.",
        "port: 2222",
        "SSH (every task), `fab hostkeys`."),
    "hosts.<name>.user": Doc(
        "The SSH login; the agent runs as this user, so it must be able to drive Docker there (root, or a member of"
        " the Docker socket's group). A POSIX login name.",
        "user: ops",
        "SSH (every task); the agent on the host."),
    "hosts.<name>.role": Doc(
        "A label for people: `gpu`, `cpu` or `infra`. No check or step reads it.",
        "role: gpu",
        "nothing (informational)."),
    "hosts.<name>.key_filename": Doc(
        "The SSH private key for this host (`~` is expanded); it must exist when the inventory is loaded. When set, only"
        " this key is offered (no ssh-agent, no `~/.ssh/id_*`); when not set, paramiko's defaults apply (the ssh-agent"
        " and the usual key files).",
        "key_filename: ~/.ssh/fleetroll_ed25519",
        "inventory validation; SSH (every task)."),
    "hosts.<name>.python": Doc(
        "Absolute path of the Python (3.11 or later) that runs the agent on the host; never the `python3` a login PATH"
        " finds first (often a pyenv or conda shim). If it is not there, the call fails with exit 127 and says so.",
        "python: /usr/bin/python3",
        "every agent call (playbooks/transport.py)."),
    "hosts.<name>.known_hosts": Doc(
        "This host's own known_hosts file, instead of `ssh.known_hosts` (same rules; relative to the inventory's"
        " directory).",
        "known_hosts: known_hosts.lab",
        "SSH to this host; `fab hostkeys` pins its key there."),
    "hosts.<name>.gpus": Doc(
        "The GPUs the host should have. Leave it out on hosts without a GPU: a service asking for `gpus:` cannot be"
        " placed on such a host. The GPU checks fail only when a GPU service is placed on the host in some phase;"
        " otherwise they warn.",
        'gpus: {model: NVIDIA GeForce RTX 4090, count: 1, compute_capability: "8.9", min_driver: "535"}',
        "preflight `nvidia-driver`, `gpus`, `gpu-memory` and the arch-list part of `image:<service>`; inventory"
        " validation of `services.<name>.gpus`."),
    "hosts.<name>.gpus.model": Doc(
        "The GPU's name exactly as NVML reports it (`nvidia-smi --query-gpu=name --format=csv,noheader`).",
        "model: NVIDIA GeForce RTX 4090",
        "preflight `gpus` (each card)."),
    "hosts.<name>.gpus.count": Doc(
        "How many GPUs the host has.",
        "count: 1",
        "preflight `gpus`; inventory validation (a service's `gpus: N` may not exceed it)."),
    "hosts.<name>.gpus.compute_capability": Doc(
        "The cards' compute capability, `major.minor`; quote it so YAML keeps it a string.",
        'compute_capability: "8.9"',
        "preflight `gpus` (each card) and `image:<service>` (a GPU image's CUDA arch-list label must cover it; covered"
        " only by PTX of a lower arch is a warning)."),
    "hosts.<name>.gpus.min_driver": Doc(
        f"The lowest NVIDIA driver allowed (`{DEFAULT_MIN_DRIVER}` or `535.104`; compared numerically). Risk R1.",
        f'min_driver: "{DEFAULT_MIN_DRIVER}"',
        "preflight `nvidia-driver`."),
    "hosts.<name>.disk_min_free_gb": Doc(
        "This host's own free-space requirement, instead of `defaults.disk_min_free_gb`.",
        "disk_min_free_gb: 50",
        "preflight `disk`."),
    # groups
    "groups": Doc(
        "Named lists of hosts for replicated services (`group: NAME`). Every member must be a host under `hosts:`.",
        "groups: {cpu-workers: [w1, w2, w3]}",
        "inventory validation; placement of `services.<name>.group`."),
    # reverse proxy
    "reverse_proxy": Doc(
        "Names the per-host reverse proxy (HAProxy, the `fleetroll-proxy` family image) that holds the public ports of"
        " the services with `proxy:`, so they can be swapped without dropping requests. A top-level key, beside"
        " `services:`. Walk-through: [zero-downtime.md](zero-downtime.md).",
        "reverse_proxy: {service: edge}",
        "inventory validation, the plan (the proxy's configuration), preflight `proxy`, the agent's swaps."),
    "reverse_proxy.service": Doc(
        "The proxy's own service under `services:` (image `fleetroll-proxy`). That service publishes no `ports:`, has no"
        " `proxy:`, and its `health.port` equals `reverse_proxy.health_port`. It must run on every host where a service"
        " behind it runs, and be rolled out before them: in an earlier phase, or first in the same phase. Its"
        " HAProxy configuration is rendered per host from the services behind it there; after putting a new service"
        " behind it, roll the proxy's phase out again.",
        "service: edge",
        "inventory validation; the plan (the configuration goes into the proxy container's env; the proxy binds every"
        " `listen` port); preflight `proxy` (it answers on the host and has a backend for each service behind it)."),
    "reverse_proxy.network": Doc(
        "The Docker network the proxy and the services behind it join; the agent creates it (a user-defined bridge)."
        f" `{contract.DEFAULT_NETWORK}`, or `{contract.DEFAULT_NETWORK}-NAME`: never `host`, `none`, another"
        " container's network or the default bridge.",
        f"network: {contract.DEFAULT_NETWORK}-web",
        "the plan (each container's network); the health gate (containers on it are probed at their address there)."),
    "reverse_proxy.health_port": Doc(
        "The port inside the proxy's container where HAProxy answers `GET /health` with 200 `{\"status\":\"ok\"}`. The"
        " proxy service's `health.port` must equal it. At least 1024: the proxy runs as a non-root user.",
        "health_port: 8404",
        "the plan (HAProxy's `fleetroll-health` frontend); the proxy's own health gate; inventory validation."),
    # services
    "services": Doc(
        "What runs, by name. Each service is one container per host it is placed on, named after the service.",
        "services: {web: {image: family-cpu-py311, tag: 20250817-0a1b2c3, host: mainpc, ports: [\"8080:8080\"],"
        " health: {port: 8080}}}",
        "every task."),
    "services.<name>.image": Doc(
        "The image's repository name under `registry.host/registry.org`, lowercase (a family image, e.g."
        " `family-cpu-py311`).",
        "image: family-cpu-py311",
        "image references (preflight `image:<service>`, the plan, pulls, `fab prune`); the security gate (reports at"
        " `<artifacts>/<image>/<tag>/trivy.json`, acceptances by image)."),
    "services.<name>.tag": Doc(
        "The release: `YYYYMMDD-<git_sha>` (a UTC calendar date, a dash, 7–40 lowercase hex digits of the commit), as"
        " `fab build` tags images. Changing it is how a release is rolled out: the plan resolves it to a digest and the"
        " hosts pull by digest.",
        "tag: 20250817-0a1b2c3",
        "inventory validation; preflight `image:<service>` (the tag exists in the registry as seen from the host); the"
        " plan; the security gate; the check before any swap that the tag still names the planned digest."),
    "services.<name>.host": Doc(
        "Run one container, on this host. Exactly one of `host`, `hosts` and `group`.",
        "host: mainpc",
        "placement: the plan, preflight (the host's services), status."),
    "services.<name>.hosts": Doc(
        "Run one container on each of these hosts (a replicated service; each replica is shown as its host and"
        " service). Exactly one of `host`, `hosts` and `group`.",
        "hosts: [mainpc, pc2]",
        "placement; rollout batches (`update.canary`, `update.max_parallel`)."),
    "services.<name>.group": Doc(
        "Run one container on each host of this group (`groups:`). Exactly one of `host`, `hosts` and `group`.",
        "group: cpu-workers",
        "placement; rollout batches."),
    "services.<name>.update": Doc(
        "How the service is swapped: canary and batches across its replicas, and each swap's order and drain. "
        + _BATCH,
        "update: {canary: 1, max_parallel: 2, order: auto, drain_s: 2}",
        "the rollout's batches (playbooks/batches.py); the plan's swap order (playbooks/order.py)."),
    "services.<name>.update.canary": Doc(
        "Replicated services only: this many hosts (in inventory order) form a first batch of their own, gated before"
        " any other host changes; a failure there touches nothing else.",
        "canary: 1",
        "the rollout's batches; the dry run prints the order."),
    "services.<name>.update.max_parallel": Doc(
        "Replicated services only: after the canary, this many hosts at a time, each batch gated before the next; 0 ="
        " all the rest at once.",
        "max_parallel: 2",
        "the rollout's batches."),
    "services.<name>.update.order": Doc(
        "How each swap runs. `start-first`: the new container starts beside the old one, is gated, then the proxy"
        " switches to it (the service must be behind the proxy). `stop-first`: the old container stops first. `auto`:"
        " start-first behind the proxy, except that a GPU service goes start-first only when its `gpu_memory_gb` (plus"
        " `defaults.gpu_memory_reserve_gb`) is free beside the running copy (stop-first when it declares no budget);"
        " stop-first when not behind the proxy. The dry run and the report say which, and why.",
        "order: start-first",
        "the plan (playbooks/order.py); inventory validation (`start-first` needs `proxy:`); the agent's swap."),
    "services.<name>.update.drain_s": Doc(
        "Seconds the old container keeps finishing its requests after the proxy switched away from it, before it"
        " stops (kept for revert).",
        "drain_s: 2",
        "the agent's swap behind the proxy."),
    "services.<name>.ports": Doc(
        "Host ports to publish: `[ADDRESS:]HOST:CONTAINER[/tcp|udp]`, quoted. A service behind the proxy publishes"
        " none. Two services may not publish one host port on one host (on the same address, or when either takes"
        " every address).",
        'ports: ["8080:8080", "10.0.0.5:9090:9090/udp"]',
        "inventory validation; preflight `ports` (free, or held by the service itself); container create; the health"
        " gate (see `health.port`)."),
    "services.<name>.proxy": Doc(
        "Put the service behind the host's reverse proxy: the proxy publishes `listen` on the host, the container"
        " publishes nothing and joins `reverse_proxy.network`. Needs `reverse_proxy:`, and the proxy service placed on"
        " every host this service runs on. See [zero-downtime.md](zero-downtime.md).",
        'proxy: {listen: "18080", port: 8080}',
        "inventory validation; the plan (swap order, the proxy's configuration); preflight `proxy`; the agent switches"
        " the proxy to a new container once it passed its gate (and back on revert)."),
    "services.<name>.proxy.listen": Doc(
        "`[ADDRESS:]PORT` the proxy binds on the host, PORT 1024–65535: where clients connect. A string: quote it.",
        'listen: "18080"',
        "the proxy's configuration (a frontend per service); inventory validation (host port collisions); preflight"
        " `ports`."),
    "services.<name>.proxy.port": Doc(
        "The container port the proxy forwards to (over the proxy network, by container name). The health gate probes"
        " the container on this port too, so `health.port` must equal it.",
        "port: 8080",
        "the proxy's configuration (the backend's servers); inventory validation."),
    "services.<name>.env": Doc(
        "Environment variables: a string, or `{secret: NAME}` read on the host when the container is created. fleetroll"
        " adds `FLEETROLL_SERVICE`, `FLEETROLL_HOST` (and the collector's variables when `observability.collector` is"
        " set). Values never appear in the ledger, pins, `--json`, progress or `fab status`: only keyed hashes.",
        "env: {MACHINE: mainpc, HF_TOKEN: {secret: hf_token}}",
        "the plan; container create."),
    "services.<name>.env.<VAR>.secret": Doc(
        "Name of a file in the host's secrets directory (`/etc/fleetroll/secrets`, or `$FLEETROLL_SECRETS_DIR` in the"
        " agent's environment): a regular file, no symlink, owned by root, mode 0640 or 0600. Its content becomes the"
        " variable's value at container create; only the reference is recorded.",
        "HF_TOKEN: {secret: hf_token}",
        "the agent at container create (agent/secrets.py)."),
    "services.<name>.gpus": Doc(
        "GPUs given to the container: `0` (none), a count (Docker's first N cards) or `all`. A GPU service must be"
        " placed on hosts with `gpus:` and may not ask for more cards than they have.",
        "gpus: all",
        "inventory validation; preflight `nvidia-runtime`, the GPU checks (fail rather than warn) and the arch-list part"
        " of `image:<service>`; the plan's swap order."),
    "services.<name>.gpu_memory_gb": Doc(
        "GPU memory (GB) the service needs on its card; only with `gpus`. After the HTTP gate passes, the gate also"
        " checks through NVML that the container's process is on a GPU and uses at most this + 10 %: a model that fell"
        " back to CPU, or uses more, fails the gate and is reverted.",
        "gpu_memory_gb: 14",
        "inventory validation; preflight `gpu-memory`; the plan's swap order (`update.order: auto`); the agent's gate."),
    "services.<name>.user": Doc(
        f"The container's user as numeric `uid:gid`: uid ≥ {contract.MIN_UID}, gid none of {_GIDS}. On the host the agent"
        f" also refuses the gid of any of its groups {', '.join(contract.PRIVILEGED_GROUPS)} and of the Docker socket's"
        f" group. Images themselves must run as `{contract.IMAGE_USER}`.",
        f'user: "{contract.IMAGE_USER}"',
        "inventory validation; the agent's checks before container create."),
    "services.<name>.restart": Doc(
        "Docker's restart policy for the container. Rollback, restart and a swap switch it off while they wait for the"
        " old container to hold still.",
        "restart: unless-stopped",
        "container create."),
    "services.<name>.stop_timeout": Doc(
        "Seconds Docker gives the container after SIGTERM before SIGKILL when fleetroll stops it.",
        "stop_timeout: 30",
        "container create; the agent stopping an old container."),
    "services.<name>.volumes": Doc(
        "`NAME:/path` (a named volume) or `/host/path:/path` (a bind mount, only under `defaults.host_paths`), each"
        " optionally `:ro` or `:rw`.",
        'volumes: ["models:/models:ro", "/srv/models/llm:/weights:ro"]',
        "inventory validation; the agent checks each bind source again on the host, as it resolves there."),
    "services.<name>.health": Doc(
        "The health gate: `GET <path>` on `port` must answer HTTP 200 with the JSON `{\"status\": \"ok\"}` within"
        " `healthy_deadline`, then keep doing so for `min_healthy_time`. A restart or exit of the container fails it.",
        "health: {port: 8080, healthy_deadline: 180, min_healthy_time: 15}",
        "the agent's gate (agent/health.py) after every start: rollout, revert, rollback, restart; `fab status` (one"
        " probe of the same URL)."),
    "services.<name>.health.path": Doc(
        "The path probed; starts with `/`, then letters, digits and `. _ ~ / % -` only.",
        "path: /healthz",
        "the gate; `fab status`."),
    "services.<name>.health.port": Doc(
        "Which port the gate probes. Without `proxy:`: one of the host ports published under `ports:`, probed on"
        " 127.0.0.1 (or on the address the mapping binds). Behind the proxy: the container port, equal to `proxy.port`,"
        " probed at the container's own address on the proxy network (not through the proxy). For the proxy service"
        " itself: `reverse_proxy.health_port` (8404 by default).",
        "port: 8080",
        "the gate; `fab status`; inventory validation."),
    "services.<name>.health.healthy_deadline": Doc(
        "Seconds a new container has to become healthy.",
        "healthy_deadline: 180",
        "the gate."),
    "services.<name>.health.min_healthy_time": Doc(
        "Seconds it must then stay healthy: a failed probe, a restart or an exit inside this window fails the gate.",
        "min_healthy_time: 15",
        "the gate."),
    "services.<name>.health.interval": Doc(
        "Seconds between probes; each probe waits at most 4 × interval for an answer, between 0.5 and 2 s.",
        "interval: 0.5",
        "the gate."),
    # phases.yml
    "phases": Doc(
        "The rollout phases, in order, in `phases.yml` beside `fleet.yml`. `fab rollout --all` runs them top to bottom,"
        " each only after the one before succeeded. Every service named belongs to exactly one phase.",
        "phases: [{name: core-infra, services: [gateway]}]",
        "`-p/--phase` of preflight, rollout, rollback, freeze and thaw; `fab rollout --all`."),
    "phases[].name": Doc(
        "The phase's name, as `-p/--phase` takes it; unique.",
        "name: gpu-mainpc",
        "every task with `-p`; freezes (kept per phase on the hosts); rollout ids."),
    "phases[].description": Doc(
        "Text for people. No check or step reads it.",
        "description: GPU services on MainPC",
        "nothing (informational)."),
    "phases[].services": Doc(
        "The phase's services by name, in order. A service behind the proxy comes after its proxy (a phase of its own"
        " before, or first here).",
        "services: [edge, web]",
        "the plan; preflight `-p` (only the hosts and images the phase needs) and its `proxy` check."),
    "phases[].update": Doc(
        "Canary and batches across the phase's hosts, instead of its services' own. " + _BATCH,
        "update: {canary: 1, max_parallel: 4}",
        "the rollout's batches (playbooks/batches.py)."),
    "phases[].update.canary": Doc(
        "This many of the phase's hosts with changes (in inventory order) form a first batch, gated before any other"
        " host changes.",
        "canary: 1",
        "the rollout's batches; the dry run prints the order."),
    "phases[].update.max_parallel": Doc(
        "After the canary, this many hosts at a time, each batch gated before the next; 0 = all the rest at once.",
        "max_parallel: 4",
        "the rollout's batches."),
    "phases[].update.order": Doc(
        "Accepted, but not read here: the swap order is each service's own (`services.<name>.update.order`).",
        "order: auto",
        "nothing."),
    "phases[].update.drain_s": Doc(
        "Accepted, but not read here: the drain is each service's own (`services.<name>.update.drain_s`).",
        "drain_s: 2",
        "nothing."),
    "phases[].engine": Doc(
        "`ssh` or `swarm` for this phase, overriding the inventory's `engine`. A swarm phase is deployed as one stack"
        " (`fr-<phase>`) through a manager; `--hosts` does not apply to it.",
        "engine: swarm",
        "`fab rollout` (dispatch), `fab swarm.render -p`, load-time checks of what Swarm cannot run."),
}


# --- the document -----------------------------------------------------------------------

INTRO = """\
Every field of the inventory: `fleet.yml` (hosts, services, registry, …) and `phases.yml` beside
it. fleetroll reads both and never writes them; change them by hand, commit, then roll out.
Unknown keys are refused (with a "did you mean"), and every error names the file, the line, the
field and a fix, with a link to the field's entry here.

Paths write a mapping's own keys as `<name>` (`services.<name>.health.port` is the `port` under
`health:` of any service) and list items as `[]`. Types, defaults and constraints below are read
from the schema in `playbooks/schema.py`; "further rules" are checks its validators make, told
in the text. Rules across fields (port collisions, placement, the proxy's) are told where they apply.

Related: [zero-downtime swaps, tried in the lab](zero-downtime.md) · [adding and replacing a
host](hosts.md) · [the runbook](runbook.md).
"""


def _entry(row: Row) -> list[str]:
    doc = DOCS[row.path]
    return [
        f'#### <a id="{field_anchor(row.path)}"></a>`{row.path}`',
        "",
        f"- **type** {row.type} · **default** {row.default} · **constraints** {row.constraints}",
        f"- **example** `{doc.example}`",
        f"- **used by** {doc.used_by}",
        "",
        doc.what,
        "",
    ]


def render() -> str:
    all_rows = rows()
    out = [
        "# Inventory reference: `fleet.yml` and `phases.yml`",
        "",
        "<!-- Generated from the schema (playbooks/schema.py) and playbooks/inventory_doc.py; do not edit by hand."
        f" Regenerate: {REGENERATE} -->",
        "",
        INTRO,
    ]
    for file, _model in ROOTS:
        mine = [r for r in all_rows if r.file == file]
        out += [f"## {file}", "", "| field | type | default |", "|---|---|---|"]
        out += [f"| [`{r.path}`](#{field_anchor(r.path)}) | {r.type} | {r.default} |" for r in mine]
        out.append("")
        for top in (r for r in mine if "." not in r.path.replace("[]", "")):
            out += [f"### {top.path}", ""]
            out += [line for r in mine if r.path == top.path or r.path.startswith((top.path + ".", top.path + "[]"))
                    for line in _entry(r)]
    return "\n".join(out).rstrip("\n") + "\n"


def problems() -> list[str]:
    """Fields without prose, prose for fields that are gone, prose left empty: [] when DOCS and the schema agree."""
    paths = [r.path for r in rows()]
    out = [f"{p}: a field of the schema with no entry in playbooks/inventory_doc.py DOCS; add one" for p in paths
           if p not in DOCS]
    out += [f"{p}: an entry in playbooks/inventory_doc.py DOCS for a field the schema no longer has; remove it" for p in DOCS
            if p not in paths]
    out += [f"{p}: its entry in DOCS leaves {k} empty" for p, d in DOCS.items() for k, v in d._asdict().items() if not v.strip()]
    return out


def main() -> int:
    missing = problems()
    if missing:
        print("\n".join(missing), file=sys.stderr)
        return 1
    try:
        sys.stdout.write(render())
        sys.stdout.flush()
    except BrokenPipeError:  # a reader that left (| head) is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def anchors() -> Iterator[tuple[str, str]]:
    """(path, anchor) of every field, for checks and links."""
    for r in rows():
        yield r.path, field_anchor(r.path)


if __name__ == "__main__":
    sys.exit(main())
