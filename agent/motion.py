"""Docker containers in motion: making one hold still, removing or renaming it whatever state it is in, reading what it says.

Docker restarts a crash-looping container under the transaction's feet (its sandbox torn
down and set up again): a rename, stop or remove then races with it. Everything here is
about that: which answers are transient, how a container is made still, and what the
evidence of a failed container is, read after the fact.
"""

from __future__ import annotations

import re
import time
from typing import Any

from . import contract
from .docker_errors import APIError, DaemonUnreachable, NotFound
from .vocabulary import Step

CREATED_BY = "io.fleetroll.created-by"  # the transaction that created a container (recovery removes only its own)


class RenameRefused(APIError):
    """Docker refused to rename a container (a name taken, an endpoint it cannot move): about the containers, not a release."""


class StepFailed(Exception):
    def __init__(self, check: str, message: str):
        self.check = check
        super().__init__(message)


def daemon_retry(fn, budget_s: float = 60.0):
    """Run fn, retrying while the Docker daemon cannot be reached at all (restarting, socket gone).

    Only a connection failure is retried: an API error (a name conflict, a port in use)
    is an answer, and repeating the call would not change it.
    """
    from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

    for attempt in Retrying(stop=stop_after_delay(budget_s), wait=wait_fixed(1.0), reraise=True,
                            retry=retry_if_exception_type(DaemonUnreachable)):
        with attempt:
            return fn()
    return None  # pragma: no cover - Retrying either returns or raises


# Docker's answers while it restarts a container under our feet: its sandbox is being torn down or set
# up, a restart is in flight, or a removal is already under way; or (an update) its process has just
# died and Docker has not yet noticed: dockerd still thinks it runs and asks runc to update it, which
# answers "container not running". Each passes within seconds.
TRANSIENT = ("sandbox", "is restarting", "conflict", "in progress", "is not running", "cannot kill container", "is paused",
             "cannot update a stopped container", "container not running")
SETTLE_S = 30.0  # how long a container may take to hold still once its restart policy is off


def transient(exc: BaseException) -> bool:
    """A Docker error that says "not now" about a container in motion, not "no"; never evidence of health."""
    if not isinstance(exc, APIError):
        return False
    text = str(getattr(exc, "explanation", None) or exc).lower()
    if "no such container" in text or "is already in use" in text:
        return False  # gone, or a name another container holds: "no" (a 409 like "is restarting", but it stays so)
    return any(t in text for t in TRANSIENT)


def settled_retry(fn, budget_s: float = SETTLE_S):
    """Run fn, retrying Docker's transient answers about a container in motion (and an unreachable daemon)."""
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

    def retryable(exc: BaseException) -> bool:
        return transient(exc) or isinstance(exc, DaemonUnreachable)

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

    plain = {k: v for k, v in env.items() if not secrets.is_ref(v)}  # a report key is derived from these
    values: list[str] = []
    for k, v in env.items():
        if not secrets.is_ref(v):
            continue
        try:  # one at a time: a secret unreadable now hides nothing else's value
            values.append(secrets.resolve({**plain, k: v})[k])
        except Exception:  # noqa: BLE001 - unreadable now: nothing of it can be in the logs we are about to read
            continue
    return tuple(v for v in values if len(v) >= 4)


# Docker could not bind a published port (another process holds it, or the host has no such address): the host's state,
# found before the new container ran; the release may well pass once the port is free (found by an exploratory run:
# such a failure froze the proxy's phase, which the contract keeps for the release's own failures).
PORT_HELD = ("address already in use", "port is already allocated", "cannot assign requested address")


def points_away(exc: BaseException, message: str, evidence: dict) -> bool:
    """Does the evidence say the failure was not the release's (pure)? Then it is reverted but freezes nothing.

    Its container removed or killed by someone else mid-gate (`dead or marked for removal`),
    the Docker daemon gone, Docker refusing a rename, or a published port it could not bind
    (before the new container ran at all): the same release with the same configuration may well pass.
    """
    if isinstance(exc, (DaemonUnreachable, RenameRefused)):  # a rename refused comes before the new container runs
        return True
    text = f"{message} {evidence.get('error', '')} {evidence.get('error_text', '')}".lower()
    return evidence.get("status") in (GONE, "removing", "dead") or any(
        m in text for m in (GONE, "marked for removal", "no such container", "did not answer", *PORT_HELD))


def failure_text(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return f"{type(exc).__name__}: {str(text)[:300]}"


class MotionOps:
    """The container operations of a transaction that must survive a container in motion (mixed into Transaction)."""

    client: Any
    rid: str

    def _get(self, ref: str):
        try:
            return self.client.containers.get(ref)
        except NotFound:
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
        try:
            self._settle(c, service, stop=True, timeout=2)
            settled_retry(lambda: c.remove(force=True))
        except NotFound:
            pass
        from . import secret_files

        left = secret_files.release(c.attrs)  # its secret files go with it (only the directory the agent made for it)
        if left:
            self.j(Step.SECRET_FILES_LEFT, service, container=c.id, left=left)

    def _rename(self, c, name: str) -> None:
        try:
            settled_retry(lambda: c.rename(name))
        except NotFound:
            raise
        except APIError as exc:
            raise RenameRefused(f"Docker refused to rename {c.id[:12]} to {name}: {exc.explanation}", exc.status) from exc

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
        except NotFound:
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
