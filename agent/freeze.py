"""Phase freezes, kept on each host (Kamal's `lock acquire -m`, per phase).

A freeze stops rollouts of one phase until an operator thaws it. It lives on the hosts,
in the state directory every operator account shares, so every controller sees it, not
only the laptop that set it. Two kinds:

- manual (`fab freeze --phase P --reason ...`): blocks every rollout of P;
- automatic, written by a host transaction that had to revert a release: it records, per
  service, what failed — the image digest *and* a fingerprint of the configuration it was
  deployed with — and blocks only a rollout that would deploy that same pair again. A fixed
  image passes, and so does the same image with a fixed configuration (a bad env value does
  not condemn a good tag); the commit of either clears the automatic freeze. A failure whose
  evidence points away from the release (its container removed by someone else mid-gate,
  the daemon restarting) freezes nothing.

The two stack, never silently replace each other: a manual freeze set while an automatic one
stands keeps it underneath (`kept_auto`), and an automatic one written while a manual one
stands goes underneath it. Thawing the manual freeze then brings the automatic one back, so
"freeze for maintenance, thaw after" does not let the release that failed through again.
Thawing removes the freeze and appends what was removed, by whom and why, to
`freezes.jsonl` beside it.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from .digests import sha256
from .paths import state_dir

TYPE_CHECKING = False  # importing typing costs every agent call ~2.5 ms; Any is only ever an annotation here
if TYPE_CHECKING:
    from typing import Any

PHASE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# What identifies a deployment besides its image: everything the create call is made from, except the
# names of the release (tag, digest, the plan's own hash of both) and the rollout's bookkeeping.
NOT_CONFIG = ("name", "repo", "tag", "digest", "spec_hash")


def config_fingerprint(spec: dict[str, Any]) -> str:
    """A short hash of a service's configuration (env with secret *references*, ports, volumes, GPUs, user, health, proxy).

    A secret's reference includes how it is given (`{secret, as: file}` differs from `{secret}`),
    so moving a secret from env to a file is a configuration change here as in the spec hash.

    Pure, and computed from the plan's spec on both sides: the host records it when a
    release fails, the controller computes it for the next plan. Secret values never enter
    it (the spec holds references), so it can sit in a world-readable freeze record.
    """
    blob = json.dumps({k: v for k, v in spec.items() if k not in NOT_CONFIG}, sort_keys=True, default=str).encode()
    return "cfg:" + sha256(blob).hexdigest()[:16]


def _dir() -> Path:
    d = state_dir() / "freezes"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _path(phase: str) -> Path:
    if not PHASE_RE.fullmatch(phase or ""):
        raise ValueError(f"phase name {phase!r} is not a plain name")
    return _dir() / f"{phase}.json"


def _history(rec: dict) -> None:
    with open(state_dir() / "freezes.jsonl", "a") as f:
        f.write(json.dumps(rec, separators=(",", ":")) + "\n")


def write(phase: str, reason: str, by: str, auto: bool = False, releases: dict[str, str] | None = None,
          rollout_id: str = "", failed: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """Freeze `phase` on this host; returns the record now in force (the manual one, when an automatic one goes under it).

    `releases`: {service: tag} that failed, for people; `failed`: {service: {tag, digest, config}},
    what an automatic freeze blocks (the digest and configuration fingerprint deployed together).
    A manual freeze replaces an earlier manual one (the answer says whose). An automatic one adds
    to an earlier automatic one, service by service (the newer failure of a service wins): a
    canary failing on service B must not let the release of A that failed here before through.
    """
    with _locked():
        current = read(phase)
        rec = {"phase": phase, "reason": reason, "by": by, "ts": round(time.time(), 3), "auto": auto,
               "releases": dict(releases or {}), "failed": dict(failed or {}), "rollout_id": rollout_id}
        if auto and current and not current.get("auto"):
            top = {**current, "kept_auto": _merged(current.get("kept_auto"), rec)}  # the manual one stays in force
            _store(phase, top)
            _history({"event": "freeze", **rec, "under": {k: current.get(k) for k in ("by", "reason", "ts")}})
            return top
        if auto:
            rec = _merged(current, rec)
        elif current:
            kept = current if current.get("auto") else current.get("kept_auto")
            if kept:
                rec["kept_auto"] = kept
        _store(phase, rec)
        _history({"event": "freeze", **rec})
        return rec


MAX_BLOCKS = 8  # earlier failed releases of one service an automatic freeze keeps refusing (newest first)


def _key(block: dict[str, str]) -> tuple[str, str]:
    return block.get("digest", ""), block.get("config", "")


def _merged(older: dict[str, Any] | None, newer: dict[str, Any]) -> dict[str, Any]:
    """An automatic freeze written over another: every block stands; the newer one's words first (pure).

    Blocks are per service and per release: a service that fails again with another release (or a
    configuration-only change) keeps its earlier failed release refused too (`also_failed`), as
    the freeze promises "until the image or the configuration is fixed, or thaw". Found by an
    exploratory run: the newer failure replaced the older block, and the release that had failed
    first was deployed again. Each service's block names the rollout it failed in (`rollouts`).
    """
    if not older or not older.get("auto"):
        return newer
    was = older.get("failed") or {}
    older_ids = {**{svc: older.get("rollout_id", "") for svc in was}, **(older.get("rollouts") or {})}
    also = {svc: list(blocks) for svc, blocks in (older.get("also_failed") or {}).items()}
    for svc, block in was.items():  # each earlier block keeps the rollout it failed in (the words name it)
        also.setdefault(svc, []).insert(0, {"rollout_id": older_ids.get(svc, ""), **block})
    failed = {**was, **newer["failed"]}
    dropped = dict(older.get("dropped") or {})  # service -> how many of its oldest failed releases no longer refused
    for svc in list(also):
        seen, kept = {_key(failed[svc])}, []
        for block in also[svc]:
            if _key(block) not in seen:
                seen.add(_key(block))
                kept.append(block)
        also[svc] = kept[:MAX_BLOCKS]
        if kept[MAX_BLOCKS:]:
            dropped[svc] = dropped.get(svc, 0) + len(kept[MAX_BLOCKS:])
        if not also[svc]:
            del also[svc]
    rollouts = {**older_ids, **{svc: newer.get("rollout_id", "") for svc in newer["failed"]}}
    out = {**newer, "failed": failed, "also_failed": also, "rollouts": rollouts,
           "releases": {**(older.get("releases") or {}), **newer["releases"]}, **({"dropped": dropped} if dropped else {})}
    earlier = sorted(set(was) - set(newer["failed"]))
    if earlier:  # named by service and rollout, not by nesting the older record's words (which nested without end)
        out["reason"] = newer["reason"] + "; still refused from earlier failures: " + ", ".join(
            f"{svc} (rollout {rollouts.get(svc) or '?'})" for svc in earlier)
    out["reason"] += _dropped_words(dropped)
    return out


def _dropped_words(dropped: dict[str, int]) -> str:
    """Said, never silent: a service's oldest failed releases past what a freeze keeps could be deployed again (pure)."""
    return "".join(f"; {svc}: its {n} oldest failed release(s) are no longer refused (a freeze keeps a service's"
                   f" {MAX_BLOCKS + 1} newest)" for svc, n in sorted(dropped.items()))


def blocks_of(record: dict[str, Any], service: str) -> list[dict[str, str]]:
    """Every release of `service` an automatic freeze refuses, newest first (pure)."""
    first = (record.get("failed") or {}).get(service)
    return ([first] if first else []) + list((record.get("also_failed") or {}).get(service) or [])


class _locked:
    """One writer of the freezes at a time on this host (a transaction's automatic freeze beside an operator's fab freeze)."""

    def __enter__(self) -> None:
        import fcntl

        self.fd = os.open(_dir() / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o660)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def _store(phase: str, rec: dict[str, Any]) -> None:
    p = _path(phase)
    tmp = p.with_name(f".{p.name}.{os.getpid()}")
    tmp.write_text(json.dumps(rec))
    os.replace(tmp, p)


def read(phase: str) -> dict[str, Any] | None:
    try:
        return json.loads(_path(phase).read_text())
    except (FileNotFoundError, ValueError):
        return None


def all_freezes() -> list[dict[str, Any]]:
    d = state_dir() / "freezes"
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("*.json")):
        try:
            out.append(json.loads(p.read_text()))
        except ValueError:
            continue
    return out


def thaw(phase: str, by: str, reason: str, only_auto: bool = False, services: list[str] | None = None) -> dict[str, Any] | None:
    """Remove the freeze of `phase` here; return what was removed (None if there was none).

    A manual freeze with an automatic one under it gives way to that one (the record returned
    keeps it as `kept_auto`, for the answer to say so). `only_auto` (a clean commit): the automatic
    freeze goes, wherever it is; a manual one stays. With `services` (the ones that commit
    committed), only their blocks go: another service's failed release stays refused.
    """
    with _locked():
        current = read(phase)
        if only_auto and services is not None and current is not None:
            auto = current if current.get("auto") else current.get("kept_auto")
            rest = sorted(set((auto or {}).get("failed") or {}) - set(services))
            if auto and rest:
                return _lift(phase, current, auto, rest, by, reason)
        return _thaw(phase, current, by, reason, only_auto)


def _lift(phase: str, current: dict[str, Any], auto: dict[str, Any], rest: list[str], by: str, reason: str) -> dict[str, Any] | None:
    """Drop the committed services' blocks from the automatic freeze; the others stay (None if none of them was there)."""
    gone = sorted(set(auto.get("failed") or {}) - set(rest))
    if not gone:
        return None
    rids, tags = auto.get("rollouts") or {}, auto.get("releases") or {}
    also = {s: b for s, b in (auto.get("also_failed") or {}).items() if s in rest}
    dropped = {s: n for s, n in (auto.get("dropped") or {}).items() if s in rest}
    # Its words are rebuilt from what stays: status printed 'frozen after rollout r-7 failed: b:B1 ...' for b, committed
    # since, while only a's earlier failure was still refused. Every release still refused is named, and what was dropped.
    words = "; ".join(f"{s}:{tags.get(s) or (auto['failed'][s] or {}).get('tag') or '?'} failed in rollout"
                      f" {rids.get(s) or auto.get('rollout_id') or '?'} and stays refused"
                      + "".join(f", as does {b.get('tag') or '?'} (rollout {b.get('rollout_id') or '?'})" for b in also.get(s, []))
                      for s in rest)
    words += _dropped_words(dropped)
    left = {**auto, "failed": {s: auto["failed"][s] for s in rest}, "also_failed": also, "dropped": dropped,
            "releases": {s: t for s, t in tags.items() if s in rest}, "rollout_id": rids.get(rest[0]) or auto.get("rollout_id", ""),
            "reason": f"{words} ({', '.join(gone)} went ahead since: {reason})"}
    _store(phase, left if current is auto else {**current, "kept_auto": left})
    removed = {**auto, "failed": {s: auto["failed"][s] for s in gone}}
    _history({"event": "thaw", "phase": phase, "by": by, "reason": reason, "ts": round(time.time(), 3), "removed": removed})
    return removed


def _thaw(phase: str, current: dict[str, Any] | None, by: str, reason: str, only_auto: bool) -> dict[str, Any] | None:
    if current is None:
        return None
    kept = current.get("kept_auto")
    if only_auto and not current.get("auto"):
        if not kept:
            return None
        _store(phase, {k: v for k, v in current.items() if k != "kept_auto"})
        removed = kept
    elif kept and not only_auto:
        _store(phase, kept)  # the automatic freeze is in force again
        removed = current
    else:
        try:
            _path(phase).unlink()
        except FileNotFoundError:
            return None
        removed = current
    _history({"event": "thaw", "phase": phase, "by": by, "reason": reason, "ts": round(time.time(), 3), "removed": removed})
    return removed


MAX_FAILED = 64  # services one automatic freeze names: a phase has a handful; more is not a controller's request


def _plain(value: Any, what: str, limit: int = 200) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(f"{what} must be a string of at most {limit} characters")
    return value


def automatic(args: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of `write` for an automatic freeze asked by the controller ({} for a manual one).

    The SSH push's host transaction writes its automatic freeze itself; a swarm rollout has no host
    transaction, so the controller, having seen Swarm roll a release back, asks each host's agent for
    the same record through the `freeze` op. Validated here because the record blocks later rollouts:
    it must have the shape `freezes.repeats` reads (`failed`: {service: {tag, digest, config}}), and a
    request of another shape is refused rather than written half-right.
    """
    if not args.get("auto"):
        return {}
    failed, releases = args.get("failed"), args.get("releases") or {}
    if not isinstance(failed, dict) or not failed or len(failed) > MAX_FAILED or not isinstance(releases, dict):
        raise ValueError("an automatic freeze names what failed: failed = {service: {tag, digest, config}}, at least one")
    out: dict[str, dict[str, str]] = {}
    for svc, f in failed.items():
        if not isinstance(f, dict) or set(f) != {"tag", "digest", "config"}:
            raise ValueError(f"failed[{svc!r}] must be exactly {{tag, digest, config}}")
        out[_plain(svc, "a service name", 64)] = {k: _plain(f[k], f"failed[{svc!r}].{k}") for k in ("tag", "digest", "config")}
    return {"auto": True, "failed": out, "rollout_id": _plain(args.get("rollout_id", ""), "rollout_id", 64),
            "releases": {_plain(s, "a service name", 64): _plain(t, f"releases[{s!r}]") for s, t in releases.items()}}
