"""The versions a service has run on this host, read from the host's own journals.

The journal is the record of what the host did, so it is what `fab versions` lists and what
`fab rollback --to TAG` chooses from. A version counts as good only if it passed its gate
here (its start was followed by `committed`); a version that failed its gate is listed as
such and is never a rollback target. The configuration a good version ran with is the one
journalled when a later rollout set it aside (`set-aside`, full create arguments), so going
back to it brings back its own env, ports and volumes, not today's inventory.
"""

from __future__ import annotations

from typing import Any

from . import contract, journal
from .vocabulary import FAILED_STEPS, Step


def all_journals() -> list[list[dict]]:
    """Every rollout journal on this host, oldest first (prepare journals hold no swaps and are skipped)."""
    d = journal.path_for("x").parent
    out = []
    for p in d.glob("*.jsonl"):
        if p.name.endswith("-prepare.jsonl"):
            continue
        recs = journal.read(p.name[: -len(".jsonl")])
        if recs:
            out.append(recs)
    out.sort(key=lambda recs: recs[0].get("ts", 0))
    return out


def history(service: str, journals: list[list[dict]]) -> list[dict[str, Any]]:
    """One entry per start of `service` (pure): tag, digest, when, rollout, operator, kind and what became of it."""
    out = []
    for recs in journals:
        head = next((r for r in recs if r.get("step") == Step.ACCEPTED), {})
        mine = [r for r in recs if r.get("service") == service]
        started = [r for r in mine if r.get("step") == Step.START_NEW]
        if not started:
            continue
        start = started[-1]
        after = [r.get("step") for r in mine if r.get("ts", 0) >= start.get("ts", 0)]
        recovered = next((r for r in recs if r.get("step") == Step.RECOVERED), None)
        if Step.COMMITTED in after:
            outcome = "committed"
        elif (Step.GATED in after and Step.REVERTED in after and not any(s in after for s in FAILED_STEPS)
              and any(r.get("step") == Step.ABORT_HOST for r in recs) and recovered is None):
            outcome = "passed its gate; sent back with its phase"  # another service of the phase failed
        elif any(s in after for s in FAILED_STEPS):
            failed = next(r for r in mine if r.get("step") in FAILED_STEPS and r.get("ts", 0) >= start.get("ts", 0))
            outcome = f"failed {failed.get('check') or 'its gate'}"
        elif recovered is not None:
            said = (recovered.get("services") or {}).get(service, "recovered")
            outcome = "committed (finished by recovery)" if said == Step.COMMITTED else f"interrupted ({said})"
        else:
            outcome = "no outcome recorded"
        out.append({"tag": start.get("tag", ""), "digest": start.get("digest", ""), "image": start.get("image", ""),
                    "ts": start.get("ts", 0), "rollout_id": start.get("rollout_id", ""), "operator": head.get("operator") or start.get("operator", ""),
                    "kind": head.get("kind", "rollout"), "outcome": outcome, "made_by": start.get("made_by")})
    return out


def config_for(service: str, tag: str, journals: list[list[dict]]) -> tuple[dict, str]:
    """(create args, "") of the newest good run of `service` at `tag`, or ({}, why not) (pure).

    Good: started here and committed, and later set aside with its whole configuration.
    """
    runs = [v for v in history(service, journals) if v["tag"] == tag]
    if not runs:
        return {}, f"{service} never ran {tag} on this host (see fab versions --service {service})"
    if not any(v["outcome"].startswith("committed") for v in runs):
        if runs[-1]["outcome"].startswith("passed its gate"):
            return {}, (f"{service} {tag} passed its gate here but was sent back with its phase (rollout"
                        f" {runs[-1]['rollout_id']}), so no configuration of it ever ran committed to go back to; roll it"
                        " out by tag instead")
        return {}, (f"{service} {tag} never passed its health gate on this host ({runs[-1]['outcome']} in rollout"
                    f" {runs[-1]['rollout_id']}); fleetroll does not roll back to a version that failed")
    committed = {v["rollout_id"] for v in runs if v["outcome"].startswith("committed")}
    for recs in reversed(journals):
        for r in reversed(recs):
            cfg = r.get("old_config") or {}
            labels = cfg.get("labels") or {}
            if (r.get("step") == Step.SET_ASIDE and r.get("service") == service and labels.get(contract.TAG) == tag
                    and labels.get(contract.ROLLOUT_ID) in committed):
                return cfg, ""
    return {}, (f"no configuration of {service} {tag} was set aside on this host: it is running now, or it was removed"
                " without a rollout (its configuration went with it)")


def list_versions(service: str) -> list[dict[str, Any]]:
    return history(service, all_journals())


def find_config(service: str, tag: str) -> tuple[dict, str]:
    return config_for(service, tag, all_journals())


def last_committed_rollout(service: str) -> str:
    """The rollout whose configuration the last commit of `service` on this host left running ("" if none).

    A rollout's own; after a rollback or a restart, the rollout that made the configuration they started
    again (its rollout label, journalled as `made_by`): so a rollback of a container removed by hand goes
    back from what ran, as it does from a running container's label, not to the release a rollback undid.
    """
    runs = [v for v in history(service, all_journals()) if v["outcome"].startswith("committed")]
    if not runs:
        return ""
    # None: a journal from before `made_by` (the run's own id, as then); "": a configuration no rollout made (by hand).
    return runs[-1]["rollout_id"] if runs[-1]["made_by"] is None else runs[-1]["made_by"]


def recorded_config(rollout_id: str, service: str) -> dict:
    """The configuration `service` had before `rollout_id` replaced it, as that transaction journalled it."""
    for rec in reversed(journal.read(rollout_id)):
        if rec.get("step") == Step.SET_ASIDE and rec.get("service") == service and rec.get("old_config"):
            return rec["old_config"]
    return {}


def first_here(rollout_id: str, service: str) -> bool:
    """Did `rollout_id` start `service` here with nothing to set aside (its first container on this host)?

    Then a rollback of it has nothing to go back to, which is not the same as a journal that lost
    what it set aside (that one is refused): the journal must show the start, and no set-aside.
    """
    mine = [r for r in journal.read(rollout_id) if r.get("service") == service]
    starts = [r for r in mine if r.get("step") == Step.START_NEW]
    if not starts or any(r.get("step") == Step.SET_ASIDE for r in mine):
        return False
    # Nothing to set aside also when an earlier release's container was removed (by hand, fab remove) first: then
    # there is an earlier version here, only no recorded configuration to go back to (refused, as before).
    t = starts[0].get("ts", 0)
    return not any(v["outcome"].startswith("committed") and v["ts"] < t for v in history(service, all_journals()))

