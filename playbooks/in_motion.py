"""Hosts where no plan can be made now: a transaction runs there, or one was left interrupted (pure).

Mid-swap, the container under test runs under the service's name: a rollout that planned from it
said "nothing to do" (exit 0) while that release was still being gated, and then reverted. The
host's agent says so in its facts (`busy`, agent/lock.py); the rollout refuses such a host before
anything else (exit 3), and a dry run says a real rollout would be refused.
"""

from __future__ import annotations

import re
import time
from typing import Any

from .plan import Plan


def in_motion(plan: Plan, facts: dict[str, dict[str, Any]]) -> list[str]:
    """One line per host of the plan whose agent reported `busy`: who holds it and what to do (pure)."""
    return [line for h in plan.hosts if (line := _line(h, (facts.get(h) or {}).get("busy") or {}))]


def _line(h: str, b: dict[str, Any]) -> str:
    if not b or b.get("unsafe"):
        return ""  # an untrustworthy lock file is preflight's and the transaction's to refuse, with its own words
    if b.get("interrupted"):
        return (f"{h} has an interrupted transaction ({', '.join(b['interrupted'])}) that recovery could not finish: its"
                f" containers may be half-swapped; nothing was changed. Look: fab status -H {h} (its RECOVERY FAILED line)"
                f" and fab logs --agent -H {h}")
    since = time.strftime("%H:%M:%SZ", time.gmtime(b.get("time") or 0))
    who = f"({b.get('holder') or '?'}, pid {b.get('pid') or '?'}, since {since})"
    rid = str(b.get("rollout_id") or "?")
    if rid == "recovery" or str(b.get("holder") or "").startswith(("recovery", "unlock by")):
        what = f"recovering an interrupted transaction {who}"
    elif re.fullmatch(r"r\d{8}T\d{6}Z-prune-[0-9a-f]{6}", rid):  # playbooks/plan.new_rollout_id("prune")
        return (f"{h} is pruning images (fab prune, {rid}) {who}: a rollout's pulled image could go before it starts;"
                " nothing was changed. Run it again when the prune has finished (seconds to minutes)")
    elif rid.startswith("remove-") or re.fullmatch(r"r\d{8}T\d{6}Z-remove-.+-[0-9a-f]{6}", rid):
        what = f"removing a container (fab remove, {rid}) {who}"
    else:
        what = f"in the middle of rollout {rid} {who}"
    return (f"{h} is {what}: its containers are in motion, so nothing can be planned from them; nothing was changed."
            f" Follow it: fab status --follow -H {h}; if it is stuck: fab unlock -H {h} --reason '...'")
