"""Putting the old container back, or committing the new one: the two ends of every swap.

Restore starts *the very container* that was set aside (its own image and configuration);
behind the proxy it comes back beside the new one, is gated, the proxy switches back, and
only then does the new one go. Commit removes the kept container once the proxy serves the
new one. Both are idempotent, so recovery re-runs them after a crash at any point.
"""

from __future__ import annotations

from typing import Any

from . import container_args, contract, health
from .decisions import ServiceResult
from .motion import daemon_retry, failure_text, settled_retry
from .vocabulary import Outcome, Step


class RestoreCommit:
    """Mixed into Transaction."""

    client: Any

    def restore(self, r: ServiceResult, fallback_health: dict) -> None:
        """Put the old container back (the very one set aside) and prove it healthy.

        Behind the proxy it comes back *beside* the new one: started, gated, then the proxy
        switches back to it, and only then is the new one removed — a revert drops no request.
        """
        service = r.service
        self.j(Step.REVERTING, service, container=r.old_container, kept_name=r.kept_name, prev_ref=r.prev_ref)
        h = container_args.health_of(r.old_config.get("labels") or {}, fallback_health)
        beside = bool(h.get("proxied")) and bool(r.old_container)
        try:
            kept = daemon_retry(lambda: self._bring_back(r, beside))
            if kept is None:
                r.outcome = Outcome.REMOVED
                r.after_tag = r.after_digest = ""
                self.j(Step.REMOVED, service, message="no earlier version to go back to; the new container was removed")
                return
            self._rejoin(r, kept)  # a proxy that left fr-proxy to be set aside joins it again
            gate = self._gate(kept, h, service, restarts0=0 if r.recreated else None)  # recreated: counts from 0 too
            if gate.ok and beside:
                r.switch = {**self._switch_to(r, kept, h, 0.0), "back": True}
                daemon_retry(lambda: self._finish_bring_back(r, kept))
        except Exception as exc:  # noqa: BLE001
            gate = health.GateResult(False, "restore", f"could not bring back the old container of {service}: {failure_text(exc)}"
                                     + ("; the new container was left in place (the proxy may still send it requests)" if beside else ""))
        r.revert_gate = gate.to_json()
        labels = r.old_config.get("labels") or {}
        if gate.ok:
            r.outcome = Outcome.REVERTED
            r.after_tag, r.after_digest = labels.get(contract.TAG, ""), labels.get(contract.DIGEST, "")
            self.j(Step.REVERTED, service, container=r.old_container, tag=r.after_tag, digest=r.after_digest, gate=r.revert_gate)
        else:
            r.outcome = Outcome.REVERT_FAILED
            r.after_tag = r.after_digest = ""
            self.j(Step.REVERT_FAILED, service, container=r.old_container, reason=gate.reason, gate=r.revert_gate)

    def _bring_back(self, r: ServiceResult, beside: bool = False):
        """Remove what this transaction started for the service; rename the kept container back and start it.

        `beside` (behind the proxy): the new container stays until the proxy has switched back
        (`_finish_bring_back`); the kept one is started under its kept name. Idempotent, so it
        can be retried and re-run by recovery at any point.
        """
        if not beside or not r.old_container:
            self._remove_new(r)
        if not r.old_container:
            return None
        kept = self._get(r.old_container)
        if kept is None:
            # Gone (removed by hand?): recreate it from its recorded configuration, and say so (not "the old container").
            r.recreated = True
            return self._create_start({**r.old_config, "name": r.kept_name} if beside else r.old_config, r.service)
        self._settle(kept, r.service)  # cut short before it was stopped, it may still be crash-looping
        if not beside and kept.name != r.service:
            self._rename(kept, r.service)
        want = r.old_config.get("restart") or "no"
        current = ((kept.attrs.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name") or "no"
        if current != want:
            settled_retry(lambda: kept.update(restart_policy={"Name": want}))
        self.hit(Step.REVERTING, r.service)
        kept.reload()
        if not (kept.attrs.get("State") or {}).get("Running"):
            settled_retry(kept.start)
        return kept

    def _remove_new(self, r: ServiceResult, keep: str = "") -> None:
        for c in self._created_by_me(r.service):
            if c.id not in (r.old_container, keep):
                self._remove(c, r.service)

    def _finish_bring_back(self, r: ServiceResult, kept) -> None:
        """After the proxy switched back: the new container goes, the old one gets its name back."""
        self._remove_new(r, keep=kept.id)
        kept.reload()
        if kept.name != r.service:
            self._rename(kept, r.service)

    def commit(self, r: ServiceResult) -> None:
        """The new container stays; the kept old one goes (-prev keeps pinning its image).

        Behind the proxy, the proxy is made to serve the new container first (a no-op after a
        normal swap; what makes a commit by recovery, or one cut short before its switch, safe).
        """
        self.j(Step.COMMITTING, r.service, container=r.new_container, kept=r.old_container)
        new = self._get(r.new_container) if r.new_container else None
        h = container_args.health_of((new.labels or {}) if new is not None else {}, {})
        if new is not None and h.get("proxied"):
            try:
                r.switch = r.switch or {}
                done = self._switch_to(r, new, h, 0.0)
                if done["switched"]:
                    r.switch = done
            except Exception as exc:  # noqa: BLE001 - then the old one must stay: it may still be what is served
                r.message = (f"committed, but the proxy could not be pointed at the new container ({failure_text(exc)});"
                             f" the old container {r.kept_name} was kept")
                r.outcome = Outcome.COMMITTED
                self.j(Step.COMMITTED, r.service, tag=r.after_tag, digest=r.after_digest, container=r.new_container, gate=r.gate,
                       kept=r.old_container)
                return
        if r.old_container:
            try:
                kept = self._get(r.old_container)
                if kept is not None and kept.id != r.new_container:
                    self._remove(kept, r.service)
            except Exception as exc:  # noqa: BLE001 - the new release serves; a leftover kept container harms nothing
                r.message = f"committed; the kept old container {r.kept_name} could not be removed: {failure_text(exc)}"
        r.outcome = Outcome.COMMITTED
        # A rollback commits the earlier version it recreated, then says `reverted`: `revert` keeps the operator's
        # progress from showing 'committed' for a rollback (versions still count the start as good).
        self.j(Step.COMMITTED, r.service, tag=r.after_tag, digest=r.after_digest, container=r.new_container, gate=r.gate,
               **({"revert": True} if r.action == "revert" else {}))
