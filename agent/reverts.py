"""Sending a running service somewhere it was before: `fab restart` (the same configuration afresh) and reverts.

A revert (phase-wide, or `fab rollback [--to TAG]`) recreates a configuration this host
journalled, through the same replace-and-gate as a swap; the decision of what to go back
to is pure (decisions.revert_target).
"""

from __future__ import annotations

import time
from typing import Any

from . import container_args, contract, decisions, versions
from .decisions import ServiceResult
from .docker_errors import ImageNotFound
from .motion import failure_text
from .vocabulary import Outcome, Step


class Reverts:
    """Mixed into Transaction."""

    client: Any
    args: dict[str, Any]

    def restart(self, step: dict) -> ServiceResult:
        """`fab restart`: the same configuration in a fresh container, gated like a swap; the old one kept until it passes."""
        spec = step["spec"]
        service = spec["name"]
        r = ServiceResult(service, "restart")
        t0 = time.monotonic()
        current = self._get(service)
        if current is None:
            return self._refuse(r, "not-running", f"{service} has no container here; roll it out instead")
        if (current.labels or {}).get(contract.MANAGED) != "true":
            return self._refuse(r, "foreign-container", f"{service!r} was not started by fleetroll; not restarting it")
        labels = current.labels or {}
        r.before_tag, r.before_digest = labels.get(contract.TAG, ""), labels.get(contract.DIGEST, "")
        r.tried_tag, r.tried_digest = r.before_tag, r.before_digest
        new_args = {**container_args.from_inspect(current.attrs), "name": service}
        relabelled = container_args.relabel_for_timings(labels, spec)  # new gate timings: recorded, as this gate uses them
        if relabelled is not None:
            new_args["labels"] = relabelled
        if self._refuse_unsafe(r, new_args):
            return r
        r.message = self._through_manual_freeze()
        # Gated where and how it was started, for as long as the inventory now says (a changed healthy_deadline
        # replaces no container: plan.gate_only_change; it applies from the next swap, this one included).
        h = container_args.health_of(labels, spec["health"])
        h = {**h, **{k: spec["health"][k] for k in container_args.GATE_TIMINGS if k in (spec.get("health") or {})}}
        self._replace(r, current, new_args, h, spec["repo"], pin=False, gpu_budget_gb=spec.get("gpu_memory_gb"),
                      order=step.get("order", "stop-first"), drain_s=float(step.get("drain_s", 0.0)))
        if r.outcome == Outcome.GATED:
            r.after_tag, r.after_digest = r.before_tag, r.before_digest
        r.timings["total_s"] = round(time.monotonic() - t0, 3)
        return r

    def _through_manual_freeze(self) -> str:
        """A restart goes through a manual freeze (the same release afresh; a freeze holds new ones): it says so.

        Read here, from the file the freeze lives in, so that a restart costs no extra call for it.
        """
        from . import freeze

        phase = str(self.args.get("phase") or "")
        rec = freeze.read(phase) if phase else None
        if not rec or rec.get("auto"):
            return ""
        return (f"phase {phase} is frozen here by {rec.get('by')} ({rec.get('reason')!r}); the restart went ahead all the"
                " same (the same release afresh; a freeze holds new releases)")

    # --- revert a committed service (phase-wide revert, fab rollback) ------------------

    def _revert_target(self, service: str, step: dict, labels: dict[str, str], running: bool) -> decisions.RevertTarget:
        """Read what the decision needs (the journals, the host's versions) and let decisions.revert_target choose."""
        to_tag = step.get("to_tag")
        expect = step.get("expect_rollout_id") or ""
        if not running and not to_tag:
            expect = expect or versions.last_committed_rollout(service)  # removed by hand: go back from the last commit here
        recorded = versions.recorded_config(expect, service) if expect and not to_tag else {}
        version = versions.find_config(service, to_tag) if to_tag else None
        first = bool(expect) and not to_tag and not recorded and versions.first_here(expect, service)
        return decisions.revert_target(service, step, labels, running, expect, recorded, version, first=first)

    def revert_committed(self, step: dict) -> ServiceResult:
        """Send a service back to a configuration this host journalled: the one before its release, or --to a tag's."""
        spec = step["spec"]
        service = spec["name"]
        r = ServiceResult(service, "revert", check="phase-revert" if step.get("phase_revert") else "rollback",
                          message=self.args.get("reason", "rollback requested"))
        t0 = time.monotonic()
        try:
            current = self._get(service)
            labels = (current.labels or {}) if current is not None else {}
            r.before_tag, r.before_digest = labels.get(contract.TAG, ""), labels.get(contract.DIGEST, "")
            target = self._revert_target(service, step, labels, current is not None)
            if target.outcome == Outcome.REFUSED:
                return self._refuse(r, target.check, target.message)
            if target.outcome == Outcome.SKIPPED:  # nothing changes: it still runs what it ran (as a refusal says too)
                r.after_tag, r.after_digest = r.before_tag, r.before_digest
                r.outcome, r.message = Outcome.SKIPPED, target.message
                self.j(Step.SKIPPED, service, message=r.message)
                return r
            if target.outcome == Outcome.REMOVED:
                self._remove(current, service)
                r.outcome, r.message = Outcome.REMOVED, target.message
                self.j(Step.REMOVED, service, message=r.message)
                return r
            old_cfg = target.config
            old_labels = old_cfg.get("labels") or {}
            r.prev_ref = f"{spec['repo']}:{old_labels.get(contract.TAG, 'unknown')}-prev"
            r.prev_digest = old_labels.get(contract.DIGEST, "")
            r.tried_tag, r.tried_digest = old_labels.get(contract.TAG, ""), r.prev_digest
            try:
                image = self._image_for(old_cfg, r.prev_ref)
            except ImageNotFound:
                return self._refuse(r, "image-gone", f"the image of {service} {old_labels.get(contract.TAG, '')} ({r.prev_digest})"
                                                     " is no longer on this host (pruned?); nothing was changed — roll out that"
                                                     " release by tag instead")
            new_args = {**old_cfg, "name": service, "image": image}
            if self._refuse_unsafe(r, new_args):
                return r
        except Exception as exc:  # noqa: BLE001 - before anything changed (image lookup, inspect, journals)
            r.outcome, r.check = Outcome.REVERT_FAILED, "revert"
            r.message = f"could not revert {service}: {failure_text(exc)}; nothing was changed"
            self.j(Step.REVERT_FAILED, service, reason=r.message)
            return r
        self._revert_to(r, current, new_args, container_args.health_of(old_labels, spec["health"]), spec["repo"], step)
        r.timings["total_s"] = round(time.monotonic() - t0, 3)
        return r

    def _revert_to(self, r: ServiceResult, current, new_args: dict, h: dict, repo: str, step: dict) -> None:
        """Replace what runs with the recorded configuration, gated; commit it, or say the release came back (or did not)."""
        target = ServiceResult(r.service, "revert")
        self._replace(target, current, new_args, h, repo, pin=False, order=step.get("order", "stop-first"),
                      drain_s=float(step.get("drain_s", 0.0)), gpu_budget_gb=(step.get("spec") or {}).get("gpu_memory_gb"))
        r.gate, r.details, r.timings, r.order, r.switch = target.gate, target.details, target.timings, target.order, target.switch
        r.old_container, r.new_container, r.kept_name = target.old_container, target.new_container, target.kept_name
        if target.outcome == Outcome.GATED:
            self.commit(target)  # the recreated old config stays; the set-aside release goes
            r.outcome, r.revert_gate = Outcome.REVERTED, target.gate
            r.after_tag, r.after_digest = r.tried_tag, r.tried_digest
            self.j(Step.REVERTED, r.service, tag=r.after_tag, digest=r.after_digest, gate=r.revert_gate)
            return
        # The old configuration failed its gate; `target` restored what ran before the revert (or could not).
        r.outcome = Outcome.REVERT_FAILED
        r.message = (f"the recorded old configuration failed: {target.message}; "
                     + ("the release it was to replace is back and healthy" if target.outcome == Outcome.REVERTED
                        else "and the release could not be brought back either"))
        r.revert_gate = target.revert_gate
        r.after_tag, r.after_digest = target.after_tag, target.after_digest

    def _image_for(self, cfg: dict, prev_ref: str) -> str:
        """The old container's exact image (by id); -prev pins it, so it is normally still here."""
        try:
            return self.client.images.get(cfg["image"]).id
        except ImageNotFound:
            return self.client.images.get(prev_ref).id
