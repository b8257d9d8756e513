"""Agent operations on rollout state: rollout, journal (follow), status, unlock, prepare, freeze; and dispatch.

dispatch() routes every operation but `facts` (answered by agent/__main__.py): the six above here; logs, details,
versions, exec, prune and remove to agent/container_ops.py; swarm_secrets to agent/swarm_secrets.py; proxy_handover
to agent/handover.py.

A rollout runs in a detached grandchild process (its own session, no tie to the SSH channel) that holds the host's
lock: the process the controller talks to only follows the journal and relays it as progress events. If the controller
is killed or the link drops, the grandchild finishes the transaction and writes its outcome regardless; if the
grandchild itself dies, whoever next takes the lock recovers its journal.
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

from . import container_args, contract, journal, lock
from .answer import answer
from .container_ops import details_op, exec_op, logs_op, remove_op, versions_op  # noqa: F401 - dispatch's, and tests' names
from .follow import follow_journal as _follow
from .paths import state_dir
from .prune import prune_op
from .unlock_op import unlock  # noqa: F401 - dispatch's, and tests' name
from .vocabulary import HostState, Journal, Step

_answer = answer


def _detach(fn: Callable[[], None]) -> tuple[int, int]:
    """Run fn in a grandchild in its own session; return the grandchild's pid and the read end of its wake-up pipe.

    The grandchild writes a byte to that pipe with every journal record (journal.wake_follower_through),
    and the pipe's end of file says it has exited (or died): the follower waits on it instead of a timer.
    """
    r, w = os.pipe()
    wake_r, wake_w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        for fd in (r, w, wake_r, wake_w):  # this process serves more calls: leak nothing
            os.close(fd)
        raise
    if pid == 0:  # child
        try:
            os.setsid()
            if os.fork():
                os._exit(0)
            os.close(r)
            os.close(wake_r)
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            journal.wake_follower_through(wake_w)
            devnull = os.open(os.devnull, os.O_RDWR)
            log = os.open(state_dir() / "agent.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o660)
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
    os.close(wake_w)  # the grandchild's is then the only write end: its exit is this end's end of file
    os.waitpid(pid, 0)
    gpid = int(os.read(r, 32) or b"0")
    os.close(r)
    if not gpid:
        os.close(wake_r)
        raise RuntimeError("could not start the detached transaction process (fork failed)")
    return gpid, wake_r


def _run_detached_transaction(args: dict[str, Any], held: lock.Held) -> None:
    from . import secret_sweep
    from .transaction import Transaction  # already imported by rollout(): the fork inherits it

    rid = args["rollout_id"]
    held.record(args.get("operator", "unknown"))  # the holder is now this process
    journal.append(rid, Step.WORKER, pid=os.getpid())
    try:
        tx = Transaction(args)
        result = tx.run()
    except Exception as exc:  # noqa: BLE001 - the journal must get an outcome whatever happens
        # Whatever the transaction did not finish, recovery finishes from its journal.
        journal.append(rid, Step.CRASHED, error=str(exc)[:300], traceback=traceback.format_exc())
        from .recovery import recover

        try:
            recover(rid)
        finally:
            held.release()  # if recovery failed too, the journal stays open and the next call tries again
        return
    journal.append(rid, Step.DONE, **result)
    journal.mark_closed(rid)
    secret_sweep.after_transaction(rid, tx.client)  # still under the lock: a container removed by hand leaves its secrets
    held.release()


def accepted_record(args: dict[str, Any]) -> dict[str, Any]:
    """What recovery needs to know about a transaction, journalled before it starts."""
    steps = args.get("steps") or []
    return {
        "operator": args.get("operator", "unknown"),
        "phase": args.get("phase"),
        "policy": args.get("on_failure", "revert-phase"),
        "kind": ("revert" if steps and all(s["action"] == "revert" for s in steps)
                 else "restart" if steps and all(s["action"] == "restart" for s in steps) else "rollout"),
        "steps": [{"service": s["spec"]["name"], "action": s["action"], "health": s["spec"].get("health") or {}} for s in steps],
    }


def rollout(args: dict[str, Any], emit: Callable[[dict], None]) -> dict:
    rid = args["rollout_id"]
    holder = args.get("operator", "unknown")
    from . import transaction  # noqa: F401 - import the transaction once, before the fork

    try:
        held = lock.acquire(holder, rid)
    except lock.Locked as exc:
        return _answer("rollout", False, f"host is {exc}; wait for it to finish (a dead holder releases it by itself;"
                       " a live but stuck one: fab unlock --host <host> --force --reason ...)", {"locked": exc.holder})
    journal.mark_last(rid)
    journal.mark_open(rid)
    journal.append(rid, Step.ACCEPTED, **accepted_record(args))
    try:
        _, wake = _detach(lambda: _run_detached_transaction(args, held))
    except Exception:
        journal.append(rid, Step.DONE, ok=False, state=HostState.GOOD, error="could not start the transaction process", services=[])
        journal.mark_closed(rid)
        held.release()
        raise
    # The worker holds the lock through the descriptor it inherited; ours goes (not unlocked).
    os.close(held.fd)
    try:
        done = _follow(rid, emit, wake_fd=wake)
    finally:
        os.close(wake)
    if done is None:
        return _answer("rollout", False, f"no outcome from the transaction; see the journal {journal.path_for(rid)} and the agent log"
                       f" {state_dir() / 'agent.log'} (fab logs --agent --host {args.get('host') or 'HOST'})", {"rollout_id": rid})
    data = {k: v for k, v in done.items() if k not in ("step",)}
    return _answer("rollout", bool(done.get("ok")), "" if done.get("ok") else "rollout failed on this host", data, changed=True)


def follow(args: dict[str, Any], emit: Callable[[dict], None]) -> dict:
    """Re-attach to a rollout (after the link dropped) and wait for its outcome."""
    rid = args["rollout_id"]
    records = journal.read(rid)
    if not records:
        return _answer("journal", False, f"no journal for rollout {rid} on this host")
    done = journal.outcome(records) or _follow(rid, emit, time.monotonic() + float(args.get("timeout", 300)))
    if done is None:
        return _answer("journal", False, f"rollout {rid} has no outcome yet",
                       {"records": [container_args.redacted_record(r) for r in records[-20:]]})
    return _answer("journal", bool(done.get("ok")), "", {k: v for k, v in done.items() if k != "step"})


def status(args: dict[str, Any]) -> dict:
    from . import health
    from .container_diffs import foreign_by_name
    from .facts import docker_facts

    docker = docker_facts()
    probes = {}
    running = {c["name"]: c for c in docker.get("containers") or []}
    for svc, h in (args.get("health") or {}).items():
        # What runs is probed by the settings it was started with (a rollback may have brought back another port);
        # the inventory's are for a container that has none recorded.
        c = running.get(svc) or {}
        h = container_args.health_of({contract.HEALTH: c.get("health") or ""}, h)
        addr = (c.get("addresses") or {}).get(h.get("network") or "", "")
        if h.get("network") and not addr:
            probes[svc] = health.Probe(False, f"no container with an address on {h['network']}").__dict__
            continue
        probes[svc] = health.probe(health.url_for(h, addr), 2.0).__dict__
    collector = None
    if args.get("collector_port"):
        collector = _collector_services(int(args["collector_port"]))
    last = journal.last_id()
    records = journal.read(last) if last else []
    done = journal.outcome(records)
    try:
        holder = lock.read()  # the kernel's word on who holds it; the file's record is information only
    except lock.LockUnsafe as exc:
        holder = {"unsafe": str(exc)}
    last_info = None
    if last:
        from .container_args import redact_record

        # Journal records keep the host's env values (a set-aside record holds the old configuration);
        # what leaves the host carries names and keyed hashes only.
        key = journal.redaction_key()
        state = Journal.FINISHED if done else (Journal.RUNNING if holder and not holder.get("unsafe") else Journal.INTERRUPTED)
        last_info = {"rollout_id": last, "state": state, "outcome": redact_record(done, key), "steps": len(records),
                     "last_step": redact_record(records[-1], key) if records else None}
    earlier = _finished_earlier(args.get("pending") or [], last)
    from .facts import proxy_view
    from .freeze import all_freezes

    proxied = proxy_view() if args.get("proxy") else None
    gpu = None
    if args.get("gpu"):
        from .facts import nvml

        gpu = nvml()
    from .kept import origins

    # Whether a kept container is a transaction's or a leftover: open journals and the lock (above) say; no Docker call.
    return _answer("status", docker.get("ok", False), docker.get("error", ""),
                   {"docker": docker, "health": probes, "lock": holder, "last": last_info, "collector": collector,
                    "open": journal.open_ids(), "kept": origins(list(running)), "earlier": earlier,
                    "freezes": all_freezes(), "nvml": gpu, "proxy": proxied,
                    "foreign": foreign_by_name([s for s in args.get("health") or {} if s not in running]) if docker.get("ok") else {}})


def _finished_earlier(pending: list, last: str) -> list[dict[str, Any]]:
    """How transactions the controller never saw end did end here, when a later one is this host's last.

    Found by an exploratory run: a rollout killed with the controller, then superseded by the next rollout, stayed
    'unfinished' in fab history for good: status reports only the host's last transaction. The controller names
    the rollouts it still waits to hear of (a handful at most); only those journals are read.
    """
    from .container_args import redact_record

    out = []
    for rid in [r for r in pending if isinstance(r, str)][:20]:
        # A phase revert's journal, when there is one, says how the host ended: the rollout's own 'committed' was
        # undone by it (an independent read found history calling such a host committed, and advising a rollback).
        hid, recs = f"{rid}-revert", journal.read(f"{rid}-revert")
        if not recs:
            hid, recs = rid, journal.read(rid)
        done = journal.outcome(recs) if hid != last else None
        if done:
            out.append({"rollout_id": hid, "state": Journal.FINISHED, "outcome": redact_record(done, journal.redaction_key())})
    return out


def _collector_services(port: int) -> dict:
    """Ask the collector on this host what each service reported at start-up."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/services", timeout=3) as r:
            rows = json.loads(r.read()).get("services", [])
    except Exception as exc:  # noqa: BLE001 - status must still answer
        return {"ok": False, "error": f"collector not answering on port {port}: {exc}"}
    # A row that does not say which host and service it is about is about nothing: dropped, counted.
    good = [r for r in rows if isinstance(r, dict) and isinstance(r.get("host"), str) and r.get("host")
            and isinstance(r.get("service"), str) and r.get("service")] if isinstance(rows, list) else []
    return {"ok": True, "services": good, "malformed": (len(rows) if isinstance(rows, list) else 1) - len(good)}


def prepare(args: dict[str, Any]) -> dict:
    """Pull every image of this host's steps by digest and check it, stopping nothing.

    The controller runs this on every host before any host swaps, so a registry that went
    away after preflight or a tag re-pushed after planning stops the rollout everywhere
    before the first container is touched. So does what the swap itself would refuse before
    stopping anything (a secret missing or unreadable here, a bind or user the hard rules
    forbid): found here, no other host swaps and reverts for it.
    """
    from . import proxy
    from .transaction import StepFailed, Transaction, failure_text

    tx = Transaction({**args, "rollout_id": f"{args['rollout_id']}-prepare"})
    out = []
    for step in args.get("steps") or []:
        name = step["spec"]["name"]
        try:
            spec = step["spec"]
            image, git_sha = tx.prepare(spec, name)
            labels = container_args.labels_for(spec, spec["tag"], spec["digest"], args["rollout_id"], args.get("phase", ""),
                                               args.get("operator", ""), git_sha)  # as the swap makes them (its env reads the digest)
            refused = tx._unsafe(container_args.from_spec(proxy.host_spec(spec, create=False), image.id, labels))
            if refused:
                raise StepFailed("container-config", "; ".join(refused) + "; refused, nothing was stopped")
            out.append({"service": name, "ok": True})
        except StepFailed as exc:
            out.append({"service": name, "ok": False, "check": exc.check, "message": str(exc)})
        except Exception as exc:  # noqa: BLE001
            out.append({"service": name, "ok": False, "check": "prepare", "message": f"{failure_text(exc)}; nothing was stopped"})
    bad = [s for s in out if not s["ok"]]
    return _answer("prepare", not bad, "; ".join(f"{s['service']}: {s['message']}" for s in bad), {"services": out})


def freeze_op(args: dict[str, Any]) -> dict:
    """Freeze or thaw a phase on this host (`fab freeze` / `fab thaw`; a swarm rollout's automatic freeze and its lifting)."""
    from . import freeze

    phase, by, reason = args.get("phase", ""), args.get("operator", "unknown"), args.get("reason", "")
    try:
        if args.get("thaw"):
            removed = freeze.thaw(phase, by, reason, only_auto=bool(args.get("only_auto")))
            return _answer("freeze", True, _thawed_words(phase, removed), {"removed": removed}, changed=removed is not None)
        before = freeze.read(phase)
        auto = freeze.automatic(args)
        rec = freeze.write(phase, reason, by, **auto)
        return _answer("freeze", True, _froze_words(phase, before, rec, bool(auto)), {"freeze": rec}, changed=True)
    except (ValueError, OSError) as exc:
        return _answer("freeze", False, str(exc))


def _auto_words(rec: dict[str, Any]) -> str:
    what = ", ".join(f"{s}:{t}" for s, t in sorted((rec.get("releases") or {}).items())) or "a failed release"
    return f"the automatic freeze against {what} (rollout {rec.get('rollout_id') or '?'})"


def _froze_words(phase: str, before: dict[str, Any] | None, rec: dict[str, Any], auto: bool) -> str:
    """What `fab freeze` did here, including what it did not replace silently (pure)."""
    if auto and not rec.get("auto"):
        return f"froze {phase} automatically, under the freeze by {rec.get('by')} (in force once that is thawed)"
    if auto:
        return f"froze {phase}"
    words = f"froze {phase}"
    if before and not before.get("auto"):
        words += f", replacing the freeze by {before.get('by')} ({before.get('reason')!r})"
    if rec.get("kept_auto"):
        words += f"; {_auto_words(rec['kept_auto'])} stays under it and is back in force when this is thawed"
    return words


def _thawed_words(phase: str, removed: dict[str, Any] | None) -> str:
    if removed is None:
        return f"{phase} was not frozen here"
    if removed.get("kept_auto"):
        return (f"thawed {phase} (the freeze by {removed.get('by')}); {_auto_words(removed['kept_auto'])} is in force"
                f" again: it refuses only that release; fab thaw --phase {phase} again to lift it")
    return f"thawed {phase}"


def dispatch(op: str, args: dict[str, Any], emit: Callable[[dict], None]) -> dict:
    if op == "exec":
        return exec_op(args)
    if op == "prune":
        return prune_op(args)
    if op == "remove":
        return remove_op(args)
    if op == "logs":
        return logs_op(args, emit)
    if op == "details":
        return details_op(args)
    if op == "versions":
        return versions_op(args)
    if op == "swarm_secrets":
        from .swarm_secrets import swarm_secrets_op

        return swarm_secrets_op(args)
    if op == "proxy_handover":
        from .handover import handover_op

        return handover_op(args)
    if op == "freeze":
        return freeze_op(args)
    if op == "prepare":
        return prepare(args)
    if op == "unlock":
        return unlock(args)
    if op == "rollout":
        return rollout(args, emit)
    if op == "journal":
        return follow(args, emit)
    return status(args)
