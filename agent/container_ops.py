"""Operations on one service's container that change no rollout state: logs, details, versions, exec (prune: agent/prune.py).

They answer in the same JSON shape as every agent operation (agent/answer.py); the rollout's own
operations (rollout, follow, status, unlock, prepare, freeze) stay in ops.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from . import contract, journal
from .answer import answer
from .docker_errors import DockerError, ImageNotFound, NotFound
from .paths import state_dir
from .session import on_controller_gone
from .timestamps import up_seconds

_answer = answer


def _last_lines(path, n: int, max_bytes: int = 1 << 20) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode(errors="replace").splitlines()[-n:]
    except FileNotFoundError:
        return []


def logs_op(args: dict[str, Any], emit: Callable[[dict], None]) -> dict:
    """A container's last lines (or the agent's own log); with follow, each new line as an event until it stops.

    Lines go back as data; the controller strips control characters before printing them.
    """
    tail = max(1, min(int(args.get("tail") or 100), 10000))
    if args.get("agent"):
        path = state_dir() / "agent.log"
        return _answer("logs", True, "", {"path": str(path), "lines": _last_lines(path, tail)})
    from .facts import docker_client

    service = args.get("service", "")
    since = int(time.time() - float(args["since_s"])) if args.get("since_s") else None
    client = docker_client(timeout=60 if not args.get("follow") else 86400)
    try:
        c = client.containers.get(service)
    except NotFound:
        return _answer("logs", False, f"no container named {service!r} on this host")
    kw = {"tail": tail, "timestamps": bool(args.get("timestamps")), **({"since": since} if since else {})}
    if not args.get("follow"):
        text = c.logs(**kw).decode(errors="replace")
        return _answer("logs", True, "", {"service": service, "status": c.status, "lines": text.splitlines()})
    return _follow(client, c, service, kw, emit)


SUCCESSOR_S = 10.0  # how long a follow waits for another container to take the service's name (a swap's gap)


def _follow(client, c, service: str, kw: dict[str, Any], emit: Callable[[dict], None]) -> dict:
    """Follow the service, not one container: through Docker's restarts of it, and to whatever container takes its
    name when a swap, a restart or a rollback replaces it, until none runs under that name."""
    following: dict[str, Any] = {}  # the log stream being read, for the watcher to cut
    gone = on_controller_gone(lambda: _cut(following))
    began = time.time()
    while True:
        try:
            _stream_lines(c, kw, emit, following, gone)
        except (OSError, DockerError):  # the cut stream's error: ours to swallow once the controller is gone
            if not gone.is_set():
                raise
        if gone.is_set():
            return _answer("logs", False, "the controller closed the session; stopped following", {"service": service})
        # Docker ends a follow when the container's process exits. A crash-looping container comes
        # back: follow it run after run (only what is new), until it stays stopped or is removed.
        since = time.time()
        status = _next_run(c)
        if status == "running":
            emit({"event": "log", "line": f"-- {service} restarted (restart {c.attrs.get('RestartCount', 0)}) --"})
            kw = {**{k: v for k, v in kw.items() if k != "tail"}, "since": since}
            continue
        nxt = _successor(client, service, c.id)
        if nxt is None:
            return _answer("logs", True, f"{service} stopped ({status})", {"service": service, "status": status, "lines": []})
        tag = (nxt.labels or {}).get(contract.TAG, "")
        emit({"event": "log", "line": f"-- {service} replaced: now container {nxt.id[:12]}{f' ({tag})' if tag else ''} --"})
        # Every line of a container started while we followed; of an older one given its name back (a revert restores
        # the very container set aside, days old perhaps) only what it said since the follow began.
        up = up_seconds(str((nxt.attrs.get("State") or {}).get("StartedAt") or ""), time.time())
        older = up is None or time.time() - up < began
        c, kw = nxt, {**{k: v for k, v in kw.items() if k not in ("tail", "since")}, **({"since": began} if older else {})}


def _successor(client, service: str, old_id: str, wait_s: float = SUCCESSOR_S):
    """Another container under the service's name, waiting up to wait_s for one to appear (None if none does)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            nxt = client.containers.get(service)
            # Docker resolves a name it does not know as an id prefix: only a container named so, of this service
            if nxt.id != old_id and nxt.attrs.get("Name") == f"/{service}" and (nxt.labels or {}).get(contract.SERVICE) == service:
                return nxt
        except NotFound:
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def _cut(following: dict[str, Any]) -> None:
    cut = getattr(following.get("stream"), "cut", None)
    if cut:
        cut()


def _stream_lines(c, kw: dict, emit: Callable[[dict], None], following: dict[str, Any], gone) -> None:
    buf = b""
    following["stream"] = chunks = c.logs(stream=True, follow=True, **kw)
    if gone.is_set():  # gone before the watcher could see this stream
        _cut(following)
    for chunk in chunks:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            emit({"event": "log", "line": line.decode(errors="replace")})
    if buf:
        emit({"event": "log", "line": buf.decode(errors="replace")})


def _next_run(c, grace_s: float = 2.0) -> str:
    """Wait for a container whose process exited to run again: "running", or its status once it is not coming back.

    Restarting (Docker's back-off) is waited out; "exited" gets `grace_s` to turn into restarting
    (the restart manager flags it a moment after the exit); removed is "removed".
    """
    exited_since = None
    while True:
        try:
            c.reload()
        except NotFound:
            return "removed"
        state = c.attrs.get("State") or {}
        if state.get("Running") and not state.get("Restarting"):
            return "running"
        if not state.get("Restarting"):
            exited_since = exited_since or time.monotonic()
            if time.monotonic() - exited_since > grace_s:
                return c.status
        else:
            exited_since = None
        time.sleep(0.2)


def details_op(args: dict[str, Any]) -> dict:
    """Per service: its container as Docker sees it, any kept container, and whether its -prev pin is still here."""
    from . import container_args, contract
    from .facts import docker_client, summarize_container
    from .motion import CREATED_BY

    repos: dict[str, str] = args.get("services") or {}
    client = docker_client()
    out: dict[str, dict] = {s: {"container": None, "kept": []} for s in repos}
    for c in client.containers.list(all=True, filters={"label": contract.MANAGED}):
        attrs, labels = c.attrs, c.labels or {}
        svc = labels.get(contract.SERVICE, "")
        if repos and svc not in repos:
            continue
        state = attrs.get("State") or {}
        cfg = container_args.from_inspect(attrs)
        entry = {**summarize_container(attrs), "exit_code": state.get("ExitCode"), "error": state.get("Error", ""),
                 "oom_killed": bool(state.get("OOMKilled")), "ports": cfg["ports"], "gpus": cfg["gpus"], "user": cfg["user"],
                 "restart_policy": cfg["restart"], "health": container_args.health_of(labels, {}),
                 "operator": labels.get(contract.OPERATOR, ""), "git_sha": labels.get(contract.GIT_SHA, ""),
                 # The transaction that made this very container: a rollback or restart brings an older rollout's
                 # configuration (and its rollout label) back, so the label alone names the wrong event.
                 "created_by": labels.get(CREATED_BY, "")}
        prev_tag, prev_digest = labels.get(contract.PREV_TAG, ""), labels.get(contract.PREV_DIGEST, "")
        if prev_tag and repos.get(svc):
            try:
                client.images.get(f"{repos[svc]}:{prev_tag}")
                pinned = True
            except ImageNotFound:
                pinned = False
            entry["prev"] = {"tag": prev_tag, "digest": prev_digest, "pinned": pinned}
        slot = out.setdefault(svc, {"container": None, "kept": []})
        if entry["name"] == svc:
            slot["container"] = entry
        else:
            slot["kept"].append(entry)
    from . import lock
    from .freeze import all_freezes
    from .kept import origins

    try:  # who holds the lock, by the kernel's word: a kept container is a running transaction's or a leftover
        holder = lock.read()
    except lock.LockUnsafe as exc:
        holder = {"unsafe": str(exc)}
    kept = origins([k["name"] for slot in out.values() for k in slot["kept"]])
    return _answer("details", True, "", {"services": out, "freezes": all_freezes(), "open": journal.open_ids(), "lock": holder,
                                         "kept": kept})


def versions_op(args: dict[str, Any]) -> dict:
    """What `fab versions` lists for one service here: every start, its outcome, and whether its image is still here."""
    from . import contract, versions
    from .facts import docker_client

    service = args.get("service", "")
    rows = versions.list_versions(service)
    running: dict[str, Any] = {}
    try:
        client = docker_client()
        try:
            labels = client.containers.get(service).labels or {}
            running = {"tag": labels.get(contract.TAG, ""), "digest": labels.get(contract.DIGEST, ""),
                       "rollout_id": labels.get(contract.ROLLOUT_ID, "")}
        except NotFound:
            pass
        for r in rows:
            try:
                client.images.get(r["image"])
                r["image_present"] = True
            except ImageNotFound:
                r["image_present"] = False
    except Exception as exc:  # noqa: BLE001 - the journal's record stands without Docker's view
        return _answer("versions", True, f"Docker not reachable, image presence unknown: {str(exc)[:200]}",
                       {"service": service, "versions": rows, "running": running})
    journals = versions.all_journals()
    for r in rows:
        r["running"] = False
        # `fab rollback --to` recreates a configuration some rollout set aside here: a version whose configuration went
        # with its container (removed by hand, fab remove) is no target, however present its image (exploratory run).
        if r["outcome"].startswith("committed"):
            r["config_recorded"] = bool(versions.config_for(service, r["tag"], journals)[0])
    same = [r for r in rows if running and r["tag"] == running.get("tag") and r["digest"] == running.get("digest")]
    if same:  # one row runs: the start that made the container (its rollout id), else the latest start of that release
        mine = [r for r in same if r.get("rollout_id") == running.get("rollout_id")] or same
        max(mine, key=lambda r: r.get("ts") or 0)["running"] = True
    return _answer("versions", True, "", {"service": service, "versions": rows, "running": running})


def exec_op(args: dict[str, Any]) -> dict:
    """Run one command in a service's container: argv as given (no shell anywhere), output capped, its exit code back."""
    from . import contract
    from .facts import docker_client

    service, argv = args.get("service", ""), args.get("argv") or []
    if not argv or not all(isinstance(a, str) for a in argv):
        return _answer("exec", False, "no command given")
    if args.get("user") not in (None, ""):
        # The container's own user (10001, the image contract) and nothing else: an exec as another user
        # (`user: 0`) would be root inside a container the hard rules keep non-root.
        return _answer("exec", False, f"exec runs as {service}'s own user; a user of its choosing ({args['user']!r}) is refused")
    try:
        c = docker_client(timeout=float(args.get("timeout") or 300)).containers.get(service)
    except NotFound:
        return _answer("exec", False, f"no container named {service!r} on this host")
    if (c.labels or {}).get(contract.MANAGED) != "true":
        return _answer("exec", False, f"{service!r} was not started by fleetroll; not running commands in it")
    if c.status != "running":
        return _answer("exec", False, f"{service} is {c.status}, not running: nothing to exec into (fab logs -s {service})")
    res = c.exec_run(argv, demux=True)
    out, err = res.output if isinstance(res.output, tuple) else (res.output, b"")
    cap = 1 << 20
    return _answer("exec", True, "", {"exit_code": res.exit_code, "stdout": (out or b"")[-cap:].decode(errors="replace"),
                                      "stderr": (err or b"")[-cap:].decode(errors="replace")})


def remove_op(args: dict[str, Any]) -> dict:
    """`fab remove`: a container fleetroll started and the inventory no longer names, gone for good (Kamal's `app remove`).

    Only a container with fleetroll's label is touched, with its kept containers; the
    controller refuses a service the inventory still places on the host. Journalled here
    like a transaction (accepted, removed, done), so the host's record says who removed what.
    """
    service, rid = args.get("service", ""), args.get("rollout_id", "")
    if not contract.NAME_RE.fullmatch(service or "") or not rid:
        return _answer("remove", False, f"not a service name: {service!r}")
    if args.get("dry_run"):  # what a remove would take, for the operator's question: read only, no lock
        from .facts import docker_client

        ours = _removable(docker_client(timeout=30), service)
        if isinstance(ours, dict):
            return ours
        return _answer("remove", True, "", {"would_remove": [_row(c) for c in ours]})
    from . import lock

    try:  # a transaction running here may need these containers: its revert restores the one it set aside
        held = lock.acquire(args.get("operator") or "unknown", rid)
    except lock.Locked as exc:
        return _answer("remove", False, f"host is {exc}; a transaction runs here and may need {service}'s containers (its"
                       " revert restores the one it set aside): nothing was removed; wait for it (fab status --follow), or if"
                       " it is stuck: fab unlock --host <host> --force --reason ...", {"locked": exc.holder})
    except lock.LockUnsafe as exc:
        return _answer("remove", False, f"this host's lock cannot be trusted ({exc}); nothing was removed")
    try:
        return _remove_held(args, service, rid)
    finally:
        held.release()


def _removable(client, service: str) -> list | dict:
    """The containers `fab remove` takes for `service` (its own and its kept ones), or the refusal's answer."""
    try:
        main = client.containers.get(service)
    except NotFound:
        main = None
    if main is not None and (main.labels or {}).get(contract.MANAGED) != "true":
        return _answer("remove", False, f"{service!r} was not started by fleetroll; not removing it")
    ours = list(client.containers.list(all=True, filters={"label": [contract.MANAGED, f"{contract.SERVICE}={service}"]}))
    if main is not None and main.id not in {c.id for c in ours}:
        ours.append(main)
    return ours


def _row(c) -> dict[str, str]:
    labels = c.labels or {}
    return {"name": c.name, "id": c.id[:12], "tag": labels.get(contract.TAG, ""), "digest": labels.get(contract.DIGEST, ""),
            "status": str((c.attrs.get("State") or {}).get("Status") or "")}


def _remove_held(args: dict[str, Any], service: str, rid: str) -> dict:
    """remove_op's work, under the host's lock."""
    from . import secret_files
    from .facts import docker_client
    from .motion import settled_retry
    from .vocabulary import HostState, Outcome, Step

    ours = _removable(docker_client(timeout=120), service)
    if isinstance(ours, dict):
        return ours
    asked = args.get("expect_ids")  # what the operator was shown and said yes to
    if asked is not None and sorted(c.id[:12] for c in ours) != sorted(asked):
        now = "; ".join(f"{r['name']} {r['id']}" for r in map(_row, ours)) or "nothing"
        return _answer("remove", False, f"what there is of {service} changed since you were asked (now: {now}); nothing was"
                       " removed: run fab remove again")
    if not ours:
        return _answer("remove", True, f"no container of {service} here; nothing to remove", {"removed": []})
    journal.append(rid, Step.ACCEPTED, kind="remove", service=service, operator=args.get("operator", ""), reason=args.get("reason", ""))
    removed = []
    for c in ours:
        row = _row(c)
        settled_retry(lambda c=c: c.update(restart_policy={"Name": "no"}))
        settled_retry(lambda c=c: c.remove(force=True))
        left = secret_files.release(c.attrs)  # its secret files go with it (only the directory the agent made for it)
        if left:
            journal.append(rid, Step.SECRET_FILES_LEFT, service=service, container=c.id, left=left)
        removed.append({**row, **({"secret_files_left": left} if left else {})})
        journal.append(rid, Step.REMOVED, service=service, container=c.id, name=row["name"], tag=row["tag"])
    journal.append(rid, Step.DONE, ok=True, state=HostState.GOOD,
                   services=[{"service": service, "action": "remove", "outcome": Outcome.REMOVED}])
    return _answer("remove", True, f"removed {', '.join(x['name'] for x in removed)}", {"removed": removed}, changed=True)
