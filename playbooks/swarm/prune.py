"""`fab prune` on a fleet with swarm phases: the Swarm secrets of earlier values that nothing can use any more.

A rotated secret file becomes a new Swarm secret (`fr_NAME_<v>`: Swarm secrets are immutable), and
the old one stays so that Swarm's rollback to the previous spec still finds it. It can go once no
service's current spec *and* no service's previous spec (what `docker service rollback` returns to)
names it: Docker itself refuses to remove a secret the current spec uses, but not one only the
previous spec names, so the previous specs are read here. Only secrets fleetroll made (label
`io.fleetroll.secret`) are considered, and none younger than GRACE_S: a rollout through another
controller may have made one a moment ago and not yet deployed the stack that uses it (a swarm
rollout holds no host lock to wait on). FLEETROLL_SWARM_SECRET_GRACE_S changes it, for an operator
who knows no rollout runs (and for the lab test).

`unused` is pure; `prune` asks one manager (the first that answers) and removes by name.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from typing import Any

from agent.swarm_secrets import LABEL

from ..errors import RolloutError
from ..inventory import Inventory
from .remote import SwarmCommandError

GRACE_S = 900.0


def grace_s() -> float:
    """GRACE_S, or FLEETROLL_SWARM_SECRET_GRACE_S when set (a number of seconds, at least 0)."""
    raw = os.environ.get("FLEETROLL_SWARM_SECRET_GRACE_S", "")
    try:
        return max(0.0, float(raw)) if raw else GRACE_S
    except ValueError:
        raise RolloutError(f"FLEETROLL_SWARM_SECRET_GRACE_S={raw!r} is not a number of seconds; fix: unset it, or e.g. 900") from None


def referenced(services: list[dict[str, Any]]) -> set[str]:
    """IDs and names of every secret a service's current or previous spec mounts (pure)."""
    out: set[str] = set()
    for svc in services:
        for spec in (svc.get("Spec"), svc.get("PreviousSpec")):
            for ref in (((spec or {}).get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Secrets") or []:
                out.update(x for x in (ref.get("SecretID"), ref.get("SecretName")) if x)
    return out


_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?")


def docker_time(text: str) -> datetime | None:
    """Docker's RFC 3339 time (nanoseconds; 'Z' or an offset, as `docker info` gives local time) as UTC; None if not one."""
    m = _TIME.fullmatch(str(text).strip())
    if not m:
        return None
    when = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(2) in (None, "Z") else m.group(2))).astimezone(UTC)
    return None if when.year < 2000 else when  # Go's zero time (0001-01-01): never set, not old


def _age_s(created: str, now: datetime) -> float | None:
    """Seconds since Docker's CreatedAt; None when it cannot be read."""
    when = docker_time(created)
    return None if when is None else (now - when).total_seconds()


def unused(secrets: list[dict[str, Any]], services: list[dict[str, Any]], now: datetime,
           grace: float = GRACE_S) -> tuple[list[tuple[str, str]], list[dict]]:
    """([(id, name)] to remove, [{name, why}] kept) among fleetroll's Swarm secrets (pure).

    `now` is the manager's clock (its CreatedAt stamps are), not the controller's."""
    used = referenced(services)
    gone, kept = [], []
    for s in sorted(secrets, key=lambda s: (s.get("Spec") or {}).get("Name") or ""):
        spec = s.get("Spec") or {}
        name = spec.get("Name") or ""
        if LABEL not in (spec.get("Labels") or {}) or not name:
            continue  # not fleetroll's: never touched
        age = _age_s(s.get("CreatedAt") or "", now)
        if s.get("ID") in used or name in used:
            kept.append({"name": name, "why": "a service's current or previous spec uses it"})
        elif age is None or age < grace:
            kept.append({"name": name, "why": f"made less than {grace / 60:.0f} min ago (or its age is unknown):"
                                              " a rollout may be about to use it"})
        else:
            gone.append((s.get("ID") or name, name))
    return gone, kept


def _manager_now(manager: Any) -> datetime:
    """The manager's own time (docker info's SystemTime): a controller clock ahead by the grace would make young old."""
    raw = manager.json(["docker", "info", "--format", "{{json .SystemTime}}"])
    now = docker_time(str(raw))
    if now is None:
        raise SwarmCommandError(manager.name, ["docker", "info"], -1, f"SystemTime {raw!r} is not a time")
    return now


def prune(inv: Inventory, dry_run: bool = False) -> dict[str, Any]:
    """Remove (or, dry run, list) fleetroll's Swarm secrets no service can use; what went, stayed and failed."""
    from .deploy import open_manager

    grace = grace_s()
    manager = open_manager(inv)
    try:
        ids = manager.lines(["docker", "secret", "ls", "-q", "--filter", f"label={LABEL}"])
        secrets = manager.json(["docker", "secret", "inspect", *ids]) if ids else []
        svc_ids = manager.lines(["docker", "service", "ls", "-q"])
        services = manager.json(["docker", "service", "inspect", *svc_ids]) if svc_ids else []
        gone, kept = unused(secrets or [], services or [], _manager_now(manager), grace)
        removed, failed = [], []
        for sid, name in gone:
            if dry_run:
                removed.append(name)
                continue
            # By ID: a secret removed and made again under the same name since it was read is another one, and young.
            rc, _out, err = manager.run(["docker", "secret", "rm", sid], check=False)
            (removed.append(name) if rc == 0 else failed.append({"name": name, "error": err.strip()[-300:]}))
    except SwarmCommandError as exc:
        raise RolloutError(f"pruning Swarm secrets through {manager.name}: {exc}; nothing more was removed") from None
    finally:
        manager.close()
    return {"manager": manager.name, "removed": removed, "kept": kept, "failed": failed, "dry_run": dry_run}
