"""`fab prune`: the images of fleetroll's repositories that nothing on this host needs any more.

What stays is decided from what the host itself holds (containers, journals), never from a
list the controller sends: the controller names the repositories and services to consider.
"""

from __future__ import annotations

from typing import Any

from . import contract
from .answer import answer as _answer
from .docker_errors import APIError, ImageNotFound, NotFound


def prune_op(args: dict[str, Any]) -> dict:
    """Remove images of fleetroll's repositories that nothing needs any more; `keep` recorded good versions stay.

    Needed, so kept: what any container (running, stopped, kept aside) was created from, what
    `fab rollback` of each service would go back to, and the images of each service's last
    `keep` versions that passed their gate here. A `-prev` pin is not a reason by itself: each
    release pins the one it replaced, so pins kept for good would hold every release a host
    ever ran (GPU images of gigabytes each). Only images of the repositories the inventory
    names are considered: anything else on the host is not fleetroll's to remove. Held under
    the host's lock, as a transaction is (Kamal's prune takes its deploy lock too): a
    rollout's pulled image must not go between its pull and its start.
    """
    from . import lock

    if args.get("dry_run"):
        return _prune(args)
    try:
        held = lock.acquire(args.get("operator") or "unknown", args.get("rollout_id") or "prune")
    except lock.Locked as exc:
        return _answer("prune", False, f"host is {exc}; a transaction runs here and may need the images it pulled: nothing"
                       " was removed; prune when it has finished (fab status --follow)", {"locked": exc.holder})
    except lock.LockUnsafe as exc:
        return _answer("prune", False, f"this host's lock cannot be trusted ({exc}); nothing was removed")
    try:
        return _prune(args)
    finally:
        held.release()


def _prune_needed(client, services: list[str], keep: int) -> dict[str, str]:
    """{image id: why it stays}: containers' images, each service's rollback target, its last `keep` good versions."""
    from . import versions

    needed: dict[str, str] = {}
    for c in client.containers.list(all=True):
        needed[c.attrs.get("Image", "")] = f"used by container {c.name}"
    journals = versions.all_journals()  # read once, not once per service
    for svc in services:
        try:
            rid = (client.containers.get(svc).labels or {}).get(contract.ROLLOUT_ID, "")
        except NotFound:
            rid = versions.last_committed_rollout(svc)  # removed by hand: fab rollback goes back from the last commit
        back = versions.recorded_config(rid, svc) if rid else {}
        if back.get("image"):
            tag = (back.get("labels") or {}).get(contract.TAG) or "(untagged)"
            needed.setdefault(back["image"], f"{svc} {tag}: what fab rollback -s {svc} goes back to")
        # Versions, not starts: a restart or a rollback starts a release again, and counting each start let three
        # restarts push every earlier good release out of --keep.
        good: dict[str, dict] = {}
        for v in versions.history(svc, journals):
            if v["outcome"].startswith("committed") and v.get("image"):
                good.pop(v["image"], None)
                good[v["image"]] = v  # the latest start of each image last
        for v in list(good.values())[-keep:]:
            needed.setdefault(v["image"], f"{svc} {v['tag']} (one of its last {keep} good versions)")
    return needed


def _prune(args: dict[str, Any]) -> dict:
    from .facts import docker_client

    repos = set(args.get("repos") or [])
    keep = max(1, int(args.get("keep") or 3))
    client = docker_client(timeout=120)
    needed = _prune_needed(client, list(args.get("services") or []), keep)
    removed, kept, failed, freed = [], [], [], 0
    for img in client.images.list():
        names = list(img.tags) + list(img.attrs.get("RepoDigests") or [])
        ours = [n for n in names if n.rsplit("@", 1)[0].rsplit(":", 1)[0] in repos]
        if not ours:
            continue
        why = needed.get(img.id)
        if why:
            kept.append({"image": img.id[:19], "names": ours[:3], "why": why})
            continue
        if args.get("dry_run"):
            removed.append({"image": img.id[:19], "names": ours[:3], "size": img.attrs.get("Size", 0)})
            continue
        try:
            # Our names go one by one; the image itself goes only when no other name (not ours) holds it.
            for n in ours:
                client.images.remove(n)
            removed.append({"image": img.id[:19], "names": ours[:3], "size": img.attrs.get("Size", 0)})
            try:
                client.images.get(img.id)
            except ImageNotFound:
                freed += int(img.attrs.get("Size", 0))
        except APIError as exc:
            failed.append({"image": img.id[:19], "names": ours[:3], "error": str(getattr(exc, "explanation", exc))[:200]})
    return _answer("prune", not failed, "", {"removed": removed, "kept": kept, "failed": failed, "freed_bytes": freed},
                   changed=bool(removed) and not args.get("dry_run"))
