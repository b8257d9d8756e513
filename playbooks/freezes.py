"""Which host-side phase freezes stop a planned rollout (pure; the hosts keep the freezes, agent/freeze.py)."""

from __future__ import annotations

import time
from typing import Any

from agent.freeze import config_fingerprint

from .plan import Plan, Step
from .remote import clean_text


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts or 0))


def of_phase(facts: dict[str, dict[str, Any]], phase: str) -> list[tuple[str, dict]]:
    """(host, freeze) for every freeze of `phase` the hosts reported, in host order."""
    return [(h, f) for h in sorted(facts) for f in (facts[h] or {}).get("freezes") or [] if f.get("phase") == phase]


def repeats(f: dict[str, Any], st: Step) -> bool:
    """Would this planned step deploy again exactly what an automatic freeze recorded as failing (pure)?

    Exactly: the same image digest with the same configuration fingerprint. A freeze written
    before fingerprints were recorded names tags only, and blocks by tag.
    """
    failed = (f.get("failed") or {}).get(st.service)
    if failed:
        return failed.get("digest") == st.new_digest and failed.get("config") == config_fingerprint(st.spec)
    return (f.get("releases") or {}).get(st.service) == st.new_tag and bool(st.new_tag)


def blocking(plan: Plan, facts: dict[str, dict[str, Any]], inventory: str) -> list[str]:
    """One message per freeze that stops this plan; empty when nothing does.

    A manual freeze stops every rollout of its phase. An automatic one (left by a revert)
    stops only a plan that would deploy the same image with the same configuration that failed.
    """
    out = []
    thaw = f"fab thaw --phase {plan.phase} --reason '...' --inventory {inventory}"
    for host, f in of_phase(facts, plan.phase):
        if not f.get("auto"):
            out.append(f"phase {plan.phase} is frozen on {host} by {f.get('by')} since {when(f.get('ts', 0))}: {f.get('reason')!r};"
                       f" nothing was changed. When it may go ahead: {thaw}")
            continue
        again = sorted((st for st in plan.changes if st.host == host and repeats(f, st)), key=lambda st: st.service)
        if again:
            what = ", ".join(f"{st.service}:{st.new_tag}@{st.new_digest[7:19]}" for st in again)
            # The host's own words for how that rollout ended (reverted, or a new service removed, or Swarm's rollback).
            ended = clean_text(str(f.get("reason") or f"rollout {f.get('rollout_id')} failed"))[:400]
            out.append(f"phase {plan.phase} is frozen on {host} since {when(f.get('ts', 0))}, automatically: {ended}."
                       f" This plan would deploy {what} again with the same configuration that failed; nothing was changed."
                       f" Fix the image (a new tag) or the configuration, or, if the failure was not the release's: {thaw}")
    return out
