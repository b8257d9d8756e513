"""After Swarm rolled a release back: freeze the phase on those hosts against it, as the SSH push does.

With SSH push the host transaction that reverted a release writes an automatic freeze of the phase
(agent/freeze.py), keyed by what failed: the image digest and the configuration fingerprint it was
deployed with; the next rollout of that same pair is refused by playbooks/freezes.blocking until an
operator thaws it, and a clean commit lifts it. A swarm rollout has no host transaction, so the
controller asks the same record of each host's agent (its `freeze` op, over the same connections),
keyed the same way, once it has *seen* the failure: a (host, service) judged reverted by the observed
rollback (check `swarm-update`), and a new service fleetroll removed after a task of it was seen to fail
on that host (check `swarm-create`, as the SSH push freezes a create it removed). An outcome not
observed (needs-operator, a lost manager) freezes nothing it did not see; nor does a host where the
new service was removed only because it failed elsewhere, or where its task was rejected or never
placed (a port in use, no node fits): that says nothing about the release itself.

`decide` and `lifts` are pure; `record` and `lift` make the agent calls and say what they did. They read the
per-host results the rollout hands to ending.conclude, and mark there what was frozen.
"""

from __future__ import annotations

from typing import Any

from agent.freeze import config_fingerprint
from agent.vocabulary import Outcome

from .. import freezes, transport
from ..inventory import Inventory
from ..plan import Plan

ROLLED_BACK = "swarm-update"  # judge._reverted's check: Swarm's rollback seen, the old task seen running on that host
REMOVED_NEW = "swarm-create"  # deploy._remove_failed_creations' check: a new service that failed, seen gone
# A task that ran and failed says "task: non-zero exit (N)" (its process exited, or Swarm killed it as unhealthy:
# "... (137): dockerexec: unhealthy container"). One that never got to run its process fails too, with words that
# point away from the release, as agent/motion.points_away reads a container's: a port held by something else
# ("starting container failed: ... port is already allocated"), a node going away, a container removed under it.
RAN_AND_FAILED = "non-zero exit"
NOT_ITS_FAULT = ("starting container failed", "no such container", "marked for removal", "node is down",
                 "no suitable node", "port is already allocated", "address already in use", "port already in use")
FINE = (Outcome.COMMITTED, Outcome.NOOP)
Results = dict[str, transport.CallResult]  # what the swarm rollout hands to ending.conclude: per host, its services' ends


def _ends(results: Results) -> list[tuple[str, dict[str, Any]]]:
    return [(h, s) for h, r in sorted(results.items()) for s in ((r.answer or {}).get("data") or {}).get("services") or []]


def failed_here(d: dict[str, Any]) -> bool:
    """Did this end see the release itself fail on this host (pure)?

    Swarm's rollback seen there; or a new service removed after a task of the new digest *ran and
    failed* on this host (state `failed` with "non-zero exit": its process exited, or it was killed
    as unhealthy), with no word in its error pointing away from the release.
    """
    if d.get("outcome") == Outcome.REVERTED and d.get("check") == ROLLED_BACK:
        return True
    ev = d.get("details") or {}
    text = f"{ev.get('error') or ''} {d.get('message') or ''}".lower()
    return (d.get("outcome") == Outcome.REMOVED and d.get("check") == REMOVED_NEW and ev.get("status") == "failed"
            and RAN_AND_FAILED in text and not any(w in text for w in NOT_ITS_FAULT))


def decide(results: Results, plan: Plan) -> dict[str, dict[str, dict[str, str]]]:
    """{host: {service: {tag, digest, config}}} to freeze: each (host, service) where `failed_here`. Pure.

    The configuration fingerprint is the one freezes.repeats computes for the next plan, from the same
    plan step's spec; a (host, service) without a plan step (none is expected) cannot be keyed and is skipped.
    """
    specs = {(s.host, s.service): s.spec for s in plan.steps}
    out: dict[str, dict[str, dict[str, str]]] = {}
    for h, d in _ends(results):
        spec = specs.get((h, d.get("service")))
        if not failed_here(d) or spec is None or not d.get("tried_digest"):
            continue
        out.setdefault(h, {})[d["service"]] = {"tag": d.get("tried_tag", ""), "digest": d["tried_digest"],
                                               "config": config_fingerprint(spec)}
    return out


def how(results: Results, host: str) -> str:
    """What was seen on `host`, in words for the freeze's reason and the report's line (pure)."""
    checks = {d.get("check") for h, d in _ends(results) if h == host and failed_here(d)}
    return " and ".join(w for c, w in ((ROLLED_BACK, "Swarm's rollback"),
                                       (REMOVED_NEW, "the removal of a new service that failed")) if c in checks)


def _request(phase: str, rollout_id: str, who: str, failed: dict[str, dict[str, str]], seen: str) -> dict[str, Any]:
    what = ", ".join(f"{s}:{v['tag']}" for s, v in sorted(failed.items()))
    return {"phase": phase, "operator": who, "auto": True, "failed": failed, "rollout_id": rollout_id,
            "releases": {s: v["tag"] for s, v in failed.items()},
            "reason": f"rollout {rollout_id} ended in {seen}: {what} failed with its configuration"}


def record(inv: Inventory, plan: Plan, results: Results, pool: transport.Pool | None = None) -> list[str]:
    """Freeze the phase on each host where a release was seen to fail (`decide`); mark those outcomes `frozen`; the report's lines.

    A host whose agent does not record it keeps its outcome (reverted stands: the freeze is a guard, not
    part of it), and the line says the same release is not refused there and how to stop it by hand.
    """
    failed = decide(results, plan)
    if not failed:
        return []
    phase, rid = plan.phase, plan.rollout_id
    done, lines = freezes.ask_hosts(inv, phase, failed, lambda h: _request(phase, rid, plan.operator, failed[h], how(results, h)),
                                    lambda h: f"after {how(results, h)} of rollout {rid}", pool)
    ends = {(h, d.get("service")): d for h, d in _ends(results)}
    for h in done:
        for svc, v in failed[h].items():
            ends[(h, svc)].update(frozen=True, tried_config=v["config"])
    return lines


def lifts(facts: dict[str, dict[str, Any]], plan: Plan, results: Results) -> list[str]:
    """Hosts whose automatic freeze of the phase a clean swarm rollout lifts, as the SSH push's commit does. Pure.

    A host qualifies when its preflight facts showed an automatic freeze of this phase, and every
    (host, service) there ended committed or noop, observed, at least one committed.
    """
    ends: dict[str, list[dict]] = {}
    for h, d in _ends(results):
        ends.setdefault(h, []).append(d)
    frozen = {h for h, fa in facts.items() for fr in (fa or {}).get("freezes") or []
              if fr.get("phase") == plan.phase and fr.get("auto")}
    return sorted(h for h, ds in ends.items() if h in frozen and all(d.get("outcome") in FINE for d in ds)
                  and any(d.get("outcome") == Outcome.COMMITTED for d in ds))


def lift(inv: Inventory, plan: Plan, results: Results, facts: dict[str, dict[str, Any]],
         pool: transport.Pool | None = None) -> list[str]:
    """Thaw the automatic freeze of the phase on each host `lifts` names (a manual one stays); the report's lines."""
    hosts = lifts(facts, plan, results)
    if not hosts:
        return []
    args = {"phase": plan.phase, "operator": plan.operator, "thaw": True, "only_auto": True,
            "reason": f"rollout {plan.rollout_id} committed"}
    answers = transport.on_hosts(inv, hosts, "freeze", lambda h: args, timeout=30, pool=pool)
    lines = []
    for h in hosts:
        r = answers[h]
        if r.answer is None or not r.ok:
            lines.append(f"{h}: the automatic freeze of phase {plan.phase} was not lifted ({r.error or (r.answer or {}).get('msg')});"
                         f" it refuses only the release that failed; fab thaw --phase {plan.phase} --reason '...' lifts it")
        elif (r.answer.get("data") or {}).get("removed"):
            lines.append(f"{h}: the automatic freeze of phase {plan.phase} lifted: rollout {plan.rollout_id} committed")
    return lines
