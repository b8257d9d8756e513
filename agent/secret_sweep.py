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
from pathlib import Path
from typing import Any

from . import paths, secret_files


def unused(names: Iterable[str], mounted: set[str]) -> list[str]:
    """The directory names `materialize` makes that no container mounts (pure), sorted."""
    return sorted(n for n in names if secret_files.DIR_RE.fullmatch(n) and n not in mounted)


def mounted_names(containers: Iterable[dict[str, Any]], where: Path) -> set[str]:
    """Names of the directories under `where` that these containers (`docker inspect` attrs) mount (pure)."""
    return {name for attrs in containers for name in secret_files.dirs_of(attrs, where)}


def sweep(client: Any) -> tuple[list[str], list[str]]:
    """Remove this daemon's secret directories no container mounts: (removed names, what was left and why).

    `client` is the transaction's Docker client; every container (running, stopped, kept aside) is
    asked for only when there is a directory to judge. The caller holds the host lock.
    """
    where = paths.run_dir() / "secrets" / secret_files.daemon_key(paths.docker_endpoint())
    if not os.path.isdir(where):
        return [], []
    ns, where = secret_files._namespace()
    try:
        names = [n for n in os.listdir(ns) if secret_files.DIR_RE.fullmatch(n)]
        if not names:
            return [], []
        gone = unused(names, mounted_names((c.attrs for c in client.containers.list(all=True)), where))
        removed, left = [], []
        for name in gone:
            why = secret_files._remove_dir(ns, name, where)
            (left if why else removed).append(why or name)
        return removed, left
    finally:
        os.close(ns)


def after_transaction(rid: str, client: Any) -> None:
    """Sweep once a transaction is done, still under its lock; what went and what stayed is journalled (names only).

    Never raises: a sweep that cannot run leaves the directories for the next transaction (or the
    next boot) and says so in the journal; the transaction's own outcome is not touched.
    """
    from . import journal
    from .vocabulary import Step

    try:
        removed, left = sweep(client)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        journal.append(rid, Step.SECRET_FILES_LEFT, left=[f"unused secret directories not swept: {str(exc)[:200]}"])
        return
    if removed:
        journal.append(rid, Step.SECRET_FILES_SWEPT, removed=removed)
    if left:
        journal.append(rid, Step.SECRET_FILES_LEFT, left=left)
