"""The controller's ledger: an append-only JSON-lines record of every rollout.

Each record is one line written with a single O_APPEND write and fsync'd, so a crash
can lose at most the record being written, never corrupt an earlier one, and a torn
last line is skipped on read. A rollout writes a `started` record before touching any
host and a `finished` record at the end; a `started` without `finished` is a rollout
whose controller died, and `fab history` says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any


def path() -> Path:
    env = os.environ.get("FLEETROLL_LEDGER")
    p = Path(env) if env else Path.home() / ".local" / "state" / "fleetroll" / "ledger.jsonl"
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def append(kind: str, **fields: Any) -> dict:
    rec = {"kind": kind, "ts": round(time.time(), 3), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
    line = (json.dumps(rec, separators=(",", ":"), default=str) + "\n").encode()
    fd = os.open(path(), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return rec


def read() -> list[dict]:
    p = path()
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def rollouts() -> list[dict]:
    """One entry per rollout id: its started record merged with its finished one (if any)."""
    by_id: dict[str, dict] = {}
    for rec in read():
        rid = rec.get("rollout_id")
        if not rid or rec.get("kind") not in ("started", "finished", "refused", "recovered", "interrupted"):
            continue
        entry = by_id.setdefault(rid, {"rollout_id": rid, "final": "unfinished (controller stopped before the end)"})
        if rec["kind"] == "recovered":
            # The controller died too; a later call found the host's interrupted transaction and finished it.
            svcs = ", ".join(f"{s} {o}" for s, o in (rec.get("services") or {}).items())
            entry.setdefault("recovered", []).append({k: rec.get(k) for k in ("host", "host_rollout_id", "state", "services", "time")})
            if entry.get("finished") is None:
                entry["final"] = f"interrupted; recovered on {rec.get('host')} ({svcs}; host {rec.get('state')})"
            continue
        if rec["kind"] == "interrupted":
            # The operator stopped the controller; what the hosts did is theirs to say (fab status, a later recovery).
            if entry.get("finished") is None:
                entry.update(final="interrupted by the operator (hosts finished on their own; see fab status)",
                             interrupted=rec["time"])
            continue
        entry.update({k: v for k, v in rec.items() if k != "kind"})
        if rec["kind"] == "started":
            entry["started"] = rec["time"]
        if rec["kind"] in ("finished", "refused"):
            entry["finished"] = rec["time"]
    return list(by_id.values())


def redaction_key() -> bytes:
    """The controller's key for hashing env values in records: random, made once, readable by its owner only."""
    from agent.keyfile import load_or_create

    return load_or_create(path().parent / "redaction.key", 0o600)


def write_pins(rollout_id: str, pins: list[dict]) -> Path:
    """What the operator must keep (the exact -prev pins), as JSON beside the ledger."""
    d = path().parent / "pins"
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{rollout_id}.json"
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rollout_id": rollout_id, "pins": pins}, indent=2))
    os.replace(tmp, p)
    return p


def inventory_git_sha(inventory_path: Path) -> str:
    try:
        r = subprocess.run(["git", "-C", str(inventory_path.parent), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if r.returncode != 0:
            return ""
        d = subprocess.run(["git", "-C", str(inventory_path.parent), "status", "--porcelain", "--", str(inventory_path)],
                           capture_output=True, text=True, timeout=5)
        return r.stdout.strip() + ("-dirty" if d.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return ""
