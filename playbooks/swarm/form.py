"""Forming the swarm from the inventory's hosts, and leaving it: `fab swarm.form`, `fab swarm.leave`.

Facts first, then only the commands needed (pyinfra's way): each host's `docker info` swarm
state decides whether it inits, joins, is already a member, or is in another swarm (refused,
with the fix). A second `fab swarm.form` changes nothing but the labels it re-asserts.
Every command goes over the inventory's strict SSH (remote.open_host).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import RolloutError
from ..inventory import Inventory
from . import commands, proxy
from .remote import Host, SwarmCommandError, open_host

INIT, JOIN_MANAGER, JOIN_WORKER, MEMBER, REFUSE = "init", "join-manager", "join-worker", "member", "refuse"


@dataclass
class Move:
    host: str
    action: str  # init | join-manager | join-worker | member | refuse
    why: str = ""


@dataclass
class FormReport:
    ok: bool = True
    lines: list[str] = field(default_factory=list)


def decide(order: list[str], managers: list[str], states: dict[str, dict[str, Any]], members: set[str] | None) -> list[Move]:
    """What each host must do to join the one swarm the first manager leads (pure).

    states: each host's `docker info` .Swarm; members: node IDs of the first manager's swarm
    (None when it is in no swarm yet). A host active in a swarm that is not that one is refused.
    """
    first = managers[0]
    lead = states[first]
    moves: list[Move] = []
    lead_state = lead.get("LocalNodeState", "")
    if lead_state == "inactive":
        moves.append(Move(first, INIT, "no swarm yet"))
    elif lead_state == "active" and lead.get("ControlAvailable"):
        moves.append(Move(first, MEMBER, f"manages swarm {str((lead.get('Cluster') or {}).get('ID', ''))[:12]}"))
    elif lead_state == "active":
        moves.append(Move(first, REFUSE, "it is a worker in another swarm; fix: fab swarm.leave -H " + first
                          + " (or docker swarm leave there), then fab swarm.form"))
    else:
        moves.append(Move(first, REFUSE, f"its swarm state is {lead_state or 'unknown'!r}; fix: look at `docker info` there"))
    for h in order:
        if h == first:
            continue
        st = states[h]
        state = st.get("LocalNodeState", "")
        role = JOIN_MANAGER if h in managers else JOIN_WORKER
        if state == "inactive":
            moves.append(Move(h, role, "not in a swarm"))
        elif state == "active" and members is not None and st.get("NodeID") in members:
            moves.append(Move(h, MEMBER, "already in this swarm"))
        elif state == "active":
            moves.append(Move(h, REFUSE, f"already in another swarm (node {str(st.get('NodeID', ''))[:12]}); fix: fab swarm.leave"
                              f" -H {h} if that swarm is fleetroll's to undo, else docker swarm leave on {h} by hand"))
        else:
            moves.append(Move(h, REFUSE, f"its swarm state is {state or 'unknown'!r}; fix: look at `docker info` on {h}"))
    return moves


def _info(h: Host) -> dict[str, Any]:
    _rc, out, _err = h.run(commands.info())
    return json.loads(out or "{}") or {}


def _open_all(inv: Inventory, hosts: list[str]) -> dict[str, Host]:
    opened: dict[str, Host] = {}
    try:
        for name in hosts:
            opened[name] = open_host(inv, name)
    except Exception:
        for h in opened.values():
            h.close()
        raise
    return opened


def _hosts(inv: Inventory, only: list[str] | None) -> list[str]:
    return inv.select_hosts(only)


def form(inv: Inventory, only: list[str] | None = None) -> FormReport:
    """Init on the first manager, join the others with the token, label every node fleetroll.host=<name> (and its GPUs)."""
    from .. import transport

    managers = inv.fleet.swarm_managers()
    order = _hosts(inv, only)
    if managers[0] not in order:
        order = [managers[0], *order]
    rep = FormReport()
    try:
        conns = _open_all(inv, order)
    except transport.TransportError as exc:
        raise RolloutError(f"swarm.form: {exc}; nothing was changed") from None
    try:
        states = {h: _info(c) for h, c in conns.items()}
        lead = conns[managers[0]]
        members = set(lead.lines(commands.node_ids())) if states[managers[0]].get("ControlAvailable") else None
        moves = decide(order, managers, states, members)
        refused = [m for m in moves if m.action == REFUSE]
        if refused:
            rep.ok = False
            rep.lines += [f"REFUSED {m.host}: {m.why}" for m in refused]
            rep.lines.append("nothing was changed")
            return rep
        addr = {h: inv.fleet.hosts[h].address for h in order}
        for m in moves:
            c = conns[m.host]
            if m.action == INIT:
                c.run(commands.init(addr[m.host]))
                rep.lines.append(f"{m.host}: initialised the swarm (manager, advertising {addr[m.host]}:{commands.SWARM_PORT})")
            elif m.action in (JOIN_MANAGER, JOIN_WORKER):
                role = "manager" if m.action == JOIN_MANAGER else "worker"
                token = lead.lines(commands.join_token(role))[0]
                c.run(commands.join(token, addr[m.host], addr[managers[0]]), timeout=90)
                rep.lines.append(f"{m.host}: joined as {role}")
            else:
                rep.lines.append(f"{m.host}: {m.why}; unchanged")
        for h, c in conns.items():
            node = _info(c).get("NodeID", "")
            if not node:
                rep.ok = False
                rep.lines.append(f"FAILED {h}: no node ID after joining; look at `docker info` there")
                continue
            gpus = inv.fleet.hosts[h].gpus
            lead.run(commands.node_labels(node, h, gpus.model_dump() if gpus else None))
            rep.lines.append(f"{h}: node {node[:12]} labelled fleetroll.host={h}" + (" and fleetroll.gpu=true" if gpus else ""))
        if proxy.wanted(inv):
            line = proxy_network(lead)
            rep.ok = rep.ok and not line.startswith("FAILED")
            rep.lines.append(line)
    except SwarmCommandError as exc:
        rep.ok = False
        rep.lines.append(f"FAILED {exc}; what is done above stays done: fix it and run fab swarm.form again (it skips members)")
    finally:
        for c in conns.values():
            c.close()
    return rep


def proxy_network(lead: Host) -> str:
    """The overlay the proxy and the services behind it share (playbooks/swarm/proxy.py), made once through the lead manager.

    Made here rather than by a stack: every swarm phase's stack names it (external), and a network a stack made
    would belong to that one phase's stack. A network of that name of another kind is left alone, and said.
    """
    rc, out, _err = lead.run(proxy.network_inspect(), check=False)
    if rc == 0:
        if out.split() == ["overlay", "swarm"]:
            return _attachable(lead)
        return (f"FAILED {lead.name}: a network {proxy.NETWORK} exists but is {out.strip() or 'unknown'}, not a swarm overlay;"
                f" the proxy cannot reach its services over it; fix: remove it (docker network rm {proxy.NETWORK}) if it is"
                " not in use, then fab swarm.form again")
    lead.run(proxy.network_create())
    return f"{lead.name}: made the overlay network {proxy.NETWORK} (attachable) for the proxy and the services behind it"


def _attachable(lead: Host) -> str:
    """An overlay made before it had to be attachable (the SSH push's proxy joins it now): made again while no service
    uses it (Docker refuses to remove one in use), else the fix is said and nothing is changed."""
    _rc, out, _err = lead.run(proxy.network_attachable(), check=False)
    if out.strip() == "true":
        return f"{lead.name}: network {proxy.NETWORK} (overlay, attachable) already there; unchanged"
    rc, _out, err = lead.run(proxy.network_remove(), check=False)
    if rc != 0:
        return (f"FAILED {lead.name}: the overlay {proxy.NETWORK} is not attachable, so the SSH push's proxy cannot join it,"
                f" and Docker would not remove it ({err.strip()[:160]}); fix: fab swarm.down each swarm phase on it, then"
                " fab swarm.form again (it is made again attachable), and roll those phases out again")
    lead.run(proxy.network_create())
    return f"{lead.name}: made the overlay {proxy.NETWORK} again, attachable (it was not, and no service used it)"


def leave(inv: Inventory, only: list[str] | None = None) -> FormReport:
    """Each host leaves the swarm (`docker swarm leave --force`), workers first, managers last; a host in none is left as is."""
    from .. import transport

    managers = inv.fleet.swarm_managers()
    order = _hosts(inv, only)
    order = [h for h in order if h not in managers] + [h for h in order if h in managers]
    rep = FormReport()
    for h in order:
        try:
            c = open_host(inv, h)
        except transport.TransportError as exc:
            rep.ok = False
            rep.lines.append(f"FAILED {h}: {exc}")
            continue
        try:
            state = _info(c).get("LocalNodeState", "")
            if state == "inactive":
                rep.lines.append(f"{h}: in no swarm; unchanged")
                continue
            c.run(commands.leave(), timeout=90)
            after = _info(c).get("LocalNodeState", "")
            if after != "inactive":
                rep.ok = False
                rep.lines.append(f"FAILED {h}: still {after!r} after docker swarm leave --force; look at `docker info` there")
            else:
                rep.lines.append(f"{h}: left the swarm (its swarm tasks stop with it)")
        except SwarmCommandError as exc:
            rep.ok = False
            rep.lines.append(f"FAILED {exc}")
        finally:
            c.close()
    return rep
