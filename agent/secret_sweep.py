"""Secret directories that no container mounts any more: removed under the host lock, after a transaction.

Why: fleetroll removes a container's secret directory when it removes that container
(secret_files.release). A container removed by hand (`docker rm -f`), or a create killed between
secret_files.materialize and Docker's create call, leaves its directory, with the secret value in
it, until the next boot clears /run. Every create happens under the host lock, and a transaction
holds it; so once a transaction is done, a directory of this daemon's namespace that no container
(running, stopped or kept aside) mounts is nobody's, and goes.

Only this daemon's namespace is read, only directory names `materialize` makes are considered,
and each goes through secret_files' own removal (regular files of secret names only, anything
else left and named). The namespace is never created here: a host that never had secret files
costs one lstat.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from . import paths, secret_files


def unused(names: Iterable[str], mounted: set[str]) -> list[str]:
    """The directory names `materialize` makes that no container mounts (pure), sorted."""
    return sorted(n for n in names if secret_files.DIR_RE.fullmatch(n) and n not in mounted)


def _sources(c: dict[str, Any]) -> list[str]:
    """Every host path a container mounts, as the Engine API's list (`Mounts`) or inspect (`HostConfig`) says it (pure)."""
    hc = c.get("HostConfig") or {}
    return ([str(m.get("Source") or "") for m in [*(c.get("Mounts") or []), *(hc.get("Mounts") or [])]]
            + [str(b).split(":", 1)[0] for b in hc.get("Binds") or []])


def mounted_names(containers: Iterable[dict[str, Any]]) -> set[str]:
    """The last part of every path these containers mount, when it is a name `materialize` makes (pure).

    By name, not by full path: the run directory can be spelt two ways (/var/run is /run), and a
    path compared as text would then call a live container's directory unmounted. A name carries 64
    random bits, so a match by name alone is as good as a match by path, and it errs towards keeping.
    """
    return {n for c in containers for src in _sources(c)
            if secret_files.DIR_RE.fullmatch(n := os.path.basename(src.rstrip("/")))}


def _listed(client: Any) -> list[dict[str, Any]]:
    """Every container (running, stopped, created, kept aside): one Engine API list call carries each one's mounts;
    a client without the Engine (the tests' fake daemon) is asked container by container."""
    engine = getattr(client, "engine", None)
    if engine is not None:
        return engine.call("GET", "/containers/json", {"all": True}) or []
    return [c.attrs for c in client.containers.list(all=True)]


def sweep(client: Any) -> tuple[list[str], list[str]]:
    """Remove this daemon's secret directories no container mounts: (removed names, what was left and why).

    `client` is the transaction's Docker client; the containers are listed only when there is a
    directory to judge. The caller holds the host lock.
    """
    where = paths.run_dir() / "secrets" / secret_files.daemon_key(paths.docker_endpoint())
    if not os.path.isdir(where):  # never made here (secret_files._namespace would make it): nothing to sweep
        return [], []
    ns, where = secret_files._namespace()
    try:
        names = [n for n in os.listdir(ns) if secret_files.DIR_RE.fullmatch(n)]
        if not names:
            return [], []
        removed, left = [], []
        for name in unused(names, mounted_names(_listed(client))):
            why = secret_files._remove_dir(ns, name, where)
            (left if why else removed).append(why or name)
        return removed, left
    finally:
        os.close(ns)


def after_transaction(rid: str, client: Any) -> None:
    """Sweep once a transaction's outcome is journalled, still under its lock; what went and what stayed is journalled
    too (names only). After the outcome, so a worker killed mid-sweep leaves a finished transaction, not an open one.

    Never raises: a sweep that cannot run leaves the directories for the next transaction (or the
    next boot) and says so in the journal; the transaction's own outcome is not touched.
    """
    from . import journal
    from .vocabulary import Step

    try:
        removed, left = sweep(client)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        journal.append(rid, Step.SECRET_FILES_LEFT, left=[f"unused secret directories under {paths.run_dir()}/secrets not"
                                                          f" swept: {str(exc)[:200]}; the next transaction tries again"])
        return
    if removed:
        journal.append(rid, Step.SECRET_FILES_SWEPT, removed=removed)
    if left:
        journal.append(rid, Step.SECRET_FILES_LEFT, left=left)
