"""The one ending of rollout, rollback and restart: observed per-service outcomes -> report, state, exit code, pins, ledger.

Each workflow used to end with its own hand-written rules; the rollback's derived its state
by a rule of its own and could say REVERTED when nothing happened. Now each hands what its
hosts answered to `conclude()`, and the words come from agent/vocabulary.py. Only what a
host reported counts: a host that did not answer, or a service without an outcome, is
`needs-operator` with the evidence, never `reverted`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from agent.vocabulary import FAILED, NEEDS, REPORTED, Outcome, State, Step, exit_code, rollback_state, state_of

from . import ledger, transport
from . import timings as host_times
from .plan import BLOCKED, NOOP, Plan
from .runner import PreflightReport

__all__ = ["Interrupted", "RolloutReport", "conclude", "derive_state", "describe_failure", "exit_code", "host_outcomes",
           "report_state", "services_of"]


class Interrupted(Exception):
    """The operator pressed Ctrl-C after hosts were asked to change; they finish on their own."""

    def __init__(self, rollout_id: str, phase: str, hosts: list[str], policy: str = ""):
        self.rollout_id, self.phase, self.hosts = rollout_id, phase, hosts
        # Found by exploratory runs: after Ctrl-C a host that had committed kept the new release while another failed and
        # went back; nothing said that the phase-wide revert is this controller's and would not happen.
        split = (f" The phase-wide revert (--on-failure {policy}) is this controller's and will not run: a host that"
                 f" commits keeps the new release even if another fails; fab status shows where each stands, and"
                 f" fab rollback -p {phase} -H HOSTS sends committed ones back." if policy == "revert-phase" and len(hosts) > 1 else "")
        super().__init__(f"interrupted: rollout {rollout_id} of {phase} had these hosts in its plan:"
                         f" {', '.join(hosts) or '(no host yet)'}; each host asked to change finishes its transaction on its"
                         " own (commit, or back to its last-known-good); a host a later batch had not reached changes"
                         f" nothing.{split} Re-attach with: fab status --follow")


def interrupted_all(during: BaseException, phase: str, done: list[RolloutReport], not_started: list[str]) -> Interrupted:
    """Ctrl-C during `fab rollout --all`: what the interrupted phase's hosts do, what earlier phases ended in, what never
    started. The earlier phases' states are their own reports' (observed); the interrupted one's is not known here."""
    if isinstance(during, Interrupted):
        exc, words = during, str(during)
    else:  # before this phase asked any host to change anything
        exc = Interrupted("", phase, [])
        words = f"interrupted before phase {phase} asked any host to change anything"
    before = ", ".join(f"{r.phase} {r.state}" for r in done)
    words += f". Before it, this run's phases ended: {before}" if before else ""
    words += f". Not started: {', '.join(not_started)}" if not_started else ""
    exc.args = (words,)
    return exc


@dataclass
class RolloutReport:
    rollout_id: str
    phase: str
    ok: bool
    state: str  # noop | committed | reverted | refused | failed | needs-operator | unknown | dry-run
    plan: Plan | None = None
    preflight: PreflightReport | None = None
    hosts: dict[str, dict] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    pins: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0
    agent_calls: int = 0
    frozen: bool = False  # a dry run found a freeze, or a host mid-transaction, that would refuse the real rollout (exit 3)
    timings: dict[str, host_times.HostTimes] = field(default_factory=dict)  # per host, every call of the command (transport.Pool)

    def to_json(self) -> dict:
        return {
            "rollout_id": self.rollout_id,
            "phase": self.phase,
            "ok": self.ok,
            "state": self.state,
            "elapsed_s": round(self.elapsed_s, 3),
            "agent_calls": self.agent_calls,
            "plan": self.plan.to_json(ledger.redaction_key()) if self.plan else None,
            "preflight": self.preflight.to_json() if self.preflight else None,
            "hosts": self.hosts,
            "pins": self.pins,
            "messages": self.messages,
            "timings": host_times.to_json(self.timings),
        }


def report_state(r: RolloutReport) -> str:
    """A dry run that plans changes is its own state for the exit code; one a freeze would refuse is `refused` (3)."""
    if r.state == State.DRY_RUN and r.frozen:
        return State.REFUSED
    return State.CHANGES_PLANNED if r.state == State.DRY_RUN and r.plan is not None and r.plan.changes else r.state


def services_of(res: transport.CallResult) -> list[dict]:
    return ((res.answer or {}).get("data") or {}).get("services") or []


def host_outcomes(results: dict[str, transport.CallResult]) -> dict[str, dict]:
    """What each host reported, in the shape derive_state() judges."""
    return {h: {"answered": r.answer is not None, "ok": r.ok, "error": r.error, "services": services_of(r),
                "locked": bool(((r.answer or {}).get("data") or {}).get("locked"))} for h, r in results.items()}


def derive_state(hosts: dict[str, dict], kind: str = "rollout") -> tuple[str, list[str]]:
    """The state from per-service outcomes the hosts reported, and what needs an operator. Pure.

    Only what was observed counts: a host that did not answer, answered without per-service
    outcomes, or reported a service whose revert failed makes the state `needs-operator`,
    never `reverted`.
    """
    needs: list[str] = []
    outcomes: list[str] = []
    for h, r in hosts.items():
        if not r["answered"]:
            needs.append(f"{h}: no outcome observed ({r.get('error') or 'no answer'}); run: fab status --hosts {h}")
            continue
        if r.get("locked"):
            outcomes.append(Outcome.REFUSED)
            continue
        if not r["services"]:
            if not r["ok"]:
                needs.append(f"{h}: the host reported a failure without per-service outcomes: {r.get('error')}")
            continue
        mine = []
        for s in r["services"]:
            o = s.get("outcome", "")
            if o in NEEDS or o not in REPORTED:
                needs.append(f"{h} {s.get('service')}: {o or 'no outcome'}: "
                             f"{s.get('message') or (s.get('revert_gate') or {}).get('reason', '')}")
            mine.append(o)
        if not r["ok"] and not any(o in FAILED for o in mine):
            mine.append(Outcome.REFUSED)  # failed before changing anything (an interrupted transaction recovered early)
        outcomes += mine
    state = state_of(outcomes, unobserved=bool(needs))
    return str(rollback_state(state, outcomes) if kind == "rollback" else state), needs


def _ref(tag: str, digest: str) -> str:
    return f"{tag or '(none)'}@{digest[7:19] or '?'}" if digest else (tag or "(none)")


def _now_line(s: dict) -> str:
    """What runs now, and how we know: only a gate made after the fact, on that host, proves it healthy."""
    o = s.get("outcome")
    rg = (s.get("revert_gate") or {})
    proof = rg.get("last", {}).get("reason") or rg.get("reason") or ""
    if o == Outcome.REVERTED and s.get("engine") == "swarm":  # Swarm's rollback re-runs the previous spec in new tasks
        return (f"  now:   {_ref(s.get('after_tag', ''), s.get('after_digest', ''))} — the previous release, run again by Swarm's"
                " rollback in new tasks, seen running after it" + (f" ({proof})" if proof else ""))
    if o == Outcome.REVERTED:
        pin = f" (pinned as {s['prev_ref']})" if s.get("prev_ref") else ""
        how = (f"the old container itself{pin}, with its own configuration" if s.get("action") != "revert"
               else "its recorded configuration")
        if s.get("recreated"):  # the one set aside was gone (removed mid-transaction): a new one, from what was recorded
            how = f"a new container{pin} from the old one's recorded configuration (the container set aside was gone)"
        return f"  now:   {_ref(s.get('after_tag', ''), s.get('after_digest', ''))} — {how}, proven healthy after the revert" + (
            f" ({proof})" if proof else "")
    if o == Outcome.REMOVED:
        return ("  now:   nothing — it had no earlier version here; the new "
                + ("swarm service was removed" if s.get("engine") == "swarm" else "container was removed"))
    if o == Outcome.REFUSED:
        return f"  now:   {_ref(s.get('before_tag', ''), s.get('before_digest', ''))} — untouched: nothing was stopped"
    if o == Outcome.REVERT_FAILED and rg.get("ok") and s.get("after_tag"):
        # A rollback whose target failed its gate: the release it was to replace came back and passed a gate again.
        return (f"  now:   {_ref(s.get('after_tag', ''), s.get('after_digest', ''))} — the release the rollback was to replace,"
                f" back and proven healthy after the attempt ({proof or 'gate passed'}); the rollback itself did not happen")
    if o == Outcome.REVERT_FAILED:
        return (f"  now:   NOTHING PROVEN HEALTHY — {rg.get('reason') or s.get('message')}; the service needs an operator now")
    return f"  now:   not observed ({s.get('message') or 'no outcome'}); the service needs an operator now"


def describe_failure(host: str, s: dict, next_cmd: str, phase: str = "") -> str:
    """One failed service, as an operator can act on it: what failed, the evidence, what runs now, what next."""
    ev = s.get("details") or {}
    parts = [f"FAILED {host} {s['service']}: {s.get('check') or 'check'}: {s.get('message')}"]
    if s.get("tried_tag") or s.get("tried_digest"):
        parts.append(f"  tried: {_ref(s.get('tried_tag', ''), s.get('tried_digest', ''))}"
                     + (f" (configuration {s['tried_config']})" if s.get("tried_config") else ""))
    parts.append(_now_line(s))
    if ev.get("status"):
        seen = [str(ev["status"])]
        if ev.get("exit_code") is not None:
            seen.append(f"exit code {ev['exit_code']}")
        seen.append(f"{ev.get('restarts', 0)} restarts")
        if ev.get("oom_killed"):
            seen.append("OOM-KILLED (it ran out of memory)")
        what = (f"swarm task {ev['task']}, as a manager saw it last" if s.get("engine") == "swarm" and ev.get("task")
                else "container, inspected after the failure")
        said = [f"({ev['message']})"] if ev.get("message") and ev.get("message") != ev.get("status") else []
        said += [f"error: {ev['error']}"] if s.get("engine") == "swarm" and ev.get("error") else []
        parts.append(f"  {what}: " + ", ".join(seen) + "".join(f" {x}" for x in said))
    elif ev.get("error"):
        parts.append(f"  container: {ev['error']}")
    last = (s.get("gate") or {}).get("last") or {}
    if last.get("status") is not None or last.get("body"):
        parts.append(f"  last /health answer: HTTP {last.get('status')} body {last.get('body')!r}")
    elif last.get("reason") and not (s.get("message") or "").endswith(last["reason"]):
        parts.append(f"  last /health probe: {last['reason']}")
    if ev.get("last_logs"):
        parts.append(f"  last {len(ev['last_logs'])} log lines of the failed container:")
        parts += [f"    | {line}" for line in ev["last_logs"]]
    sw = s.get("switch") or {}
    if s.get("outcome") == Outcome.REVERTED and s.get("order") == "start-first" and sw.get("back") and not sw.get("switched"):
        parts.append("  start-first: the proxy was never switched; the old container served throughout")
    elif s.get("outcome") == Outcome.REVERTED and sw.get("back") and sw.get("switched"):
        parts.append("  the proxy was switched back to the old container before the new one was removed")
    if s.get("frozen"):
        parts.append(f"  frozen: phase {phase} on {host} now refuses this image with this configuration; a new tag or a fixed"
                     f" configuration goes ahead (or: fab thaw --phase {phase} --reason '...')")
    elif s.get("at_fault") is False:
        parts.append("  not frozen: the evidence points away from the release (its container was removed or the daemon"
                     " went away mid-gate, or Docker refused a step before the new container ran); the same release may be"
                     " rolled out again")
    parts.append(f"  next: {next_cmd}")
    return "\n".join(parts)


def pins_of(all_svcs: list[tuple[str, dict]]) -> list[dict[str, Any]]:
    return [{"host": h, "service": s["service"], "prev_tag": s["prev_ref"].rsplit(":", 1)[-1], "prev_ref": s["prev_ref"],
             "prev_digest": s["prev_digest"], "running_tag": s.get("after_tag"), "running_digest": s.get("after_digest")}
            for h, s in all_svcs if s.get("prev_ref") and s.get("outcome") in (Outcome.COMMITTED, Outcome.REVERTED)]


def next_step(kind: str, host: str, s: dict, phase: str, inventory: str) -> str:
    """The command an operator runs next for this failed service."""
    svc = s["service"]
    look = f"fab logs -s {svc} -H {host}; fab details -s {svc} -H {host}"
    if s.get("outcome") in (Outcome.REVERTED, Outcome.REMOVED) and s.get("action") != "revert":
        # The failed container is gone: what it said is in this report; fab logs would show the one running now.
        details = s.get("details") or {}
        if details.get("last_logs"):
            said = "read its last log lines above (that container is gone)"
        elif s.get("engine") == "swarm":  # nobody read them here: Swarm keeps the failed task's logs (fab logs asks it)
            said = f"what its task wrote: fab logs -s {svc} -H {host}"
        else:  # only what describe_failure printed: an answer, a probe's failure, or the failure's own words
            last = (s.get("gate") or {}).get("last") or {}
            shown = ("its last /health answer is above" if last.get("status") is not None or last.get("body")
                     else "its last /health probe is above" if last.get("reason") else "what failed is said above")
            said = f"it wrote no log lines; {shown} (that container is gone)"
        look = f"{said}; fab details -s {svc} -H {host}"
    if s.get("check") == Step.RECOVERED and s.get("outcome") == Outcome.REVERTED:  # cut short (a forced unlock, a crash):
        again = {"restart": f"restart it again: fab restart -s {svc} -H {host} --inventory {inventory}",
                 "rollback": f"roll it back again: fab rollback -p {phase} -s {svc} -H {host}"
                             + (f" --to {s['tried_tag']}" if s.get("tried_tag") else "") + f" --inventory {inventory}"}
        return (f"nothing judged the {'restart' if kind == 'restart' else 'release'}: its transaction was interrupted and"
                " the host put the old one back;"  # not its fault
                f" when ready, {again.get(kind) or f'roll it out again: fab rollout --phase {phase} --inventory {inventory}'}")
    if s.get("outcome") == Outcome.REFUSED and kind == "rollback":  # nothing changed; the reason says what is missing
        return (f"nothing was changed; fab versions -s {svc} -H {host} lists what can be gone back to here; a release no"
                f" longer here goes back by rolling it out: fab rollout --phase {phase} --inventory {inventory}")
    if s.get("outcome") == Outcome.REFUSED and kind == "restart" and s.get("check") != "not-running":
        return f"nothing was changed; fix what is named above, then: fab restart -s {svc} -H {host} --inventory {inventory}"
    if s.get("outcome") in NEEDS:
        return f"{look}; fab status -H {host}; then fab rollback -p {phase} -s {svc} --to <a tag from fab versions -s {svc}>"
    if kind == "rollback":
        return f"{look}; fab versions -s {svc} (choose a version that passed its gate here), then fab rollback -p {phase} -s {svc} --to TAG"
    if kind == "restart" and s.get("check") == "not-running":  # nothing to restart: removed by hand, or never rolled out
        # Not `fab rollback` alone: with no container it goes back from the last commit here, one version *before* it.
        return (f"fab rollout --phase {phase} --inventory {inventory} starts the inventory's release again; or fab versions"
                f" -s {svc} -H {host}, then fab rollback -p {phase} -s {svc} -H {host} --to TAG recreates one that ran here")
    if kind == "restart" and s.get("outcome") == Outcome.REVERTED:
        return f"{look}; the old container serves again"
    if kind == "restart":
        return f"{look}; fab status -H {host}"
    if s.get("outcome") == Outcome.REFUSED:
        return f"fix what is named above, then: fab rollout --phase {phase} --inventory {inventory}"
    if s.get("at_fault") is False:  # not frozen: 'fix the image' would contradict the line above it (exploratory run)
        return (f"{look}; what failed points away from the release (said above): once that is dealt with, the same release"
                f" may go again: fab rollout --phase {phase} --inventory {inventory}")
    return (f"{look}; fix the image (a new tag) or its configuration in {inventory}, then:"
            f" fab rollout --phase {phase} --inventory {inventory}")


def _good_line(kind: str, h: str, s: dict) -> str | None:
    o = s.get("outcome")
    if kind == "rollback" and o == Outcome.REVERTED:
        return (f"{h} {s['service']}: now on {_ref(s.get('after_tag', ''), s.get('after_digest', ''))}, its recorded configuration,"
                f" proven healthy ({((s.get('revert_gate') or {}).get('last') or {}).get('reason') or 'gate passed'})")
    if kind == "restart" and o == Outcome.COMMITTED:
        note = f"; note: {s['message']}" if s.get("message") else ""
        return f"{h} {s['service']}: restarted in a fresh container, proven healthy ({s.get('after_tag')}){note}"
    if o in (Outcome.SKIPPED, Outcome.NOOP) and kind != "rollout":
        return f"{h} {s['service']}: {o}: {s.get('message')}"
    return None


def is_cause(kind: str, s: dict) -> bool:
    """A service that failed on its own (not one sent back because another failed, not a revert that did its job)."""
    if s.get("outcome") not in FAILED or s.get("check") == "phase-revert":
        return False
    return not (kind == "rollout" and s.get("action") == "revert")


def in_flight(plan: Plan | None, host: str, kind: str) -> str:
    """What a host without an outcome was asked to do, service by service, with the exact tags (pure).

    Found by an exploratory run: a rollout whose link to pc2 dropped and stayed down past the re-attach said only
    "FAILED pc2: SSH link lost ..." and "no outcome observed": not which service was mid-swap, nor between which tags.
    """
    steps = [s for s in (plan.for_host(host) if plan else []) if s.action not in (NOOP, BLOCKED)]
    if not steps:
        return ""
    def asked(s) -> str:
        if kind != "rollout":  # a rollback's or restart's step names no target tag: the host finds it (its reason says)
            return f"{s.service} ({kind} of {s.current_tag or 'what runs'}: {s.reason or 'as planned'})"
        digest = s.new_digest.removeprefix("sha256:")[:12]
        return f"{s.service} {s.current_tag or '(none)'} -> {s.new_tag}{'@' + digest if digest else ''}"

    went = ", ".join(asked(s) for s in steps)
    return (f"\n  asked of it ({kind}): {went}; not observed how it ended, so either may run now (nothing is claimed for"
            f" them); the host finishes on its own: fab status --hosts {host} and fab versions -s {steps[0].service} -H {host} say which")


def conclude(kind: str, report, results: dict[str, transport.CallResult], common: dict[str, Any], t0: float,
             inventory: str, extra_messages: list[str] | None = None) -> Any:
    """Turn what the hosts answered into the report, its state, pins and the ledger's `finished` record.

    kind: rollout | rollback | restart. The exit code follows from the state (vocabulary.EXIT_CODES).
    """
    report.hosts = {h: {"ok": r.ok, "error": r.error, "services": services_of(r), "elapsed_s": round(r.elapsed_s, 3)}
                    for h, r in results.items()}
    all_svcs = [(h, s) for h, r in results.items() for s in services_of(r)]
    report.pins = pins_of(all_svcs)
    report.state, needs = derive_state(host_outcomes(results), kind)
    report.ok = report.state in ((State.REVERTED, State.NOOP) if kind == "rollback" else (State.COMMITTED, State.NOOP))
    for h, s in all_svcs:
        line = _good_line(kind, h, s)
        if line:
            report.messages.append(line)
        elif is_cause(kind, s) or s.get("outcome") in NEEDS:
            s["next"] = next_step(kind, h, s, report.phase, inventory)
            report.messages.append(describe_failure(h, s, s["next"], report.phase))
    for h, r in results.items():
        if r.answer is None or (not r.ok and not services_of(r)):
            report.messages.append(f"FAILED {h}: {r.error}" + in_flight(report.plan, h, kind))
    report.messages += extra_messages or []
    if needs:
        report.messages.append("NEEDS AN OPERATOR:\n  " + "\n  ".join(needs))
    if report.pins:
        report.messages.append(f"pins written to {ledger.write_pins(report.rollout_id, report.pins)}")
    report.elapsed_s = time.monotonic() - t0
    unobserved = sorted(h for h, r in results.items() if r.answer is None)
    ledger.append("finished", **common, final=report.state, services=[{"host": h, **s} for h, s in all_svcs],
                  **({"unobserved": unobserved} if unobserved and report.state == State.NEEDS_OPERATOR else {}),
                  needs_operator=needs, pins=report.pins, messages=report.messages, elapsed_s=round(report.elapsed_s, 3),
                  **({"timings": host_times.to_json(report.timings)} if report.timings else {}))
    return report
