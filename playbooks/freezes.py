"""Which host-side phase freezes stop a planned rollout (pure; the hosts keep the freezes, agent/freeze.py)."""

from __future__ import annotations

import time
from typing import Any

from .plan import Plan


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts or 0))


def of_phase(facts: dict[str, dict[str, Any]], phase: str) -> list[tuple[str, dict]]:
    """(host, freeze) for every freeze of `phase` the hosts reported, in host order."""
    return [(h, f) for h in sorted(facts) for f in (facts[h] or {}).get("freezes") or [] if f.get("phase") == phase]


def blocking(plan: Plan, facts: dict[str, dict[str, Any]], inventory: str) -> list[str]:
    """One message per freeze that stops this plan; empty when nothing does.

    A manual freeze stops every rollout of its phase. An automatic one (left by a revert)
    stops only a plan that would deploy one of the tags that failed again.
    """
    out = []
    planned = {s.service: s.new_tag for s in plan.changes}
    thaw = f"fab thaw --phase {plan.phase} --reason '...' --inventory {inventory}"
    for host, f in of_phase(facts, plan.phase):
        if not f.get("auto"):
            out.append(f"phase {plan.phase} is frozen on {host} by {f.get('by')} since {when(f.get('ts', 0))}: {f.get('reason')!r};"
                       f" nothing was changed. When it may go ahead: {thaw}")
            continue
        again = sorted(s for s, tag in (f.get("releases") or {}).items() if planned.get(s) == tag)
        if again:
            what = ", ".join(f"{s}:{planned[s]}" for s in again)
            out.append(f"phase {plan.phase} is frozen on {host}: rollout {f.get('rollout_id')} was reverted automatically at"
                       f" {when(f.get('ts', 0))} and the inventory still asks for {what}, the release that failed; nothing was"
                       f" changed. Fix the release and give it a new tag, or, if the failure was not the release's: {thaw}")
    return out
