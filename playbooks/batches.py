"""In which order a phase's hosts change: canary first, then batches (Nomad's `update { canary, max_parallel }`). Pure."""

from __future__ import annotations

from .inventory import Update
from .plan import CREATE, REPLACE, Plan


def schedule(plan: Plan, update: Update | None) -> list[list[str]]:
    """Hosts with changes, batch by batch. Without an update block: one batch, every busy host at once (as before).

    With one: the first `canary` busy hosts (inventory order) are a batch of their own, then
    the rest `max_parallel` at a time (0: all the rest together). Each batch is gated before
    the next starts.
    """
    busy = [h for h in plan.hosts if any(s.action in (CREATE, REPLACE) for s in plan.for_host(h))]
    if not busy:
        return []
    if update is None or (not update.canary and not update.max_parallel):
        return [busy]
    canary, rest = busy[: update.canary], busy[update.canary:]
    size = update.max_parallel or len(rest) or 1
    return ([canary] if canary else []) + [rest[i:i + size] for i in range(0, len(rest), size)]


def describe(batches: list[list[str]], update: Update | None) -> list[str]:
    """One line per batch, for the dry run and the progress output."""
    out = []
    canary = bool(update and update.canary)
    for i, b in enumerate(batches, 1):
        kind = "canary" if canary and i == 1 else "batch"
        out.append(f"{i}/{len(batches)} {kind}: {', '.join(b)}")
    return out
