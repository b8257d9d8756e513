"""The host-side transaction: prepare -> set the old container aside -> start new -> gate -> commit | restore.

The promise: every service ends either on its new image, proven healthy, or on its old
container, proven healthy — and the journal says which. Three rules make it hold:

* Nothing is stopped before the new image is present *by digest* (`repo@sha256:…`), meets
  the image contract, and its tag still names that digest in the registry.
* The old container is never removed before commit. It is renamed aside
  (`<service>--kept-<hash>`), its restart policy switched off, and stopped; its full create
  configuration is journalled first. Restoring means starting *that* container again: its
  own image, env, ports, volumes and GPU requests, whatever the new release changed.
* Every failure after the first change — a gate that fails, a Docker error, any exception — goes to the restore
  branch; a restore that fails ends in `revert-failed` (needs an operator) with the evidence, never a silent half-state.

Kept containers are removed only when the whole host commits, so a later service's failure under `revert-phase`
restores earlier ones from their kept containers too (gates run concurrently). After a commit, `-prev` still pins the
old image and the journal and the ledger keep its create configuration, so a later revert recreates it exactly.
If this process dies, the next agent call finishes the job from the journal (recovery.py), with this restore and commit.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import container_args, contract, decisions, health, journal, proxy, secret_files, secrets
from .decisions import ServiceResult
from .docker_errors import APIError, NotFound
from .facts import docker_client
from .motion import (  # noqa: F401 - re-exported: the names tests and recovery know the transaction by
    CREATED_BY,
    GONE,
    SETTLE_S,
    MotionOps,
    StepFailed,
    clean_lines,
    container_state,
    daemon_retry,
    failure_text,
    points_away,
    secret_values,
    settled_retry,
    transient,
)
from .prepare import Prepare
from .proxyswitch import ProxySwitch
from .restore import RestoreCommit
from .reverts import Reverts
from .versions import last_committed_rollout, recorded_config  # noqa: F401 - re-exported
from .vocabulary import FAILED, Outcome, Step


class GateFailed(Exception):
    def __init__(self, gate: health.GateResult):
        self.gate = gate
        super().__init__(gate.reason)


class Transaction(MotionOps, Prepare, ProxySwitch, RestoreCommit, Reverts):
    """One host's transaction: the swaps of a rollout, a revert, or a restart, journalled step by step.

    Its parts: motion.py (containers in motion), prepare.py (before anything stops),
    proxyswitch.py (the proxy), restore.py (restore and commit), reverts.py (restart, revert);
    every choice is decisions.py's.
    """

    def __init__(self, args: dict[str, Any], client: Any = None):
        self.args = args
        self.rid = args["rollout_id"]
        self.client = client if client is not None else docker_client(timeout=120)
        self.results: list[ServiceResult] = []
        self._jlock = threading.Lock()

    # --- journal and failpoints -------------------------------------------------------

    def j(self, step: str, service: str = "", **kw: Any) -> None:
        with self._jlock:
            journal.append(self.rid, step, service=service, **kw)

    def hit(self, name: str, service: str) -> None:
        """Failpoint: tests ask the transaction to stop dead after a named step (and then kill it).

        Only a request that names the failpoint triggers it; the process then waits to be
        killed, which is exactly the fault being tested (a real SIGKILL at that boundary).
        """
        fp = self.args.get("failpoint") or {}
        if fp.get("after") == name and fp.get("service", service) == service:
            self.j(Step.FAILPOINT, service, after=name)
            if fp.get("raise"):  # a step that fails (as a release failing on this host would), not a dead process
                raise RuntimeError(f"failpoint after {name}: {fp['raise']}")
            time.sleep(float(fp.get("sleep", 3600)))

    # --- docker helpers -----------------------------------------------------------------

    def _ensure_network(self, name: str) -> None:
        """The proxy network: a user-defined bridge (containers reach each other by name), made once per host."""
        if name and not self.client.networks.list(names=[name]):
            try:
                self.client.networks.create(name, driver="bridge", labels={contract.MANAGED: "true"})
            except APIError as exc:  # made meanwhile by a concurrent swap: fine
                if not self.client.networks.list(names=[name]):
                    raise StepFailed("network", f"could not create the proxy network {name}: {failure_text(exc)}") from None

    def _unsafe(self, args: container_args.CreateArgs) -> list[str]:
        """The hard rules (user, binds under the plan's and the host's prefixes, network) and every referenced secret
        readable: for every create, whatever made it."""
        refused = container_args.problems(args, self.args.get("host_paths"))
        try:
            secrets.resolve(args.get("env") or {})
        except secrets.SecretError as exc:
            refused.append(str(exc))
        return refused

    def _refuse(self, r: ServiceResult, check: str, message: str) -> ServiceResult:
        """Every refusal, one path: the result says so and the journal records it; nothing was changed."""
        decisions.refuse(r, check, message)
        self.j(Step.REFUSED, r.service, check=check, message=message)
        return r

    def _refuse_unsafe(self, r: ServiceResult, args: container_args.CreateArgs) -> bool:
        """Refuse before anything stops: a swap, a restart or a rollback whose container would break the hard rules."""
        refused = self._unsafe(args)
        if refused:
            self._refuse(r, "container-config", "; ".join(refused) + "; refused, nothing was stopped")
        return bool(refused)

    def _create_start(self, args: container_args.CreateArgs, service: str):
        refused = self._unsafe(args)  # a last guard: restore and recovery recreate from recorded configurations too
        if refused:
            raise StepFailed("container-config", "; ".join(refused))
        api = self.client.api
        self._ensure_network(args.get("network") or "")
        args = secret_files.materialize(args)  # secret files on their tmpfs first; they go when the container goes
        try:  # from here every raise takes the directory it made with it (a secret value must not wait for a reboot)
            args = {**args, "env": secrets.resolve(args.get("env") or {}), "labels": {**args.get("labels", {}), CREATED_BY: self.rid}}
            ckw, hkw = container_args.api_kwargs(args)
            created = api.create_container(**ckw, host_config=api.create_host_config(**hkw))
        except Exception:
            left = secret_files.discard(args)
            if left:
                self.j(Step.SECRET_FILES_LEFT, service, left=left)
            raise
        self.j(Step.CREATED, service, container=created["Id"])
        c = self.client.containers.get(created["Id"])
        c.start()
        return c

    def _gate(self, c, h: dict, service: str, restarts0: int | None = None) -> health.GateResult:
        url = health.url_for(h, self._address(c, h))

        def state() -> tuple[bool, int, str]:
            try:
                c.reload()
            except NotFound:
                return False, -1, GONE
            except Exception:  # noqa: BLE001 - a daemon that cannot answer does not vouch for the container
                return False, -1, "unknown (the Docker daemon did not answer)"
            st = c.attrs.get("State") or {}
            status = st.get("Status", "")
            if status in ("exited", "restarting") or st.get("Restarting"):
                status = f"{status} after exit code {st.get('ExitCode')}"
            return bool(st.get("Running")) and not st.get("Restarting"), int(c.attrs.get("RestartCount", 0)), status

        return health.gate(
            url, float(h.get("healthy_deadline", 60)), float(h.get("min_healthy_time", 10)), float(h.get("interval", 0.5)), state,
            on_tick=lambda msg: (self.j(Step.GATE_PROGRESS, service, message=msg), self.hit(Step.GATE, service)), restarts0=restarts0,
        )

    # --- one service: replace whatever runs with `new_args`, or put it back ------------

    @staticmethod
    def _failed_its_gate(service: str, labels: dict[str, str]) -> bool:
        """Did the rollout that made this container record it failing its gate (and never committing it)?"""
        from . import versions

        rid = labels.get(contract.ROLLOUT_ID, "")
        runs = versions.history(service, [journal.read(rid)]) if rid else []
        return bool(runs) and runs[-1]["outcome"].startswith("failed")

    def _set_aside(self, r: ServiceResult, old, repo: str, pin: bool, stop: bool = True) -> None:
        """Pin -prev, journal the old configuration, rename the old container aside; stop it unless start-first."""
        service = r.service
        if pin:
            prev_tag, r.prev_digest = container_args.prev_of(old.labels or {})
            r.prev_ref = f"{repo}:{prev_tag}"
            self.j(Step.PIN_PREV, service, prev_ref=r.prev_ref, prev_digest=r.prev_digest, image_id=old.attrs.get("Image"))
            self.client.images.get(old.attrs["Image"]).tag(repo, prev_tag)
            self.hit(Step.PIN_PREV, service)
        r.old_container = old.id
        r.old_config = container_args.from_inspect(old.attrs)
        r.kept_name = container_args.kept_name(service, self.rid)
        # Journal first: whatever happens next, recovery finds the old container by its id.
        self.j(Step.SET_ASIDE, service, container=old.id, kept_name=r.kept_name, old_config=r.old_config,
               prev_ref=r.prev_ref, prev_digest=r.prev_digest, order=r.order)
        self._settle(old, service)  # a crash-looping container is made still first: renaming it races with Docker
        stop = self._off_overlay(r, old, stop)  # the proxy on fr-proxy is stopped and leaves it first: Docker renames none on it
        self._rename(old, r.kept_name)
        self.hit(Step.SET_ASIDE, service)
        if stop:
            self._stop_old(r, old)

    def _stop_old(self, r: ServiceResult, old) -> None:
        service = r.service
        timeout = int(r.old_config.get("stop_timeout", 10))
        self.j(Step.STOP_OLD, service, container=old.id, timeout=timeout)
        t0 = time.monotonic()
        # Restart policy off first: a kept container must not come back by itself (`always` restarts even a stopped
        # container when dockerd restarts), and a restarting one only stops once Docker stops restarting it.
        self._settle(old, service, stop=True, timeout=timeout)
        r.timings["stop_s"] = round(time.monotonic() - t0, 3)
        self.hit(Step.STOP_OLD, service)

    def _gpu_gate(self, c, service: str, budget_gb: float | None) -> health.GateResult | None:
        """After a GPU service turns healthy: is its process on a GPU, within its declared memory? None when it is."""
        if not budget_gb:
            return None
        from . import gpuproc

        try:
            count = container_args.from_inspect(c.attrs).get("gpus", 0)
            problem = gpuproc.check(c.id, service, float(budget_gb), gpuproc.processes(),
                                    expected=gpuproc.expected_gpus(int(count)))
        except Exception as exc:  # noqa: BLE001 - NVML that cannot answer cannot vouch for the GPU either
            problem = f"GPU processes could not be read through NVML: {failure_text(exc)}"
        return health.GateResult(False, "gpu", problem) if problem else None

    def _replace(self, r: ServiceResult, current, new_args: container_args.CreateArgs, h: dict, repo: str, pin: bool,
                 gpu_budget_gb: float | None = None, order: str = "stop-first", drain_s: float = 0.0,
                 is_proxy: bool = False) -> None:
        """Set `current` aside (if any), start `new_args`, gate it. On any failure: restore.

        Start-first (a service behind the proxy, with room for two copies): the old container
        keeps serving while the new one is gated directly, then the proxy switches to the new
        one, the old drains for `drain_s` and stops (kept for revert). A failed gate never
        touches the proxy. Stop-first behind the proxy switches once the new one has passed.
        """
        service = r.service
        start_first = decisions.start_first(order, current is not None, bool(h.get("proxied")))
        r.order = "start-first" if start_first else "stop-first"
        try:
            if current is not None:
                self._unserve(r, h, start_first)  # stop-first behind the proxy: the old one's address may go to the new one
                self._set_aside(r, current, repo, pin, stop=not start_first)
            labels = new_args["labels"]  # made_by: the configuration's own rollout (a revert's or restart's is older)
            self.j(Step.START_NEW, service, image=new_args["image"], tag=labels.get(contract.TAG), digest=labels.get(contract.DIGEST),
                   operator=self.args.get("operator", ""), config=r.tried_config, made_by=labels.get(contract.ROLLOUT_ID, ""))
            t1 = time.monotonic()
            new = self._create_start(new_args, service)
            r.new_container = new.id
            r.timings["start_s"] = round(time.monotonic() - t1, 3)
            self.hit(Step.START_NEW, service)
            self.j(Step.GATE, service, health=h)
            gate = self._gate(new, h, service, restarts0=0)  # just created: Docker's restarts of it count from 0
            if gate.ok:
                gate = self._gpu_gate(new, service, gpu_budget_gb) or gate
            r.gate = gate.to_json()
            if not gate.ok:
                raise GateFailed(gate)
            if is_proxy:
                self._point_backends(service)
            if h.get("proxied"):
                r.switch = self._switch_to(r, new, h, drain_s if start_first else 0.0, settle=start_first)
                r.timings["switch_ms"] = r.switch["switch_ms"]
            if start_first:
                self._stop_old(r, current)
            r.outcome = Outcome.GATED
            self.j(Step.GATED, service, gate=r.gate)
        except Exception as exc:  # noqa: BLE001 - every failure after the first change ends in restore
            if isinstance(exc, GateFailed):
                r.check, r.message = f"health-{exc.gate.phase}", exc.gate.reason
            else:
                r.check = r.check or "swap"
                r.message = f"{failure_text(exc)} (while replacing {service})"
            r.details = self._evidence(r.new_container, secret_values(new_args.get("env") or {}))
            r.at_fault = not points_away(exc, r.message, r.details)
            self.j(Step.SWAP_FAILED, service, check=r.check, reason=r.message, evidence=r.details, gate=r.gate, at_fault=r.at_fault)
            self.restore(r, h)

    def swap(self, step: dict) -> ServiceResult:
        spec = step["spec"]
        service = spec["name"]
        r = ServiceResult(service, step["action"], before_tag=step.get("current_tag", ""), before_digest=step.get("current_digest", ""),
                          tried_tag=spec.get("tag", ""), tried_digest=spec.get("digest", ""))
        from .freeze import config_fingerprint

        r.tried_config = config_fingerprint(spec)
        t0 = time.monotonic()
        try:
            image, git_sha = self.prepare(spec, service, check_tag=not self.args.get("prepared"))
        except Exception as exc:  # noqa: BLE001 - nothing has changed yet: refuse, whatever the cause
            check, message = (exc.check, str(exc)) if isinstance(exc, StepFailed) else ("prepare", f"{failure_text(exc)}; nothing was stopped")
            return self._refuse(r, check, message)
        r.timings["pull_s"] = round(time.monotonic() - t0, 3)
        current = self._get(service)
        running = (current.labels or {}) if current is not None else {}
        if current is not None and running.get(contract.MANAGED) != "true":
            return self._refuse(r, "foreign-container", f"a container named {service!r} exists and was not started by fleetroll;"
                                                        " remove or rename it first (nothing was stopped)")
        pin = decisions.pin_for(running, bool(running) and self._failed_its_gate(service, running))
        if pin.note:
            self.j(Step.PIN_SKIPPED, service, reason=pin.note)
        prev_tag, prev_digest = pin.prev_tag, pin.prev_digest
        labels = container_args.labels_for(spec, spec["tag"], spec["digest"], self.rid, self.args.get("phase", ""),
                                           self.args.get("operator", ""), git_sha, prev_tag, prev_digest)
        new_args = container_args.from_spec(proxy.host_spec(spec), image.id, labels)
        if self._refuse_unsafe(r, new_args):
            return r
        self._replace(r, current, new_args, spec["health"], spec["repo"], pin=pin.pin, gpu_budget_gb=spec.get("gpu_memory_gb"),
                      order=step.get("order", "stop-first"), drain_s=float(step.get("drain_s", 0.0)),
                      is_proxy=spec.get("role") == "proxy")
        if not pin.pin and prev_tag and r.outcome == Outcome.GATED:
            r.prev_ref, r.prev_digest = f"{spec['repo']}:{prev_tag}", prev_digest
        if r.outcome == Outcome.GATED:
            r.after_tag, r.after_digest = spec["tag"], spec["digest"]
        r.timings["total_s"] = round(time.monotonic() - t0, 3)
        return r

    def run(self) -> dict[str, Any]:
        policy = self.args.get("on_failure", "revert-phase")
        steps = self.args.get("steps") or []
        t0 = time.monotonic()
        if steps and all(s["action"] == "revert" for s in steps):
            # Independent reverts (phase-wide, fab rollback): their gates run side by side.
            with ThreadPoolExecutor(max_workers=min(8, len(steps))) as pool:
                self.results = list(pool.map(self.revert_committed, steps))
        else:
            self._run_swaps(steps, policy)
            self._freeze_after(steps)
        return self.summary(time.monotonic() - t0)

    def _freeze_after(self, steps: list[dict]) -> None:
        """After an automatic revert, freeze the phase against the tags that failed; after a clean commit, lift that.

        Done here on the host, so it holds even when the controller is gone by then.
        """
        from . import freeze

        phase = self.args.get("phase") or ""
        if not freeze.PHASE_RE.fullmatch(phase):
            return
        tags = {s["spec"]["name"]: s["spec"].get("tag", "") for s in steps}
        d = decisions.freeze_after(self.results, tags)
        try:
            if d.freeze:
                freeze.write(phase, decisions.freeze_reason(self.rid, self.results, d.releases),
                             self.args.get("operator", "unknown"), auto=True, releases=d.releases, rollout_id=self.rid, failed=d.freeze)
                self.j(Step.FROZEN, phase=phase, releases=d.releases, failed=d.freeze)
                for r in self.results:
                    r.frozen = r.service in d.freeze
            elif d.thaw:
                done = [r.service for r in self.results if r.action in ("create", "replace") and r.outcome == Outcome.COMMITTED]
                if freeze.thaw(phase, self.args.get("operator", "unknown"), f"rollout {self.rid} committed", only_auto=True,
                               services=done):
                    self.j(Step.THAWED, phase=phase)
        except OSError as exc:  # the transaction's outcome stands; the freeze is a guard, not part of it
            self.j(Step.FREEZE_FAILED, error=str(exc))

    def _run_swaps(self, steps: list[dict], policy: str) -> None:
        failed = False
        for step in steps:
            action, name = step["action"], step["spec"]["name"]
            if failed and policy != "revert-service":
                self.results.append(decisions.skipped(step))
                continue
            if action in ("create", "replace"):
                res = self.swap(step)
            elif action == "restart":
                res = self.restart(step)
            else:
                res = ServiceResult(name, action, outcome=Outcome.NOOP)
            self.results.append(res)
            failed = failed or res.outcome in FAILED
        gated = [r for r in self.results if r.outcome == Outcome.GATED]
        if failed and policy == "revert-phase" and gated:
            self.j(Step.ABORT_HOST, reason="a service of this phase failed; restoring the others from their kept containers")
            self.restore_all(gated, {s["spec"]["name"]: s["spec"]["health"] for s in steps}, "another service in the phase failed")
        else:
            self.j(Step.COMMIT_HOST, services=[r.service for r in gated])
            for r in gated:
                self.commit(r)

    def restore_all(self, results: list[ServiceResult], health_by_service: dict[str, dict], why: str | None = None) -> None:
        """Restore several services at once: their gates run side by side, not one window after another."""

        def one(r: ServiceResult) -> None:
            if why is not None:
                r.check, r.message = "phase-revert", why
            self.restore(r, health_by_service.get(r.service) or {})

        with ThreadPoolExecutor(max_workers=max(1, min(8, len(results)))) as pool:
            list(pool.map(one, results))

    def summary(self, elapsed: float) -> dict[str, Any]:
        return decisions.summary(self.results, elapsed)
