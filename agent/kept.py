"""Which transaction set a kept container (`<service>--kept-<8 hex>`) aside, and whether one still holds it.

A kept container is the old release a transaction renamed aside while it gated the new one; the
transaction removes it on commit or starts it again on a revert. A revert that failed leaves it
there, running or not, after the transaction ended: nothing removes it then, and an operator has
to be told which rollout left it and that nothing holds it now. Everything here reads the state
directory only (journal file names and the one journal matched): no Docker call, so `status`
stays cheap.
"""

from __future__ import annotations

from typing import Any

from . import journal
from .digests import sha256

KEPT = "--kept-"


def origins(names: list[str]) -> dict[str, dict[str, Any]]:
    """{kept container name: the transaction that set it aside and how it ended}; a name no journal here made is left out.

    The name's 8 hex digits are the first of sha256(rollout id) (container_args.kept_name): each journal's
    file name is hashed once, and only the journals that match are read.
    """
    wanted: dict[str, list[tuple[str, str]]] = {}
    for n in names:
        svc, sep, h8 = n.partition(KEPT)
        if sep and svc:
            wanted.setdefault(h8, []).append((n, svc))
    out: dict[str, dict[str, Any]] = {}
    if not wanted:
        return out
    for rid in journal.ids():
        for name, svc in wanted.get(sha256(rid.encode()).hexdigest()[:8], []):
            out[name] = _ending(rid, svc)
    return out


def _ending(rid: str, svc: str) -> dict[str, Any]:
    """How transaction `rid` ended for `svc`, from its journal: ended or not, its host state, the service's outcome."""
    done = journal.outcome(journal.read(rid))
    if done is None:
        return {"rollout_id": rid, "ended": False}
    mine = [s for s in done.get("services") or [] if isinstance(s, dict) and s.get("service") == svc]
    return {"rollout_id": rid, "ended": True, "ok": bool(done.get("ok")), "state": done.get("state", ""),
            "outcome": (mine[-1].get("outcome") or "") if mine else ""}
