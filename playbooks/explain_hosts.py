"""`fab explain`'s questions to the host, on one SSH connection and one agent process.

Explain asks the host four things: the container's details, its status (health probe,
restarts), the versions the host's journal lists, and the facts the dry run plans from. Each
was its own `transport.on_hosts` call (operate.details, status.status, operate.versions, the
preflight's facts), so each paid an SSH handshake and an agent start. Here they go through one
`transport.Pool`, the path a rollout's preflight and transaction already share: the first call
connects and starts the agent, the other three are one request line each on that session. Details
and versions are operate's own readers, given this pool; the status and facts answers are shaped by
the pure pieces of the modules that own them (status's health and SHA-drift judgements, the plan);
explain.gather joins the answers with the artifacts and ledger.
"""

from __future__ import annotations

from typing import Any

from . import transport
from .errors import RolloutError
from .inventory import Inventory

TIMEOUT_S = 60.0


class Asker:
    """One host's agent session for the length of one explain (another host only for a collector placed elsewhere)."""

    def __init__(self, inv: Inventory, pool: transport.Pool):
        self.inv, self.pool = inv, pool

    def __call__(self, host: str, op: str, args: dict[str, Any]) -> transport.CallResult:
        return transport.on_hosts(self.inv, [host], op, lambda h: args, timeout=TIMEOUT_S, pool=self.pool)[host]


def _failed(r: transport.CallResult) -> str:
    return "" if r.answer is not None and r.ok else (r.error or (r.answer or {}).get("msg") or "no answer")


def details(inv: Inventory, ask: Asker, host: str, service: str) -> dict[str, Any]:
    """The container, its kept copies and -prev pin, and the freezes that concern it: operate.details, on this session."""
    from .operate import details as read_details

    got = read_details(inv, service, [host], pool=ask.pool)["hosts"][host]
    if not got["reachable"]:
        raise RolloutError(f"{host}: could not read {service}'s container: {got['error'] or 'no answer'}; check the host"
                           f" with fab preflight -H {host}")
    return got["services"][service]


def _collector_reports(inv: Inventory, ask: Asker, host: str, status_answer: dict | None) -> dict | None:
    """What the collector holds of each service's start-up, as (host, service) -> report; None when it did not answer."""
    coll = inv.fleet.observability.collector
    if not coll:
        return None
    coll_host = inv.fleet.hosts_of(coll)[0]
    if coll_host == host:
        answer = status_answer
    else:
        port = inv.fleet.services[coll].port_pairs()[0][0]
        answer = ask(coll_host, "status", {"health": {}, "gpu": False, "proxy": False, "collector_port": port}).answer
    c = ((answer or {}).get("data") or {}).get("collector") or {}
    if not c.get("ok"):
        return None
    # A host's answer is untrusted input: a row without a host and service is dropped, not a KeyError.
    return {(r["host"], r["service"]): r for r in c.get("services") or [] if isinstance(r, dict) and r.get("host") and r.get("service")}


def health(inv: Inventory, ask: Asker, host: str, service: str) -> tuple[dict[str, Any], tuple[str | None, str]]:
    """(health now: probe, restarts, SHA drift; the SHA the container reported at start-up, or why not), as `fab status` judges them."""
    from . import ledger
    from .hostcalls import record_recoveries
    from .status import service_health, sha_drift

    args: dict[str, Any] = {"health": {service: inv.fleet.health_spec(service)}, "gpu": False, "proxy": False}
    coll = inv.fleet.observability.collector
    if coll and inv.fleet.hosts_of(coll)[0] == host:
        args["collector_port"] = inv.fleet.services[coll].port_pairs()[0][0]
    r = ask(host, "status", args)
    if r.answer is None:
        return {"error": f"{host}: status not read: {r.error}"}, (None, "not reported: the host's status was not read")
    record_recoveries({host: r})  # what `fab status` records when a host finished an interrupted transaction
    data = r.answer.get("data") or {}
    ledger.observe(host, data.get("last"))
    c = next((x for x in (data.get("docker") or {}).get("containers") or [] if x.get("name") == service), None)
    healthy, text = service_health(c, (data.get("health") or {}).get(service) or {})
    out = {"healthy": healthy, "text": text, "restarts": c.get("restart_count", 0) if c else 0, "sha_drift": ""}
    reports = _collector_reports(inv, ask, host, r.answer)
    if not coll:
        return out, (None, "not reported: no observability collector in the inventory")
    if reports is None:
        return out, (None, "not reported: the collector did not answer")
    rep = reports.get((host, service))
    if c:
        out["sha_drift"] = sha_drift(c.get("tag", ""), rep, c.get("started_at", ""))
    sha = (rep or {}).get("git_sha")
    return out, ((sha, "") if sha else (None, "not reported: the collector has no start-up report from this container"))


def versions(inv: Inventory, ask: Asker, host: str, service: str) -> dict[str, Any]:
    """The host journal's versions of the service, newest first: operate.versions for this replica, or {"error": ...}."""
    from .operate import versions as read_versions

    try:
        return read_versions(inv, service, host, pool=ask.pool)["replicas"][0]
    except RolloutError as exc:
        return {"error": str(exc)}


def drift(inv: Inventory, ask: Asker, host: str, service: str) -> dict[str, Any]:
    """The dry run's step for this service on this host: noop, or what a rollout of its phase would change."""
    from . import preflight
    from .plan import build_plan
    from .targets import phase_of_service

    phase = phase_of_service(inv, service)
    r = ask(host, "facts", preflight.request_args(inv, host, phase))
    if _failed(r):
        return {"error": f"{host}: facts not read: {_failed(r)}"}
    step = next(s for s in build_plan(inv, phase, {host: r.answer.get("data") or {}}, [host]).steps if s.service == service)
    return {"action": step.action, "reason": step.reason, "changes": step.changes, "new_tag": step.new_tag,
            "new_digest": step.new_digest, "phase": phase}


def ask_host(inv: Inventory, host: str, service: str) -> tuple[dict, dict, tuple[str | None, str], dict, dict]:
    """(details, health now, the reported SHA or why not, versions, drift): the four questions, on one session per host."""
    from .swarm import operate as swarm

    if swarm.is_swarm_service(inv, service):
        raise RolloutError(f"{service} runs on Swarm, whose tasks the agents do not run: see fab details -s {service}"
                           f" and fab versions -s {service}")
    with transport.Pool() as pool:
        ask = Asker(inv, pool)
        d = details(inv, ask, host, service)
        now, reported = health(inv, ask, host, service)
        return d, now, reported, versions(inv, ask, host, service), drift(inv, ask, host, service)
