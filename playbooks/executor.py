"""The executor: preflight, plan, ship each host its part, collect, revert the phase on failure.

It holds no rollout logic of its own beyond orchestration: the plan decides what
changes, the agent's transaction does it on the host, and this module moves plans and
answers, applies the phase-wide failure policy across hosts, and writes the ledger.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import ledger, transport
from .inventory import Inventory
from .plan import BLOCKED, NOOP, Plan, build_plan, container_spec, operator, plan_text
from .runner import PreflightReport, run_preflight

POLICIES = ("revert-phase", "revert-service", "stop")
FAILED_OUTCOMES = ("reverted", "removed", "revert-failed", "refused")


class RolloutError(Exception):
    pass


@dataclass
class RolloutReport:
    rollout_id: str
    phase: str
    ok: bool
    state: str  # noop | committed | reverted | refused | failed | needs-operator | unknown | dry-run
    plan: Plan | None = None
    preflight: PreflightReport | None = None
    hosts: dict[str, dict] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    pins: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0
    agent_calls: int = 0

    def to_json(self) -> dict:
        return {
            "rollout_id": self.rollout_id,
            "phase": self.phase,
            "ok": self.ok,
            "state": self.state,
            "elapsed_s": round(self.elapsed_s, 3),
            "agent_calls": self.agent_calls,
            "plan": self.plan.to_json() if self.plan else None,
            "preflight": self.preflight.to_json() if self.preflight else None,
            "hosts": self.hosts,
            "pins": self.pins,
            "messages": self.messages,
        }


class Progress:
    """Per-host progress lines on stderr while agents work (stdout stays for --json)."""

    SHOWN = {"pull", "pin-prev", "stop-old", "start-new", "gate", "gate-progress", "committed", "gate-failed",
             "reverting", "reverted", "revert-failed", "refused", "removed", "done"}

    def __init__(self, enabled: bool = True, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.lock = threading.Lock()

    def __call__(self, host: str, ev: dict) -> None:
        step = ev.get("event")
        if not self.enabled or step not in self.SHOWN:
            return
        svc = ev.get("service") or ""
        detail = ev.get("message") or ev.get("reason") or ev.get("ref") or ev.get("prev_ref") or ""
        if step == "done":
            detail = "host finished: " + ("ok" if ev.get("ok") else "FAILED")
        with self.lock:
            print(f"[{host}] {svc + ': ' if svc else ''}{step} {detail}".rstrip(), file=self.stream, flush=True)


def security_gate(inv: Inventory, plan: Plan) -> list:
    """Trivy HIGH/CRITICAL findings block a step unless an unexpired risk acceptance covers them (R4)."""
    from .images import security

    sec = inv.fleet.security
    verdicts = []
    for step in plan.changes:
        svc = inv.fleet.services[step.service]
        v = security.check(svc.image, step.new_tag, inv.resolve(sec.artifacts), inv.resolve(sec.acceptances), sec.missing_report)
        verdicts.append(v)
        if v.status == "refuse":
            step.action, step.reason = BLOCKED, "security gate: " + "; ".join(v.reasons)
    return verdicts


def _step_args(plan: Plan, host: str, policy: str, inv: Inventory, actions=("create", "replace")) -> dict[str, Any]:
    return {
        "rollout_id": plan.rollout_id,
        "operator": plan.operator,
        "phase": plan.phase,
        "on_failure": policy,
        "insecure_registry": inv.fleet.registry.insecure,
        "steps": [s.to_json() for s in plan.for_host(host) if s.action in actions],
    }


def _reattach(inv: Inventory, host: str, rid: str, on_event, pool: transport.Pool, budget_s: float = 120.0) -> transport.CallResult | None:
    """The link dropped mid-transaction: reconnect and wait for the host's own outcome."""
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        res = transport.on_hosts(inv, [host], "journal", lambda h: {"rollout_id": rid, "timeout": max(5, deadline - time.monotonic())},
                                 timeout=budget_s, on_event=on_event, pool=pool)[host]
        if res.answer is not None:
            return res
        time.sleep(2)
    return None


def _run_on_hosts(inv: Inventory, plan: Plan, hosts: list[str], args_for, max_parallel, progress, report: RolloutReport,
                  pool: transport.Pool) -> dict[str, transport.CallResult]:
    # The agent sends a heartbeat every 2 s, so 10 s of silence means the link is gone.
    results = transport.on_hosts(inv, hosts, "rollout", args_for, max_parallel=max_parallel, timeout=10.0, on_event=progress, pool=pool)
    report.agent_calls += len(hosts)
    for h, res in list(results.items()):
        if res.answer is None and res.error_kind in ("timeout", "agent", "link-lost"):
            report.messages.append(f"{h}: lost contact during the transaction ({res.error}); the host finishes on its own — re-attaching")
            again = _reattach(inv, h, plan.rollout_id, progress, pool)
            report.agent_calls += 1
            if again is not None:
                results[h] = again
    return results


def _services(res: transport.CallResult) -> list[dict]:
    return ((res.answer or {}).get("data") or {}).get("services") or []


def describe_failure(host: str, s: dict, next_cmd: str) -> str:
    ev = s.get("details") or {}
    parts = [f"FAILED {host} {s['service']}: {s.get('check') or 'check'}: {s.get('message')}"]
    if ev.get("exit_code") is not None or ev.get("restarts"):
        parts.append(f"  container: {ev.get('status')}, exit code {ev.get('exit_code')}, restarts {ev.get('restarts')}")
    last = (s.get("gate") or {}).get("last") or {}
    if last.get("status") is not None or last.get("body"):
        parts.append(f"  last /health answer: HTTP {last.get('status')} body {last.get('body')!r}")
    if ev.get("last_logs"):
        parts.append("  last log lines: " + " | ".join(ev["last_logs"][-5:]))
    if s["outcome"] == "reverted":
        parts.append(f"  rolled back to {s['prev_ref']} ({s['prev_digest']}), proven healthy")
    elif s["outcome"] == "removed":
        parts.append("  it had no earlier version; the new container was removed")
    elif s["outcome"] == "revert-failed":
        parts.append(f"  ROLLBACK FAILED: {(s.get('revert_gate') or {}).get('reason') or s.get('message')} — the service needs an operator now")
    elif s["outcome"] == "refused":
        parts.append("  nothing was stopped; the old version keeps serving")
    parts.append(f"  next: {next_cmd}")
    return "\n".join(parts)


def rollout(inv: Inventory, phase: str, **kw) -> RolloutReport:
    """Roll one phase out over one SSH connection per host (preflight, transaction, revert)."""
    with transport.Pool() as pool:
        return _rollout(inv, phase, pool=pool, **kw)


def _rollout(
    inv: Inventory,
    phase: str,
    pool: transport.Pool,
    hosts: list[str] | None = None,
    dry_run: bool = False,
    max_parallel: int | None = None,
    on_failure: str = "revert-phase",
    confirm: Callable[[Plan], bool] | None = None,
    progress: Callable[[str, dict], None] | None = None,
) -> RolloutReport:
    if on_failure not in POLICIES:
        raise RolloutError(f"--on-failure must be one of {', '.join(POLICIES)}, not {on_failure!r}")
    t0 = time.monotonic()
    inv.phase(phase)
    pre = run_preflight(inv, phase, hosts, max_parallel, pool=pool)
    plan = build_plan(inv, phase, pre.facts, hosts)
    report = RolloutReport(plan.rollout_id, phase, False, "refused", plan, pre, agent_calls=len(pre.hosts))
    try:
        verdicts = security_gate(inv, plan)
    except ValueError as exc:
        raise RolloutError(str(exc)) from None
    report.messages += [f"security WARN: {r}" for v in verdicts if v.status == "warn" for r in v.reasons]
    common = {"rollout_id": plan.rollout_id, "phase": phase, "operator": plan.operator, "inventory": str(inv.path),
              "inventory_git_sha": ledger.inventory_git_sha(inv.path), "hosts": pre.hosts,
              "security": [v.to_json() for v in verdicts if v.status != "pass"],
              "risk_acceptances": [a for v in verdicts for a in v.accepted]}
    if not pre.ok:
        failing = [f"{c.host} {c.check}: {c.detail}" for c in pre.checks if c.status == "fail"]
        report.messages.append("preflight failed; nothing was changed:\n  " + "\n  ".join(failing))
        if not dry_run:
            ledger.append("refused", **common, reason="preflight failed", failures=failing)
        report.elapsed_s = time.monotonic() - t0
        return report
    if plan.blocked:
        report.messages += [f"{s.host} {s.service}: blocked: {s.reason}" for s in plan.blocked]
        if not dry_run:
            ledger.append("refused", **common, reason="plan blocked", failures=report.messages)
        report.elapsed_s = time.monotonic() - t0
        return report
    if dry_run:
        report.ok, report.state = True, "dry-run"
        report.messages.append(plan_text(plan))
        report.elapsed_s = time.monotonic() - t0
        return report
    if not plan.changes:
        report.ok, report.state = True, "noop"
        report.messages.append(f"phase {phase}: nothing to do; every service already runs its planned digest")
        ledger.append("finished", **common, final="noop", services=[s.to_json() for s in plan.steps])
        report.elapsed_s = time.monotonic() - t0
        return report
    if confirm is not None and not confirm(plan):
        report.messages.append("not confirmed; nothing was changed")
        report.elapsed_s = time.monotonic() - t0
        return report

    ledger.append("started", **common, plan=plan.to_json())
    busy = [h for h in plan.hosts if any(s.action not in (NOOP, BLOCKED) for s in plan.for_host(h))]
    results = _run_on_hosts(inv, plan, busy, lambda h: _step_args(plan, h, on_failure, inv), max_parallel, progress, report, pool)
    failed_hosts = [h for h, r in results.items() if not r.ok]
    unknown = [h for h, r in results.items() if r.answer is None]
    for h in unknown:
        report.messages.append(f"{h}: outcome unknown ({results[h].error}); the host finishes on its own: run fab status --inventory {inv.path}")

    if failed_hosts and on_failure == "revert-phase":
        to_revert = [h for h, r in results.items() if r.ok and any(s["outcome"] == "committed" for s in _services(r))]
        if to_revert:
            report.messages.append(f"reverting the phase on {', '.join(to_revert)} because {', '.join(failed_hosts)} failed")

            def revert_args(h: str) -> dict:
                committed = {s["service"] for s in _services(results[h]) if s["outcome"] == "committed"}
                steps = [{**s.to_json(), "action": "revert", "remove_if_no_prev": True} for s in plan.for_host(h) if s.service in committed]
                return {**_step_args(plan, h, "revert-service", inv, ()), "rollout_id": f"{plan.rollout_id}-revert",
                        "steps": steps, "reason": f"phase {phase} failed on {', '.join(failed_hosts)}"}

            reverts = _run_on_hosts(inv, plan, to_revert, revert_args, max_parallel, progress, report, pool)
            for h, r in reverts.items():
                by_svc = {s["service"]: s for s in _services(r)}
                for s in _services(results[h]):
                    back = by_svc.get(s["service"])
                    if back:
                        s.update(outcome=back["outcome"], prev_ref=back.get("prev_ref") or s.get("prev_ref"),
                                 prev_digest=back.get("prev_digest") or s.get("prev_digest"), after_tag=back.get("after_tag"),
                                 after_digest=back.get("after_digest"), revert_gate=back.get("revert_gate"),
                                 message=back.get("message") or s.get("message"))
                if not r.ok:
                    failed_hosts.append(h)

    report.hosts = {h: {"ok": r.ok, "error": r.error, "services": _services(r), "elapsed_s": round(r.elapsed_s, 3)} for h, r in results.items()}
    all_svcs = [(h, s) for h, r in results.items() for s in _services(r)]
    report.pins = [
        {"host": h, "service": s["service"], "prev_tag": s["prev_ref"].rsplit(":", 1)[-1], "prev_ref": s["prev_ref"], "prev_digest": s["prev_digest"],
         "running_tag": s.get("after_tag"), "running_digest": s.get("after_digest")}
        for h, s in all_svcs if s.get("prev_ref")
    ]
    if any(s["outcome"] == "revert-failed" for _, s in all_svcs):
        report.state = "needs-operator"
    elif unknown:
        report.state = "unknown"
    elif failed_hosts or any(s["outcome"] in FAILED_OUTCOMES for _, s in all_svcs):
        report.state = "reverted"
    else:
        report.state, report.ok = "committed", True
    next_cmd = f"fix the image or pin the inventory to the -prev tag's release, then: fab rollout --phase {phase} --inventory {inv.path}"
    for h, s in all_svcs:
        if s["outcome"] in ("reverted", "removed", "revert-failed", "refused") and s.get("check") != "phase-revert" and s["action"] != "revert":
            report.messages.append(describe_failure(h, s, next_cmd))
    for h, r in results.items():
        if r.answer is not None and not r.ok and not _services(r):
            report.messages.append(f"FAILED {h}: {r.error}")
    if report.pins:
        report.messages.append(f"pins written to {ledger.write_pins(plan.rollout_id, report.pins)}")
    report.elapsed_s = time.monotonic() - t0
    ledger.append("finished", **common, final=report.state, services=[{"host": h, **s} for h, s in all_svcs],
                  pins=report.pins, messages=report.messages, elapsed_s=round(report.elapsed_s, 3))
    return report


def rollout_all(inv: Inventory, **kw) -> list[RolloutReport]:
    """Every phase in order; a phase starts only when the one before succeeded."""
    reports = []
    for ph in inv.phases:
        rep = rollout(inv, ph.name, **kw)
        reports.append(rep)
        if not rep.ok:
            rep.messages.append(f"later phases not started: {', '.join(p.name for p in inv.phases[len(reports):]) or '(none)'}")
            break
    return reports


def rollback(inv: Inventory, phase: str, service: str | None = None, hosts: list[str] | None = None,
             max_parallel: int | None = None, progress=None) -> RolloutReport:
    """Put services of a phase back on the -prev image their running container recorded."""
    names = inv.services_for(phase, hosts)
    if service:
        if service not in names:
            raise RolloutError(f"service {service!r} is not in phase {phase!r} (its services: {', '.join(names)})")
        names = [service]
    plan = build_plan(inv, phase, {}, hosts, who=operator())
    plan.rollout_id = plan.rollout_id.replace(f"-{phase}-", f"-{phase}-rollback-")
    plan.steps = [s for s in plan.steps if s.service in names]
    for s in plan.steps:
        s.action, s.spec = "revert", container_spec(inv, s.service)
    report = RolloutReport(plan.rollout_id, phase, False, "failed", plan)
    common = {"rollout_id": plan.rollout_id, "phase": phase, "operator": plan.operator, "inventory": str(inv.path),
              "inventory_git_sha": ledger.inventory_git_sha(inv.path), "rollback": True}
    ledger.append("started", **common, plan=plan.to_json())
    with transport.Pool() as pool:
        results = _run_on_hosts(inv, plan, plan.hosts, lambda h: {**_step_args(plan, h, "revert-service", inv, ("revert",)),
                                "reason": "operator rollback"}, max_parallel, progress, report, pool)
    report.hosts = {h: {"ok": r.ok, "error": r.error, "services": _services(r)} for h, r in results.items()}
    report.pins = [{"host": h, "service": s["service"], "prev_ref": s["prev_ref"], "prev_digest": s["prev_digest"]}
                   for h, r in results.items() for s in _services(r) if s.get("prev_ref")]
    report.ok = all(r.ok for r in results.values())
    report.state = "reverted" if report.ok else "failed"
    for h, r in results.items():
        for s in _services(r):
            if s["outcome"] == "reverted":
                report.messages.append(f"{h} {s['service']}: now on {s['prev_ref']} ({s['prev_digest']}), healthy")
            else:
                report.messages.append(f"{h} {s['service']}: {s['outcome']}: {s.get('message') or (s.get('revert_gate') or {}).get('reason')}")
        if r.answer is None or (not r.ok and not _services(r)):
            report.messages.append(f"{h}: {r.error}")
    if report.pins:
        report.messages.append(f"pins written to {ledger.write_pins(plan.rollout_id, report.pins)}")
    ledger.append("finished", **common, final=report.state, services=[{"host": h, **s} for h, v in report.hosts.items() for s in v["services"]],
                  pins=report.pins, messages=report.messages)
    return report


def sha_drift(tag: str, report: dict | None, container_started: str) -> str:
    """Compare what a service reported at start-up with what its tag names (pure)."""
    if report is None:
        return "no start-up report"
    tag_sha = tag.rsplit("-", 1)[-1]
    got = report.get("git_sha", "")
    if not got or not (got.startswith(tag_sha) or tag_sha.startswith(got)):
        return f"reported git {got[:12] or '(none)'}, tag names {tag_sha}"
    try:
        reported = time.mktime(time.strptime(report["started_at"][:19], "%Y-%m-%dT%H:%M:%S"))
        started = time.mktime(time.strptime(container_started[:19], "%Y-%m-%dT%H:%M:%S"))
        if reported < started - 5:
            return f"stale report (from a start at {report['started_at']}, container started {container_started[:19]}Z)"
    except (KeyError, ValueError):
        pass
    return ""


def status(inv: Inventory, hosts: list[str] | None = None, max_parallel: int | None = None) -> dict[str, Any]:
    targets = inv.select_hosts(hosts)
    coll = inv.fleet.observability.collector
    coll_host = inv.fleet.services[coll].host if coll else None

    def args(h: str) -> dict:
        a: dict[str, Any] = {"health": {s: inv.fleet.services[s].health.model_dump() for s in inv.services_for(None, [h])}}
        if h == coll_host:
            a["collector_port"] = inv.fleet.services[coll].port_pairs()[0][0]
        return a

    if coll_host and coll_host not in targets:
        targets = [*targets, coll_host]
    results = transport.on_hosts(inv, targets, "status", args, max_parallel=max_parallel, timeout=30)
    reports: dict[tuple[str, str], dict] | None = None
    if coll_host and results[coll_host].answer:
        c = (results[coll_host].answer.get("data") or {}).get("collector") or {}
        if c.get("ok"):
            reports = {(r["host"], r["service"]): r for r in c["services"]}
    out: dict[str, Any] = {"hosts": {}, "collector": None if not coll else ("ok" if reports is not None else "unreachable")}
    for h in inv.select_hosts(hosts):
        r = results[h]
        if r.answer is None:
            out["hosts"][h] = {"reachable": False, "error": r.error}
            continue
        data = r.answer.get("data") or {}
        containers = {c["name"]: c for c in (data.get("docker") or {}).get("containers", [])}
        services = {}
        for s in inv.services_for(None, [h]):
            want = inv.fleet.services[s].tag
            c = containers.get(s)
            probe = (data.get("health") or {}).get(s) or {}
            if c is None:
                drift = "not running"
            elif c.get("tag") != want:
                drift = f"runs {c.get('tag')}, inventory says {want}"
            else:
                drift = ""
            services[s] = {"tag": c.get("tag") if c else None, "digest": c.get("digest") if c else None,
                           "status": c.get("status") if c else "absent", "healthy": bool(probe.get("ok")),
                           "health": probe.get("reason", ""), "drift": drift, "rollout_id": c.get("rollout_id") if c else None}
            if reports is not None and c:
                rep = reports.get((h, s))
                services[s]["reported_git_sha"] = rep.get("git_sha") if rep else None
                services[s]["sha_drift"] = sha_drift(c.get("tag", ""), rep, c.get("started_at", ""))
        out["hosts"][h] = {"reachable": True, "services": services, "lock": data.get("lock"), "last_rollout": data.get("last")}
    return out
