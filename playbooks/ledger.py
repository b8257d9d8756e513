"""The controller's ledger: an append-only JSON-lines record of every rollout.

Each record is one line written with a single O_APPEND write and fsync'd, so a crash
can lose at most the record being written, never corrupt an earlier one, and a torn
last line is skipped on read. A rollout writes a `started` record before touching any
host and a `finished` record at the end; a `started` without `finished` is a rollout
whose controller died, and `fab history` says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.vocabulary import FAILED, Journal, Outcome, Record, rollback_state, state_of


def path() -> Path:
    env = os.environ.get("FLEETROLL_LEDGER")
    p = Path(env) if env else Path.home() / ".local" / "state" / "fleetroll" / "ledger.jsonl"
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _pending_dir() -> Path:
    return path().parent / "pending"


def append(kind: str, **fields: Any) -> dict:
    """One record. A `started` leaves a marker under pending/ until its `finished` (or `refused`) record:
    a rollout the controller never finished (Ctrl-C, SIGKILL, a lost laptop) is then matched cheaply
    with the outcome its hosts report later (`observe`)."""
    rid = str(fields.get("rollout_id") or "")
    if kind == Record.STARTED and rid:
        # The hosts asked to change: once each has said how it ended, nothing is left to wait for and the marker goes
        # (else every later fab status asked every host about it, for good: found reading the change again).
        from .plan import BLOCKED, NOOP

        busy = sorted({st.get("host") for st in (fields.get("plan") or {}).get("steps") or []
                       if st.get("host") and st.get("action") not in (NOOP, BLOCKED)})
        _mark(rid, {"rollout_id": rid, **({"hosts": busy} if busy else {})})
    elif kind == Record.FINISHED and rid and fields.get("unobserved"):
        # Found by an exploratory run: a rollout that lost a host's link ended needs-operator, and stayed so in fab
        # history after fab status had read how that host ended. The marker stays for those hosts (observe()).
        _mark(rid, {"rollout_id": rid, "hosts": list(fields["unobserved"])})
    elif kind in (Record.FINISHED, Record.REFUSED) and rid:
        (_pending_dir() / _safe(rid)).unlink(missing_ok=True)
    rec = {"kind": kind, "ts": round(time.time(), 3), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
    line = (json.dumps(rec, separators=(",", ":"), default=str) + "\n").encode()
    fd = os.open(path(), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return rec


def _mark(rid: str, mark: dict[str, Any]) -> None:
    """Write a pending marker whole (a killed controller must not leave half a file for every later status to trip on)."""
    d = _pending_dir()
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{_safe(rid)}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(mark))
    os.replace(tmp, d / _safe(rid))


def _safe(rid: str) -> str:
    return "".join(ch for ch in rid if ch.isalnum() or ch in "-_.T")


def pending() -> set[str]:
    """Rollout ids the controller started and never finished (a directory listing: cheap on every `fab status`)."""
    d = _pending_dir()
    out = set()
    for p in d.glob("*") if d.is_dir() else []:
        if p.name.endswith(".tmp") or p.name.startswith("."):
            continue
        try:
            out.add(json.loads(p.read_text()).get("rollout_id", p.name))
        except (OSError, ValueError, AttributeError):  # a marker damaged by hand or an old crash: its name is its id
            out.add(p.name)
    return out


def observe(host: str, last: dict[str, Any] | None) -> None:
    """A host reported how a transaction the controller never finished ended: record it (once per host)."""
    if not last or last.get("state") != Journal.FINISHED or not last.get("outcome"):
        return
    rid = str(last.get("rollout_id") or "").removesuffix("-revert")
    marker = _pending_dir() / _safe(rid)
    try:
        mark = json.loads(marker.read_text())
    except (FileNotFoundError, ValueError):
        return
    if host in mark.get("observed", []) or ("hosts" in mark and host not in mark["hosts"]):
        return
    o = last["outcome"]
    append(Record.OBSERVED, rollout_id=rid, host=host, host_rollout_id=last.get("rollout_id"), state=o.get("state"),
           services={s.get("service"): s.get("outcome") for s in o.get("services") or []})
    seen = [*mark.get("observed", []), host]
    if "hosts" in mark and not set(mark["hosts"]) - set(seen):
        marker.unlink(missing_ok=True)  # every host it waited for has been heard
        return
    _mark(rid, {**mark, "observed": seen})


def read() -> list[dict]:
    p = path()
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def rollouts() -> list[dict]:
    """One entry per rollout id: its started record merged with its finished one (if any).

    A rollout the controller never finished (Ctrl-C, SIGKILL) takes its state from what its hosts
    reported afterwards, per host the latest word: a recovery of the interrupted transaction, or the
    outcome a later `fab status` read. The interruption, and how the hosts ended, stay as a note.
    """
    by_id: dict[str, dict] = {}
    for i, rec in enumerate(read()):
        rid = rec.get("rollout_id")
        if rec.get("kind") == _OLD_REMOVAL:
            rec = {**rec, "kind": Record.REMOVED}
        if rec.get("kind") in _OPERATOR_ACTS:  # who froze, thawed or pruned what: rows of fab history too
            if not rec.get("dry_run"):
                row = _operator_act(rec)
                by_id[f"{row['rollout_id']}#{i}"] = row  # two acts within a second are two rows
            continue
        if not rid or rec.get("kind") not in set(Record):
            continue
        if rec["kind"] == Record.UNLOCKED:  # said whether or not the controller finished: the host's work was cut short
            if rid in by_id:  # else the lock was held by something else than this ledger's rollouts (a recovery, a remove)
                by_id[rid].setdefault("_unlocks", []).append(f"its transaction on {rec.get('host')} was stopped by fab unlock"
                                                             f" --force ({rec.get('by')}, {rec['time']}: {rec.get('reason')!r})")
            continue
        if rec["kind"] == Record.REMOVED:
            by_id[rid] = _removal(rec)
            continue
        entry = by_id.setdefault(rid, {"rollout_id": rid, "final": "unfinished (controller stopped before the end)"})
        if rec["kind"] in (Record.OBSERVED, Record.RECOVERED):
            entry.setdefault(rec["kind"], []).append({k: rec.get(k) for k in ("host", "host_rollout_id", "state", "services", "time")})
            said = entry.setdefault("_hosts", {})
            if not (rec["kind"] == Record.OBSERVED and said.get(rec.get("host"), ("",))[0] == Record.RECOVERED):
                said[rec.get("host")] = (rec["kind"], rec.get("services") or {}, rec.get("state"))  # a recovery says more
            continue
        if rec["kind"] == Record.INTERRUPTED:
            entry["interruption"] = f"interrupted by the operator at {rec['time']}"
            entry["interrupted"] = rec["time"]
            continue
        entry.update({k: v for k, v in rec.items() if k != "kind"})
        if rec["kind"] == Record.STARTED:
            entry["started"] = rec["time"]
        if rec["kind"] in (Record.FINISHED, Record.REFUSED):
            entry["finished"] = rec["time"]
        if rec["kind"] == Record.REFUSED:  # it ended there, before any host changed anything: not a controller that died
            entry["final"] = str(Record.REFUSED)
            entry["note"] = f"refused: {rec.get('reason') or 'see the ledger record'}; nothing was changed"
    for entry in by_id.values():
        _judge_unfinished(entry)
    return list(by_id.values())


def _judge_unfinished(entry: dict) -> None:
    """A rollout the controller never finished takes its state from what its hosts said afterwards (see rollouts())."""
    hosts = entry.pop("_hosts", {})
    unlocks = "; ".join(entry.pop("_unlocks", []))
    if unlocks:
        entry["note"] = f"{entry['note']}; {unlocks}" if entry.get("note") else unlocks
    if entry.get("finished") is not None:
        _observed_after(entry, hosts)
        return
    why = entry.get("interruption") or "the controller stopped before the end"
    if hosts:
        outcomes = [o for _kind, svcs, _st in hosts.values() for o in svcs.values()]
        state = state_of(outcomes)
        entry["final"] = str(rollback_state(state, outcomes) if entry.get("rollback") else state)  # as ending judges it
        said = "; ".join(f"{'recovered' if kind == Record.RECOVERED else 'finished'} on {h} ("
                         + (", ".join(f"{s} {o}" for s, o in svcs.items()) or "no service had changed") + f"; host {st})"
                         for h, (kind, svcs, st) in hosts.items())
        entry["note"] = f"{why}; the hosts ended it on their own: {said}"
        split = _split_phase(entry, hosts)
        if split:
            entry["final"], entry["note"] = "needs-operator", f"{entry['note']}; {split}"
    elif entry.get("interruption"):
        entry["final"] = "interrupted by the operator (hosts finished on their own; see fab status)"


def _observed_after(entry: dict, hosts: dict) -> None:
    """A finished rollout that did not observe some host: how those hosts ended, once fab status read it (see append).

    Only what the command could not observe is replaced by what was read later: a needs-operator line of another
    host (one that failed without per-service rows, say) keeps the state the command gave (an independent read).
    """
    late = {h: v for h, v in hosts.items() if h in (entry.get("unobserved") or [])}
    if not late:
        return
    said = "; ".join(f"{h} ended " + (", ".join(f"{s} {o}" for s, o in svcs.items()) or "with no service changed") + f" (host {st})"
                     for h, (_kind, svcs, st) in late.items())
    missing = sorted(set(entry["unobserved"]) - set(late))
    was = entry.get("final")
    entry["note"] = "; ".join(x for x in (entry.get("note"), f"the command ended {was} (no outcome from {', '.join(entry['unobserved'])});"
                                          f" fab status read later: {said}" + (f"; still not heard: {', '.join(missing)}" if missing else ""))
                              if x)
    others = [n for n in entry.get("needs_operator") or [] if not any(n.startswith((f"{h}:", f"{h} ")) for h in entry["unobserved"])]
    if missing or others:
        return
    outcomes = [s.get("outcome", "") for s in entry.get("services") or [] if s.get("host") not in late]
    outcomes += [o for _kind, svcs, _st in late.values() for o in svcs.values()]
    state = state_of(outcomes)
    entry["final"] = str(rollback_state(state, outcomes) if entry.get("rollback") else state)
    every = {h: ("", {}, "") for h in {s.get("host") for s in entry.get("services") or []}}
    for svc in entry.get("services") or []:
        every[svc.get("host")][1][svc.get("service")] = svc.get("outcome", "")
    split = _split_phase(entry, {**every, **late})
    if split:
        entry["final"], entry["note"] = "needs-operator", f"{entry['note']}; {split}"


def _split_phase(entry: dict, hosts: dict) -> str:
    """Why an unfinished rollout whose hosts ended apart needs an operator, or "" (pure).

    Found by exploratory runs: the controller killed (or Ctrl-C) between one host's commit and another's failure;
    the phase-wide revert is the controller's, so it never ran: one host on the new release, the other back on the
    old, and history said `reverted`.
    """
    if entry.get("rollback") or entry.get("restart") or entry.get("policy", "revert-phase") != "revert-phase":
        return ""
    committed = sorted(h for h, (_k, svcs, _st) in hosts.items() if Outcome.COMMITTED in svcs.values())
    failed = sorted(h for h, (_k, svcs, _st) in hosts.items() if set(svcs.values()) & set(FAILED))
    if not committed or not failed:
        return ""
    phase = entry.get("phase") or "P"
    return (f"the phase is split: committed on {', '.join(committed)}, failed on {', '.join(failed)}; its phase-wide revert"
            f" (revert-phase, the controller's) did not reach {', '.join(committed)}: fab rollback -p {phase} -H {','.join(committed)} sends"
            f" {'it' if len(committed) == 1 else 'them'} back, or fix the release and roll the phase out again")


_OLD_REMOVAL = "remove"  # the kind a removal had in ledgers written before it was a row of fab history
_OPERATOR_ACTS = ("freeze", "thaw", "prune")  # recorded by playbooks/operate.py; no rollout id of their own


def _operator_act(rec: dict) -> dict:
    """`fab freeze`, `fab thaw` or a real `fab prune` as a row of fab history (found missing by an exploratory run)."""
    kind, hosts = rec["kind"], ", ".join(rec.get("hosts") or []) or "(no host)"
    if kind == "prune":
        gone = sum(len(v) for v in (rec.get("removed") or {}).values())
        final = f"{gone} image(s) removed"
        note = f"fab prune --keep {rec.get('keep')} on {hosts}"
        phase = "(prune)"
    else:
        final, note = _freeze_words(rec)
        phase = rec.get("phase", "")
    return {"rollout_id": f"{kind}-{rec.get('time', '')}", "started": rec.get("time"), "finished": rec.get("time"),
            "operator": rec.get("operator", ""), "phase": phase, "final": final, "note": note, "kind": kind}


def _freeze_words(rec: dict) -> tuple[str, str]:
    """(final, note) of a `fab freeze`/`fab thaw` row: the hosts it changed, and those that did not answer.

    An exploratory run's partial freeze (pc2 unreachable) read "fab freeze on mainpc, pc2", and a thaw of
    a freeze pc2 alone held "fab thaw on mainpc, pc2, bad-driver": every host asked, as if each had changed.
    """
    kind, hosts, ok, reason = rec["kind"], rec.get("hosts") or [], rec.get("ok", True), rec.get("reason")
    if "changed" not in rec:  # a ledger written before records said which hosts changed: the hosts asked is all it knows
        final = ("frozen" if kind == "freeze" else "thawed") + ("" if ok else " (not on every host)")
        return final, f"fab {kind} on {', '.join(hosts) or '(no host)'}: {reason!r}"
    changed = rec["changed"]
    # Records before `failed`: an answering host always changes a freeze, and a thaw that ok says every host answered.
    failed = rec.get("failed", [h for h in hosts if h not in changed] if kind == "freeze" or ok else None)
    if kind == "freeze":
        final = ("frozen" + ("" if ok else " (not on every host)")) if changed else "not frozen: no host answered"
    elif changed:
        final = "thawed" + ("" if ok else " (not on every host)")
    else:
        final = "nothing was frozen" if ok else "nothing thawed (not every host answered)"
    unanswered = [h for h in hosts if h not in changed] if failed is None else failed
    still = "not frozen there" if kind == "freeze" else "a freeze there stays"
    why = ("did not answer or had nothing frozen" if failed is None else
           f"did not answer: {still}") if unanswered else ""
    missing = f" ({', '.join(unanswered)} {why})" if unanswered else ""
    return final, f"fab {kind} on {', '.join(changed) or 'no host'}{missing}: {reason!r}"


def _removal(rec: dict) -> dict:
    """A `fab remove` as a row of fab history: what went, from where, forced or not, and why."""
    gone = ", ".join(f"{x.get('name', '?')} {x.get('id', '')}".strip() if isinstance(x, dict) else str(x) for x in rec.get("removed") or [])
    why = f"; reason: {rec['reason']!r}" if rec.get("reason") else ""
    return {"rollout_id": rec["rollout_id"], "started": rec.get("time"), "finished": rec.get("time"), "operator": rec.get("operator", ""),
            "phase": f"({rec.get('service')})", "final": "removed" if gone else "nothing removed",
            "note": f"fab remove{' --force' if rec.get('forced') else ''} on {rec.get('host')}: {gone or 'nothing there'}{why}"}


def redaction_key() -> bytes:
    """The controller's key for hashing env values in records: random, made once, readable by its owner only."""
    from agent.keyfile import load_or_create

    return load_or_create(path().parent / "redaction.key", 0o600)


def write_pins(rollout_id: str, pins: list[dict]) -> Path:
    """What the operator must keep (the exact -prev pins), as JSON beside the ledger."""
    d = path().parent / "pins"
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{rollout_id}.json"
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rollout_id": rollout_id, "pins": pins}, indent=2))
    os.replace(tmp, p)
    return p


def inventory_git_sha(inventory_path: Path) -> str:
    """The inventory's commit, `-dirty` if the file differs from it; "" outside git."""
    return inventory_git_sha_later(inventory_path)()


def inventory_git_sha_later(inventory_path: Path) -> Callable[[], str]:
    """Start both git commands now and answer when called: a rollout runs them beside its preflight, not after it.

    Two git processes, one after the other, sat between the hosts' facts and the pull (10-30 ms in an operator's
    repository); started together before the preflight they are done by the time the ledger needs the answer.
    """
    where = str(inventory_path.parent)
    try:
        head = subprocess.Popen(["git", "-C", where, "rev-parse", "HEAD"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    except OSError:
        return lambda: ""
    try:
        status = subprocess.Popen(["git", "-C", where, "status", "--porcelain", "--", str(inventory_path)],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    except OSError:
        status = None

    def out(p: subprocess.Popen | None) -> tuple[int, str]:
        if p is None:
            return -1, ""
        try:
            text = p.communicate(timeout=5)[0]
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            return -1, ""
        return p.returncode, text or ""

    def answer() -> str:
        rc, sha = out(head)
        _rc, changed = out(status)
        return sha.strip() + ("-dirty" if changed.strip() else "") if rc == 0 else ""

    return answer
