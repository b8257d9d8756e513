"""The controller's workflows under one name (tasks, tests and benches say `executor.rollout`, ...).

Each workflow lives in a module of its own: rollout.py (preflight, plan, transactions,
phase-wide revert), rollback.py (rollback, restart), status.py; they share hostcalls.py
(calling hosts, re-attaching) and end through ending.py (observed outcomes -> report,
state, exit code, pins, ledger).
"""

from __future__ import annotations

from agent.vocabulary import exit_code

from .ending import (
    Interrupted,
    RolloutReport,
    conclude,
    derive_state,
    describe_failure,
    host_outcomes,
    report_state,
    services_of,
)
from .errors import RolloutError
from .hostcalls import record_recoveries, recovered_notes, step_args
from .progress import Progress
from .rollback import restart, rollback
from .rollout import POLICIES, acceptances_path, rollout, rollout_all, security_gate, swap_notes
from .status import gpu_memory_view, proxy_route_view, service_health, sha_drift, status

__all__ = ["POLICIES", "Interrupted", "Progress", "RolloutError", "RolloutReport", "acceptances_path", "conclude", "derive_state",
           "describe_failure", "exit_code", "gpu_memory_view", "host_outcomes", "proxy_route_view", "record_recoveries",
           "recovered_notes", "report_state", "restart", "rollback", "rollout", "rollout_all", "security_gate", "service_health",
           "services_of", "sha_drift", "status", "step_args", "swap_notes"]
