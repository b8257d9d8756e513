"""Fleet-wide operations that talk to hosts: gather facts, run preflight."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from . import preflight, transport
from .inventory import Inventory


@dataclass
class PreflightReport:
    phase: str | None
    hosts: list[str]
    checks: list[preflight.Check]
    facts: dict[str, dict] = field(default_factory=dict)
    calls: dict[str, transport.CallResult] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not preflight.failed(self.checks)

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "phase": self.phase,
            "hosts": self.hosts,
            "elapsed_s": round(self.elapsed_s, 3),
            "checks": [c.to_json() for c in self.checks],
            "round_trips": {h: r.round_trips for h, r in self.calls.items()},
        }


def run_preflight(
    inv: Inventory, phase: str | None = None, hosts: list[str] | None = None, max_parallel: int | None = None,
    pool: transport.Pool | None = None, ahead: frozenset[tuple[str, str]] = frozenset(),
) -> PreflightReport:
    t0 = time.monotonic()
    if phase and hosts:  # as rollout says it: a host outside the phase is an input error, not a one-host pass
        from .targets import check as check_targets

        check_targets(inv, phase, hosts)
    targets = inv.select_hosts(hosts, phase)
    if pool is None:
        # A session answers as soon as its answer line is written; a one-off exec also waits for the remote
        # interpreter to exit, which on every host is time the operator waits for nothing.
        with transport.Pool() as own:
            return run_preflight(inv, phase, hosts, max_parallel, own, ahead)
    calls = transport.on_hosts(
        inv, targets, "facts", lambda h: preflight.request_args(inv, h, phase), max_parallel=max_parallel, timeout=60, pool=pool
    )
    checks: list[preflight.Check] = []
    facts = {}
    for h in targets:
        r = calls[h]
        data = r.answer.get("data") if r.ok and r.answer else None
        if data is not None:
            facts[h] = data
        checks += preflight.evaluate(inv, h, phase, data, r.error, ahead)
    report = PreflightReport(phase, targets, checks, facts, calls, time.monotonic() - t0)
    if phase and inv.fleet.engine_of(inv.phase(phase)) == "swarm":  # nodes and the stack's own ports: a manager says
        from .swarm import checks as swarm_checks

        swarm_checks.apply(inv, report)
        report.elapsed_s = time.monotonic() - t0
    return report
