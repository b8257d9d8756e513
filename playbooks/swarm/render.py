"""inventory + phase -> a compose v3.8 stack for `docker stack deploy`. Pure: no host, no registry.

The same inventory that fleetroll pushes over SSH, said in Swarm's words: image by digest,
env (secret references as Swarm secrets, never values), host-mode ports (this kernel has no
routing mesh), volumes under the same hard rules, user, GPUs, a healthcheck that judges
`/health` as fleetroll's gate does, placement on node labels, and update/rollback settings
from `update:`. What cannot be said exactly is said aloud in `notes`, never dropped silently.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from agent import contract, paths
from agent.proxy import CONFIG_ENV, ProxyError

from ..inventory import Inventory, SecretRef
from . import proxy

VERSION = "3.8"
STACK_PREFIX = "fr-"
HOST_LABEL = "fleetroll.host"  # node label: the inventory's name for the host (both lab nodes share one hostname)
MEMBER_LABEL = "fleetroll.member"  # node label: fleetroll formed and labelled this node
GPU_LABEL = "fleetroll.gpu"  # node label: the host has the GPUs the inventory lists
SECRET_PREFIX = "fr_"
SECRETS_DIR = "/run/secrets"
# Service labels fleetroll reads back: what the service was deployed as (the rollout's plan compares them).
TAG_LABEL, DIGEST_LABEL, SPEC_LABEL = "io.fleetroll.tag", "io.fleetroll.digest", "io.fleetroll.spec-hash"
PHASE_LABEL, SERVICE_LABEL = "io.fleetroll.phase", "io.fleetroll.service"
RESTART = {"no": "none", "on-failure": "on-failure", "always": "any", "unless-stopped": "any"}

# The gate's verdict inside the image: HTTP 200 and a JSON object whose status is "ok" (agent/health.py).
PYTHON_PROBE = ("import json,sys,urllib.request as u\n"
                "r=u.urlopen(sys.argv[1],timeout=float(sys.argv[2]))\n"
                "b=json.loads(r.read(65536))\n"
                "sys.exit(0 if r.status==200 and isinstance(b,dict) and b.get('status')=='ok' else 1)")
# busybox sh + wget: wget fails on any status but 2xx; the body must carry "status":"ok" (with or without a space).
# No `wget -T`: Debian's busybox-static wget has no such option and segfaults on it (exit 139, seen in the lab), so
# every probe failed and Swarm killed healthy tasks. Docker's healthcheck `timeout` bounds the probe instead.
WGET_PROBE = ('b=$(wget -q -O - "$1") || exit 1; case "$b" in *\'"status":"ok"\'*|*\'"status": "ok"\'*) exit 0;; esac;'
              ' exit 1')

# The proxy's probe (the fleetroll-proxy image: Debian's bash, no wget): bash's /dev/tcp, no process started. With the
# python probe every 250 ms (1 s timeout) a busy 2-core lab host saw Swarm kill a healthy proxy ("unhealthy container",
# exit 143), its listen port refusing connections until the next task started.
PROXY_PROBE = ('exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1; printf \'GET %s HTTP/1.0\\r\\n\\r\\n\' "$2" >&3;'
               ' IFS= read -r -d \'\' -u 3 r; case "$r" in "HTTP/1."?" 200 "*\'"status":"ok"\'*) exit 0;; esac; exit 1')

# Swarm's probe is a process exec'd in the container (runc) every `interval`, where the SSH push's gate is one HTTP
# request from the agent: health.interval (0.25 s in the lab) made every task exec four probes a second, and with a
# 1 s timeout a loaded 2-core lab saw Swarm kill healthy tasks, the proxy's among them (CI run, load ~20: a proxy task
# restarted mid-test, a committed task gone by the next status). At least 1 s between probes and 2-5 s for each.
PROBE_MIN_INTERVAL = 1.0

# The agent's own directories on a node (agent/paths.py own_dirs), which no bind mount may be, lie in or hold. The
# controller cannot ask a node for its home, so the home-relative ones are refused wherever they appear, and so is a
# home directory itself: it holds the agent's code (~/.fleetroll) and the docker CLI's registry logins (~/.docker).
NODE_OWN_DIRS = (str(paths.SYSTEM_DIR), str(paths.RUN_DIR), *(str(d) for d in paths.LOCK_DIRS))
HOME_OWN = (paths.AGENT_DIR_NAME, ".local/state/fleetroll", ".docker")  # .local/...: paths.state_dir_candidates()


class RenderError(Exception):
    """The inventory says something Swarm cannot be given (a check at load should have caught it; this is the last word)."""


@dataclass
class Rendered:
    stack: str
    doc: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)  # Swarm secret name -> host-side secret file name
    # inventory secret -> its versioned Swarm name (fr_NAME_<keyed hash of the value>), computed on the manager
    secret_names: dict[str, str] = field(default_factory=dict)
    orders: dict[str, tuple[str, str]] = field(default_factory=dict)  # service -> (order, why)


def stack_name(phase: str) -> str:
    return f"{STACK_PREFIX}{phase}"


def secret_name(name: str) -> str:
    return f"{SECRET_PREFIX}{name}"


def _seconds(v: float) -> str:
    """Compose durations: '250ms' below a second, else '1.5s' (Swarm takes both)."""
    return f"{round(v * 1000)}ms" if 0 < v < 1 else f"{v:g}s"


def placement(inv: Inventory, service: str) -> tuple[dict[str, Any], list[str]]:
    """(mode settings, constraints) that put one task on each of the service's hosts, by node label.

    Swarm's constraints are ANDed: `hosts: [a, b]` becomes a global service on fleetroll's nodes
    minus every other inventory host. Never node.hostname: nodes may share one.
    """
    fleet = inv.fleet
    hosts = fleet.hosts_of(service)
    constraints = [f"node.labels.{MEMBER_LABEL} == true"]
    if not fleet.replicated(service):
        constraints.append(f"node.labels.{HOST_LABEL} == {hosts[0]}")
        mode: dict[str, Any] = {"mode": "replicated", "replicas": 1}
    else:
        constraints += [f"node.labels.{HOST_LABEL} != {h}" for h in fleet.hosts if h not in hosts]
        # replicas: N tasks over those hosts, at most one each (its ports, its GPU budget), rescheduled when a node is lost.
        replicas = fleet.services[service].replicas
        mode = {"mode": "replicated", "replicas": replicas} if replicas else {"mode": "global"}
    if fleet.services[service].wants_gpu:
        constraints.append(f"node.labels.{GPU_LABEL} == true")
    return mode, constraints


def update_order(inv: Inventory, service: str) -> tuple[str, str]:
    """start-first or stop-first, and why: a host-mode port cannot be held by two tasks at once."""
    svc = inv.fleet.services[service]
    wanted = svc.update.order if svc.update else "auto"
    if inv.fleet.is_proxy(service):
        if wanted == "start-first":
            raise RenderError(f"services.{service}.update.order: start-first, but the proxy holds the listen ports of the"
                              " services behind it in host mode, which a second task cannot take; fix: order: stop-first")
        return "stop-first", "the proxy: it holds the listen ports of the services behind it in host mode (nothing sits in front of it)"
    if wanted != "auto":
        return wanted, f"update.order: {wanted}"
    if svc.ports:
        return "stop-first", "auto: it publishes a host-mode port, which the new task cannot take while the old one holds it"
    if svc.wants_gpu:
        return "stop-first", "auto: it uses a GPU and Swarm cannot check the card has room for a second copy"
    if svc.proxy is not None:
        return "start-first", "auto: behind the proxy, no host port and no GPU: the new task starts beside the old one"
    return "start-first", "auto: no host port and no GPU, so the new task starts beside the old one"


PROBE_RETRIES = 3


def probe_timing(interval_s: float) -> tuple[float, float]:
    """(interval, timeout) of Swarm's probe for a `health.interval`: at least PROBE_MIN_INTERVAL apart, 5-10 s each.

    The timeout bounds a process exec'd in the container (runc, the shell, wget), not only the HTTP answer: on a loaded
    host an exec alone can take seconds, and with 2 s a loaded lab saw Swarm kill healthy tasks as unhealthy (exit 143),
    mid-rollback too. A release that answers "degraded" fails as fast as before (its probe returns at once); only a
    probe that hangs is judged later (3 x (interval + timeout))."""
    interval = max(interval_s, PROBE_MIN_INTERVAL)
    return interval, min(10.0, max(interval * 2, 5.0))


def judged_unhealthy_within(interval_s: float) -> float:
    """The longest Swarm's healthcheck takes, after its start period, to call a failing task unhealthy."""
    interval, timeout = probe_timing(interval_s)
    return PROBE_RETRIES * (interval + timeout)


def healthcheck(inv: Inventory, service: str) -> dict[str, Any]:
    """Swarm's healthcheck from `health:`: probed inside the container, on the container's port.

    The proxy's probe is PROXY_PROBE whatever `swarm.healthcheck` says: its image is fleetroll's own, with bash.
    """
    svc = inv.fleet.services[service]
    h = svc.health
    port = next((cp for hp, cp, _p in svc.port_pairs() if hp == h.port), h.port)
    url = f"http://127.0.0.1:{port}{h.path}"
    interval, timeout = probe_timing(h.interval)
    if inv.fleet.is_proxy(service):
        test = ["CMD", "/bin/bash", "-c", PROXY_PROBE, "probe", str(port), h.path]
    elif inv.fleet.swarm.healthcheck == "python":
        test = ["CMD", "python3", "-c", PYTHON_PROBE, url, f"{timeout:g}"]
    else:
        test = ["CMD", "/bin/sh", "-c", WGET_PROBE, "probe", url]  # bounded by Docker's timeout below
    return {"test": test, "interval": _seconds(interval), "timeout": _seconds(timeout), "retries": PROBE_RETRIES,
            "start_period": _seconds(h.healthy_deadline)}


def update_settings(inv: Inventory, phase: str, service: str, order: str) -> tuple[dict, dict]:
    """update_config and rollback_config from `update:` (Nomad's words -> Swarm's) and `health.min_healthy_time`.

    The rollback's failure_action is `continue`, not Swarm's default `pause`: a CI run under load saw a task of the
    previous (good) release killed as unhealthy mid-rollback, and a paused rollback leaves some nodes on the failed
    release with no spec left to go back to. Continuing puts the previous release on every task (Swarm restarts one
    that fails); fleetroll still judges the end from what runs, so a task that never runs is needs-operator."""
    svc = inv.fleet.services[service]
    u = inv.phase(phase).update or svc.update
    parallelism = u.max_parallel if u else 0  # 0: every task at once, as fleetroll's SSH push does without batches
    monitor = _seconds(svc.health.min_healthy_time) if svc.health.min_healthy_time else "0s"
    update = {"parallelism": parallelism, "delay": "0s", "failure_action": "rollback", "monitor": monitor,
              "max_failure_ratio": 0, "order": order}
    return update, {**update, "failure_action": "continue"}


def secret_refs(inv: Inventory, phase: str) -> list[str]:
    """The inventory secret names the phase's services reference (pure): what the manager is asked to version."""
    return sorted({v.secret for name in inv.phase(phase).services for v in inv.fleet.services[name].env.values()
                   if isinstance(v, SecretRef)})


def _env_and_secrets(inv: Inventory, service: str, out: Rendered) -> tuple[dict[str, str], list[dict]]:
    """The env as the SSH push gives it: `{secret: NAME, as: file}` -> KEY=/run/secrets/NAME, the file a Swarm secret.

    A secret in the environment (`{secret: NAME}`) cannot be given by Swarm without its value in the
    spec, and `<KEY>_FILE` would hand the service another variable than the SSH push does: refused.
    """
    fleet, svc = inv.fleet, inv.fleet.services[service]
    uid, gid = svc.user.split(":")
    env: dict[str, str] = {}
    mounts: dict[str, dict] = {}
    for key, value in svc.env.items():
        if isinstance(value, SecretRef):
            if value.as_ != "file":
                raise RenderError(f"services.{service}.env.{key}: Swarm cannot put a secret's value in the environment"
                                  " without writing it into the service's spec; write {secret: "
                                  f"{value.secret}, as: file}} (the service reads the file named by ${key}, under either"
                                  " engine) or keep the phase on engine: ssh")
            name = out.secret_names.get(value.secret) or secret_name(value.secret)
            out.secrets[name] = value.secret
            env[key] = f"{SECRETS_DIR}/{value.secret}"  # the SSH push's own path (agent/secret_files.py)
            mounts[name] = {"source": name, "target": value.secret, "uid": uid, "gid": gid, "mode": 0o400}
        else:
            env[key] = str(value)
    env["FLEETROLL_SERVICE"] = service
    if not fleet.replicated(service):
        env["FLEETROLL_HOST"] = fleet.hosts_of(service)[0]
    url = inv.collector_url()
    if url:
        env["FLEETROLL_COLLECTOR_URL"] = url
        note = ("no start-up report keys: each is derived per host and digest on the host (agent/secrets.py), which"
                " Swarm cannot do yet; the services' start-up reports are not authenticated")
        if note not in out.notes:
            out.notes.append(note)
    return env, list(mounts.values())


def own_dir_problem(src: str) -> str | None:
    """Why a bind source would show a container the agent's own state, locks, code or registry logins on a node. Pure.

    The SSH push checks this on the host itself (agent/host_checks.py); a Swarm task's node runs no agent
    check before Docker mounts, so the render refuses by name what it can: see NODE_OWN_DIRS, HOME_OWN.
    """
    for d in NODE_OWN_DIRS:
        if src == d or src.startswith(d + "/") or d.startswith(src.rstrip("/") + "/"):
            where = "is" if src == d else "is under" if src.startswith(d + "/") else "contains"
            return f"host path {src!r} {where} {d}, the fleetroll agent's own directory on the node, which no container may mount"
    parts = [p for p in src.split("/") if p]
    if parts[:1] == ["home"] and len(parts) <= 2:
        return (f"host path {src!r} is or holds a home directory, where the agent's code (~/{paths.AGENT_DIR_NAME}) and the"
                " docker logins (~/.docker) live; mount a directory below it")
    for own in HOME_OWN:
        sub = own.split("/")
        if any(parts[i:i + len(sub)] == sub for i in range(len(parts))):
            return f"host path {src!r} is or lies under a ~/{own} directory, the agent's or docker's own; no container may mount it"
    return None


def _volumes(inv: Inventory, service: str, named: dict[str, dict]) -> list[dict]:
    out = []
    for item in inv.fleet.services[service].volumes:
        parts = item.split(":")
        src, target, ro = parts[0], parts[1], len(parts) > 2 and parts[2] == "ro"
        if src.startswith("/"):
            # The hard rules of the SSH push, applied again here (agent/contract.py), not a copy of them.
            problem = contract.host_path_problem(src, inv.fleet.defaults.host_paths) or own_dir_problem(src)
            if problem:
                raise RenderError(f"services.{service}.volumes: {problem}")
            out.append({"type": "bind", "source": src, "target": target, "read_only": ro})
        else:
            named[src] = {"name": src}  # the same volume the SSH push uses on the node, not <stack>_<name>
            out.append({"type": "volume", "source": src, "target": target, "read_only": ro})
    return out


def service_hash(entry: dict[str, Any]) -> str:
    """Identity of a rendered service (image digest included), labels aside: equal hash, nothing to update."""
    body = {k: v for k, v in entry.items() if k != "deploy"}
    body["deploy"] = {k: v for k, v in entry.get("deploy", {}).items() if k != "labels"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _service(inv: Inventory, phase: str, name: str, digest: str, out: Rendered, named: dict[str, dict]) -> dict[str, Any]:
    """One service of the stack; what cannot be said exactly goes to out.notes."""
    fleet, svc = inv.fleet, inv.fleet.services[name]
    bound = [p for p in svc.port_bindings() if p[0]]
    if bound:
        raise RenderError(f"services.{name}.ports: Swarm publishes on every address; {bound[0][0]} cannot be kept")
    image = f"{inv.image_ref(name)}@{digest}" if digest else inv.image_ref(name)
    if not digest:
        out.notes.append(f"{name}: image by tag ({svc.tag}): no digest resolved; a rollout always deploys by digest")
    order, why = update_order(inv, name)
    out.orders[name] = (order, why)
    mode, constraints = placement(inv, name)
    update, rollback = update_settings(inv, phase, name, order)
    env, secret_mounts = _env_and_secrets(inv, name, out)
    entry: dict[str, Any] = {
        "image": image,
        "user": svc.user,
        "environment": env,
        "healthcheck": healthcheck(inv, name),
        "stop_grace_period": f"{svc.stop_timeout}s",
        "deploy": {
            **mode,
            "endpoint_mode": "dnsrr",  # no VIP: this kernel has no IPVS (docs/swarm.md)
            "placement": {"constraints": constraints, **({"max_replicas_per_node": 1} if svc.replicas else {})},
            "update_config": update,
            "rollback_config": rollback,
            "restart_policy": {"condition": RESTART[svc.restart]},
        },
    }
    if svc.ports:
        entry["ports"] = [{"target": cp, "published": hp, "protocol": proto, "mode": "host"} for hp, cp, proto in svc.port_pairs()]
    vols = _volumes(inv, name, named)
    if vols:
        entry["volumes"] = vols
    if secret_mounts:
        entry["secrets"] = secret_mounts
    if fleet.is_proxy(name) or svc.proxy is not None:
        _behind_or_proxy(inv, name, entry, out)
    if svc.wants_gpu:
        env["NVIDIA_VISIBLE_DEVICES"] = "all" if svc.gpus == "all" else ",".join(str(i) for i in range(int(svc.gpus)))
        out.notes.append(f"{name}: GPU by node label {GPU_LABEL} and NVIDIA_VISIBLE_DEVICES; Swarm has no --gpus, so the"
                         " node's dockerd must run nvidia as its default runtime")
    entry["deploy"]["labels"] = {TAG_LABEL: svc.tag, DIGEST_LABEL: digest, PHASE_LABEL: phase, SERVICE_LABEL: name,
                                 SPEC_LABEL: service_hash(entry)}
    if fleet.is_proxy(name):
        entry["deploy"]["labels"][proxy.CONFIG_HASH_LABEL] = proxy.config_hash(entry["environment"][CONFIG_ENV])
    return entry


def _behind_or_proxy(inv: Inventory, name: str, entry: dict[str, Any], out: Rendered) -> None:
    """The proxy, or a service behind it, on Swarm (playbooks/swarm/proxy.py): both on the overlay, only the proxy published.

    The proxy's task gets the configuration rendered from the inventory in the variable its image reads, and
    publishes each service's `proxy.listen` in host mode.
    """
    entry["networks"] = [proxy.NETWORK]
    rp = inv.fleet.reverse_proxy
    if not inv.fleet.is_proxy(name):
        return  # the proxy on Swarm, or the SSH push's joined to the overlay (handover.py), finds its tasks by DNS
    try:
        backs = proxy.backends(inv)
        text = proxy.config(backs, rp.health_port)
    except (proxy.ProxyRenderError, ProxyError) as exc:
        raise RenderError(f"services.{name}: {exc}") from None
    entry["environment"][CONFIG_ENV] = text
    if backs:
        entry["ports"] = [{"target": b.listen, "published": b.listen, "protocol": "tcp", "mode": "host"} for b in backs]


def render(inv: Inventory, phase: str, digests: dict[str, str] | None = None,
           secret_names: dict[str, str] | None = None) -> Rendered:
    """The phase's stack. `digests` ({service: sha256:...}) pins images; a service without one is deployed by tag.

    `secret_names` ({NAME: fr_NAME_<v>}, from the manager's agent) names each value's Swarm secret;
    without it a secret is shown as fr_NAME, which a rollout never deploys.
    """
    digests = digests or {}
    out = Rendered(stack_name(phase), {}, secret_names=dict(secret_names or {}))
    named: dict[str, dict] = {}
    services = {name: _service(inv, phase, name, digests.get(name, ""), out, named) for name in inv.phase(phase).services}
    out.doc = {"version": VERSION, "services": services}
    if any("networks" in e for e in services.values()):
        out.doc["networks"] = proxy.network_doc()
    if named:
        out.doc["volumes"] = named
    if out.secrets:
        out.doc["secrets"] = {n: {"external": True} for n in out.secrets}
        unversioned = sorted(v for n, v in out.secrets.items() if n == secret_name(v))
        if unversioned:
            out.notes.append(f"secrets {', '.join(unversioned)} shown as fr_NAME: a rollout names each value's Swarm"
                             " secret fr_NAME_<keyed hash of the value>, computed on the manager from its own file")
    return out


def literal(value: Any) -> Any:
    """Every string with `$` doubled: `docker stack deploy` interpolates ${VAR} and $VAR in every value of the file.

    Without it the shell probe reached the task as `b=(wget ... "1")` (seen in the lab: every
    probe a syntax error, every healthy task killed), and an env value with a `$` would change.
    """
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {k: literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [literal(v) for v in value]
    return value


def to_yaml(r: Rendered) -> str:
    """The stack file as `docker stack deploy -c` reads it: its interpolation undone in advance (literal)."""
    import yaml

    head = "".join(f"# note: {n}\n" for n in r.notes)
    return f"# stack {r.stack}: docker stack deploy -c FILE {r.stack}\n{head}" + yaml.safe_dump(literal(r.doc), sort_keys=False)
