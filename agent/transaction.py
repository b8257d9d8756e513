"""The host-side transaction: pull -> pin -prev -> swap -> health gate -> commit | revert.

It runs detached from the SSH session (see ops.py), journals every step before doing it,
and always ends a service in one of two good states: the new image running and healthy,
or the last-known-good image (`<repo>:<old tag>-prev`, exact digest recorded) running
and proven healthy. Nothing is stopped before the new image is pulled and its digest
and contract checked, so a dead registry or a bad image changes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from . import health, journal
from .facts import docker_client

MANAGED = "io.fleetroll.managed"
IMAGE_USER = "10001:10001"


class StepFailed(Exception):
    def __init__(self, check: str, message: str, **details: Any):
        self.check = check
        self.details = details
        super().__init__(message)


@dataclass
class ServiceResult:
    service: str
    action: str
    outcome: str = "pending"  # committed | reverted | removed | revert-failed | refused | noop | skipped
    check: str = ""
    message: str = ""
    before_tag: str = ""
    before_digest: str = ""
    after_tag: str = ""
    after_digest: str = ""
    prev_ref: str = ""
    prev_digest: str = ""
    gate: dict = field(default_factory=dict)
    revert_gate: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return dict(self.__dict__)


class Transaction:
    def __init__(self, args: dict[str, Any]):
        self.args = args
        self.rid = args["rollout_id"]
        self.client = docker_client(timeout=120)
        self.results: list[ServiceResult] = []

    # --- journal ------------------------------------------------------------------------

    def j(self, step: str, service: str = "", **kw: Any) -> None:
        journal.append(self.rid, step, service=service, **kw)

    # --- docker helpers -----------------------------------------------------------------

    def _container(self, name: str):
        import docker.errors

        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None

    def _labels(self, spec: dict, tag: str, digest: str, prev_tag: str, prev_digest: str, git_sha: str, spec_hash: str) -> dict:
        return {
            MANAGED: "true",
            "io.fleetroll.service": spec["name"],
            "io.fleetroll.tag": tag,
            "io.fleetroll.digest": digest,
            "io.fleetroll.rollout-id": self.rid,
            "io.fleetroll.phase": self.args.get("phase", ""),
            "io.fleetroll.spec-hash": spec_hash,
            "io.fleetroll.prev-tag": prev_tag,
            "io.fleetroll.prev-digest": prev_digest,
            "io.fleetroll.git-sha": git_sha,
            "io.fleetroll.operator": self.args.get("operator", ""),
        }

    def _start(self, spec: dict, image_id: str, labels: dict):
        from docker.types import DeviceRequest

        gpus = spec.get("gpus") or 0
        requests = []
        if gpus == "all" or int(gpus) > 0:
            requests = [DeviceRequest(count=-1 if gpus == "all" else int(gpus), capabilities=[["gpu"]])]
        # The low-level API: the high-level create() does not take stop_timeout.
        api = self.client.api
        restart = spec.get("restart", "unless-stopped")
        binds = {}
        for vol in spec.get("volumes") or []:
            src, dst, *mode = vol.split(":")
            binds[src] = {"bind": dst, "mode": mode[0] if mode else "rw"}
        host_config = api.create_host_config(
            binds=binds or None,
            port_bindings={k: v for k, v in (spec.get("ports") or {}).items()},
            restart_policy={"Name": restart} if restart != "no" else None,
            device_requests=requests or None,
        )
        created = api.create_container(
            image_id,
            name=spec["name"],
            user=spec.get("user") or IMAGE_USER,
            # The exact digest this container runs, for the start-up report (issue 6).
            environment={**(spec.get("env") or {}), "FLEETROLL_IMAGE_DIGEST": labels.get("io.fleetroll.digest", "")},
            ports=[(int(k.split("/")[0]), k.split("/")[1]) for k in (spec.get("ports") or {})],
            labels=labels,
            stop_timeout=int(spec.get("stop_timeout", 10)),
            host_config=host_config,
        )
        c = self.client.containers.get(created["Id"])
        c.start()
        return c

    def _stop_remove(self, c, timeout: int) -> float:
        t0 = time.monotonic()
        try:
            c.stop(timeout=timeout)
        finally:
            c.remove(force=True)
        return time.monotonic() - t0

    def _gate(self, c, spec: dict, service: str) -> health.GateResult:
        h = spec["health"]
        url = f"http://127.0.0.1:{h['port']}{h.get('path', '/health')}"

        def state() -> tuple[bool, int, str]:
            try:
                c.reload()
            except Exception:  # noqa: BLE001 - a vanished container is simply not running
                return False, -1, "gone"
            st = c.attrs.get("State") or {}
            status = st.get("Status", "")
            if status in ("exited", "restarting") or st.get("Restarting"):
                status = f"{status} after exit code {st.get('ExitCode')}"
            return bool(st.get("Running")) and not st.get("Restarting"), int(c.attrs.get("RestartCount", 0)), status

        return health.gate(
            url,
            float(h.get("healthy_deadline", 60)),
            float(h.get("min_healthy_time", 10)),
            float(h.get("interval", 0.5)),
            state,
            on_tick=lambda msg: self.j("gate-progress", service, message=msg),
        )

    def _evidence(self, c) -> dict:
        try:
            c.reload()
            st = c.attrs.get("State") or {}
            logs = c.logs(tail=10).decode(errors="replace").strip().splitlines()
            return {"exit_code": st.get("ExitCode"), "status": st.get("Status"), "restarts": c.attrs.get("RestartCount", 0), "last_logs": logs[-10:]}
        except Exception as exc:  # noqa: BLE001
            return {"error": f"could not read the container: {exc}"}

    # --- one service --------------------------------------------------------------------

    def _pull(self, spec: dict, service: str):
        import docker.errors

        ref = f"{spec['repo']}:{spec['tag']}"
        self.j("pull", service, ref=ref, digest=spec.get("digest"))
        try:
            image = self.client.images.pull(spec["repo"], tag=spec["tag"])
        except docker.errors.APIError as exc:
            raise StepFailed("pull", f"could not pull {ref}: {exc.explanation or exc}; nothing was stopped") from None
        digests = [d.split("@", 1)[1] for d in image.attrs.get("RepoDigests", []) if "@" in d]
        if spec.get("digest") and spec["digest"] not in digests:
            raise StepFailed(
                "digest",
                f"{ref} now resolves to {', '.join(digests) or 'no digest'}, not the planned {spec['digest']}"
                " (the tag moved after planning); nothing was stopped — re-plan",
            )
        cfg = image.attrs.get("Config") or {}
        user = cfg.get("User") or ""
        if user != IMAGE_USER:
            raise StepFailed("image-user", f"{ref} runs as {user or 'root (no USER)'}; required {IMAGE_USER}; refused, nothing was stopped")
        entry = cfg.get("Entrypoint") or []
        if not entry or "tini" not in entry[0].rsplit("/", 1)[-1]:
            raise StepFailed("image-entrypoint", f"{ref} entrypoint {entry or '(none)'} does not start with tini; refused, nothing was stopped")
        return image, (cfg.get("Labels") or {}).get("org.opencontainers.image.revision", "")

    def swap(self, step: dict) -> ServiceResult:
        spec = step["spec"]
        service = spec["name"]
        r = ServiceResult(service, step["action"], before_tag=step.get("current_tag", ""), before_digest=step.get("current_digest", ""))
        t0 = time.monotonic()
        try:
            image, git_sha = self._pull(spec, service)
        except StepFailed as exc:
            r.outcome, r.check, r.message = "refused", exc.check, str(exc)
            self.j("refused", service, check=exc.check, message=str(exc))
            return r
        r.timings["pull_s"] = round(time.monotonic() - t0, 3)
        old = self._container(service)
        if old is not None and (old.labels or {}).get(MANAGED) != "true":
            r.outcome, r.check = "refused", "foreign-container"
            r.message = f"a container named {service!r} exists and was not started by fleetroll; remove or rename it first (nothing was stopped)"
            self.j("refused", service, check=r.check, message=r.message)
            return r
        prev_tag = prev_digest = ""
        if old is not None:
            old_labels = old.labels or {}
            old_tag = old_labels.get("io.fleetroll.tag") or "unknown"
            prev_tag = f"{old_tag}-prev"
            prev_digest = old_labels.get("io.fleetroll.digest", "")
            r.prev_ref, r.prev_digest = f"{spec['repo']}:{prev_tag}", prev_digest
            self.j("pin-prev", service, prev_ref=r.prev_ref, prev_digest=prev_digest, image_id=old.image.id)
            old.image.tag(spec["repo"], prev_tag)
            self.j("stop-old", service, container=old.short_id, timeout=spec.get("stop_timeout", 10))
            r.timings["stop_s"] = round(self._stop_remove(old, int(spec.get("stop_timeout", 10))), 3)
        self.j("start-new", service, ref=f"{spec['repo']}:{spec['tag']}", digest=spec.get("digest"))
        t1 = time.monotonic()
        labels = self._labels(spec, spec["tag"], spec.get("digest", ""), prev_tag, prev_digest, git_sha, spec.get("spec_hash", ""))
        try:
            new = self._start(spec, image.id, labels)
        except Exception as exc:  # noqa: BLE001 - a failed start is a failed gate
            new = self._container(service)
            gate = health.GateResult(False, "start", f"container did not start: {exc}")
        else:
            r.timings["start_s"] = round(time.monotonic() - t1, 3)
            self.j("gate", service, health=spec["health"])
            gate = self._gate(new, spec, service)
        r.gate = gate.to_json()
        if gate.ok:
            r.outcome, r.after_tag, r.after_digest = "committed", spec["tag"], spec.get("digest", "")
            r.timings["total_s"] = round(time.monotonic() - t0, 3)
            self.j("committed", service, tag=spec["tag"], digest=spec.get("digest"), gate=r.gate)
            return r
        r.check = f"health-{gate.phase}"
        r.message = gate.reason
        r.details = self._evidence(new) if new is not None else {}
        self.j("gate-failed", service, reason=gate.reason, evidence=r.details, gate=r.gate)
        if new is not None:
            new.remove(force=True)
        self._restore(r, spec)
        r.timings["total_s"] = round(time.monotonic() - t0, 3)
        return r

    def _restore(self, r: ServiceResult, spec: dict) -> None:
        """Put the -prev image back with the same config and prove it healthy."""
        service = spec["name"]
        if not r.prev_ref:
            r.outcome = "removed"
            self.j("removed", service, message="no earlier version to go back to; the service is not running")
            return
        self.j("reverting", service, prev_ref=r.prev_ref, prev_digest=r.prev_digest)
        try:
            image = self.client.images.get(r.prev_ref)
            current = self._container(service)
            if current is not None:
                current.remove(force=True)
            labels = self._labels(spec, r.prev_ref.rsplit(":", 1)[1].removesuffix("-prev"), r.prev_digest, "", "", "", "")
            c = self._start(spec, image.id, labels)
            gate = self._gate(c, spec, service)
        except Exception as exc:  # noqa: BLE001
            gate = health.GateResult(False, "start", f"could not start {r.prev_ref}: {exc}")
        r.revert_gate = gate.to_json()
        if gate.ok:
            r.outcome = "reverted"
            r.after_tag, r.after_digest = r.prev_ref.rsplit(":", 1)[1].removesuffix("-prev"), r.prev_digest
            self.j("reverted", service, ref=r.prev_ref, digest=r.prev_digest, gate=r.revert_gate)
        else:
            r.outcome = "revert-failed"
            self.j("revert-failed", service, ref=r.prev_ref, reason=gate.reason)

    def revert_committed(self, step: dict, reason: str) -> ServiceResult:
        """Send a service that is running its new image back to the -prev it recorded."""
        spec = step["spec"]
        service = spec["name"]
        r = ServiceResult(service, "revert", check="phase-revert", message=reason)
        c = self._container(service)
        labels = (c.labels or {}) if c is not None else {}
        r.before_tag, r.before_digest = labels.get("io.fleetroll.tag", ""), labels.get("io.fleetroll.digest", "")
        prev_tag = labels.get("io.fleetroll.prev-tag", "")
        if not prev_tag:
            r.outcome = "revert-failed" if c is not None else "skipped"
            r.message = f"{service} has no -prev recorded (it was created, not replaced, or already reverted)"
            if c is not None and step.get("remove_if_no_prev"):
                c.remove(force=True)
                r.outcome, r.message = "removed", f"{service} was new in this rollout; removed it"
            self.j(r.outcome, service, message=r.message)
            return r
        r.prev_ref, r.prev_digest = f"{spec['repo']}:{prev_tag}", labels.get("io.fleetroll.prev-digest", "")
        t0 = time.monotonic()
        self.j("stop-old", service, container=c.short_id, timeout=spec.get("stop_timeout", 10))
        self._stop_remove(c, int(spec.get("stop_timeout", 10)))
        self._restore(r, spec)
        r.timings["total_s"] = round(time.monotonic() - t0, 3)
        return r

    # --- the whole host -----------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        policy = self.args.get("on_failure", "revert-phase")
        steps = self.args.get("steps") or []
        failed = False
        t0 = time.monotonic()
        for step in steps:
            action = step["action"]
            if failed and policy != "revert-service":
                self.results.append(ServiceResult(step["spec"]["name"], action, outcome="skipped", message="not started: an earlier service failed"))
                continue
            if action == "revert":
                res = self.revert_committed(step, self.args.get("reason", "rollback requested"))
            elif action in ("create", "replace"):
                res = self.swap(step)
            else:
                res = ServiceResult(step["spec"]["name"], action, outcome="noop")
            self.results.append(res)
            if res.outcome in ("reverted", "removed", "revert-failed", "refused") and action != "revert":
                failed = True
        if failed and policy == "revert-phase":
            for res, step in zip(list(self.results), steps, strict=False):
                if res.outcome == "committed":
                    back = self.revert_committed({**step, "remove_if_no_prev": True}, "another service in the phase failed")
                    res.outcome, res.revert_gate, res.message = back.outcome, back.revert_gate, back.message
                    res.prev_ref, res.prev_digest = back.prev_ref or res.prev_ref, back.prev_digest or res.prev_digest
                    res.after_tag, res.after_digest = back.after_tag, back.after_digest
        ok = not any(r.outcome in ("reverted", "removed", "revert-failed", "refused") for r in self.results)
        if any(r.action == "revert" for r in self.results):
            ok = all(r.outcome in ("reverted", "removed", "skipped", "noop") for r in self.results)
        state = "good" if not any(r.outcome == "revert-failed" for r in self.results) else "needs-operator"
        return {"ok": ok, "state": state, "elapsed_s": round(time.monotonic() - t0, 3), "services": [r.to_json() for r in self.results]}
