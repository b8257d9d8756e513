"""Preflight policy: turn host facts into pass/warn/fail checks (pure, no I/O).

The agent gathers facts in one call per host; everything here is a decision over plain
data, so each rule is unit-tested without a host. Every failed check says what it
observed, what was required, and what to do about it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from agent import contract

from .inventory import Inventory, parse_version, tag_problem
from .plan import runs_inventory_config

PASS, WARN, FAIL = "pass", "warn", "fail"
ARCH_LABEL = contract.ARCH
REVISION_LABEL = contract.REVISION
IMAGE_USER = contract.IMAGE_USER


@dataclass
class Check:
    host: str
    check: str
    status: str
    detail: str
    fix: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def parse_arch_list(text: str) -> tuple[set[str], set[str]]:
    """'89;86' / '8.9 8.6+PTX' -> ({'89','86'}, {'86'} with PTX). Separators: ; , space."""
    archs, ptx = set(), set()
    for item in re.split(r"[;,\s]+", text.strip()):
        if not item:
            continue
        m = re.fullmatch(r"(\d+)\.?(\d)(\+PTX)?", item, re.IGNORECASE)
        if not m:
            continue
        code = f"{m[1]}{m[2]}"
        archs.add(code)
        if m[3]:
            ptx.add(code)
    return archs, ptx


def arch_covers(arch_label: str, cc: str) -> tuple[str, str]:
    archs, ptx = parse_arch_list(arch_label)
    want = cc.replace(".", "")
    if want in archs:
        return PASS, f"arch list {arch_label!r} includes {cc}"
    lower_ptx = [a for a in ptx if int(a) <= int(want)]
    if lower_ptx:
        return WARN, f"arch list {arch_label!r} lacks {cc}; runs by PTX JIT from sm_{max(lower_ptx)} (slow first start)"
    return FAIL, f"arch list {arch_label!r} does not cover compute capability {cc}"


def image_contract(info: dict[str, Any], cc: str | None, wants_gpu: bool) -> list[tuple[str, str, str]]:
    """Problems with an image's config: (status, detail, fix) for each."""
    out = [(FAIL, detail, fix) for detail, fix in contract.image_problems(info.get("user") or "", info.get("entrypoint"))]
    labels = info.get("labels") or {}
    if not labels.get(REVISION_LABEL):
        out.append((WARN, f"no {REVISION_LABEL} label", "build with fab build, which sets it"))
    if wants_gpu and cc:
        arch = labels.get(ARCH_LABEL)
        if not arch:
            out.append((FAIL, f"GPU image has no {ARCH_LABEL} label; cannot prove it runs on CC {cc}", "build from a GPU family"))
        else:
            status, detail = arch_covers(arch, cc)
            if status != PASS:
                out.append((status, detail, f'rebuild with TORCH_CUDA_ARCH_LIST including "{cc.replace(".", "")}"'))
    return out


def evaluate(inv: Inventory, host: str, phase: str | None, facts: dict[str, Any] | None, error: str = "",
             ahead: frozenset[tuple[str, str]] = frozenset()) -> list[Check]:
    """All checks for one host given its facts (None when the agent could not be reached); `ahead`: see _proxy_checks."""
    if facts is None:
        return [Check(host, "ssh", FAIL, error or "no answer", "fix SSH access, then re-run fab preflight")]
    checks = [Check(host, "ssh", PASS, "reachable, host key trusted")]
    spec = inv.fleet.hosts[host]
    services = inv.services_for(phase, [host])
    gpu_services = [s for s in services if inv.fleet.services[s].wants_gpu]

    docker = facts.get("docker") or {}
    if docker.get("ok"):
        checks.append(Check(host, "docker", PASS, f"dockerd {docker.get('version')} (API {docker.get('api_version')})"))
    else:
        checks.append(Check(host, "docker", FAIL, docker.get("error", "no answer"), "start dockerd and check DOCKER_HOST for the SSH user"))

    cc = spec.gpus.compute_capability if spec.gpus else None
    if spec.gpus:
        gpu_checks = _gpu_checks(host, spec.gpus, facts.get("nvml") or {})
        if not any(inv.fleet.services[s].wants_gpu for s in inv.services_for(None, [host])):
            # R1 gates GPU rollouts. A host that runs no GPU service in any phase only warns — the same verdict
            # whichever phase is asked about, so `fab preflight` and `fab preflight --phase P` never disagree.
            for c in gpu_checks:
                if c.status == FAIL:
                    c.status, c.detail = WARN, c.detail + " (no GPU service is placed on this host in any phase)"
        checks += gpu_checks
        checks += _gpu_memory_checks(inv, host, facts.get("nvml") or {})
    if gpu_services:
        rt = facts.get("runtime") or {}
        if rt.get("hook") or rt.get("nvidia_runtime"):
            checks.append(Check(host, "nvidia-runtime", PASS, rt.get("hook") or "nvidia runtime registered"))
        else:
            checks.append(Check(host, "nvidia-runtime", FAIL, f"no nvidia-container-runtime-hook on dockerd's PATH; GPU services here: {', '.join(gpu_services)}", "apt-get install nvidia-container-toolkit, then restart dockerd"))

    disk = facts.get("disk") or {}
    need = inv.disk_min_free_gb(host)
    if "free_gb" in disk:
        ok = disk["free_gb"] >= need
        checks.append(Check(host, "disk", PASS if ok else FAIL, f"{disk['free_gb']:.1f} GB free under {disk['path']} (need >= {need:g} GB)", "" if ok else "prune images (docker image prune) or grow the disk"))
    else:
        checks.append(Check(host, "disk", FAIL, disk.get("error", "not measured"), "check Docker's data root"))

    checks += _image_checks(inv, host, services, cc, facts.get("images") or {})
    checks += _port_checks(inv, host, services, facts)
    checks += _proxy_checks(inv, host, phase, services, facts, ahead)
    checks += _what_a_swap_would_refuse(inv, host, services, facts)
    busy = facts.get("busy") or {}
    if busy and not busy.get("unsafe"):  # a rollout now would be refused (rollout.in_motion); what is read here is in motion
        checks.append(Check(host, "transaction", WARN, f"rollout {busy.get('rollout_id') or '?'} runs here now ({busy.get('holder')},"
                            f" pid {busy.get('pid') or '?'}): containers and ports are in motion", "wait for it: fab status --follow"))
    return checks


def _what_a_swap_would_refuse(inv: Inventory, host: str, services: list[str], facts: dict[str, Any]) -> list[Check]:
    """What each host's swap refuses before stopping anything, said here, before any host swaps: a secret it cannot
    read, and a container fleetroll did not start holding a service's name."""
    checks = []
    for name, why in sorted((facts.get("secrets") or {}).items()):
        users = ", ".join(s for s in services if _references(inv.fleet.services[s].env, name)) or "a service here"
        checks.append(Check(host, "secrets", FAIL, f"{why} (used by {users})",
                            f"place it on {host} where the line above says, as root: install -o root -m 0600 FILE PATH"))
    for name, c in sorted((facts.get("foreign") or {}).items()):  # a rollout refuses to touch it (foreign-container)
        if _on_swarm(inv, name):
            continue
        checks.append(Check(host, "names", FAIL, f"{name} here is a container fleetroll did not start ({c.get('image') or '?'},"
                            f" {c.get('status') or '?'}, {c.get('id') or '?'}): a rollout will not stop or replace it",
                            f"remove or rename it yourself (docker rm -f {name}, or docker rename {name} {name}-by-hand), then roll out"))
    return checks


def _references(env: dict[str, Any], name: str) -> bool:
    return any(getattr(v, "secret", None) == name for v in (env or {}).values())


def _proxy_checks(inv: Inventory, host: str, phase: str | None, services: list[str], facts: dict[str, Any],
                  ahead: frozenset[tuple[str, str]] = frozenset()) -> list[Check]:
    """Services behind the proxy need it answering here, with a backend for each, before anything stops.

    The proxy's own phase is checked by order instead (it must come before the services behind it). In a
    `--all` dry run where an earlier phase would (re)start the proxy on this host (`ahead`: its dry run passed,
    not frozen, and its plan creates or replaces the proxy here), what the proxy lacks now is what that phase
    would bring: said as a warning, not a refusal the real run would not meet.
    """
    checks = _proxy_now(inv, host, phase, services, facts)
    fix_phase = next((p.name for p in inv.phases if inv.fleet.reverse_proxy and inv.fleet.reverse_proxy.service in p.services), "")
    if fix_phase and (fix_phase, host) in ahead:
        for c in checks:
            if c.status in (FAIL, WARN):
                c.status, c.detail = WARN, f"{c.detail} (phase {fix_phase}, earlier in this run, rolls the proxy out first)"
    return checks


def _proxy_now(inv: Inventory, host: str, phase: str | None, services: list[str], facts: dict[str, Any]) -> list[Check]:
    """_proxy_checks against the proxy as it runs now."""
    rp = inv.fleet.reverse_proxy
    behind = [s for s in services if inv.fleet.services[s].proxy is not None]
    if rp is None or not behind:
        return []
    fix_phase = next((p.name for p in inv.phases if rp.service in p.services), "")
    if rp.service in services:
        if services.index(rp.service) > min(services.index(s) for s in behind):
            return [Check(host, "proxy", FAIL, f"phase {phase} lists {', '.join(behind)} before their proxy {rp.service}",
                          f"list {rp.service} first in phase {phase} (phases.yml)")]
        return [Check(host, "proxy", PASS, f"{rp.service} is rolled out first in this phase")]
    view = facts.get("proxy") or {}
    if not view.get("ok"):
        return [Check(host, "proxy", FAIL, f"the proxy {rp.service} does not answer here ({view.get('error', 'not asked')});"
                                           f" {', '.join(behind)} cannot be switched to",
                      f"roll out the proxy first: fab rollout --phase {fix_phase or '<its phase>'} --inventory {inv.path}")]
    missing = [s for s in behind if s not in (view.get("backends") or {})]
    if missing:
        return [Check(host, "proxy", FAIL, f"the proxy {rp.service} here has no backend for {', '.join(missing)}: it was"
                                           " started before they were put behind it",
                      f"roll out the proxy's phase again (its configuration lists them): fab rollout --phase {fix_phase}"
                      f" --inventory {inv.path}")]
    running = next((c for c in (facts.get("docker") or {}).get("containers", []) if c.get("name") == rp.service), None)
    if running is not None and runs_inventory_config(inv, rp.service, host, running) is False:
        # A service's proxy.listen (or another proxied service) changed: its rollout commits, the proxy still routes as before.
        want = inv.fleet.services[rp.service].tag
        what = (f"runs {running.get('tag') or '?'}, the inventory says {want}" if running.get("tag") != want
                else "runs a configuration other than the inventory's (a listen port, a route or its own settings changed)")
        return [Check(host, "proxy", WARN, f"the proxy {rp.service} here {what}: what it serves for {', '.join(behind)} follows the"
                                           " inventory only once it is rolled out", f"fab rollout --phase {fix_phase} --inventory {inv.path} (-n shows the change)")]
    return [Check(host, "proxy", PASS, f"{rp.service} answers, with a backend for {', '.join(behind)}")]


def _gpu_memory_checks(inv: Inventory, host: str, nvml: dict[str, Any]) -> list[Check]:
    """Do the GPU services placed on this host (in any phase) fit its cards, each alone and all together?

    Stop-first swaps run one service's old and new copy one after the other, so what must fit is
    every budget placed here at once, plus the inventory's reserve; a budget larger than the
    largest card can never run. Same verdict whichever phase is asked about.
    """
    budgets = inv.gpu_budgets(host)
    gpus = nvml.get("gpus") or []
    if not budgets or not nvml.get("ok") or not gpus:
        return []
    reserve = inv.fleet.defaults.gpu_memory_reserve_gb
    total = sum(g.get("memory_mib", 0) for g in gpus) / 1024
    largest = max(g.get("memory_mib", 0) for g in gpus) / 1024
    used = sum(g.get("memory_used_mib", 0) for g in gpus) / 1024
    listed = ", ".join(f"{s} {b:.1f} GB" for s, b in budgets.items())
    problems = [f"{s} needs {b:.1f} GB but the largest card here has {largest:.1f} GB ({reserve:.1f} GB kept in reserve)"
                for s, b in budgets.items() if b + reserve > largest]
    need = sum(budgets.values()) + reserve
    if need > total:
        problems.append(f"the GPU services placed here need {' + '.join(f'{b:.1f}' for b in budgets.values())} GB"
                        f" + {reserve:.1f} GB reserve = {need:.1f} GB, the cards have {total:.1f} GB ({listed})")
    if problems:
        return [Check(host, "gpu-memory", FAIL, "; ".join(problems),
                      "lower a gpu_memory_gb, place a service on another GPU host, or lower defaults.gpu_memory_reserve_gb")]
    return [Check(host, "gpu-memory", PASS, f"budgets {need - reserve:.1f} GB + {reserve:.1f} GB reserve of {total:.1f} GB"
                                             f" ({listed}); {used:.1f} GB in use now")]


def _gpu_checks(host: str, gspec, nvml: dict[str, Any]) -> list[Check]:
    if not nvml.get("ok"):
        return [Check(host, "nvidia-driver", FAIL, nvml.get("error", "NVML not queried"), "install the NVIDIA driver >= " + gspec.min_driver)]
    out = []
    drv = nvml.get("driver_version", "0")
    ok = parse_version(drv) >= parse_version(gspec.min_driver)
    out.append(Check(host, "nvidia-driver", PASS if ok else FAIL, f"driver {drv} {'>=' if ok else '<'} required {gspec.min_driver}", "" if ok else f"upgrade the NVIDIA driver to >= {gspec.min_driver} before any GPU rollout (risk R1)"))
    gpus = nvml.get("gpus") or []
    problems = []
    if len(gpus) != gspec.count:
        problems.append(f"{len(gpus)} GPUs seen, inventory expects {gspec.count}")
    for g in gpus:
        if g["name"] != gspec.model:
            problems.append(f"GPU {g['index']} is {g['name']!r}, inventory expects {gspec.model!r}")
        if g["compute_capability"] != gspec.compute_capability:
            problems.append(f"GPU {g['index']} has compute capability {g['compute_capability']}, inventory expects {gspec.compute_capability}")
    if problems:
        out.append(Check(host, "gpus", FAIL, "; ".join(problems), "fix the inventory's gpus: entry or check the hardware"))
    else:
        out.append(Check(host, "gpus", PASS, f"{len(gpus)} x {gspec.model} (CC {gspec.compute_capability})"))
    return out


def _image_checks(inv: Inventory, host: str, services: list[str], cc: str | None, images: dict[str, Any]) -> list[Check]:
    out = []
    for s in services:
        svc = inv.fleet.services[s]
        ref = inv.image_ref(s)
        problem = tag_problem(svc.tag)
        if problem:
            out.append(Check(host, f"image:{s}", FAIL, problem, "retag the image and fix the inventory"))
            continue
        info = images.get(ref)
        if info is None:
            out.append(Check(host, f"image:{s}", FAIL, f"{ref} was not queried", "re-run preflight"))
            continue
        if not info.get("ok"):
            kind = info.get("kind")
            fix = {
                "missing": f"push {ref} (fab build --push) or fix services.{s}.tag",
                "unreachable": "check the registry is up and reachable from this host",
                "denied": "log in to the registry on the host (docker login)",
                "bad-answer": "check registry.host (host:port of a Docker registry) and registry.insecure (true: plain"
                              " HTTP, false: HTTPS) in the inventory",
            }.get(kind, "check the registry")
            err = str(info.get("error", ""))
            if kind == "missing" and ": no repository " in err:  # the name is wrong, not the tag (the agent's words)
                fix = f"check services.{s}.image and registry.org: {ref.rsplit(':', 1)[0]} is not in the registry"
            if kind == "unreachable" and ("WRONG_VERSION_NUMBER" in err or "wrong version number" in err.lower()):
                # TLS spoken to a plain-HTTP registry: it answered, in the other protocol
                fix = ("the registry answers plain HTTP, not HTTPS: if that is meant (a registry on your own network),"
                       " set registry.insecure: true in the inventory")
            out.append(Check(host, f"image:{s}", FAIL, err, fix))
            continue
        found = image_contract(info, cc, svc.wants_gpu) + [(WARN, w, "") for w in info.get("warnings") or []]
        worst = FAIL if any(p[0] == FAIL for p in found) else WARN if found else PASS
        detail = f"{ref}@{info.get('digest', '')[:19]}"
        if found:
            detail += ": " + "; ".join(p[1] for p in found)
        out.append(Check(host, f"image:{s}", worst, detail, "; ".join(p[2] for p in found if p[2])))
    return out


def _port_checks(inv: Inventory, host: str, services: list[str], facts: dict[str, Any]) -> list[Check]:
    listening = set(facts.get("ports") or [])
    containers = {c["name"]: c for c in (facts.get("docker") or {}).get("containers", [])}
    busy: list[str] = []
    orphans: list[str] = []
    others = False  # a wanted port held by anything but an orphan of fleetroll's
    for s in services:
        pairs = [hp for hp, _cp, _proto in inv.fleet.services[s].port_pairs()]
        if inv.fleet.is_proxy(s):  # the listen ports of the services behind it on this host
            pairs += [inv.fleet.services[b].proxy.listen_port for b in inv.fleet.proxied_on(host)]
        mine = containers.get(s) or {}
        for hp in pairs:
            # Held by the service's own running container *on that port* is fine (the swap frees it); a running
            # container does not vouch for a port it does not publish yet (a new listen port, a changed mapping).
            if hp in listening and not (mine.get("running") and str(hp) in (mine.get("host_ports") or [])):
                held = next((c["name"] for c in containers.values() if c.get("running") and str(hp) in (c.get("host_ports") or [])), "")
                busy.append(f"{hp} (wanted by {s}" + (f"; published by fleetroll's container {held}" if held else "") + ")")
                if held and held not in inv.services_for(None, [host]):
                    orphans.append(held)
                else:
                    others = True
    if (facts.get("docker") or {}).get("ok") is False:
        # Found by an exploratory run (dockerd SIGSTOPped): the ports its own containers hold read as "in use,
        # stop what holds them (ss -ltnp)". Without Docker's answer nobody knows whose they are; the docker check fails.
        return [Check(host, "ports", WARN, "not checked: Docker did not answer, so whose the listening ports are is unknown",
                      "see the docker check")]
    gone = facts.get("addresses_missing") or []
    if gone:
        return [Check(host, "ports", FAIL, f"{', '.join(gone)}: not an address of {host}; the inventory binds ports to"
                      f" {'it' if len(gone) == 1 else 'them'} (Docker's bind would fail after the old container stopped)",
                      "use one of the host's own addresses (ip -brief address), or leave the address out to publish on all")]
    if busy:
        fixes = [f"fab remove -s {o} -H {host} (an orphan: the inventory no longer places it here)" for o in dict.fromkeys(orphans)]
        if others:
            fixes.append("stop what holds the others (ss -ltnp) or change the inventory's ports" if orphans
                         else "stop what holds them (ss -ltnp) or change the inventory's ports")
        return [Check(host, "ports", FAIL, f"host ports in use: {', '.join(busy)}", "; ".join(fixes))]
    return [Check(host, "ports", PASS, "all service ports free or held by the service itself")]


def _on_swarm(inv: Inventory, service: str) -> bool:
    phase = next((p for p in inv.phases if service in p.services), None)
    return phase is not None and inv.fleet.engine_of(phase) == "swarm"


def request_args(inv: Inventory, host: str, phase: str | None) -> dict[str, Any]:
    from .plan import container_spec

    services = inv.services_for(phase, [host])
    pushed = [s for s in services if not _on_swarm(inv, s)]
    specs = {s: container_spec(inv, s, host) for s in pushed}
    return {
        # Names a container fleetroll did not start may hold (a rollout refuses to touch it): the SSH push's only;
        # Swarm names its tasks' containers itself.
        "names": pushed,
        # Every secret those services' env references, read as a create would: a missing one refuses before any swap.
        "secrets": sorted({ref.get("secret") or ref.get("report_key") for spec in specs.values()
                           for ref in (spec.get("env") or {}).values() if isinstance(ref, dict)} - {None}),
        # The host compares these with what runs (the dry run's per-key diff); only change names come back.
        **({"diff_specs": {s: specs.get(s) or container_spec(inv, s, host) for s in services}} if phase else {}),
        # The addresses ports are bound to: one this host lacks fails Docker's bind after the old container stopped.
        **({"addresses": bound} if (bound := bind_addresses(inv, host, services)) else {}),
        "gpu": inv.fleet.hosts[host].gpus is not None,
        "proxy": any(inv.fleet.services[s].proxy is not None for s in services),
        "images": sorted({inv.image_ref(s) for s in services if not tag_problem(inv.fleet.services[s].tag)}),
        "insecure_registry": inv.fleet.registry.insecure,
        "registry_timeout": min(5.0, inv.fleet.ssh.connect_timeout + 2),
    }


def bind_addresses(inv: Inventory, host: str, services: list[str]) -> list[str]:
    """The explicit addresses `services` publish ports on at `host`; a proxy's include its services' listen (pure)."""
    out = {ip for s in services for ip, _hp, _cp, _p in inv.fleet.services[s].port_bindings() if ip}
    for s in services:
        if inv.fleet.is_proxy(s):
            out |= {inv.fleet.services[b].proxy.address for b in inv.fleet.proxied_on(host)} - {""}
    return sorted(out - {"0.0.0.0", "::"})


def failed(checks: list[Check]) -> bool:
    return any(c.status == FAIL for c in checks)
