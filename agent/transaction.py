"""The host-side transaction: prepare -> set the old container aside -> start new -> gate -> commit | restore.

The promise: every service ends either on its new image, proven healthy, or on its old
container, proven healthy — and the journal says which. Three rules make it hold:

* Nothing is stopped before the new image is present *by digest* (`repo@sha256:…`), meets
  the image contract, and its tag still names that digest in the registry.
* The old container is never removed before commit. It is renamed aside
  (`<service>--kept-<hash>`), its restart policy switched off, and stopped; its full create
  configuration is journalled first. Restoring means starting *that* container again: its
  own image, env, ports, volumes and GPU requests, whatever the new release changed.
* Every failure after the first change — a gate that fails, a Docker error, any exception —
  goes to the restore branch; a restore that fails ends in `revert-failed` (needs an
  operator) with the evidence, never in a silent half-state.

Kept containers are removed only when the whole host commits, so a later service's failure
under `revert-phase` restores earlier ones from their kept containers too (gates run
concurrently). After a commit, `-prev` still pins the old image and the journal and the
ledger keep its create configuration, so a later revert recreates it exactly.

If this process dies, the next agent call on the host finishes the job from the journal
(recovery.py), using the same restore and commit code.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import container_args, contract, health, journal, proxy, secrets
from .facts import docker_client
from .vocabulary import FAILED, NEEDS, HostState, Outcome, Step

CREATED_BY = "io.fleetroll.created-by"  # the transaction that created a container (recovery removes only its own)


class StepFailed(Exception):
    def __init__(self, check: str, message: str):
        self.check = check
        super().__init__(message)


class GateFailed(Exception):
    def __init__(self, gate: health.GateResult):
        self.gate = gate
        super().__init__(gate.reason)


@dataclass
class ServiceResult:
    service: str
    action: str
    # gated (transient) | committed | reverted | removed | revert-failed | refused | noop | skipped
    outcome: str = Outcome.PENDING
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
    # the daemon gone): it is reverted all the same, but no freeze condemns it.
    at_fault: bool = True
    frozen: bool = False  # this failure froze the phase against tried_digest + tried_config on this host
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
        out = dict(self.__dict__)
        out["old_config"] = container_args.redacted(self.old_config, journal.redaction_key())
        return out


def last_committed_rollout(service: str) -> str:
    """The rollout that last committed `service` on this host, by the journals ("" if none)."""
    from . import versions

    runs = [v for v in versions.history(service, versions.all_journals()) if v["outcome"].startswith("committed")]
    return runs[-1]["rollout_id"] if runs else ""


def recorded_config(rollout_id: str, service: str) -> dict:
    """The configuration `service` had before `rollout_id` replaced it, as that transaction journalled it."""
    for rec in reversed(journal.read(rollout_id)):
        if rec.get("step") == Step.SET_ASIDE and rec.get("service") == service and rec.get("old_config"):
            return rec["old_config"]
    return {}


def daemon_retry(fn, budget_s: float = 60.0):
    """Run fn, retrying while the Docker daemon cannot be reached at all (restarting, socket gone).

    Only a connection failure is retried: an API error (a name conflict, a port in use)
    is an answer, and repeating the call would not change it.
    """
    import requests
    from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

    for attempt in Retrying(stop=stop_after_delay(budget_s), wait=wait_fixed(1.0), reraise=True,
                            retry=retry_if_exception_type(requests.exceptions.ConnectionError)):
        with attempt:
            return fn()
    return None  # pragma: no cover - Retrying either returns or raises


# Docker's answers while it restarts a container under our feet: its sandbox is being torn down or set
# up, a restart is in flight, or a removal is already under way. Each passes within seconds.
TRANSIENT = ("sandbox", "is restarting", "conflict", "in progress", "is not running", "cannot kill container", "is paused")
SETTLE_S = 30.0  # how long a container may take to hold still once its restart policy is off


def transient(exc: BaseException) -> bool:
    """A Docker error that says "not now" about a container in motion, not "no"; never evidence of health."""
    import docker.errors

    if not isinstance(exc, docker.errors.APIError):
        return False
    text = str(getattr(exc, "explanation", None) or exc).lower()
    if "no such container" in text:
        return False
    return any(t in text for t in TRANSIENT)


def settled_retry(fn, budget_s: float = SETTLE_S):
    """Run fn, retrying Docker's transient answers about a container in motion (and an unreachable daemon)."""
    import requests
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

    def retryable(exc: BaseException) -> bool:
        return transient(exc) or isinstance(exc, requests.exceptions.ConnectionError)

    for attempt in Retrying(stop=stop_after_delay(budget_s), wait=wait_fixed(0.5), reraise=True, retry=retry_if_exception(retryable)):
        with attempt:
            return fn()
    return None  # pragma: no cover - Retrying either returns or raises


def container_state(attrs: dict) -> str:
    """One word for where a container is (pure): running | restarting | paused | exited | created | dead | removing."""
    st = attrs.get("State") or {}
    if st.get("Restarting"):
        return "restarting"
    if st.get("Paused"):
        return "paused"
    return str(st.get("Status") or ("running" if st.get("Running") else "exited"))


GONE = "removed by someone else"
LOG_LINES = 20
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]|\x1b\[[0-9;?]*[A-Za-z]")


def clean_lines(text: str, hide: tuple[str, ...] = ()) -> list[str]:
    """Log text as lines an operator can read safely (pure): escape sequences gone, secret values replaced."""
    out = []
    for line in text.splitlines():
        for value in hide:
            if value:
                line = line.replace(value, "[secret]")
        line = _CONTROL.sub("", line).rstrip()
        if line:
            out.append(line[:300])
    return out


def secret_values(env: dict) -> tuple[str, ...]:
    """The values behind the secret references of an env (only ever used to hide them again); long ones only."""
    from . import secrets

    refs = {k: v for k, v in env.items() if secrets.is_ref(v)}
    try:
        values = secrets.resolve(refs).values() if refs else ()
    except Exception:  # noqa: BLE001 - unreadable now: nothing of it can be in the logs we are about to read
        return ()
    return tuple(v for v in values if len(v) >= 4)


def points_away(exc: BaseException, message: str, evidence: dict) -> bool:
    """Does the evidence say the failure was not the release's (pure)? Then it is reverted but freezes nothing.

    Its container removed or killed by someone else mid-gate (`dead or marked for removal`),
    or the Docker daemon gone: the same release with the same configuration may well pass.
    """
    import requests

    if isinstance(exc, requests.exceptions.ConnectionError):
        return True
    text = f"{message} {evidence.get('error', '')} {evidence.get('error_text', '')}".lower()
    return evidence.get("status") in (GONE, "removing", "dead") or any(
        m in text for m in (GONE, "marked for removal", "no such container", "did not answer"))


def docker_errors():
    import docker.errors

    return docker.errors


def failure_text(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return f"{type(exc).__name__}: {str(text)[:300]}"


class Transaction:
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

    def _get(self, ref: str):
        import docker.errors

        try:
            return self.client.containers.get(ref)
        except docker.errors.NotFound:
            return None

    def _created_by_me(self, service: str) -> list:
        return self.client.containers.list(all=True, filters={"label": [f"{CREATED_BY}={self.rid}", f"{contract.SERVICE}={service}"]})

    def _settle(self, c, service: str, stop: bool = False, timeout: int = 10) -> None:
        """Make a container hold still before it is renamed, stopped or removed.

        A crash-looping container (restart policy on) is torn down and set up again by Docker
        under the transaction's feet: renaming or stopping it then fails with `sandbox … not
        found` or `is restarting`. So its restart policy goes off first (the journal already
        holds its configuration, restore puts the policy back), a paused one is unpaused, and
        one that is restarting (or `stop`) is stopped; then we wait until Docker reports it
        still. Transient answers on the way are retried within SETTLE_S.
        """
        settled_retry(c.reload)
        state = container_state(c.attrs)
        policy = ((c.attrs.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name") or "no"
        if state == "running" and not stop and policy == "no":
            return
        if state == "removing":
            return  # on its way out already: a remove waits for it, a rename or stop would only fail
        if state not in ("running", "exited", "created"):
            self.j(Step.SETTLE, service, container=c.id, state=state, restart_policy=policy)
        if policy != "no":
            settled_retry(lambda: c.update(restart_policy={"Name": "no"}))
        if state == "paused":
            settled_retry(c.unpause)
        if stop or state in ("restarting", "paused"):
            settled_retry(lambda: c.stop(timeout=timeout))
        deadline = time.monotonic() + SETTLE_S
        while True:
            settled_retry(c.reload)
            state = container_state(c.attrs)
            if state in ("exited", "created", "dead", "removing") or (state == "running" and not stop):
                return
            if time.monotonic() > deadline:
                raise StepFailed("settle", f"{service}'s container {c.id[:12]} is still {state} {SETTLE_S:.0f}s after its"
                                           " restart policy was switched off and it was stopped")
            if state in ("running", "restarting"):
                settled_retry(lambda: c.stop(timeout=timeout))
            time.sleep(0.2)

    def _remove(self, c, service: str) -> None:
        """Remove a container whatever state it is in (a crash-looping one is stilled first); gone already is fine."""
        import docker.errors

        try:
            self._settle(c, service, stop=True, timeout=2)
            settled_retry(lambda: c.remove(force=True))
        except docker.errors.NotFound:
            return

    def _rename(self, c, name: str) -> None:
        settled_retry(lambda: c.rename(name))

    def _ensure_network(self, name: str) -> None:
        """The proxy network: a user-defined bridge (containers reach each other by name), made once per host."""
        if name and not self.client.networks.list(names=[name]):
            import docker.errors

            try:
                self.client.networks.create(name, driver="bridge", labels={contract.MANAGED: "true"})
            except docker.errors.APIError as exc:  # made meanwhile by a concurrent swap: fine
                if not self.client.networks.list(names=[name]):
                    raise StepFailed("network", f"could not create the proxy network {name}: {failure_text(exc)}") from None

    def _address(self, c, h: dict) -> str:
        """Where the gate and the proxy reach a container on the proxy network ("" off it)."""
        if not h.get("network"):
            return ""
        c.reload()
        return proxy.container_address(c.attrs, h["network"])

    @staticmethod
    def _unsafe(args: container_args.CreateArgs) -> list[str]:
        """The hard rules (user, binds, network) and every referenced secret readable: for every create, whatever made it."""
        refused = container_args.problems(args)
        try:
            secrets.resolve(args.get("env") or {})
        except secrets.SecretError as exc:
            refused.append(str(exc))
        return refused

    def _refuse_unsafe(self, r: ServiceResult, args: container_args.CreateArgs) -> bool:
        """Refuse before anything stops: a swap, a restart or a rollback whose container would break the hard rules."""
        refused = self._unsafe(args)
        if refused:
            r.outcome, r.check = Outcome.REFUSED, "container-config"
            r.message = "; ".join(refused) + "; refused, nothing was stopped"
            self.j(Step.REFUSED, r.service, check=r.check, message=r.message)
        return bool(refused)

    def _create_start(self, args: container_args.CreateArgs, service: str):
        refused = self._unsafe(args)  # a last guard: restore and recovery recreate from recorded configurations too
        if refused:
            raise StepFailed("container-config", "; ".join(refused))
        api = self.client.api
        self._ensure_network(args.get("network") or "")
        args = {**args, "env": secrets.resolve(args.get("env") or {}), "labels": {**args.get("labels", {}), CREATED_BY: self.rid}}
        ckw, hkw = container_args.api_kwargs(args)
        created = api.create_container(**ckw, host_config=api.create_host_config(**hkw))
        self.j(Step.CREATED, service, container=created["Id"])
        c = self.client.containers.get(created["Id"])
        c.start()
        return c

    def _gate(self, c, h: dict, service: str) -> health.GateResult:
        url = health.url_for(h, self._address(c, h))

        def state() -> tuple[bool, int, str]:
            try:
                c.reload()
            except docker_errors().NotFound:
                return False, -1, GONE
            except Exception:  # noqa: BLE001 - a daemon that cannot answer does not vouch for the container
                return False, -1, "unknown (the Docker daemon did not answer)"
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
            on_tick=lambda msg: (self.j(Step.GATE_PROGRESS, service, message=msg), self.hit(Step.GATE, service)),
        )

    def _evidence(self, container_id: str, hide: tuple[str, ...] = ()) -> dict:
        """What the failed container itself says, read after the failure: its state and its last log lines.

        Docker resets ExitCode to 0 when it restarts a container, so a running one reports no exit
        code here (the gate's reason carries the one it saw). Log lines lose control characters and
        every secret value this container was given.
        """
        if not container_id:
            return {}
        try:
            c = self.client.containers.get(container_id)
        except docker_errors().NotFound:
            return {"status": GONE}
        except Exception as exc:  # noqa: BLE001
            return {"error": f"could not read the container: {failure_text(exc)}"}
        st = c.attrs.get("State") or {}
        state = container_state(c.attrs)
        out = {"status": state, "exit_code": None if state == "running" else st.get("ExitCode"),
               "restarts": c.attrs.get("RestartCount", 0), "oom_killed": bool(st.get("OOMKilled")), "error_text": st.get("Error") or ""}
        try:
            text = c.logs(tail=LOG_LINES).decode(errors="replace")
            out["last_logs"] = clean_lines(text, hide)[-LOG_LINES:]
        except Exception as exc:  # noqa: BLE001 - the state above stands without its logs
            out["last_logs"] = [f"(logs could not be read: {failure_text(exc)})"]
        return out

    # --- prepare: nothing is stopped until this has passed ------------------------------

    def prepare(self, spec: dict, service: str, check_tag: bool = True):
        """The image by digest, its contract, and (check_tag) the tag still naming that digest.

        An image already present by digest is not pulled again: the digest is its identity.
        check_tag=False is for a swap whose controller ran the `prepare` op on every host just
        before: the registry was asked then, and the digest pins what runs either way.
        """
        digest = spec.get("digest") or ""
        repo, tag = spec["repo"], spec["tag"]
        ref = f"{repo}:{tag}"
        if not digest.startswith("sha256:"):
            raise StepFailed("digest", f"{ref}: the plan carries no digest; refusing to pull by tag (re-plan); nothing was stopped")
        self.j(Step.PULL, service, ref=ref, digest=digest)
        import docker.errors

        try:
            image = self.client.images.get(f"{repo}@{digest}")
        except docker.errors.ImageNotFound:
            try:
                image = self.client.images.pull(repo, tag=digest)
            except docker.errors.APIError as exc:
                raise StepFailed("pull", f"could not pull {repo}@{digest}: {exc.explanation or exc}; nothing was stopped") from None
        if check_tag:
            self._tag_still_names(ref, digest)
        image.tag(repo, tag)
        cfg = image.attrs.get("Config") or {}
        problems = contract.image_problems(cfg.get("User") or "", cfg.get("Entrypoint"))
        if problems:
            detail, _fix = problems[0]
            check = "image-user" if "user" in detail else "image-entrypoint"
            raise StepFailed(check, f"{ref} {detail}; refused, nothing was stopped")
        return image, (cfg.get("Labels") or {}).get(contract.REVISION, "")

    def _tag_still_names(self, ref: str, digest: str) -> None:
        from .registry import RegistryClient, RegistryError

        try:
            now = RegistryClient(insecure=bool(self.args.get("insecure_registry")), timeout=5).digest(ref)
        except RegistryError as exc:
            raise StepFailed("registry", f"could not confirm that {ref} still names {digest}: {exc}; nothing was stopped") from None
        if now != digest:
            raise StepFailed("digest", f"{ref} now names {now}, not the planned {digest} (the tag was re-pushed after"
                                       " planning); nothing was stopped — re-plan and roll out again")

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

    def _point_backends(self, service: str) -> None:
        """A new proxy passed its gate: point each backend at the container that runs its service now.

        Its start script resolved the names it could; this makes it exact (a name Docker could
        not resolve in time starts at no server). A failure here fails the proxy's swap.
        """
        rt = proxy.Runtime()
        pointed = {}
        for be, slots in rt.servers().items():
            name = be.removeprefix("be_")
            c = self._get(name) if be.startswith("be_") else None
            if c is None or not (c.attrs.get("State") or {}).get("Running"):
                continue
            addr = proxy.container_address(c.attrs, container_args.network_of(c.attrs.get("HostConfig") or {}))
            port = next(iter(slots.values())).port
            if addr:
                pointed[name] = rt.point(name, addr, port)
                rt.retire(name, addr, port)
        self.j(Step.PROXY_BACKENDS, service, pointed={k: v["to"] for k, v in pointed.items()})

    def _switch_to(self, r: ServiceResult, c, h: dict, drain_s: float) -> dict:
        """Point the host's proxy at `c` (the only ready server of the service's backend), drain the other, retire it.

        Raises ProxyError when the proxy does not confirm: the caller restores, and the
        restore switches back before it removes anything.
        """
        service = r.service
        addr, port = self._address(c, h), int(h["port"])
        if not addr:
            raise proxy.ProxyError(f"{service}'s container has no address on the proxy network {h.get('network')}")
        self.j(Step.SWITCH, service, container=c.id, to=f"{addr}:{port}")
        rt = proxy.Runtime()
        done = rt.point(service, addr, port)
        self.j(Step.SWITCHED, service, container=c.id, **done)
        self.hit(Step.SWITCHED, service)
        if done["switched"] and drain_s:
            self.j(Step.DRAIN, service, seconds=drain_s)
            time.sleep(drain_s)
        rt.retire(service, addr, port)
        return done

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
        start_first = order == "start-first" and current is not None and bool(h.get("proxied"))
        r.order = "start-first" if start_first else "stop-first"
        try:
            if current is not None:
                self._set_aside(r, current, repo, pin, stop=not start_first)
            self.j(Step.START_NEW, service, image=new_args["image"], tag=new_args["labels"].get(contract.TAG),
                   digest=new_args["labels"].get(contract.DIGEST), operator=self.args.get("operator", ""))
            t1 = time.monotonic()
            new = self._create_start(new_args, service)
            r.new_container = new.id
            r.timings["start_s"] = round(time.monotonic() - t1, 3)
            self.hit(Step.START_NEW, service)
            self.j(Step.GATE, service, health=h)
            gate = self._gate(new, h, service)
            if gate.ok:
                gate = self._gpu_gate(new, service, gpu_budget_gb) or gate
            r.gate = gate.to_json()
            if not gate.ok:
                raise GateFailed(gate)
            if is_proxy:
                self._point_backends(service)
            if h.get("proxied"):
                r.switch = self._switch_to(r, new, h, drain_s if start_first else 0.0)
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
            r.outcome = Outcome.REFUSED
            r.check, r.message = (exc.check, str(exc)) if isinstance(exc, StepFailed) else ("prepare", f"{failure_text(exc)}; nothing was stopped")
            self.j(Step.REFUSED, service, check=r.check, message=r.message)
            return r
        r.timings["pull_s"] = round(time.monotonic() - t0, 3)
        current = self._get(service)
        if current is not None and (current.labels or {}).get(contract.MANAGED) != "true":
            r.outcome, r.check = Outcome.REFUSED, "foreign-container"
            r.message = f"a container named {service!r} exists and was not started by fleetroll; remove or rename it first (nothing was stopped)"
            self.j(Step.REFUSED, service, check=r.check, message=r.message)
            return r
        pin = True
        if current is None:
            prev_tag, prev_digest = "", ""
        elif self._failed_its_gate(service, current.labels or {}):
            # What runs here never passed its gate (left by hand, or by an older fleetroll): it is no last-known-good.
            # The pin it carries forward is the one it had itself.
            pin = False
            prev_tag, prev_digest = (current.labels or {}).get(contract.PREV_TAG, ""), (current.labels or {}).get(contract.PREV_DIGEST, "")
            self.j(Step.PIN_SKIPPED, service, reason=f"the running {(current.labels or {}).get(contract.TAG)} failed its gate in rollout"
                   f" {(current.labels or {}).get(contract.ROLLOUT_ID)}; -prev stays {prev_tag or '(none)'}")
        else:
            prev_tag, prev_digest = container_args.prev_of(current.labels or {})
        labels = container_args.labels_for(spec, spec["tag"], spec["digest"], self.rid, self.args.get("phase", ""),
                                           self.args.get("operator", ""), git_sha, prev_tag, prev_digest)
        new_args = container_args.from_spec(proxy.host_spec(spec), image.id, labels)
        if self._refuse_unsafe(r, new_args):
            return r
        self._replace(r, current, new_args, spec["health"], spec["repo"], pin=pin, gpu_budget_gb=spec.get("gpu_memory_gb"),
                      order=step.get("order", "stop-first"), drain_s=float(step.get("drain_s", 0.0)),
                      is_proxy=spec.get("role") == "proxy")
        if not pin and prev_tag and r.outcome == Outcome.GATED:
            r.prev_ref, r.prev_digest = f"{spec['repo']}:{prev_tag}", prev_digest
        if r.outcome == Outcome.GATED:
            r.after_tag, r.after_digest = spec["tag"], spec["digest"]
        r.timings["total_s"] = round(time.monotonic() - t0, 3)
        return r

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
            gate = self._gate(kept, h, service)
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
            # Gone (removed by hand?): recreate it from its recorded configuration.
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
        self.j(Step.COMMITTED, r.service, tag=r.after_tag, digest=r.after_digest, container=r.new_container, gate=r.gate)

    def restart(self, step: dict) -> ServiceResult:
        """`fab restart`: the same configuration in a fresh container, gated like a swap; the old one kept until it passes."""
        spec = step["spec"]
        service = spec["name"]
        r = ServiceResult(service, "restart")
        t0 = time.monotonic()
        current = self._get(service)
        if current is None or (current.labels or {}).get(contract.MANAGED) != "true":
            r.outcome, r.check = Outcome.REFUSED, "not-running" if current is None else "foreign-container"
            r.message = (f"{service} has no container here; roll it out instead" if current is None
                         else f"{service!r} was not started by fleetroll; not restarting it")
            self.j(Step.REFUSED, service, check=r.check, message=r.message)
            return r
        labels = current.labels or {}
        r.before_tag, r.before_digest = labels.get(contract.TAG, ""), labels.get(contract.DIGEST, "")
        r.tried_tag, r.tried_digest = r.before_tag, r.before_digest
        new_args = {**container_args.from_inspect(current.attrs), "name": service}
        if self._refuse_unsafe(r, new_args):
            return r
        self._replace(r, current, new_args, container_args.health_of(labels, spec["health"]), spec["repo"], pin=False,
                      order=step.get("order", "stop-first"), drain_s=float(step.get("drain_s", 0.0)))
        if r.outcome == Outcome.GATED:
            r.after_tag, r.after_digest = r.before_tag, r.before_digest
        r.timings["total_s"] = round(time.monotonic() - t0, 3)
        return r

    # --- revert a committed service (phase-wide revert, fab rollback) ------------------

    def revert_committed(self, step: dict) -> ServiceResult:
        """Send a service back to the container configuration it had before `expect_rollout_id`."""
        spec = step["spec"]
        service = spec["name"]
        r = ServiceResult(service, "revert", check="phase-revert" if step.get("phase_revert") else "rollback",
                          message=self.args.get("reason", "rollback requested"))
        t0 = time.monotonic()
        try:
            current = self._get(service)
            labels = (current.labels or {}) if current is not None else {}
            r.before_tag, r.before_digest = labels.get(contract.TAG, ""), labels.get(contract.DIGEST, "")
            expect = step.get("expect_rollout_id")
            if current is None and not step.get("to_tag"):
                # Removed by hand: go back from the release this host last committed, by its journal.
                expect = expect or last_committed_rollout(service)
                if not expect:
                    r.outcome, r.message = Outcome.SKIPPED, (f"{service} is not running here and this host's journal has no"
                                                             " committed release of it to go back from; nothing to revert")
                    self.j(Step.SKIPPED, service, message=r.message)
                    return r
            if current is not None and expect and labels.get(contract.ROLLOUT_ID) != expect:
                r.outcome, r.check = Outcome.REFUSED, "not-this-rollout"
                r.message = (f"{service} runs the container of rollout {labels.get(contract.ROLLOUT_ID) or '(unknown)'},"
                             f" not of {expect}; not reverting someone else's release")
                self.j(Step.REFUSED, service, check=r.check, message=r.message)
                return r
            if step.get("to_tag") and step["to_tag"] == labels.get(contract.TAG):
                r.outcome, r.message = Outcome.SKIPPED, f"{service} already runs {step['to_tag']}; nothing to do"
                self.j(Step.SKIPPED, service, message=r.message)
                return r
            if step.get("to_tag"):
                from . import versions

                old_cfg, why = versions.find_config(service, step["to_tag"])
                if not old_cfg:
                    r.outcome, r.check, r.message = Outcome.REFUSED, "no-such-version", f"{why}; nothing was changed"
                    self.j(Step.REFUSED, service, check=r.check, message=r.message)
                    return r
            else:
                old_cfg = recorded_config(expect, service) if expect else {}
            if not old_cfg:
                if current is not None and step.get("remove_if_no_prev") and not labels.get(contract.PREV_TAG):
                    self._remove(current, service)
                    r.outcome, r.message = Outcome.REMOVED, f"{service} was new in this rollout; removed it"
                    self.j(Step.REMOVED, service, message=r.message)
                    return r
                r.outcome, r.check = Outcome.REFUSED, "no-recorded-config"
                r.message = (f"this host's journal has no recorded configuration of {service} from before rollout"
                             f" {labels.get(contract.ROLLOUT_ID) or '(unknown)'}; nothing was changed — roll out the earlier"
                             " release by tag instead")
                self.j(Step.REFUSED, service, check=r.check, message=r.message)
                return r
            old_labels = old_cfg.get("labels") or {}
            r.prev_ref = f"{spec['repo']}:{old_labels.get(contract.TAG, 'unknown')}-prev"
            r.prev_digest = old_labels.get(contract.DIGEST, "")
            try:
                image = self._image_for(old_cfg, r.prev_ref)
            except docker_errors().ImageNotFound:
                r.outcome, r.check = Outcome.REFUSED, "image-gone"
                r.message = (f"the image of {service} {old_labels.get(contract.TAG, '')} ({r.prev_digest}) is no longer on this"
                             " host (pruned?); nothing was changed — roll out that release by tag instead")
                self.j(Step.REFUSED, service, check=r.check, message=r.message)
                return r
            new_args = {**old_cfg, "name": service, "image": image}
            r.tried_tag, r.tried_digest = old_labels.get(contract.TAG, ""), r.prev_digest
            if self._refuse_unsafe(r, new_args):
                return r
            target = ServiceResult(service, "revert")
            self._replace(target, current, new_args, container_args.health_of(old_labels, spec["health"]), spec["repo"], pin=False,
                          order=step.get("order", "stop-first"), drain_s=float(step.get("drain_s", 0.0)))
        except Exception as exc:  # noqa: BLE001 - before anything changed (image lookup, inspect)
            r.outcome, r.check = Outcome.REVERT_FAILED, "revert"
            r.message = f"could not revert {service}: {failure_text(exc)}; nothing was changed"
            self.j(Step.REVERT_FAILED, service, reason=r.message)
            return r
        r.gate, r.details, r.timings = target.gate, target.details, target.timings
        r.old_container, r.new_container, r.kept_name = target.old_container, target.new_container, target.kept_name
        if target.outcome == Outcome.GATED:
            self.commit(target)  # the recreated old config stays; the set-aside release goes
            r.outcome, r.revert_gate = Outcome.REVERTED, target.gate
            r.after_tag, r.after_digest = old_labels.get(contract.TAG, ""), r.prev_digest
            self.j(Step.REVERTED, service, tag=r.after_tag, digest=r.after_digest, gate=r.revert_gate)
        else:
            # The old configuration failed its gate; `target` restored what ran before the revert.
            r.outcome = Outcome.REVERT_FAILED
            r.message = (f"the recorded old configuration failed: {target.message}; "
                         + ("the release it was to replace is back and healthy" if target.outcome == Outcome.REVERTED
                            else "and the release could not be brought back either"))
            r.revert_gate = target.revert_gate
            r.after_tag, r.after_digest = target.after_tag, target.after_digest
        r.timings["total_s"] = round(time.monotonic() - t0, 3)
        return r

    def _image_for(self, cfg: dict, prev_ref: str) -> str:
        """The old container's exact image (by id); -prev pins it, so it is normally still here."""
        import docker.errors

        try:
            return self.client.images.get(cfg["image"]).id
        except docker.errors.ImageNotFound:
            return self.client.images.get(prev_ref).id

    # --- the whole host -----------------------------------------------------------------

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
        # Only a release that failed says anything about its tag; a failed restart does not.
        mine = [r for r in self.results if r.action in ("create", "replace")
                and r.outcome in (Outcome.REVERTED, Outcome.REMOVED, Outcome.REVERT_FAILED) and r.check != "phase-revert"]
        failed = {r.service: tags.get(r.service, "") for r in mine if r.at_fault}
        try:
            if failed:
                what = ", ".join(f"{s}:{t}" for s, t in sorted(failed.items()))
                pairs = {r.service: {"tag": r.tried_tag, "digest": r.tried_digest, "config": r.tried_config} for r in mine if r.at_fault}
                freeze.write(phase, f"automatic revert of rollout {self.rid}: {what} failed with its configuration",
                             self.args.get("operator", "unknown"), auto=True, releases=failed, rollout_id=self.rid, failed=pairs)
                self.j(Step.FROZEN, phase=phase, releases=failed, failed=pairs)
                for r in mine:
                    r.frozen = r.at_fault
            elif any(r.action in ("create", "replace") for r in self.results) and all(
                    r.outcome in (Outcome.COMMITTED, Outcome.NOOP) for r in self.results):
                if freeze.thaw(phase, self.args.get("operator", "unknown"), f"rollout {self.rid} committed", only_auto=True):
                    self.j(Step.THAWED, phase=phase)
        except OSError as exc:  # the transaction's outcome stands; the freeze is a guard, not part of it
            self.j(Step.FREEZE_FAILED, error=str(exc))

    def _run_swaps(self, steps: list[dict], policy: str) -> None:
        failed = False
        for step in steps:
            action, name = step["action"], step["spec"]["name"]
            if failed and policy != "revert-service":
                self.results.append(ServiceResult(name, action, outcome=Outcome.SKIPPED, message="not started: an earlier service failed"))
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
        outcomes = [r.outcome for r in self.results]
        ok = not any(o in FAILED for o in outcomes)
        if any(r.action == "revert" for r in self.results):
            ok = all(o in (Outcome.REVERTED, Outcome.REMOVED, Outcome.SKIPPED, Outcome.NOOP) for o in outcomes)
        state = HostState.NEEDS_OPERATOR if any(o in NEEDS for o in outcomes) else HostState.GOOD
        return {"ok": ok, "state": state, "elapsed_s": round(elapsed, 3), "services": [r.to_json() for r in self.results]}
