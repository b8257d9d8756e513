"""Which host-side phase freezes stop a planned rollout (pure), and asking hosts to record one (the hosts keep them, agent/freeze.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from agent.freeze import blocks_of, config_fingerprint

from . import transport
from .plan import Plan, Step
from .remote import clean_text


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts or 0))


def of_phase(facts: dict[str, dict[str, Any]], phase: str) -> list[tuple[str, dict]]:
    """(host, freeze) for every freeze of `phase` the hosts reported, in host order."""
    return [(h, f) for h in sorted(facts) for f in (facts[h] or {}).get("freezes") or [] if f.get("phase") == phase]


def repeats(f: dict[str, Any], st: Step) -> bool:
    """Would this planned step deploy again exactly what an automatic freeze recorded as failing (pure)?

    Exactly: the same image digest with the same configuration fingerprint. A freeze written
    before fingerprints were recorded names tags only, and blocks by tag.
    """
    blocks = blocks_of(f, st.service)
    if blocks:
        config = config_fingerprint(st.spec)
        return any(b.get("digest") == st.new_digest and b.get("config") == config for b in blocks)
    return (f.get("releases") or {}).get(st.service) == st.new_tag and bool(st.new_tag)


def elsewhere(facts: dict[str, dict[str, Any]], phase: str, phases: list[str] | None) -> list[tuple[str, dict]]:
    """(host, freeze) kept under another phase's name that still holds this plan (pure).

    Freezes are kept by phase name, so renaming a phase in phases.yml, or moving a service to another
    phase, walked past them. An automatic freeze is about its services' releases, whatever phase they
    are in now: every one counts (blocking() keeps those that repeat the failure). A manual freeze
    under a name phases.yml no longer has cannot be told apart from a renamed phase's: it holds
    every phase on its host until thawed by that name (`fab thaw` takes it)."""
    gone = None if phases is None else set(phases)
    return [(h, f) for h in sorted(facts) for f in (facts[h] or {}).get("freezes") or []
            if f.get("phase") != phase and (f.get("auto") or (gone is not None and f.get("phase") not in gone))]


def blocking(plan: Plan, facts: dict[str, dict[str, Any]], inventory: str, phases: list[str] | None = None) -> list[str]:
    """One message per freeze that stops this plan; empty when nothing does.

    A manual freeze stops every rollout of its phase. An automatic one (left by a revert)
    stops only a plan that would deploy the same image with the same configuration that failed.
    `phases`: the inventory's phase names (a freeze under a name it no longer has still holds; elsewhere()).
    """
    out = []
    thaw = f"fab thaw --phase {plan.phase} --reason '...' --inventory {inventory}"
    for host, f in elsewhere(facts, plan.phase, phases):
        other = f"fab thaw --phase {f.get('phase')} --reason '...' --inventory {inventory}"
        if not f.get("auto"):
            out.append(f"{host} is frozen under phase {f.get('phase')!r}, which phases.yml no longer names (renamed?), by"
                       f" {f.get('by')} since {when(f.get('ts', 0))}: {f.get('reason')!r}; it holds every rollout on"
                       f" {host}; nothing was changed. When it may go ahead: {other}")
            continue
        again = sorted((st for st in plan.changes if st.host == host and repeats(f, st)), key=lambda st: st.service)
        if again:
            what = ", ".join(f"{st.service}:{st.new_tag}@{st.new_digest[7:19]}" for st in again)
            out.append(f"{what} failed on {host} with this configuration under phase {f.get('phase')!r} (frozen"
                       f" automatically since {when(f.get('ts', 0))}); nothing was changed. Fix the image (a new tag) or the"
                       f" configuration, or, if the failure was not the release's: {other}")
    for host, f in of_phase(facts, plan.phase):
        if not f.get("auto"):
            out.append(f"phase {plan.phase} is frozen on {host} by {f.get('by')} since {when(f.get('ts', 0))}: {f.get('reason')!r};"
                       f" nothing was changed. When it may go ahead: {thaw}")
            continue
        again = sorted((st for st in plan.changes if st.host == host and repeats(f, st)), key=lambda st: st.service)
        if again:
            what = ", ".join(f"{st.service}:{st.new_tag}@{st.new_digest[7:19]}" for st in again)
            # The host's own words for how that rollout ended (reverted, or a new service removed, or Swarm's rollback).
            ended = clean_text(str(f.get("reason") or f"rollout {f.get('rollout_id')} failed"))[:400]
            out.append(f"phase {plan.phase} is frozen on {host} since {when(f.get('ts', 0))}, automatically: {ended}."
                       f" This plan would deploy {what} again with the same configuration that failed; nothing was changed."
                       f" Fix the image (a new tag) or the configuration, or, if the failure was not the release's: {thaw}")
    return out


def idle_notes(plan: Plan, facts: dict[str, dict[str, Any]], inventory: str) -> list[str]:
    """A plan with nothing to change still says which manual freezes hold its phase (a change would be refused)."""
    thaw = f"fab thaw --phase {plan.phase} --reason '...' --inventory {inventory}"
    return [f"note: phase {plan.phase} is frozen on {host} by {f.get('by')} since {when(f.get('ts', 0))}: {f.get('reason')!r};"
            f" nothing to do now, and a change would be refused until: {thaw}"
            for host, f in of_phase(facts, plan.phase) if not f.get("auto")]


def ask_hosts(inv, phase: str, todo: dict[str, dict[str, dict[str, str]]], request: Callable[[str], dict[str, Any]],
              after: Callable[[str], str], pool: transport.Pool | None = None) -> tuple[list[str], list[str]]:
    """Ask each host of `todo` ({host: {service: {tag, digest, config}}}) to record the automatic freeze `request(h)`
    builds (its agent's freeze op); (the hosts that recorded it, the report's line for each).

    For what a controller saw fail without a host transaction of its own to write it: Swarm's rollback
    (playbooks/swarm/freeze.py), a failed canary's release on the hosts it kept from starting
    (playbooks/freeze_spread.py). `after(h)` says why, in the line: "after Swarm's rollback of rollout R".
    """
    answers = transport.on_hosts(inv, sorted(todo), "freeze", request, timeout=30, pool=pool)
    done, lines = [], []
    for h in sorted(todo):
        r, what = answers[h], ", ".join(f"{s}:{v['tag']}@{v['digest'][7:19]}" for s, v in sorted(todo[h].items()))
        if r.answer is None or not r.ok:
            why = r.error or (r.answer or {}).get("msg") or "no answer"
            lines.append(f"FAILED recording the automatic freeze of phase {phase} on {h} {after(h)} ({what}): {why}; the same"
                         f" release is not refused there: fab freeze --phase {phase} --reason '...' to stop it by hand")
            continue
        done.append(h)
        rec = (r.answer.get("data") or {}).get("freeze") or {}
        if rec.get("auto"):
            lines.append(f"frozen: phase {phase} on {h} against {what} with its configuration there (automatic, {after(h)});"
                         f" a new tag or a fixed configuration goes ahead, or: fab thaw --phase {phase} --reason '...'")
        else:  # agent/freeze.write keeps a manual freeze on top: it already refuses every rollout of the phase
            lines.append(f"frozen: phase {phase} on {h} stays frozen by {rec.get('by')} ({rec.get('reason')!r}), which refuses"
                         f" every rollout; the automatic freeze against {what} waits under it and is in force once that is thawed")
    return done, lines


def on_other_hosts(inv, phase: str, asked: list[str], inventory: str, pool=None,
                   plan: Plan | None = None) -> tuple[list[str], list[str]]:
    """With --hosts naming only some of a phase's hosts, the others are asked for their freezes too.

    A manual freeze holds its whole phase. Found by an exploratory run: pc2 held the freeze of
    cpu-pc2, and `fab rollout -p cpu-pc2 -H mainpc` (mainpc newly placed in the phase, so holding no
    record) committed. An automatic freeze there holds the release that failed there: found by
    another, a canary interrupted before the controller could spread its freeze (freeze_spread)
    left the hosts it never reached free, and `-H` those hosts deployed the condemned release.
    (what blocks, notes about hosts that could not be asked)."""
    others = [h for h in inv.select_hosts(None, phase) if h not in asked]
    if not others:
        return [], []
    # details answers a host's freezes beside its containers: asked about the phase's own services only (an empty
    # list would mean every container there, each with its -prev lookup).
    answers = transport.on_hosts(inv, others, "details", lambda h: {"services": {s: inv.repo(s) for s in inv.services_for(phase, [h])}},
                                 timeout=30, pool=pool)
    thaw = f"fab thaw --phase {phase} --reason '...' --inventory {inventory}"
    block, notes = [], []
    for h in others:
        r = answers[h]
        if r.answer is None or not r.ok:
            notes.append(f"note: could not ask {h} (also in phase {phase}, not in --hosts) whether the phase is frozen there:"
                         f" {r.error or (r.answer or {}).get('msg')}")
            continue
        for f in (r.answer.get("data") or {}).get("freezes") or []:
            if f.get("phase") == phase and not f.get("auto"):
                block.append(f"phase {phase} is frozen on {h} by {f.get('by')} since {when(f.get('ts', 0))}: {f.get('reason')!r};"
                             f" a freeze holds the whole phase, the hosts --hosts names included; nothing was changed. When"
                             f" it may go ahead: {thaw}")
            elif f.get("auto") and plan is not None:
                block += _failed_there(inv, plan, h, f, inventory)
    return block, notes


def _failed_there(inv, plan: Plan, host: str, f: dict[str, Any], inventory: str) -> list[str]:
    """The plan's changes that would deploy, on the hosts --hosts names, a release that failed on `host` (pure).

    The same release: its digest, with the configuration the inventory gives it on `host` (each host's own
    fingerprint differs by FLEETROLL_HOST alone), the one its failure there was recorded with.
    """
    from .plan import container_spec

    out = []
    for st in plan.changes:
        if host not in inv.fleet.hosts_of(st.service) or not st.new_digest:
            continue
        there = config_fingerprint(container_spec(inv, st.service, host))
        hit = next((b for b in blocks_of(f, st.service) if b.get("digest") == st.new_digest and b.get("config") == there), None)
        if hit:
            rid = hit.get("rollout_id") or (f.get("rollouts") or {}).get(st.service) or f.get("rollout_id")
            out.append(f"{st.service}:{st.new_tag}@{st.new_digest[7:19]} failed on {host} (phase {f.get('phase')} frozen there"
                       f" automatically since {when(f.get('ts', 0))}, rollout {rid});"
                       f" refused on {st.host} too; nothing was changed. Fix the image (a new tag) or the configuration, or,"
                       f" if the failure was not the release's: fab thaw --phase {f.get('phase')} --reason '...' --inventory {inventory}")
    return out
