"""The controller's workflows under one name (tasks, tests and benches say `executor.rollout`, ...).

Each workflow lives in a module of its own: rollout.py (preflight, plan, transactions,
phase-wide revert), rollback.py, restart.py, status.py; they share hostcalls.py
(calling hosts, re-attaching) and end through ending.py (observed outcomes -> report,
state, exit code, pins, ledger). Names are imported when first used (PEP 562), so a
`fab status` does not pay for the rollout's imports before its first SSH packet.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "exit_code": "agent.vocabulary",
    "Interrupted": "playbooks.ending", "RolloutReport": "playbooks.ending", "conclude": "playbooks.ending",
    "derive_state": "playbooks.ending", "describe_failure": "playbooks.ending", "host_outcomes": "playbooks.ending",
    "report_state": "playbooks.ending", "services_of": "playbooks.ending",
    "RolloutError": "playbooks.errors",
    "record_recoveries": "playbooks.hostcalls", "recovered_notes": "playbooks.hostcalls", "step_args": "playbooks.hostcalls",
    "Progress": "playbooks.progress",
    "restart": "playbooks.restart", "rollback": "playbooks.rollback",
    "POLICIES": "playbooks.rollout", "acceptances_path": "playbooks.rollout", "rollout": "playbooks.rollout",
    "rollout_all": "playbooks.rollout", "security_gate": "playbooks.rollout", "swap_notes": "playbooks.rollout",
    "gpu_memory_view": "playbooks.status", "proxy_route_view": "playbooks.status", "service_health": "playbooks.status",
    "sha_drift": "playbooks.status", "status": "playbooks.status", "needs_attention": "playbooks.status",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # once: later lookups are plain module attributes
    return value


def __dir__() -> list[str]:
    return __all__
