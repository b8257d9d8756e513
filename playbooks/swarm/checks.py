"""`fab preflight` on a swarm phase: the SSH push's checks, plus what only a manager knows.

Each host of the phase must be a node of the swarm, labelled with its inventory name, Ready and
active (else Swarm cannot place its tasks there), and the host ports the stack's own tasks hold
are not "in use by something else": the agents see no container named after a swarm service.
Services behind the proxy are checked against the proxy Swarm runs, not the SSH push's runtime socket:
the overlay exists, and the proxy's deployed configuration (its hash label) is the one the inventory
renders now, so it resolves every service behind it (`proxy_checks`).
`node_checks` and `proxy_checks` are pure; `apply` reads through a manager and rewrites the report's checks.
"""

from __future__ import annotations

from .. import preflight, transport
from ..errors import RolloutError
from ..inventory import Inventory
from . import observe, proxy, render
from .remote import Host, SwarmCommandError

CHECK = "swarm"
PROXY_CHECK = "proxy"  # the SSH push's check of the same name, answered by what Swarm runs


def node_checks(manager: str, view: observe.View, hosts: list[str]) -> list[preflight.Check]:
    """One check per host: its node (by the fleetroll.host label) is Ready and active. Pure."""
    # A host that left and joined again has two nodes labelled with its name, the old one down: the ready one is the
    # host (found by an exploratory run: whichever id sorted last won, and a down one refused every rollout).
    by_host: dict[str, str] = {}
    for nid, h in view.nodes.items():
        if h and (h not in by_host or view.node_status.get(nid, ("", ""))[0] == "ready"):
            by_host[h] = nid
    out = []
    for h in hosts:
        nid = by_host.get(h)
        state, availability = view.node_status.get(nid, ("", "")) if nid else ("", "")
        if nid is None:
            out.append(preflight.Check(h, CHECK, preflight.FAIL, f"no node of the swarm managed by {manager} is labelled"
                                       f" {render.HOST_LABEL}={h}", "fab swarm.form (it joins and labels every host)"))
        elif state != "ready" or availability != "active":
            out.append(preflight.Check(h, CHECK, preflight.FAIL, f"node {nid[:12]} is {state or 'unknown'} and"
                                       f" {availability or 'unknown'}: Swarm places nothing there",
                                       f"start dockerd on {h} (or docker node update --availability active {nid[:12]})"))
        else:
            out.append(preflight.Check(h, CHECK, preflight.PASS, f"node {nid[:12]} ready, active, seen by {manager}"))
    return out


def secret_checks(inv: Inventory, phase: str, manager: str) -> list[preflight.Check]:
    """Swarm secrets are made from the manager's own secret files: each one the phase references must be readable there.

    Asked of the manager's agent without making anything (`create: False`). Found by an exploratory run: preflight
    passed and the rollout then refused 'Swarm secrets nokey: secret 'nokey' is not on this host'."""
    from ..schema import SecretRef
    from .secrets import on_manager

    names = sorted({v.secret for s in inv.phase(phase).services for v in inv.fleet.services[s].env.values()
                    if isinstance(v, SecretRef)})
    if not names:
        return []
    try:
        with transport.Pool() as pool:
            on_manager(inv, pool, manager, names, create=False)
    except RolloutError as exc:
        said, _, fix = str(exc).partition("; fix: ")
        return [preflight.Check(manager, "secrets", preflight.FAIL, said, fix)]
    return [preflight.Check(manager, "secrets", preflight.PASS, f"{len(names)} secret(s) readable on the manager")]


def proxy_checks(inv: Inventory, phase: str, hosts: list[str], network: str, deployed: dict | None) -> list[preflight.Check]:
    """The proxy on Swarm, for a phase with services behind it. Pure.

    network: `docker network inspect` of the overlay ("overlay swarm" when right); deployed: the proxy's service as
    Swarm runs it (None when it runs in no stack). The proxy in this very phase is deployed with them: only the
    overlay matters then.
    """
    fleet, rp = inv.fleet, inv.fleet.reverse_proxy
    services = inv.phase(phase).services
    behind = [s for s in services if fleet.services[s].proxy is not None]
    if rp is None or not (behind or rp.service in services):
        return []
    if network.split() != ["overlay", "swarm"]:
        return [preflight.Check(h, PROXY_CHECK, preflight.FAIL, f"no swarm overlay {proxy.NETWORK} ({network.strip() or 'absent'}):"
                                " the proxy and the services behind it meet there", "fab swarm.form (it makes the overlay)")
                for h in hosts]
    if rp.service in services:
        return [preflight.Check(h, PROXY_CHECK, preflight.PASS, f"{rp.service} is deployed with this phase, on {proxy.NETWORK}")
                for h in hosts]
    if proxy.swarm_phase_of(inv, rp.service) is None:
        return []  # the SSH push's proxy serves these tasks (handover.py): its own check (the agent's runtime socket) stands
    where = proxy.swarm_phase_of(inv, rp.service) or "<its phase>"
    try:
        want = proxy.config_hash(proxy.config(proxy.backends(inv), rp.health_port))
    except proxy.ProxyRenderError as exc:
        return [preflight.Check(h, PROXY_CHECK, preflight.FAIL, str(exc), "fix the inventory") for h in hosts]
    have = observe.labels(deployed).get(proxy.CONFIG_HASH_LABEL) if deployed else None
    if have is None:
        detail, fix = f"the proxy {rp.service} runs in no stack of this swarm", f"fab rollout --phase {where} first"
    elif have != want:
        detail = (f"the proxy {rp.service} runs a configuration ({have}) other than the inventory's ({want}): it may not"
                  f" resolve {', '.join(behind)}")
        fix = f"roll the proxy's phase out again first: fab rollout --phase {where}"
    else:
        return [preflight.Check(h, PROXY_CHECK, preflight.PASS, f"{rp.service} runs on Swarm with a backend for"
                                f" {', '.join(behind)}") for h in hosts]
    return [preflight.Check(h, PROXY_CHECK, preflight.FAIL, detail, fix) for h in hosts]


def _read_proxy(inv: Inventory, manager: Host, phase: str) -> tuple[str, dict | None]:
    """(the overlay as `docker network inspect` says it, the proxy's service if a swarm phase runs it) through a manager."""
    if not proxy.wanted(inv):
        return "", None
    rc, out, _err = manager.run(proxy.network_inspect(), check=False)
    network, rp = (out if rc == 0 else ""), inv.fleet.reverse_proxy
    where = proxy.swarm_phase_of(inv, rp.service) if rp else None
    if rp is None or where is None or where == phase:
        return network, None
    return network, observe.read(manager, render.stack_name(where)).services.get(rp.service)


def apply(inv: Inventory, report) -> None:
    """Rewrite a swarm phase's preflight report (runner.PreflightReport) with a manager's view of the swarm."""
    from .deploy import open_manager, own_ports_freed

    phase = report.phase
    try:
        manager = open_manager(inv)
    except (RolloutError, transport.TransportError) as exc:
        report.checks += [preflight.Check(h, CHECK, preflight.FAIL, str(exc).split("; fix:")[0], "fab swarm.form")
                          for h in report.hosts]
        return
    try:
        view = observe.read(manager, render.stack_name(phase))
        network, deployed = _read_proxy(inv, manager, phase)
    except (SwarmCommandError, OSError, EOFError) as exc:
        report.checks += [preflight.Check(h, CHECK, preflight.FAIL, f"reading the swarm through {manager.name}: {exc}",
                                          "look at docker info on the manager") for h in report.hosts]
        return
    finally:
        manager.close()
    freed = own_ports_freed(report.facts, view)
    report.checks = [c for h in report.hosts
                     for c in (preflight.evaluate(inv, h, phase, freed[h]) if h in freed else [c for c in report.checks if c.host == h])]
    report.checks += node_checks(manager.name, view, report.hosts)
    report.checks += secret_checks(inv, phase, manager.name)
    swarm_proxy = proxy_checks(inv, phase, report.hosts, network, deployed)
    if swarm_proxy:  # the SSH push's proxy check asked the agent for a runtime socket Swarm's proxy does not have
        report.checks = [c for c in report.checks if c.check != PROXY_CHECK] + swarm_proxy
