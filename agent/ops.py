"""Agent operations that change or report rollout state: rollout, status, journal, unlock.

A rollout runs in a detached grandchild process (its own session, no tie to the SSH
channel): the process the controller talks to only follows the journal and relays it
as progress events. If the controller is killed or the link drops, the grandchild
finishes the transaction and writes its outcome to the journal regardless.
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

from . import PROTOCOL, journal, lock
from .paths import state_dir

HEARTBEAT_S = 2.0


def _answer(op: str, ok: bool, msg: str = "", data: Any = None, changed: bool = False) -> dict:
    return {"protocol": PROTOCOL, "op": op, "ok": ok, "changed": changed, "msg": msg, "data": data or {}}


def _detach(fn: Callable[[], None]) -> int:
    """Run fn in a grandchild in its own session; return the grandchild's pid."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.setsid()
            if os.fork():
                os._exit(0)
            os.close(r)
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            devnull = os.open(os.devnull, os.O_RDWR)
            log = os.open(state_dir() / "agent.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            os.dup2(devnull, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
            fn()
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    gpid = int(os.read(r, 32) or b"0")
    os.close(r)
    return gpid


def _follow(rid: str, pid: int, emit: Callable[[dict], None], deadline: float | None = None) -> dict | None:
    """Relay journal records as events until the outcome is written (or the worker died)."""
    path = journal.path_for(rid)
    offset, last_beat = 0, time.monotonic()
    while True:
        new = []
        if path.exists():
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            offset += len(complete)
            new = [json.loads(x) for x in complete.splitlines() if x.strip()]
        for rec in new:
            emit({"event": rec.get("step"), **{k: v for k, v in rec.items() if k != "step"}})
            if rec.get("step") == "done":
                return rec
        if not new and time.monotonic() - last_beat > HEARTBEAT_S:
            emit({"event": "heartbeat", "rollout_id": rid})
            last_beat = time.monotonic()
        elif new:
            last_beat = time.monotonic()
        if pid and not lock.alive(pid):
            done = journal.outcome(journal.read(rid))
            return done
        if deadline and time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def _run_detached_transaction(args: dict[str, Any]) -> None:
    from .transaction import Transaction  # already imported by rollout(): the fork inherits it

    rid = args["rollout_id"]
    try:
        result = Transaction(args).run()
    except Exception as exc:  # noqa: BLE001 - the journal must get an outcome whatever happens
        result = {"ok": False, "state": "needs-operator", "error": f"transaction crashed: {exc}", "services": []}
        journal.append(rid, "crashed", traceback=traceback.format_exc())
    journal.append(rid, "done", **result)
    lock.release(rid)


def rollout(args: dict[str, Any], emit: Callable[[dict], None]) -> dict:
    rid = args["rollout_id"]
    holder = args.get("operator", "unknown")
    from . import transaction  # noqa: F401 - import the docker SDK once, before the fork

    try:
        stale = lock.acquire(holder, rid)
    except lock.Locked as exc:
        return _answer("rollout", False, f"host is {exc}; wait for it, or if it is dead: fab unlock --host <host> --reason ...", {"locked": exc.holder})
    journal.mark_last(rid)
    journal.append(rid, "accepted", operator=holder, phase=args.get("phase"), stale_lock=stale,
                   steps=[{"service": s["spec"]["name"], "action": s["action"]} for s in args.get("steps", [])])
    try:
        pid = _detach(lambda: _run_detached_transaction(args))
    except Exception:
        lock.release(rid)
        raise
    lock.hand_over(rid, pid)
    done = _follow(rid, pid, emit)
    if done is None:
        return _answer("rollout", False, "the transaction process died without an outcome; see the agent log", {"rollout_id": rid})
    data = {k: v for k, v in done.items() if k not in ("step",)}
    return _answer("rollout", bool(done.get("ok")), "" if done.get("ok") else "rollout failed on this host", data, changed=True)


def follow(args: dict[str, Any], emit: Callable[[dict], None]) -> dict:
    """Re-attach to a rollout (after the link dropped) and wait for its outcome."""
    rid = args["rollout_id"]
    records = journal.read(rid)
    if not records:
        return _answer("journal", False, f"no journal for rollout {rid} on this host")
    holder = lock.read() or {}
    pid = int(holder.get("pid", 0)) if holder.get("rollout_id") == rid else 0
    done = journal.outcome(records) or _follow(rid, pid, emit, time.monotonic() + float(args.get("timeout", 300)))
    if done is None:
        return _answer("journal", False, f"rollout {rid} has no outcome yet", {"records": records[-20:]})
    return _answer("journal", bool(done.get("ok")), "", {k: v for k, v in done.items() if k != "step"})


def status(args: dict[str, Any]) -> dict:
    from . import health
    from .facts import docker_facts

    docker = docker_facts()
    probes = {}
    for svc, h in (args.get("health") or {}).items():
        probes[svc] = health.probe(f"http://127.0.0.1:{h['port']}{h.get('path', '/health')}", 2.0).__dict__
    collector = None
    if args.get("collector_port"):
        collector = _collector_services(int(args["collector_port"]))
    last = journal.last_id()
    records = journal.read(last) if last else []
    done = journal.outcome(records)
    holder = lock.read()
    if holder:
        holder["alive"] = lock.alive(int(holder.get("pid", 0)))
    last_info = None
    if last:
        state = "finished" if done else ("running" if holder and holder.get("alive") else "interrupted")
        last_info = {"rollout_id": last, "state": state, "outcome": done, "steps": len(records),
                     "last_step": records[-1] if records else None}
    return _answer("status", docker.get("ok", False), docker.get("error", ""),
                   {"docker": docker, "health": probes, "lock": holder, "last": last_info, "collector": collector})


def _collector_services(port: int) -> dict:
    """Ask the collector on this host what each service reported at start-up."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/services", timeout=3) as r:
            return {"ok": True, "services": json.loads(r.read()).get("services", [])}
    except Exception as exc:  # noqa: BLE001 - status must still answer
        return {"ok": False, "error": f"collector not answering on port {port}: {exc}"}


def unlock(args: dict[str, Any]) -> dict:
    info = lock.read()
    if info is None:
        return _answer("unlock", True, "not locked")
    if lock.alive(int(info.get("pid", 0))) and not args.get("force"):
        return _answer("unlock", False, f"lock is held by a live transaction (pid {info.get('pid')}, rollout {info.get('rollout_id')}); it will release it when done. Use --force only if you know it is stuck.", {"lock": info})
    removed = lock.force_release()
    rec = {"ts": time.time(), "removed": removed, "by": args.get("operator"), "reason": args.get("reason")}
    with open(state_dir() / "unlocks.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    return _answer("unlock", True, f"removed lock of {removed.get('holder') if removed else '?'}", rec, changed=True)


def dispatch(op: str, args: dict[str, Any], emit: Callable[[dict], None]) -> dict:
    if op == "rollout":
        return rollout(args, emit)
    if op == "journal":
        return follow(args, emit)
    if op == "status":
        return status(args)
    return unlock(args)
