"""Finish a transaction whose process died (SIGKILL, OOM killer, power loss, reboot).

Every agent call runs `recover_pending()` before its own work. A journal still marked
open whose lock can be taken was interrupted: nothing alive holds it (the kernel dropped
the dead holder's flock). Its records say, per service, how far it got; from that the
host is put back in one of its two good states with the transaction's own restore and
commit code:

* the host had decided to commit (`commit-host` written): finish committing the services
  that passed their gate, restore any other;
* otherwise, under `revert-phase`: every touched service goes back to its kept old
  container (a service that had no old one is removed), gated;
* under `revert-service` / `stop`: services that passed their gate are committed, the
  one caught mid-swap is restored.

The journal then gets a `recovered` record and the outcome (`done`, with recovered=true),
and the answer of the call that did it says so.
"""

from __future__ import annotations

import time

from . import contract, journal
from .vocabulary import FINAL_STEPS, Outcome, Step

TYPE_CHECKING = False  # importing typing costs every agent call ~2.5 ms; Any is only ever an annotation here
if TYPE_CHECKING:
    from typing import Any


def service_states(records: list[dict]) -> dict[str, dict[str, Any]]:
    """Per service, what the journal says happened (pure: tested from journal lines)."""
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        svc = rec.get("service")
        if not svc:
            continue
        st = out.setdefault(svc, {"last": "", "created": [], "gated": False, "final": ""})
        step = rec.get("step", "")
        st["last"] = step
        if step == Step.SET_ASIDE:
            st.update(old_container=rec.get("container", ""), kept_name=rec.get("kept_name", ""),
                      old_config=rec.get("old_config") or {}, prev_ref=rec.get("prev_ref", ""), prev_digest=rec.get("prev_digest", ""))
        elif step == Step.CREATED:
            st["created"].append(rec.get("container", ""))
        elif step == Step.GATED:
            st["gated"] = True
            st["gate"] = rec.get("gate") or {}
        elif step == Step.START_NEW:
            st["started"] = True
            st["tag"], st["digest"], st["config"] = rec.get("tag", ""), rec.get("digest", ""), rec.get("config", "")
        elif step == Step.SWAP_FAILED:  # its gate (or Docker) had judged it before the revert was cut short
            st["failed"] = {"check": rec.get("check", ""), "reason": rec.get("reason", ""), "evidence": rec.get("evidence") or {},
                            "at_fault": rec.get("at_fault", True)}
        elif step in FINAL_STEPS:
            st["final"] = step
    return out


def decide(records: list[dict]) -> dict[str, str]:
    """Per unfinished service: "commit" or "restore" (pure). Untouched services are left out."""
    from . import decisions

    accepted = next((r for r in records if r.get("step") == Step.ACCEPTED), {})
    policy = accepted.get("policy", "revert-phase")
    revert_op = accepted.get("kind") == "revert"
    committing = any(r.get("step") == Step.COMMIT_HOST for r in records)
    out = {}
    for svc, st in service_states(records).items():
        if st["final"] or not (st.get("old_container") or st.get("started") or st["created"]):
            continue
        out[svc] = decisions.recovery_action(st["gated"], committing, revert_op, policy)
    return out


def _result(result_class, svc: str, st: dict[str, Any], accepted: dict[str, Any]):
    """The service's result as the journal left it: what ran before and what was tried (the report's "tried -> now")."""
    r = result_class(svc, "revert" if accepted.get("kind") == "revert" else "replace",
                     old_container=st.get("old_container", ""), kept_name=st.get("kept_name", ""),
                     old_config=st.get("old_config") or {}, prev_ref=st.get("prev_ref", ""),
                     prev_digest=st.get("prev_digest", ""), new_container=(st["created"] or [""])[-1], gate=st.get("gate") or {})
    old_labels = (st.get("old_config") or {}).get("labels") or {}
    r.before_tag, r.before_digest = old_labels.get(contract.TAG, ""), old_labels.get(contract.DIGEST, "")
    r.tried_tag, r.tried_digest, r.tried_config = st.get("tag", ""), st.get("digest", ""), st.get("config", "")
    r.at_fault = bool((st.get("failed") or {}).get("at_fault"))  # only a release seen failing says anything about itself
    return r


def _freeze_failed(rid: str, accepted: dict[str, Any], results: list) -> None:
    """A release seen failing before its revert was cut short freezes its phase as the uninterrupted revert would have.

    Only from what the journal saw (its swap-failed record, with the fingerprint start-new recorded);
    a service that was merely interrupted says nothing about its release. Best effort, like the
    transaction's own freeze: a failure to write it is journalled, the recovery stands.
    """
    from . import decisions, freeze

    phase = accepted.get("phase") or ""
    d = decisions.freeze_after(results, {r.service: r.tried_tag for r in results})
    if not d.freeze or not freeze.PHASE_RE.fullmatch(phase):
        return
    try:
        freeze.write(phase, decisions.freeze_reason(rid, results, d.releases) + " (its revert was finished by recovery)",
                     accepted.get("operator", "unknown"), auto=True, releases=d.releases, rollout_id=rid, failed=d.freeze)
    except OSError as exc:
        journal.append(rid, Step.FREEZE_FAILED, error=str(exc))
        return
    journal.append(rid, Step.FROZEN, phase=phase, releases=d.releases, failed=d.freeze)
    for r in results:
        r.frozen = r.service in d.freeze


def recover(rid: str) -> dict | None:
    """Finish one interrupted transaction (the caller holds the lock). Returns its outcome record."""
    from .transaction import ServiceResult, Transaction

    records = journal.read(rid)
    done = journal.outcome(records)
    if done is not None:
        journal.mark_closed(rid)
        return done
    accepted = next((r for r in records if r.get("step") == Step.ACCEPTED), {})
    t0 = time.monotonic()
    plan = decide(records)
    states = service_states(records)
    journal.append(rid, Step.RECOVERING, actions=plan, last_step=records[-1].get("step") if records else None)
    tx = Transaction({"rollout_id": rid, "phase": accepted.get("phase", ""), "operator": accepted.get("operator", "")})
    health = {s["service"]: s.get("health") or {} for s in accepted.get("steps", [])}
    results = []
    to_restore = []
    for svc, st in states.items():
        r = _result(ServiceResult, svc, st, accepted)
        results.append(r)
        action = plan.get(svc)
        if action is None:
            r.outcome = st["final"] or Outcome.SKIPPED
            if not st["final"]:
                r.message = "not started before the transaction was interrupted"
        elif action == "commit":
            r.after_tag, r.after_digest = st.get("tag", ""), st.get("digest", "")
            tx.commit(r)
            r.check, r.message = "recovered", "passed its gate before the interruption; committed by recovery"
        elif st.get("failed"):  # it failed first: the report says what failed, as an uninterrupted revert would
            f = st["failed"]
            r.check, r.details = f["check"] or "gate", f["evidence"]
            r.message = f"{f['reason']}; its revert was cut short (after step {st['last']!r}) and finished by recovery"
            to_restore.append(r)
        else:
            r.check = "recovered"
            r.message = f"transaction interrupted after step {st['last']!r}; restored by recovery"
            to_restore.append(r)
    if to_restore:
        tx.restore_all(to_restore, health)
        for r in to_restore:
            if accepted.get("kind") == "revert" and r.outcome == Outcome.REVERTED:
                # A revert op that was cut short: what came back is the release it was reverting.
                r.outcome, r.message = Outcome.REVERT_FAILED, r.message + " (the revert did not complete; the release it was reverting runs again)"
    tx.results = results
    _freeze_failed(rid, accepted, results)
    summary = tx.summary(time.monotonic() - t0)
    summary["ok"] = False  # an interrupted transaction did not do what it was asked, whatever recovery saved
    summary["recovered"] = True
    summary["interrupted_after"] = records[-1].get("step") if records else None
    journal.append(rid, Step.RECOVERED, actions=plan, services={r.service: r.outcome for r in results})
    rec = journal.append(rid, Step.DONE, **summary)
    journal.mark_closed(rid)
    return rec


def recover_pending(holder: str = "recovery") -> list[dict]:
    """Recover every interrupted transaction on this host; [] when there is none (the usual case)."""
    ids = journal.open_ids()
    if not ids:
        return []
    from . import lock  # only now: every agent call starts here, and almost always finds nothing to recover

    held = lock.try_acquire(holder, "recovery")
    if held is None:
        return []  # a live transaction holds the lock: it is running, not interrupted
    try:
        out = []
        for rid in ids:
            rec = recover(rid)
            if rec is not None and rec.get("recovered"):
                out.append({"rollout_id": rid, "state": rec.get("state"), "ok": rec.get("ok"),
                            "services": {s["service"]: s["outcome"] for s in rec.get("services", [])},
                            "interrupted_after": rec.get("interrupted_after")})
        return out
    finally:
        held.release()
