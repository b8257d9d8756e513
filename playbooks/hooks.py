"""Operator hooks beside the inventory (Kamal's `.kamal/hooks`): hooks/pre-rollout, post-rollout, on-revert.

Each is an executable the operator wrote. It gets the rollout as JSON on stdin (env values
as keyed hashes, as in the ledger) and FLEETROLL_* variables, runs with a timeout, and its
argv is its own path alone: no shell on our side. A pre-rollout hook that fails refuses
the rollout before any host changes; the others are told what happened and can only warn.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import procgroup

NAMES = ("pre-rollout", "post-rollout", "on-revert")
DEFAULT_TIMEOUT_S = 60.0


@dataclass
class HookResult:
    name: str
    path: str
    ran: bool
    ok: bool
    detail: str = ""


def path_of(inventory_path: Path, name: str) -> Path:
    return inventory_path.parent / "hooks" / name


def run(inventory_path: Path, name: str, payload: dict[str, Any], timeout: float | None = None) -> HookResult:
    """Run one hook if it exists; a hook that exists but cannot run is a failure, not a skip."""
    p = path_of(inventory_path, name)
    if not p.exists():
        return HookResult(name, str(p), ran=False, ok=True)
    if not os.access(p, os.X_OK) or not p.is_file():
        return HookResult(name, str(p), ran=False, ok=False, detail=f"{p} exists but is not an executable file; fix: chmod +x it")
    timeout = timeout if timeout is not None else float(os.environ.get("FLEETROLL_HOOK_TIMEOUT", DEFAULT_TIMEOUT_S))
    env = {**os.environ, "FLEETROLL_HOOK": name, "FLEETROLL_ROLLOUT_ID": str(payload.get("rollout_id", "")),
           "FLEETROLL_PHASE": str(payload.get("phase", "")), "FLEETROLL_STATE": str(payload.get("state", "")),
           "FLEETROLL_INVENTORY": str(inventory_path)}
    try:  # a session of its own: a timeout or Ctrl-C stops the hook and everything it started (procgroup)
        proc = subprocess.Popen([str(p)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=str(inventory_path.parent), start_new_session=True)
    except OSError as exc:
        return HookResult(name, str(p), ran=False, ok=False, detail=f"could not be run: {exc.strerror}")
    with proc:
        try:
            stdout, stderr = proc.communicate(json.dumps(payload, default=str), timeout=timeout)
        except subprocess.TimeoutExpired:
            stopped = procgroup.stop(proc)
            return HookResult(name, str(p), ran=True, ok=False,
                              detail=f"did not finish within {timeout:g} s (FLEETROLL_HOOK_TIMEOUT); fleetroll {stopped};"
                                     " make it finish sooner or raise FLEETROLL_HOOK_TIMEOUT")
        except KeyboardInterrupt:
            procgroup.stop(proc)
            raise
    from .remote import clean_text

    tail = clean_text(" | ".join((stdout + stderr).strip().splitlines()[-3:]))[:500]
    return HookResult(name, str(p), ran=True, ok=proc.returncode == 0,
                      detail=(f"exit {proc.returncode}" + (f": {tail}" if tail else "")) if proc.returncode else tail)
