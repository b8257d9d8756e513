"""Moving a phase between the SSH push and Swarm behind the SSH push's proxy, with no request dropped.

Both engines' proxies want the same host ports, so a move that swaps one proxy for the other closes them for
seconds (measured: docs/swarm.md). Instead the SSH push's proxy stays the front door: in a fleet that uses Swarm
each backend also has slots for the service's Swarm tasks, found by DNS over the overlay fr-proxy that the proxy
joins (agent/proxytasks.py, agent/handover.py). A move is then a hand-over on each host's proxy:

- to Swarm (`fab rollout -p P`, the phase now `engine: swarm`, its SSH containers still running): the proxy joins
  the overlay and its task slots are made ready (attach, before the stack is deployed; a failure here deploys
  nothing); the stack is deployed and followed as any swarm rollout; for a service committed on every host, each
  host's proxy is asked to see its tasks UP, then to drain slots a/b and put them in maintenance; only then is the
  SSH container on that host removed (`fab remove`'s own path, ledgered). A service not committed, or a proxy that
  does not see the tasks up, keeps its SSH container serving, and the report says so.
- back (`fab rollout -p P` with `engine: ssh` starts the SSH containers; slots a/b serve them beside the tasks),
  then `fab swarm.down -p P`: each host's proxy drains the task slots and puts them in maintenance before
  `docker stack rm`; a proxy with no SSH container serving refuses, and nothing is taken down.

The proxy's own phase cannot move this way: its listen ports are its own (stop-first), the limit docs/swarm.md names.
"""

from __future__ import annotations

from typing import Any

from agent.vocabulary import Outcome

from .. import ledger, transport
from ..errors import RolloutError
from ..inventory import Inventory
from ..plan import operator
from . import proxy

OP = "proxy_handover"
WAIT_S = 30.0  # how long a proxy may take to see the tasks UP: Docker lists a task once healthy, HAProxy re-resolves each 1 s
DRAIN_S = 1.0  # between `drain` and `maint`: in-flight requests finish (the services answer within a second)
FINE = (Outcome.COMMITTED, Outcome.NOOP)


def behind_ssh_proxy(inv: Inventory, service: str) -> bool:
    """Is `service` behind the proxy, with the proxy on the SSH push (so a move of its phase is a hand-over)? Pure."""
    rp = inv.fleet.reverse_proxy
    return (rp is not None and service != rp.service and inv.fleet.services[service].proxy is not None
            and proxy.swarm_phase_of(inv, rp.service) is None)


def plan(inv: Inventory, phase: str) -> dict[str, dict[str, int]]:
    """{host: {service: tasks it must see UP}}: every host's proxy and the phase's services it serves. Pure.

    Docker's DNS lists every task of a service, wherever Swarm placed it, so each proxy waits for all of them.
    """
    fleet, rp = inv.fleet, inv.fleet.reverse_proxy
    services = [s for s in inv.phase(phase).services if behind_ssh_proxy(inv, s)]
    if rp is None or not services:
        return {}
    out: dict[str, dict[str, int]] = {}
    for h in fleet.hosts_of(rp.service):
        here = {s: fleet.services[s].replicas or len(fleet.hosts_of(s)) for s in services if s in fleet.proxied_on(h)}
        if here:
            out[h] = here
    return out


def pushed(facts: dict[str, dict], host: str, service: str) -> bool:
    """Does the SSH push run a container of `service` on `host` (from its preflight facts)? Pure."""
    return any(c.get("name") == service and c.get("running")
               for c in ((facts.get(host) or {}).get("docker") or {}).get("containers") or [])


def committed(results: dict[str, transport.CallResult], service: str) -> str:
    """'' when Swarm committed `service` (or already ran it) on every host it was followed on; else why not. Pure."""
    seen = [(h, s) for h, r in results.items() for s in ((r.answer or {}).get("data") or {}).get("services") or []
            if s.get("service") == service]
    if not seen:
        return "not followed by this rollout"
    bad = [f"{h}: {s.get('outcome')}" for h, s in seen if s.get("outcome") not in FINE]
    return "; ".join(bad)


def call(inv: Inventory, moving: dict[str, dict[str, int]], action: str, pool: transport.Pool | None = None,
         wait_s: float = WAIT_S, drain_s: float = DRAIN_S, rollout_id: str = "") -> dict[str, transport.CallResult]:
    """The agent's proxy_handover on every host of `moving`, in parallel (each under its host's lock)."""
    rp = inv.fleet.reverse_proxy
    return transport.on_hosts(inv, list(moving), OP, lambda h: {"action": action, "proxy": rp.service, "services": moving[h],
                                                               "wait_s": wait_s, "drain_s": drain_s, "operator": operator(),
                                                               "rollout_id": rollout_id or f"handover-{action}"},
                              timeout=wait_s + drain_s + 60, pool=pool)


def said(results: dict[str, transport.CallResult]) -> dict[str, dict[str, Any]]:
    """{host: {service: what the proxy answered}} with a host that did not answer as such. Pure."""
    out: dict[str, dict[str, Any]] = {}
    for h, r in results.items():
        data = (r.answer or {}).get("data") or {}
        if r.answer is None:
            out[h] = {"": {"ok": False, "message": f"no answer: {r.error}"}}
        elif data.get("proxy") == "absent":
            out[h] = {"": {"ok": False, "message": f"no proxy runs on {h}: roll the proxy's phase out first"}}
        else:
            out[h] = {s: v for s, v in (data.get("services") or {}).items()}
            if str(data.get("overlay", "")).startswith(("refused", "not")):
                out[h][""] = {"ok": False, "message": f"the overlay: {data['overlay']}"}
            elif not r.answer.get("ok") and all(v.get("ok") for v in out[h].values()):  # locked, refused: said by the agent
                out[h][""] = {"ok": False, "message": str(r.answer.get("msg") or r.error or "refused")}
    return out


def attach(inv: Inventory, moving: dict[str, dict[str, int]], pool: transport.Pool | None = None) -> list[str]:
    """Before the deploy: each proxy joins the overlay and readies its task slots; RolloutError (nothing deployed) if one fails."""
    got = said(call(inv, moving, "attach", pool))
    bad = [f"{h}: {s + ': ' if s else ''}{v['message']}" for h, d in got.items() for s, v in d.items() if not v.get("ok")]
    if bad:
        raise RolloutError("the SSH push's proxy cannot serve the Swarm tasks yet, nothing was deployed: " + "; ".join(bad))
    return [f"hand-over: the proxy on {', '.join(sorted(got))} is on {proxy.NETWORK}, its task slots ready for"
            f" {', '.join(sorted({s for d in moving.values() for s in d}))}"]


def unfinished(results: dict[str, transport.CallResult], failed: list[tuple[str, str, str]]) -> None:
    """Each (host, service, why) whose hand-over did not finish becomes needs-operator in the rollout's results (in place).

    Swarm committed the service, but the move is not done: its SSH container still serves beside the tasks, or was not
    removed. The report's state, exit code and `finished` record come from these results (ending.conclude), so the
    command does not end 0 on a half-done move; the hand-over's own line says what the proxy showed.
    """
    for h, svc, why in failed:
        r = results.get(h)
        if r is None or r.answer is None:
            r = results[h] = transport.CallResult(host=h, ok=True, answer={"ok": True, "data": {"services": []}})
        entries = r.answer.setdefault("data", {}).setdefault("services", [])
        d = next((d for d in entries if d.get("service") == svc), None)
        if d is None:
            d = {"service": svc, "action": "handover", "engine": "swarm", "after_tag": "", "after_digest": "", "message": ""}
            entries.append(d)
        d.pop("gate", None)
        d.update(outcome=Outcome.NEEDS_OPERATOR, check="handover",
                 message=f"{d['message'] + '; but ' if d.get('message') else ''}the hand-over on {h} did not finish: {why}")


def to_swarm(inv: Inventory, phase: str, rollout_id: str, moving: dict[str, dict[str, int]],
             results: dict[str, transport.CallResult], facts: dict[str, dict], pool: transport.Pool | None = None,
             failed: list[tuple[str, str, str]] | None = None) -> list[str]:
    """After the follow: drain slots a/b where the tasks are UP, then remove the SSH containers they served. Ledgered.

    Each (host, service) whose hand-over did not finish is added to `failed`, with why."""
    from .. import operate

    failed = failed if failed is not None else []
    lines: list[str] = []
    todo: dict[str, dict[str, int]] = {}
    for h, services in moving.items():
        for s, n in services.items():
            why = committed(results, s)
            if not pushed(facts, h, s):
                continue
            if why:
                lines.append(f"hand-over {s} on {h}: not done, Swarm did not commit it ({why}); the SSH container serves on")
            else:
                todo.setdefault(h, {})[s] = n
    if not todo:
        return lines
    got = said(call(inv, todo, "to-swarm", pool, rollout_id=rollout_id))
    record: dict[str, dict[str, Any]] = {}
    for h, services in todo.items():
        for s in services:
            v = got.get(h, {}).get(s) or got.get(h, {}).get("") or {"ok": False, "message": "not answered"}
            rec = record.setdefault(h, {})[s] = {**v, "removed": []}
            if not v.get("ok"):
                lines.append(f"FAILED hand-over {s} on {h}: {v.get('message')}; its SSH container serves on (fab rollout -p"
                             f" {phase} again hands it over)")
                failed.append((h, s, f"{v.get('message')}; fab rollout -p {phase} again hands it over"))
                continue
            try:
                gone = operate.remove(inv, s, h, reason=f"moved to Swarm by {rollout_id}")
                rec["removed"] = [x.get("name") for x in gone.get("removed", [])]
                lines.append(f"hand-over {s} on {h}: the proxy serves {len(v['after']['tasks'])} Swarm task(s), slots a/b"
                             f" drained; the SSH container removed ({', '.join(rec['removed']) or 'none left'})")
            except RolloutError as exc:
                lines.append(f"hand-over {s} on {h}: the proxy serves the Swarm tasks, slots a/b drained; removing the SSH"
                             f" container FAILED ({exc}): it is a leftover now, fab remove -s {s} -H {h}")
                failed.append((h, s, f"its SSH container was not removed ({exc}); fab remove -s {s} -H {h}"))
    ledger.append("handover", rollout_id=rollout_id, phase=phase, to="swarm", operator=operator(), hosts=record)
    return lines


def to_ssh(inv: Inventory, phase: str) -> tuple[bool, list[str]]:
    """Before `docker stack rm`: each proxy drains its task slots, once an SSH container serves beside them. Ledgered."""
    moving = plan(inv, phase)
    if not moving:
        return True, []
    got = said(call(inv, moving, "to-ssh"))
    bad = [f"{h}: {s + ': ' if s else ''}{v.get('message')}" for h, d in got.items() for s, v in d.items() if not v.get("ok")]
    ledger.append("handover", phase=phase, to="ssh", operator=operator(), hosts=got, ok=not bad)
    if bad:
        return False, [f"FAILED hand-over back to the SSH push: {'; '.join(bad)}. Nothing was taken down; the Swarm tasks serve"
                       f" on. Fix: fab rollout -p {phase} with the phase on engine: ssh, then fab swarm.down -p {phase}"]
    return True, [f"hand-over {s} on {h}: the proxy serves the SSH container, the Swarm task slots drained"
                  for h, d in got.items() for s in d]


def leftovers(inv: Inventory, phase: str, done: Any, facts: dict[str, dict], pool: transport.Pool | None = None,
              failed: list[tuple[str, str, str]] | None = None) -> list[str]:
    """A rollout with nothing to deploy (Swarm runs every planned digest: `done` is its all-noop Plan) still hands over the
    SSH containers an earlier move left serving (their proxies did not see the tasks up in time): the same steps."""
    moving = {h: here for h, d in plan(inv, phase).items() if (here := {s: n for s, n in d.items() if pushed(facts, h, s)})}
    if not moving:
        return []
    noop = {h: transport.CallResult(host=h, ok=True, answer={"data": {"services": [
        {"service": st.service, "outcome": Outcome.NOOP} for st in done.steps if st.host == h]}}) for h in moving}
    return attach(inv, moving, pool) + to_swarm(inv, phase, done.rollout_id, moving, noop, facts, pool, failed)
