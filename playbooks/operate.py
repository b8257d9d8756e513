"""Operator commands beside the rollout: freeze/thaw, versions, logs, details, exec, prune, re-attach.

Each asks the agent on the hosts concerned and shapes its answer for the task that prints it;
none of them runs a transaction (`restart` and `rollback` do, and live with the rollout in
executor.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from . import ledger, transport
from .ending import services_of as _services
from .errors import RolloutError
from .inventory import Inventory
from .plan import operator
from .targets import known_service, replica_host, replica_hosts  # noqa: F401 - the tasks' names for them


def set_freeze(inv: Inventory, phase: str, reason: str, thaw: bool = False, hosts: list[str] | None = None) -> tuple[bool, list[str]]:
    """Freeze (or thaw) a phase on every host it runs on; recorded in the ledger. Returns (all hosts answered, lines).

    A thaw of a name phases.yml no longer has (a renamed phase's freeze still holds its hosts) asks every host."""
    stale = thaw and phase not in {p.name for p in inv.phases}
    if not stale:
        inv.phase(phase)
    targets = inv.select_hosts(hosts, None if stale else phase)
    who = operator()
    results = transport.on_hosts(inv, targets, "freeze", lambda h: {"phase": phase, "reason": reason, "thaw": thaw, "operator": who},
                                 timeout=30)
    lines, ok, changed, failed = [], True, [], []
    for h in targets:
        r = results[h]
        if r.answer is None or not r.ok:
            ok = False
            failed.append(h)
            lines.append(f"{h}: FAILED: {r.error or (r.answer or {}).get('msg')}")
        else:
            lines.append(f"{h}: {r.answer.get('msg')}")
            if r.answer.get("changed"):
                changed.append(h)
    if stale and ok and not changed:  # a typo, not a renamed phase's freeze: say so, exit 1, and no "thawed" row
        known = ", ".join(p.name for p in inv.phases)
        return False, [*lines, f"no host holds a freeze of phase {phase!r}, and phases.yml has no such phase (phases: {known})"]
    ledger.append("thaw" if thaw else "freeze", phase=phase, operator=who, reason=reason, hosts=targets, ok=ok,
                  changed=changed, failed=failed, inventory=str(inv.path))
    return ok, lines


def versions(inv: Inventory, service: str, host: str | None = None, pool: transport.Pool | None = None) -> dict[str, Any]:
    """Every version `service` has started on its host(s), newest first, from each host's journal (`fab versions`).

    pool: a command's own connections (`fab explain` asks its four questions on one session per host)."""
    known_service(inv, service)
    from .swarm import operate as swarm

    if swarm.is_swarm_service(inv, service):  # Swarm's tasks: the ledger and a manager know them, not the agents
        return swarm.versions(inv, service, host)
    targets = [replica_host(inv, service, host)] if host else inv.fleet.hosts_of(service)
    results = transport.on_hosts(inv, targets, "versions", lambda h: {"service": service}, timeout=60, pool=pool)
    out: dict[str, Any] = {"service": service, "replicas": []}
    for h in targets:
        r = results[h]
        if r.answer is None or not r.ok:
            raise RolloutError(f"{h}: could not read the versions of {service}: {r.error or (r.answer or {}).get('msg')}")
        data = r.answer.get("data") or {}
        out["replicas"].append({"host": h, "service": service, "running": data.get("running") or {},
                                "versions": list(reversed(data.get("versions") or [])), "note": r.answer.get("msg") or ""})
    return out


def parse_since(value: str | None) -> float | None:
    """'90s', '10m', '2h', '1d' (or plain seconds) as seconds; None when not given (pure)."""
    if value in (None, ""):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", str(value).strip())
    if not m:
        raise RolloutError(f"--since must be a duration like 90s, 10m, 2h or 1d, not {value!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def logs(inv: Inventory, service: str | None, host: str | None = None, tail: int = 100, since: str | None = None,
         follow: bool = False, agent: bool = False, timestamps: bool = False, on_line=None) -> dict[str, Any]:
    """A service's container log (or a host's agent log) from its host; with follow, lines go to on_line as they come."""
    if agent:
        if not host:
            raise RolloutError("--agent shows one host's agent log: add --host NAME")
        target = inv.select_hosts([host], option="--host")[0]
    else:
        known_service(inv, service)
        from .swarm import operate as swarm

        if swarm.is_swarm_service(inv, service):  # docker service logs through a manager
            return swarm.logs(inv, service or "", host, tail, parse_since(since), follow, timestamps, on_line)
        target = replica_host(inv, service, host)
    args = {"service": service or "", "tail": tail, "since_s": parse_since(since), "follow": follow, "agent": agent,
            "timestamps": timestamps}
    ev = (lambda h, e: on_line(e.get("line", ""))) if on_line else None
    r = transport.on_hosts(inv, [target], "logs", lambda h: args, timeout=86400 if follow else 60, on_event=ev)[target]
    if r.answer is None or not r.ok:
        raise RolloutError(f"{target}: {r.error or (r.answer or {}).get('msg')}")
    return {"host": target, "service": service, **(r.answer.get("data") or {}), "note": r.answer.get("msg") or ""}


def frozen_for(inv: Inventory, service: str, freezes: list[dict]) -> list[str]:
    """Why rollouts of `service`'s phase are frozen on a host, in words (pure)."""
    phase = next((p.name for p in inv.phases if service in p.services), "")
    out = []
    for f in freezes:
        if f.get("phase") != phase:
            continue
        failed = (f.get("failed") or {}).get(service)
        if not f.get("auto"):
            out.append(f"phase {phase} frozen by {f.get('by')}: {f.get('reason')!r} (blocks every rollout of the phase)")
            if f.get("kept_auto"):  # in force again once the manual freeze is thawed
                out += [f"{line} (under the freeze by {f.get('by')})" for line in frozen_for(inv, service, [f["kept_auto"]])]
        elif failed:
            from agent.freeze import blocks_of

            rid = (f.get("rollouts") or {}).get(service) or f.get("rollout_id")
            what = ", ".join(f"{b.get('tag')}@{(b.get('digest') or '')[7:19]} with configuration {b.get('config')}"
                             + (f" (rollout {b['rollout_id']})" if b.get("rollout_id") else "") for b in blocks_of(f, service))
            out.append(f"phase {phase} frozen automatically after rollout {rid} failed: refuses {what} (what failed); a new"
                       " tag or a changed configuration goes ahead")
        elif service in (f.get("releases") or {}):
            out.append(f"phase {phase} frozen automatically after rollout {f.get('rollout_id')} failed: refuses tag"
                       f" {f['releases'][service]}")
    return out


def details(inv: Inventory, service: str | None = None, hosts: list[str] | None = None,
            pool: transport.Pool | None = None) -> dict[str, Any]:
    """Per host and service: container state, restarts, uptime, tag@digest, ports, GPU, kept containers, -prev pin."""
    # -s S -H H: a host without a replica of S is an input error naming where S runs, not an empty report
    targets = replica_hosts(inv, service, hosts) if service else inv.select_hosts(hosts)
    names = {h: ([service] if service else inv.services_for(None, [h])) for h in targets}
    results = transport.on_hosts(inv, targets, "details", lambda h: {"services": {s: inv.repo(s) for s in names[h]}}, timeout=60,
                                 pool=pool)
    out: dict[str, Any] = {"hosts": {}}
    for h in targets:
        r = results[h]
        if r.answer is None or not r.ok:
            out["hosts"][h] = {"reachable": False, "error": r.error or (r.answer or {}).get("msg")}
            continue
        got = (r.answer.get("data") or {}).get("services") or {}
        freezes = (r.answer.get("data") or {}).get("freezes") or []
        data = r.answer.get("data") or {}  # what holds a kept container now: open journals, the lock, who set it aside
        tx = {k: data[k] for k in ("open", "lock", "kept") if k in data} if "open" in data else None
        out["hosts"][h] = {"reachable": True, "freezes": freezes, "transaction": tx,
                           "services": {s: {**got.get(s, {"container": None, "kept": []}), "inventory_tag": inv.fleet.services[s].tag,
                                            "frozen": frozen_for(inv, s, freezes)} for s in names[h]}}
    if any(inv.fleet.engine_of(p) == "swarm" for p in inv.phases):
        from .swarm.details_view import overlay  # Swarm names its tasks' containers: a manager knows them, the agents do not

        overlay(inv, out)
    return out


def follow_running(inv: Inventory, hosts: list[str] | None = None, progress=None) -> dict[str, dict]:
    """Re-attach to the transactions running on the hosts now (`fab status --follow`); return each one's outcome."""
    targets = inv.select_hosts(hosts)
    st = transport.on_hosts(inv, targets, "status", lambda h: {}, timeout=30)
    running = {h: ((r.answer or {}).get("data") or {}).get("lock") for h, r in st.items()}
    running = {h: lk for h, lk in running.items() if lk and lk.get("rollout_id")}
    if not running:
        return {}
    res = transport.on_hosts(inv, list(running), "journal", lambda h: {"rollout_id": running[h]["rollout_id"], "timeout": 3600},
                             timeout=30.0, on_event=progress)
    return {h: {"rollout_id": running[h]["rollout_id"], "ok": r.ok, "error": r.error,
                "services": _services(r)} for h, r in res.items()}


def exec_in(inv: Inventory, service: str, argv: list[str], host: str | None = None) -> dict[str, Any]:
    """Run argv in a service's container on its host; no shell on either side."""
    target = replica_host(inv, service, host)
    r = transport.on_hosts(inv, [target], "exec", lambda h: {"service": service, "argv": argv}, timeout=600)[target]
    if r.answer is None or not r.ok:
        raise RolloutError(f"{target}: {r.error or (r.answer or {}).get('msg')}")
    return {"host": target, **(r.answer.get("data") or {})}


def prune(inv: Inventory, hosts: list[str] | None = None, keep: int = 3, dry_run: bool = False) -> dict[str, Any]:
    """Remove, on each host, images of the inventory's repositories that no container, rollback or last-`keep` good version needs."""
    from .plan import new_rollout_id

    targets = inv.select_hosts(hosts)
    repos = sorted({inv.repo(s) for s in inv.fleet.services})
    rid = new_rollout_id("prune")  # the host's lock names it while the prune holds it

    def args(h: str) -> dict:
        return {"repos": repos, "keep": keep, "dry_run": dry_run, "services": inv.services_for(None, [h]),
                "rollout_id": rid, "operator": operator()}

    results = transport.on_hosts(inv, targets, "prune", args, timeout=600)
    out: dict[str, Any] = {"hosts": {}, "dry_run": dry_run, "keep": keep}
    for h, r in results.items():
        out["hosts"][h] = ({"reachable": False, "error": r.error} if r.answer is None
                          else {"reachable": True, "ok": r.ok, **({} if r.ok else {"error": r.answer.get("msg") or r.error}),
                                **(r.answer.get("data") or {})})
    if not hosts and any(inv.fleet.engine_of(p) == "swarm" for p in inv.phases):
        out["swarm"] = _prune_swarm(inv, dry_run)  # Swarm secrets are the swarm's, not one host's: only on a whole-fleet prune
    ledger.append("prune", operator=operator(), hosts=targets, keep=keep, dry_run=dry_run,
                  removed={h: [x["names"] for x in v.get("removed", [])] for h, v in out["hosts"].items()},
                  **({"swarm_secrets_removed": out["swarm"].get("removed", [])} if "swarm" in out else {}))
    return out


def _prune_swarm(inv: Inventory, dry_run: bool) -> dict[str, Any]:
    """The swarm's part of a prune: secrets of earlier values (swarm/prune.py), or why it could not be done."""
    from .swarm import prune as swarm_prune

    try:
        return swarm_prune.prune(inv, dry_run)
    except RolloutError as exc:
        return {"error": str(exc), "removed": [], "kept": [], "failed": []}


def _still_placed(inv: Inventory, service: str, host: str, force: bool) -> str:
    """Why the SSH-pushed container of `service` on `host` may not go ('' when it may).

    The inventory placing the service there refuses it (the next rollout would start it again), unless
    the service's phase runs on Swarm: then the container pushed over SSH is exactly what moving the
    phase to Swarm leaves behind (docs/swarm.md), or the operator says --force.
    """
    if service not in inv.services_for(None, [host]):
        return ""
    phase = next((p for p in inv.phases if service in p.services), None)
    if force or (phase is not None and inv.fleet.engine_of(phase) == "swarm"):
        return ""
    return (f"{service} is in the inventory on {host}: remove it from {inv.path} first (the next rollout would start it"
            f" again), go back with fab rollback -s {service}, or give --force to remove it anyway")


def remove(inv: Inventory, service: str, host: str, reason: str = "", force: bool = False,
           confirm: Callable[[list[dict[str, str]]], None] | None = None) -> dict[str, Any]:
    """Remove, on `host`, the containers of `service` that fleetroll started and the inventory no longer places there.

    With `confirm` (no --yes), the host is first asked what a remove would take (read only); nothing there is
    said without a question, and `confirm` sees the containers it would remove (it raises to stop).
    """
    from .plan import new_rollout_id

    if host not in inv.fleet.hosts:
        raise RolloutError(f"--host {host}: no such host in {inv.path}; hosts: {', '.join(inv.fleet.hosts)}")
    why_not = _still_placed(inv, service, host, force)
    if why_not:
        raise RolloutError(why_not)
    rid = new_rollout_id("remove", service)
    args = {"service": service, "rollout_id": rid, "operator": operator(), "reason": reason}
    with transport.Pool() as pool:
        if confirm is not None:
            would = _removal_answer(host, transport.on_hosts(inv, [host], "remove", lambda h: {**args, "dry_run": True},
                                                             timeout=60, pool=pool)[host]).get("would_remove") or []
            if not would:
                raise RolloutError(_nothing_there(host, service))
            confirm(would)
            args["expect_ids"] = [c["id"] for c in would]  # the host removes what was shown, or nothing
        data = _removal_answer(host, transport.on_hosts(inv, [host], "remove", lambda h: args, timeout=180, pool=pool)[host])
    if not data.get("removed"):  # a name that is nowhere there (a typo?) is an error, as a --service naming nothing is
        raise RolloutError(_nothing_there(host, service))
    out = {"host": host, "service": service, "rollout_id": rid, **data}
    from agent.vocabulary import Record

    ledger.append(Record.REMOVED, rollout_id=rid, host=host, service=service, operator=operator(), reason=reason,
                  removed=out.get("removed", []), forced=bool(force and service in inv.services_for(None, [host])))
    return out


def remove_question(service: str, host: str, would: list[dict[str, str]]) -> str:
    """What `fab remove` asks, naming each container it would take (pure)."""
    return (f"remove {service} from {host} for good ("
            + "; ".join(f"{c['name']} {c['id']} {c.get('tag') or 'untagged'} {c.get('status', '')}".rstrip() for c in would) + ")?")


def _nothing_there(host: str, service: str) -> str:
    return f"{host}: no container of {service} here; nothing was removed (fab status -H {host} lists what runs there, orphans too)"


def _removal_answer(host: str, r: transport.CallResult) -> dict[str, Any]:
    """The answer's data and message, or the host's refusal (or a lost answer) as the command's error."""
    if r.answer is None or not r.ok:
        why = str(r.error or (r.answer or {}).get("msg"))
        raise RolloutError(why if why.startswith(f"{host}: ") else f"{host}: {why}")  # a transport error names the host already
    return {**(r.answer.get("data") or {}), "msg": r.answer.get("msg")}


def record_unlock(host: str, answer: dict[str, Any], reason: str) -> None:
    """After a forced unlock stopped a live transaction: the ledger says so under that rollout (fab history's note)."""
    stopped = (answer.get("data") or {}).get("holder") or {}
    if not stopped.get("rollout_id"):
        return
    from agent.vocabulary import Record

    ledger.append(Record.UNLOCKED, rollout_id=str(stopped["rollout_id"]).removesuffix("-revert"), host=host, by=operator(),
                  reason=reason, pid=stopped.get("pid"))
