"""The planner: (inventory, phase, observed host state) -> plan. Pure: no file, network or host I/O.

Only two helpers read the world, for the plan's record: new_rollout_id() the clock and a random
suffix, operator() who runs it (FLEETROLL_OPERATOR or the login name, and the host name).

A plan says, per host and service, what runs now (tag@digest), what should run
(tag@digest, resolved from the registry before anything changes), and the action:
`create` (nothing runs), `replace` (something else runs, or the same image with another
configuration), or `noop`. No-op is the natural result of comparing: a second run of a
finished rollout finds every service already at its digest and spec, and so touches
nothing. The plan is plain data: printable for --dry-run, shipped to agents as JSON.
"""

from __future__ import annotations

import getpass
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.container_args import config_hash, gate_only_keys, redact_env

from . import order as swap_order
from .inventory import Inventory, SecretRef

CREATE, REPLACE, NOOP, BLOCKED = "create", "replace", "noop", "blocked"


def _steady(running: dict) -> bool:
    """Up and staying up. Docker reports a crash-looping container as Running between restarts (status
    `restarting`), and a paused one as Running too: neither is the release doing its work, so neither is a no-op."""
    return bool(running.get("running")) and running.get("status", "running") == "running"


def _how(running: dict) -> str:
    status = running.get("status") or "not running"
    if status == "restarting":
        return f"crash-looping (restarting, {running.get('restart_count', 0)} restarts so far)"
    return status


@dataclass
class Step:
    host: str
    service: str
    action: str
    current_tag: str = ""
    current_digest: str = ""
    new_tag: str = ""
    new_digest: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    changes: list[str] = field(default_factory=list)  # what differs, per key, values never (ansible --diff, nomad plan)
    order: str = "stop-first"  # start-first | stop-first: how the agent swaps it (playbooks/order.py)
    order_reason: str = ""
    drain_s: float = 0.0

    def to_json(self) -> dict:
        """Everything, env values included: what the agent is sent, never what is recorded or printed."""
        return asdict(self)

    def record(self, env_key: bytes) -> dict:
        """For records and outputs: env values as short keyed hashes (secret references as themselves)."""
        d = asdict(self)
        if d["spec"].get("env"):
            d["spec"]["env"] = redact_env(d["spec"]["env"], env_key)
        return d


@dataclass
class Plan:
    rollout_id: str
    phase: str
    operator: str
    steps: list[Step]
    created: float = field(default_factory=time.time)

    def for_host(self, host: str) -> list[Step]:
        return [s for s in self.steps if s.host == host]

    @property
    def hosts(self) -> list[str]:
        return list(dict.fromkeys(s.host for s in self.steps))

    @property
    def changes(self) -> list[Step]:
        return [s for s in self.steps if s.action in (CREATE, REPLACE)]

    @property
    def blocked(self) -> list[Step]:
        return [s for s in self.steps if s.action == BLOCKED]

    def to_json(self, env_key: bytes) -> dict:
        """The plan as recorded and printed: env values never appear, only their keyed hashes."""
        return {
            "rollout_id": self.rollout_id,
            "phase": self.phase,
            "operator": self.operator,
            "created": self.created,
            "steps": [s.record(env_key) for s in self.steps],
        }


def new_rollout_id(*parts: str) -> str:
    """The one shape of a rollout id: r<UTC time>-<what>-<6 hex>, e.g. r20261130T010203Z-gpu-mainpc-rollback-1a2b3c.

    Sortable by time, says what it was (a phase's rollout, its rollback, a service's restart),
    unique without coordination.
    """
    return f"r{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{'-'.join(parts)}-{uuid.uuid4().hex[:6]}"


def operator() -> str:
    user = os.environ.get("FLEETROLL_OPERATOR") or getpass.getuser()
    return f"{user}@{socket.gethostname()}"


def container_spec(inv: Inventory, service: str, host: str | None = None) -> dict[str, Any]:
    """Everything the agent needs to start the service (its replica on `host`), from the inventory alone."""
    svc = inv.fleet.services[service]
    host = host or inv.fleet.hosts_of(service)[0]
    env = {k: v.model_dump() if isinstance(v, SecretRef) else v for k, v in svc.env.items()}
    env.update(FLEETROLL_SERVICE=service, FLEETROLL_HOST=host)
    url = inv.collector_url()
    if url:
        obs = inv.fleet.observability
        env["FLEETROLL_COLLECTOR_URL"] = url
        # Derived on the host from the fleet secret for this container alone (agent/secrets.py).
        env["FLEETROLL_REPORT_KEY"] = {"report_key": obs.report_key_secret}
        if service == obs.collector:
            env["COLLECTOR_FLEET_KEY"] = {"secret": obs.report_key_secret}
    extra: dict[str, Any] = {}
    rp = inv.fleet.reverse_proxy
    if rp is not None and inv.fleet.on_network(service):
        extra["network"] = rp.network
    if svc.proxy is not None:
        extra["proxy"] = {"listen": svc.proxy.listen, "port": svc.proxy.port}
    ports = {f"{c}/{proto}": f"{ip}:{h}" if ip else h for ip, h, c, proto in svc.port_bindings()}
    if inv.fleet.is_proxy(service):
        from agent.proxy import CONFIG_ENV, render

        from .swarm.proxy import ssh_routes  # with each service's Swarm tasks when the fleet uses Swarm (docs/swarm.md)

        behind = [inv.fleet.services[n].proxy for n in inv.fleet.proxied_on(host)]
        env[CONFIG_ENV] = render(ssh_routes(inv, host), rp.health_port)
        extra["role"] = "proxy"
        for r in behind:  # the proxy binds each listen port inside its container on the same number
            ports[f"{r.listen_port}/tcp"] = f"{r.address}:{r.listen_port}" if r.address else r.listen_port
    return {
        "name": service,
        "repo": inv.repo(service),
        "tag": svc.tag,
        "ports": ports,
        "env": env,
        "volumes": list(svc.volumes),
        "user": svc.user,
        "gpus": svc.gpus,
        "restart": svc.restart,
        "stop_timeout": svc.stop_timeout,
        "health": inv.fleet.health_spec(service),
        # Only when declared: a key present for every service would change every spec hash and replace everything once.
        **({"gpu_memory_gb": svc.gpu_memory_gb} if svc.gpu_memory_gb else {}),
        **extra,
    }


def spec_hash(spec: dict[str, Any], digest: str) -> str:
    """Identity of what should run: the config plus the exact image digest (the agent's restart relabels with it too)."""
    return config_hash(spec, digest)


def runs_inventory_config(inv: Inventory, service: str, host: str, container: dict[str, Any],
                          spec: dict[str, Any] | None = None) -> bool | None:
    """Does this container (a facts summary) run the inventory's configuration of `service` on `host`? (pure)

    Its configuration label against the hash a rollout would give it for the digest it runs (and its live
    restart policy); None when it has no label (started by hand). The tag is compared by whoever asks: here
    it is the configuration around it (ports, env, volumes, health, a proxy's routes). `spec`: the
    inventory's container_spec of it, when the caller has it already.
    """
    if not container.get("spec_hash") or not container.get("digest"):
        return None
    spec = {k: v for k, v in (spec or container_spec(inv, service, host)).items() if k not in ("digest", "spec_hash")}
    if hand_changed(container, spec):
        return False
    return spec_hash(spec, container["digest"]) == container["spec_hash"] or bool(gate_only_change(spec, container))


def gate_only_change(spec: dict[str, Any], running: dict[str, Any]) -> list[str]:
    """The gate timings that are all a running container (a facts summary) differs from `spec` in, else [] (pure)."""
    return gate_only_keys(running.get("health") or "", running.get("spec_hash") or "", running.get("digest") or "", spec)


def hand_changed(running: dict[str, Any], spec: dict[str, Any]) -> str:
    """What was changed on a labelled container after fleetroll made it, which its labels cannot say (pure).

    Only `docker update` changes a container in place, and of what fleetroll sets only the restart policy;
    a container recreated by hand has no configuration label (and is replaced for that).
    """
    have, want = running.get("restart_policy"), spec.get("restart", "unless-stopped")
    if have and have != want:
        return f"its restart policy is {have}, the inventory says {want} (changed by hand?)"
    return ""


GATE_NOTE = "; new "  # how a no-op's reason goes on when only the gate's timings changed


def gate_note(step: Step) -> str:
    """The part of a no-op's reason that says new gate timings wait for the next swap ("" if none)."""
    return step.reason.split(GATE_NOTE, 1)[1] if step.action == NOOP and GATE_NOTE in step.reason else ""


def _action(running: dict[str, Any] | None, spec: dict[str, Any], digest: str) -> tuple[str, str]:
    """What to do with the service's container on its host, and why (pure)."""
    if running is None:
        return CREATE, "not running yet"
    if not running.get("spec_hash"):
        return REPLACE, "runs without fleetroll's configuration label (started by hand?); replace it with the inventory's"
    same = running.get("spec_hash") == spec["spec_hash"]
    gate_only = [] if same or running.get("digest") != digest else gate_only_change(spec, running)
    by_hand = hand_changed(running, spec)
    if (same or gate_only) and by_hand:
        return REPLACE, f"{by_hand}; start it afresh with the inventory's"
    if (same or gate_only) and _steady(running):
        return NOOP, "already running this digest with this configuration" + (
            f"{GATE_NOTE}{', '.join('health.' + k for k in gate_only)}: the gate uses it from the next swap" if gate_only else "")
    if same or gate_only:
        return REPLACE, f"container is {_how(running)}; start it afresh"
    if running.get("digest") == digest:
        return REPLACE, "same image, configuration changed"
    return REPLACE, "new image"


def build_plan(
    inv: Inventory,
    phase: str,
    facts: dict[str, dict[str, Any]],
    hosts: list[str] | None = None,
    rollout_id: str | None = None,
    who: str | None = None,
) -> Plan:
    """Compare each service of the phase with what its host runs; facts come from the agents."""
    steps = []
    for service, host in inv.replicas(phase, hosts):
        svc = inv.fleet.services[service]
        host_facts = facts.get(host) or {}
        spec = container_spec(inv, service, host)
        ref = inv.image_ref(service)
        image = (host_facts.get("images") or {}).get(ref) or {}
        running = next(
            (c for c in (host_facts.get("docker") or {}).get("containers", []) if c.get("name") == service),
            None,
        )
        step = Step(host=host, service=service, action=CREATE, new_tag=svc.tag, spec=spec)
        if running:
            step.current_tag, step.current_digest = running.get("tag", ""), running.get("digest", "")
        if not image.get("ok"):
            step.action = BLOCKED
            step.reason = image.get("error") or f"{ref} was not resolved in the registry"
            steps.append(step)
            continue
        step.new_digest = image["digest"]
        spec["digest"] = step.new_digest
        spec["spec_hash"] = spec_hash({k: v for k, v in spec.items() if k not in ("digest", "spec_hash")}, step.new_digest)
        if running and running.get("digest") != step.new_digest:
            step.changes.append(f"image: {running.get('tag') or '?'}@{(running.get('digest') or '?')[:19]} -> {svc.tag}@{step.new_digest[:19]}")
        step.changes += (host_facts.get("diffs") or {}).get(service) or []
        step.action, step.reason = _action(running, spec, step.new_digest)
        if step.action in (CREATE, REPLACE):
            wanted, step.drain_s = inv.fleet.update_order(service)
            d = swap_order.choose(service, wanted, svc.proxy is not None, bool(running and running.get("running")), svc.gpus,
                                  svc.gpu_memory_gb, inv.fleet.defaults.gpu_memory_reserve_gb, host_facts.get("nvml"))
            step.order, step.order_reason = d.order, d.reason
            if inv.fleet.is_proxy(service) and running and running.get("running"):
                step.order_reason = proxy_swap_words(inv, service, host)
            if d.refused:
                step.action, step.reason = BLOCKED, d.refused
        steps.append(step)
    return Plan(rollout_id or new_rollout_id(phase), phase, who or operator(), steps)


def proxy_swap_words(inv: Inventory, proxy: str, host: str) -> str:
    """What the proxy's own swap costs, said before it happens (pure).

    Found by an exploratory run: the dry run of the proxy's release said 'not behind the proxy: its
    clients reach the container itself', true but silent on what matters: the proxy holds the listen
    ports of every service behind it on this host, so they all get no requests while it is swapped.
    """
    behind = inv.fleet.proxied_on(host)
    return ("stop-first, it is the proxy: nothing sits in front of it, and the services behind it on this host"
            f" ({', '.join(behind) or 'none yet'}) get no requests between the old one's stop and the new one's start (and again"
            " while the old one comes back, if the new one fails its gate)")


def plan_text(plan: Plan) -> str:
    lines = [f"plan {plan.rollout_id} (phase {plan.phase}, operator {plan.operator})"]
    for host in plan.hosts:
        lines.append(f"  {host}:")
        for s in plan.for_host(host):
            cur = f"{s.current_tag}@{s.current_digest[7:19]}" if s.current_tag else "(none)"
            new = f"{s.new_tag}@{s.new_digest[7:19]}" if s.new_digest else s.new_tag
            lines.append(f"    {s.action:8} {s.service:20} {cur} -> {new}   # {s.reason}")
            if s.action not in (NOOP, BLOCKED):
                if s.action == REPLACE and s.order_reason:
                    lines.append(f"             = {s.order_reason}")
                lines += [f"             ~ {c}" for c in s.changes]
    n = len(plan.changes)
    lines.append(f"  {n} change(s), {len(plan.steps) - n - len(plan.blocked)} no-op(s), {len(plan.blocked)} blocked")
    return "\n".join(lines)
