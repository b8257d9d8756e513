"""The inventory's cross-field rules, checked once every field passed its own: ports, placement, proxy, GPUs, phases.

Each problem names file:line, the dotted field and the fix; all of them are reported in one pass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from agent import contract
from agent.proxy import CONFIG_ENV

from .inventory_yaml import _line_for
from .schema import PORT_RE, Fleet, Host, Phase, Service


def _host_name_checks(fleet: Fleet, path: Path, lines: dict, invalid_hosts: set[str]) -> list[str]:
    """Groups and swarm managers name hosts of the inventory."""
    problems = []
    for gname, members in fleet.groups.items():
        unknown = [h for h in members if h not in fleet.hosts and h not in invalid_hosts]
        if unknown:
            problems.append(f"{path}:{_line_for(lines, ('groups', gname))}: groups.{gname}: unknown host(s) {', '.join(unknown)};"
                            f" fix: use hosts from hosts: ({', '.join(fleet.hosts)})")
    unknown_managers = [h for h in fleet.swarm.managers if h not in fleet.hosts and h not in invalid_hosts]
    if unknown_managers:
        problems.append(f"{path}:{_line_for(lines, ('swarm', 'managers'))}: swarm.managers: unknown host(s)"
                        f" {', '.join(unknown_managers)}; fix: name hosts from hosts: ({', '.join(fleet.hosts)})")
    return problems


def _cross_checks(fleet: Fleet, path: Path, lines: dict, invalid_hosts: set[str] = frozenset()) -> list[str]:
    problems = _host_name_checks(fleet, path, lines, invalid_hosts)
    used: dict[tuple[str, str, int, str], str] = {}
    for name, svc in fleet.services.items():
        def at(*f: str, name: str = name) -> str:
            return f"{path}:{_line_for(lines, ('services', name) + f)}"

        where = "host" if svc.host else "hosts" if svc.hosts else "group"
        if svc.group and svc.group not in fleet.groups:
            problems.append(f"{at('group')}: services.{name}.group: no group {svc.group!r}; fix: define it under groups:"
                            f" ({', '.join(fleet.groups) or 'none defined'})")
            continue
        placed = fleet.hosts_of(name)
        if not placed and svc.group:
            problems.append(f"{at('group')}: services.{name}.group: group {svc.group!r} has no hosts; fix: list its hosts")
        unknown = [h for h in placed if h not in fleet.hosts and h not in invalid_hosts]
        if unknown and not svc.group:
            problems.append(
                f"{at(where)}: services.{name}.{where}: unknown host {', '.join(map(repr, unknown))}; fix: use one of"
                f" {', '.join(fleet.hosts)} or add the host under hosts:"
            )
        if svc.gpu_memory_gb and not svc.wants_gpu:
            problems.append(f"{at('gpu_memory_gb')}: services.{name}.gpu_memory_gb: a GPU memory budget on a service with"
                            " gpus: 0; fix: request a GPU or remove gpu_memory_gb")
        if svc.update and svc.update.batches and not fleet.replicated(name):
            problems.append(f"{at('update')}: services.{name}.update: canary and batches need replicas; fix: give hosts: or"
                            " group:, or remove canary/max_parallel")
        problems += _proxy_checks(fleet, name, at)
        for h in (h for h in placed if h in fleet.hosts):
            problems += _replica_checks(fleet, name, svc, h, at, used)
        for i, vol in enumerate(svc.volumes):
            problem = contract.host_path_problem(vol.split(":")[0], fleet.defaults.host_paths)
            if problem:
                problems.append(f"{at('volumes', i)}: services.{name}.volumes[{i}]: {problem}; fix: mount a named volume,"
                                " or open the directory in defaults.host_paths if the service must see it")
        if not fleet.on_network(name) and svc.health.port not in [hp for hp, _, _ in svc.port_pairs()]:
            problems.append(
                f"{at('health', 'port')}: services.{name}.health.port: {svc.health.port} is not one of"
                f" the service's published host ports ({', '.join(svc.ports) or 'none'}); fix: publish"
                " it under ports: or point health.port at a published host port"
            )
    return problems


def _replica_checks(fleet: Fleet, name: str, svc: Service, h: str, at, used: dict[tuple[str, str, int, str], str]) -> list[str]:
    """One replica on host `h`: its host ports clash with no other service's there (recorded in `used`); its GPUs exist."""
    problems = []
    replica = f"{name}@{h}" if fleet.replicated(name) else name
    bindings = [(*b, "ports") for b in svc.port_bindings()]
    if svc.proxy is not None:  # the proxy holds this port on the host for the service
        bindings = [*bindings, (svc.proxy.address, svc.proxy.listen_port, svc.proxy.port, "tcp", "proxy.listen")]
    for ip, hp, _cp, proto, field in bindings:
        # Two bindings of one port clash on the same address, or when either takes every address.
        other = next((o for (oh, oip, ohp, op), o in used.items()
                      if (oh, ohp, op) == (h, hp, proto) and (not ip or not oip or ip == oip)), None)
        if other:
            where = field.split(".")
            problems.append(
                f"{at(*where)}: services.{name}.{field}: host port {hp}/{proto} on {h} is"
                f" already published by service {other!r}; fix: give one of them another host port"
            )
        used[(h, ip, hp, proto)] = replica
    host = fleet.hosts[h]
    if svc.wants_gpu:
        if host.gpus is None:
            problems.append(
                f"{at('gpus')}: services.{name}.gpus: requests a GPU but host {h!r} lists no gpus:"
                + (f" (replica {replica}); fix: place the service on GPU hosts only" if replica != name
                   else "; fix: set gpus: 0 or move the service to a GPU host")
            )
        elif svc.gpus != "all" and int(svc.gpus) > host.gpus.count:
            problems.append(
                f"{at('gpus')}: services.{name}.gpus: requests {svc.gpus} GPUs but {h!r} has"
                f" {host.gpus.count}; fix: lower the request"
            )
    return problems


def _proxy_checks(fleet: Fleet, name: str, at) -> list[str]:
    """A service behind the proxy: a proxy named, placed wherever the service runs, and no host port of its own."""
    svc, rp, out = fleet.services[name], fleet.reverse_proxy, []
    order = svc.update.order if svc.update else "auto"
    if order == "start-first" and svc.proxy is None:
        out.append(f"{at('update', 'order')}: services.{name}.update.order: start-first runs the new container beside the"
                   " old one, which cannot take the same host port; fix: put the service behind the proxy (proxy:"
                   " {listen: PORT, port: CONTAINER_PORT}) or use order: stop-first")
    if CONFIG_ENV in svc.env and (rp is None or rp.service != name):
        out.append(f"{at('env', CONFIG_ENV)}: services.{name}.env.{CONFIG_ENV}: the reverse proxy's own configuration,"
                   f" which fleetroll renders for reverse_proxy.service ({rp.service if rp else 'none'}) alone; a host refuses"
                   f" it on any other container; fix: remove {CONFIG_ENV} from services.{name}.env")
    if rp is not None and rp.service == name:
        if svc.proxy is not None:
            out.append(f"{at('proxy')}: services.{name}.proxy: the reverse proxy cannot sit behind itself; fix: remove proxy:")
        if svc.ports:
            out.append(f"{at('ports')}: services.{name}.ports: the proxy publishes the listen ports of the services behind"
                       " it and nothing else; fix: remove ports:")
        if svc.health.port != rp.health_port:
            out.append(f"{at('health', 'port')}: services.{name}.health.port: the proxy answers /health on"
                       f" reverse_proxy.health_port ({rp.health_port}); fix: set health.port: {rp.health_port}")
        return out
    if svc.proxy is None:
        return out
    if rp is None:
        out.append(f"{at('proxy')}: services.{name}.proxy: no reverse_proxy: section names the proxy service; fix: add"
                   " reverse_proxy: {service: NAME} and that service (the fleetroll-proxy image)")
        return out
    if rp.service not in fleet.services:
        return out  # said once, by _reverse_proxy_checks
    if svc.ports:
        out.append(f"{at('ports')}: services.{name}.ports: a service behind the proxy publishes no host port (the proxy"
                   f" holds {svc.proxy.listen}); fix: remove ports:")
    if svc.health.port != svc.proxy.port:
        out.append(f"{at('health', 'port')}: services.{name}.health.port: behind the proxy the gate probes the container"
                   f" itself, on proxy.port ({svc.proxy.port}), not {svc.health.port}; fix: set health.port:"
                   f" {svc.proxy.port}")
    missing = [h for h in fleet.hosts_of(name) if h not in fleet.hosts_of(rp.service)]
    if missing:
        out.append(f"{at('proxy')}: services.{name}.proxy: the proxy {rp.service!r} does not run on {', '.join(missing)};"
                   f" fix: place {rp.service} on every host this service runs on (hosts: or group:)")
    if svc.proxy.listen_port == rp.health_port:  # two frontends on one port: the kernel splits clients between them
        out.append(f"{at('proxy', 'listen')}: services.{name}.proxy.listen: {svc.proxy.listen} is the proxy's own health"
                   f" port (reverse_proxy.health_port); fix: another listen port, or move health_port")
    if ".." in name or name.endswith(".") or name.startswith("."):
        # The proxy finds the container by this name in DNS: 'a..b' resolves to nothing (HAProxy falls back to 127.0.0.1)
        # and 'web.' as a fully qualified name to the container of 'web', after any restart that reads its configuration.
        out.append(f"{at('proxy')}: services.{name}.proxy: the proxy reaches the service by its name in DNS, where"
                   f" {name!r} is not a host name (empty label, or a trailing dot); fix: rename the service")
    return out


def _reverse_proxy_checks(fleet: Fleet, path: Path, lines: dict, invalid: set[str] | frozenset = frozenset()) -> list[str]:
    rp = fleet.reverse_proxy
    # A service left out for its own errors is there: its errors (above) say what to fix, not "no service named".
    if rp is None or rp.service in fleet.services or rp.service in invalid:
        return []
    return [f"{path}:{_line_for(lines, ('reverse_proxy', 'service'))}: reverse_proxy.service: no service named"
            f" {rp.service!r}; fix: add it under services: (image fleetroll-proxy) or name an existing one"]


def _observability_checks(fleet: Fleet, path: Path, lines: dict) -> list[str]:
    name = fleet.observability.collector
    at = f"{path}:{_line_for(lines, ('observability', 'collector'))}: observability.collector"
    if name and (name not in fleet.services or not fleet.services[name].ports):
        return [f"{at}: {name!r} is not a service with a published port; fix: name the collector service or remove the key"]
    if name and len(fleet.hosts_of(name)) != 1:
        return [f"{at}: {name!r} runs on {len(fleet.hosts_of(name))} hosts; every container reports to one URL, so the"
                " collector runs on one host: fix: give it host: NAME"]
    return []


def _phase_checks(phases: list[Phase], fleet: Fleet, path: Path, lines: dict, invalid: frozenset | set = frozenset()) -> list[str]:
    problems, seen_phase, owner = [], set(), {}
    for i, ph in enumerate(phases):
        if ph.name in seen_phase:
            problems.append(f"{path}:{_line_for(lines, ('phases', i, 'name'))}: phases[{i}].name: phase {ph.name!r} appears twice; fix: rename one")
        seen_phase.add(ph.name)
        for j, s in enumerate(ph.services):
            ln = _line_for(lines, ("phases", i, "services", j))
            if s in invalid:
                continue  # the service's own errors are reported already
            if s not in fleet.services:
                problems.append(
                    f"{path}:{ln}: phases[{i}].services: {s!r} is not a service in the inventory;"
                    f" fix: add it under services: or remove it from phase {ph.name!r}"
                )
            elif s in owner:
                problems.append(
                    f"{path}:{ln}: phases[{i}].services: {s!r} is already in phase {owner[s]!r};"
                    " fix: a service belongs to exactly one phase"
                )
            owner.setdefault(s, ph.name)
        if fleet.engine_of(ph) == "swarm":
            problems += _swarm_phase_checks(ph, fleet, f"{path}:{_line_for(lines, ('phases', i, 'name'))}: phases[{i}]")
        else:
            problems += [f"{path}:{_line_for(lines, ('phases', i, 'name'))}: phases[{i}]: phase {ph.name!r} runs on engine: ssh,"
                         f" which runs one container on each host and reschedules nothing: services.{s}.replicas cannot be"
                         " kept; fix: remove replicas, or run the phase on engine: swarm"
                         for s in ph.services if s in fleet.services and fleet.services[s].replicas]
        # Only the batch settings must agree: order and drain are each service's own.
        blocks = {s: fleet.services[s].update for s in ph.services
                  if s in fleet.services and fleet.services[s].update and fleet.services[s].update.batches}
        if ph.update is None and len({json.dumps([u.canary, u.max_parallel]) for u in blocks.values()}) > 1:
            problems.append(f"{path}:{_line_for(lines, ('phases', i, 'name'))}: phases[{i}]: services {', '.join(blocks)} give"
                            f" different update: blocks; a phase rolls in one order: fix: give phase {ph.name!r} its own update:")
    return problems + _phase_cover_checks(phases, fleet, path, lines, invalid) + _swarm_name_checks(phases, fleet, path, lines)


def _phase_cover_checks(phases: list[Phase], fleet: Fleet, path: Path, lines: dict, invalid: frozenset | set) -> list[str]:
    """Every service in a phase (else no rollout ever deploys it, and nothing said so); a phase behind the proxy after
    the proxy's own (else `fab rollout --all` fails at the first such phase, every time)."""
    where = {s: i for i, ph in reversed(list(enumerate(phases))) for s in ph.services}
    out = [f"{path}:1: phases: service {s!r} of the inventory is in no phase, so no rollout would deploy it;"
           " fix: add it to a phase's services: (or remove it from the inventory)"
           for s in fleet.services if s not in where and s not in invalid]
    rp = fleet.reverse_proxy.service if fleet.reverse_proxy else None
    if rp in where:
        for s, i in where.items():
            if s in fleet.services and fleet.services[s].proxy is not None and i < where[rp]:
                out.append(f"{path}:{_line_for(lines, ('phases', i, 'name'))}: phases[{i}]: {s!r} sits behind the proxy"
                           f" {rp!r}, whose phase {phases[where[rp]].name!r} comes later; fix: move phase"
                           f" {phases[where[rp]].name!r} before {phases[i].name!r} (or {rp!r} into it, listed first)")
    return out


def _swarm_name_checks(phases: list[Phase], fleet: Fleet, path: Path, lines: dict) -> list[str]:
    """In a fleet that uses Swarm, `fr-<phase>_<service>` names a Swarm service and the DNS name its tasks answer to
    (tasks.fr-<phase>_<service>, which the SSH push's proxy resolves too): one DNS label, so at most 63 characters, and
    one per (phase, service). `_` is allowed in both names, so `a_b` + `web` and `a` + `b_web` would meet."""
    if "swarm" not in fleet.model_fields_set and not any(fleet.engine_of(ph) == "swarm" for ph in phases):
        return []
    out, seen = [], {}
    for i, ph in enumerate(phases):
        at = f"{path}:{_line_for(lines, ('phases', i, 'name'))}: phases[{i}]"
        for s in (s for s in ph.services if s in fleet.services):
            name = f"fr-{ph.name}_{s}"
            if "." in name:
                out.append(f"{at}: phase {ph.name!r} and service {s!r} make the Swarm name {name}, whose '.' would split the"
                           f" DNS name tasks.{name} its tasks are found by; fix: rename without '.'")
            elif len(name) > 63:
                out.append(f"{at}: phase {ph.name!r} and service {s!r} make the Swarm name {name} ({len(name)} characters),"
                           " longer than the 63 of a DNS label its tasks are found by; fix: shorten the phase or service name")
            elif name in seen:
                out.append(f"{at}: phase {ph.name!r} and service {s!r} make the Swarm name {name}, as phase {seen[name][0]!r} and"
                           f" service {seen[name][1]!r} do; fix: rename one (without '_')")
            seen.setdefault(name, (ph.name, s))
    return out


def _swarm_phase_checks(ph: Phase, fleet: Fleet, at: str) -> list[str]:
    """What Swarm cannot run as the inventory says (docs/swarm.md, "Limits"): each a refusal at load, not a surprise mid-update."""
    out = []
    why = f"{at}: phase {ph.name!r} runs on engine: swarm" + ("" if ph.engine else " (the inventory's engine)")
    if ph.update is not None and ph.update.canary:
        out.append(f"{why}, which has no canary batch; fix: remove phases[].update.canary (Swarm's parallelism comes"
                   " from max_parallel) or keep the phase on engine: ssh")
    for name in (s for s in ph.services if s in fleet.services):
        svc = fleet.services[name]
        if svc.proxy is not None and svc.proxy.address:  # the rest of the proxy on Swarm: playbooks/swarm/proxy.py
            out.append(f"{why}: services.{name}.proxy.listen: {svc.proxy.listen} binds one address; Swarm publishes the"
                       " proxy's port on every address of the node; fix: listen: \"PORT\", or keep the phase on engine: ssh")
        bound = [p for p in svc.ports if PORT_RE.fullmatch(p)["ip"]]
        if bound:
            out.append(f"{why}: services.{name}.ports: {', '.join(bound)} binds one address; Swarm publishes a port on every"
                       " address of the node; fix: publish HOST:CONTAINER, or keep the phase on engine: ssh")
        if svc.update is not None and svc.update.order == "start-first" and svc.ports:
            out.append(f"{why}: services.{name}.update.order: start-first with a host-mode published port stalls under"
                       " Swarm (the new task waits Pending for the port the old one holds); fix: order: stop-first")
        if svc.update is not None and svc.update.canary:
            out.append(f"{why}: services.{name}.update.canary: Swarm has no canary batch; fix: remove canary (parallelism"
                       " comes from max_parallel) or keep the phase on engine: ssh")
        in_env = [k for k, v in svc.env.items() if not isinstance(v, str) and v.as_ == "env"]  # SecretRef given as env
        if in_env:  # said at load, not by the rollout after a passing preflight (found by an exploratory run)
            out.append(f"{why}: services.{name}.env.{in_env[0]}: Swarm cannot put a secret's value in the environment;"
                       " it gives secrets as files: fix: {secret: NAME, as: file}, or keep the phase on engine: ssh")
        if svc.replicas and svc.replicas > len(fleet.hosts_of(name)):
            out.append(f"{why}: services.{name}.replicas: {svc.replicas} tasks over {len(fleet.hosts_of(name))} host(s), and a"
                       " host runs at most one (one set of ports, one GPU budget); fix: replicas <= the number of its hosts")
    return out


def _valid(model: type[BaseModel], value: Any) -> bool:
    try:
        model.model_validate(value)
        return True
    except ValidationError:
        return False


def _partial_fleet(data: dict) -> tuple[Fleet | None, set[str]]:
    """The valid part of an invalid inventory, so its cross-checks still run in the same pass.

    Returns (fleet, names of hosts and services left out for their own errors): checks that
    would only repeat those errors ("unknown host", "not a service") are skipped for them.
    """
    d = dict(data)
    dropped: set[str] = set()
    for section, model in (("hosts", Host), ("services", Service)):
        entries = d.get(section)
        if isinstance(entries, dict):
            keep = {k: v for k, v in entries.items() if _valid(model, v) and contract.NAME_RE.fullmatch(str(k))}
            dropped |= set(entries) - set(keep)
            d[section] = keep
    for _ in range(2):
        try:
            return Fleet.model_validate(d), dropped
        except ValidationError as err:
            bad = {e["loc"][0] for e in err.errors() if e["loc"] and e["loc"][0] not in ("registry", "hosts", "services")}
            if not bad:
                return None, dropped
            for key in bad:
                d.pop(key, None)
    return None, dropped


def _host_checks(fleet: Fleet, path: Path, lines: dict) -> list[str]:
    problems = []
    seen: dict[tuple[str, int], str] = {}
    for name, h in fleet.hosts.items():
        at = f"{path}:{_line_for(lines, ('hosts', name, 'address'))}"
        other = seen.get((h.address, h.port))
        if other:
            problems.append(f"{at}: hosts.{name}.address: {h.address}:{h.port} is also host {other!r}; fix: one entry per"
                            " machine (two names for one sshd would let two rollouts take the same host)")
        seen.setdefault((h.address, h.port), name)
        key = Path(h.key_filename).expanduser() if h.key_filename else None
        at_key = f"{path}:{_line_for(lines, ('hosts', name, 'key_filename'))}: hosts.{name}.key_filename"
        if key is not None and not key.exists():
            problems.append(f"{at_key}: no such file {key}; fix: point it at the SSH private key for {h.user}@{h.address}")
        elif key is not None and _public_key(key):
            private = f" ({key.with_suffix('')})" if key.suffix == ".pub" else ""
            problems.append(f"{at_key}: {key} is a public key (the half the host holds); fix: point it at the private key"
                            f" beside it{private}")
    return problems


def _public_key(key: Path) -> bool:
    """An OpenSSH public key line (`ssh-ed25519 AAAA… comment`), which OpenSSH cannot log in with: read its first bytes."""
    try:
        with key.open("rb") as f:
            head = f.read(64)
    except OSError:
        return False  # unreadable: OpenSSH's own words say why, at connect
    return head.startswith((b"ssh-", b"ecdsa-sha2-", b"sk-ssh-", b"sk-ecdsa-"))
