"""The transaction's decisions, as pure functions over data: what to pin, what to revert to, how to swap, what to freeze.

The transaction (transaction.py, reverts.py) reads Docker and the journals and carries the
decisions out; every choice it makes is taken here, from plain values, so each branch is
tested without Docker (tests/test_decisions_unit.py) and reads in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import contract
from .vocabulary import FAILED, NEEDS, HostState, Outcome


@dataclass
class ServiceResult:
    service: str
    action: str
    outcome: str = Outcome.PENDING  # vocabulary.Outcome
    check: str = ""
    message: str = ""
    before_tag: str = ""
    before_digest: str = ""
    after_tag: str = ""
    after_digest: str = ""
    prev_ref: str = ""
    prev_digest: str = ""
    old_container: str = ""
    kept_name: str = ""
    old_config: dict = field(default_factory=dict)
    new_container: str = ""
    order: str = "stop-first"  # start-first: the old container served until the proxy switched (update.order)
    # What this transaction tried to run: the report says "tried -> now running", the freeze keys on it.
    tried_tag: str = ""
    tried_digest: str = ""
    tried_config: str = ""  # freeze.config_fingerprint of the spec it was deployed with
    # False when the evidence points away from the release (its container removed by someone else mid-gate,
    # the daemon gone, a rename Docker refused before the new one ran): it is reverted all the same, but no freeze condemns it.
    at_fault: bool = True
    frozen: bool = False  # this failure froze the phase against tried_digest + tried_config on this host
    recreated: bool = False  # the container set aside was gone (removed by hand): the revert made one from its recorded config
    switch: dict = field(default_factory=dict)  # the proxy switch, as the proxy confirmed it
    gate: dict = field(default_factory=dict)
    revert_gate: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """What leaves the host: the old configuration with its env values as keyed hashes.

        The full configuration stays in this host's journal (the host holds those values in
        `docker inspect` anyway); answers, and so the controller's ledger, never carry them.
        """
        from . import container_args, journal

        out = dict(self.__dict__)
        out["old_config"] = container_args.redacted(self.old_config, journal.redaction_key())
        return out


def refuse(r: ServiceResult, check: str, message: str) -> ServiceResult:
    """The one shape of a refusal: nothing was changed for this service, and the message says why and what to do."""
    r.outcome, r.check, r.message = Outcome.REFUSED, check, message
    r.after_tag, r.after_digest = r.before_tag, r.before_digest  # it runs what it ran (a row said "-> (none)")
    return r


@dataclass
class Pin:
    pin: bool  # pin the running image as -prev (it is a last-known-good)
    prev_tag: str  # what the new container's labels carry forward as its -prev
    prev_digest: str
    note: str = ""  # journalled when the running one is no last-known-good


def pin_for(labels: dict[str, str], failed_its_gate: bool) -> Pin:
    """Pin what runs as -prev only if it is a last-known-good.

    A release that failed its gate here (left by hand, or by an older fleetroll) is no
    last-known-good: the pin it carries forward is the one it had itself.
    """
    if not labels:
        return Pin(True, "", "")
    if failed_its_gate:
        tag, digest = labels.get(contract.PREV_TAG, ""), labels.get(contract.PREV_DIGEST, "")
        return Pin(False, tag, digest, f"the running {labels.get(contract.TAG)} failed its gate in rollout"
                                      f" {labels.get(contract.ROLLOUT_ID)}; -prev stays {tag or '(none)'}")
    return Pin(True, f"{labels.get(contract.TAG) or 'unknown'}-prev", labels.get(contract.DIGEST, ""))


def start_first(order: str, has_current: bool, proxied: bool) -> bool:
    """Start-first needs something running to keep serving, and a proxy in front to switch."""
    return order == "start-first" and has_current and proxied


@dataclass
class RevertTarget:
    """What a revert goes back to: a configuration to recreate, or why it does nothing (`outcome` set)."""

    config: dict[str, Any] = field(default_factory=dict)
    outcome: str = ""  # "" (recreate `config`) | skipped | refused | removed
    check: str = ""
    message: str = ""


def revert_target(service: str, step: dict, labels: dict[str, str], running: bool, expect: str, recorded: dict,
                  version: tuple[dict, str] | None, first: bool = False) -> RevertTarget:
    """Choose what a revert of `service` recreates (pure: the caller read the container and the journals).

    step: the revert step (`to_tag`, `remove_if_no_prev`); labels: the running container's
    (empty when none runs); expect: the rollout whose release is being reverted (from the
    container's label, or the host's last committed one when the container was removed by
    hand); recorded: what that rollout journalled as the configuration before it; version:
    (config, why not) of `--to TAG` from the host's versions; first: `expect` started the service here from
    nothing (its journal shows the start and no set-aside), so there is no earlier version to go back to.
    """
    to_tag = step.get("to_tag")
    # `named`: the operator's -s named this service. What it asked for and cannot have is refused (3), not a quiet
    # no-op (0): found by an exploratory run, `fab rollback -s S` of a first release, or of one removed by hand, exited 0.
    named = bool(step.get("named"))
    if not running and not to_tag and not expect:
        return RevertTarget(outcome=Outcome.REFUSED if named else Outcome.SKIPPED, check="no-earlier-version",
                            message=f"{service} is not running here and this host's journal has no committed release of it"
                                    " to go back from; nothing to revert" + ("; roll it out (fab rollout)" if named else ""))
    if running and expect and labels.get(contract.ROLLOUT_ID) != expect:
        return RevertTarget(outcome=Outcome.REFUSED, check="not-this-rollout",
                            message=f"{service} runs the container of rollout {labels.get(contract.ROLLOUT_ID) or '(unknown)'},"
                                    f" not of {expect}; not reverting someone else's release")
    if to_tag and to_tag == labels.get(contract.TAG):
        return RevertTarget(outcome=Outcome.SKIPPED, message=f"{service} already runs {to_tag}; nothing to do")
    if to_tag:
        cfg, why = version or ({}, f"{service} never ran {to_tag} on this host")
        if not cfg:
            return RevertTarget(outcome=Outcome.REFUSED, check="no-such-version", message=f"{why}; nothing was changed")
        return RevertTarget(config=cfg)
    if recorded:
        return RevertTarget(config=recorded)
    if running and step.get("remove_if_no_prev") and not labels.get(contract.PREV_TAG):
        return RevertTarget(outcome=Outcome.REMOVED, message=f"{service} was new in this rollout; removed it")
    if first and running and not named:  # a phase rollback must not call the services it leaves alone refused
        return RevertTarget(outcome=Outcome.SKIPPED, message=f"{service} has no earlier version on this host (rollout"
                                                             f" {expect} started its first container here); left as it is")
    if first:
        gone = "; it is not running here (removed by hand?): fab rollout starts its release again" if not running else ""
        return RevertTarget(outcome=Outcome.REFUSED, check="no-earlier-version",
                            message=f"{service} has no earlier version on this host (rollout {expect} started its first"
                                    f" container here){gone}; nothing was changed")
    return RevertTarget(outcome=Outcome.REFUSED, check="no-recorded-config",
                        message=f"this host's journal has no recorded configuration of {service} from before rollout"
                                f" {labels.get(contract.ROLLOUT_ID) or expect or '(unknown)'}; nothing was changed — roll out the"
                                " earlier release by tag instead")


def recovery_action(gated: bool, committing: bool, revert_op: bool, policy: str) -> str:
    """An interrupted service: "commit" what passed its gate when the host had decided so (or a policy keeps it), else "restore"."""
    return "commit" if gated and (committing or revert_op or policy != "revert-phase") else "restore"


def skipped(step: dict) -> ServiceResult:
    """A service not started because an earlier one on its host failed: what it would have run, and that what it
    runs now is what it ran before (the report's row: `T2 (not started) -> T1@…`, not `(none) -> (none)`)."""
    spec, tag, digest = step["spec"], step.get("current_tag", ""), step.get("current_digest", "")
    return ServiceResult(spec["name"], step["action"], outcome=Outcome.SKIPPED, message="not started: an earlier service failed",
                         tried_tag=spec.get("tag", ""), tried_digest=spec.get("digest", ""), before_tag=tag, before_digest=digest,
                         after_tag=tag, after_digest=digest)


@dataclass
class FreezeDecision:
    freeze: dict[str, dict[str, str]] = field(default_factory=dict)  # service -> {tag, digest, config} that failed
    releases: dict[str, str] = field(default_factory=dict)  # service -> tag, for people
    thaw: bool = False


def freeze_after(results: list[ServiceResult], tags: dict[str, str]) -> FreezeDecision:
    """After an automatic revert, freeze against exactly what failed; after a clean commit, lift an automatic freeze.

    Only a release that failed on its own says anything about itself: not one sent back
    because another service failed (`phase-revert`), not a failed restart, and not a failure
    whose evidence points away from the release (`at_fault` False).
    """
    mine = [r for r in results if r.action in ("create", "replace")
            and r.outcome in (Outcome.REVERTED, Outcome.REMOVED, Outcome.REVERT_FAILED) and r.check != "phase-revert"]
    guilty = [r for r in mine if r.at_fault]
    if guilty:
        return FreezeDecision(freeze={r.service: {"tag": r.tried_tag, "digest": r.tried_digest, "config": r.tried_config}
                                      for r in guilty},
                              releases={r.service: tags.get(r.service, r.tried_tag) for r in guilty})
    swapped = any(r.action in ("create", "replace") for r in results)
    return FreezeDecision(thaw=swapped and all(r.outcome in (Outcome.COMMITTED, Outcome.NOOP) for r in results))


# How a release that failed on its own ended on the host, in the freeze's reason (what `fab rollout` shows when it refuses).
_ENDED = {Outcome.REVERTED: "reverted to its previous version", Outcome.REMOVED: "removed (it had no earlier version)",
          Outcome.REVERT_FAILED: "not brought back (its revert failed)"}


def freeze_reason(rollout_id: str, results: list[ServiceResult], releases: dict[str, str]) -> str:
    """The automatic freeze's reason, saying per service how the failed release ended (pure).

    "Reverted" alone was wrong for a new service whose failed first release was removed.
    """
    ended = {r.service: _ENDED.get(r.outcome, r.outcome) for r in results}
    what = "; ".join(f"{s}:{t} failed with its configuration and was {ended.get(s, 'ended')}" for s, t in sorted(releases.items()))
    return f"rollout {rollout_id} failed: {what}"


def summary(results: list[ServiceResult], elapsed: float) -> dict[str, Any]:
    """The host's answer: ok, its state (good unless a service needs an operator), and each service's result."""
    outcomes = [r.outcome for r in results]
    ok = not any(o in FAILED for o in outcomes)
    if any(r.action == "revert" for r in results):
        ok = all(o in (Outcome.REVERTED, Outcome.REMOVED, Outcome.SKIPPED, Outcome.NOOP) for o in outcomes)
    state = HostState.NEEDS_OPERATOR if any(o in NEEDS for o in outcomes) else HostState.GOOD
    return {"ok": ok, "state": state, "elapsed_s": round(elapsed, 3), "services": [r.to_json() for r in results]}


