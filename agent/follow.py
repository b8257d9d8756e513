"""Following a transaction that runs detached: its journal relayed as progress lines until its outcome.

Split from agent/ops.py. The follower is the agent process the controller talks to; the
transaction is another process (ops._detach). When the transaction's process dies, the
follower recovers it (agent/recovery.py) and keeps relaying; when the controller goes, the
follower stops relaying but lets a recovery it started finish first.
"""

from __future__ import annotations

import json
import os
import select
import threading
import time
import traceback
from collections.abc import Callable

from . import container_args, journal, lock
from .vocabulary import Step

HEARTBEAT_S = 2.0
LOCK_CHECK_S = 0.5  # with no news, how often the worker's lock is tried (it is free only once the worker is dead)
POLL_S = 0.02  # how often the journal is read when no wake-up pipe says when
LOCK_UNSAFE_GRACE_S = 60.0  # a lock check failing this long while following is an answer, not a blip (a dockerd restart)


def follow_journal(rid: str, emit: Callable[[dict], None], deadline: float | None = None,
                   wake_fd: int | None = None) -> dict | None:
    """Relay journal records as events until the outcome is written.

    The worker's liveness is the lock itself: if this process can take it, the worker is
    dead (the kernel released its flock). This process then recovers the transaction (in a
    thread, still relaying) and the recovered outcome is the answer. `wake_fd` (the worker's
    wake-up pipe, from ops._detach) is read instead of polling the journal: a byte per record,
    and end of file when the worker has exited, so the lock is looked at then, not up to 0.5 s later.
    """
    recovering: list[threading.Thread] = []
    try:
        return _relay(rid, journal.path_for(rid), emit, deadline, recovering, [wake_fd] if wake_fd is not None else [])
    except BrokenPipeError:
        # The controller is gone. A recovery this process started must not die with it half-way (a service
        # stopped and not yet started again): relaying stops, the recovery finishes, then this process ends.
        for t in recovering:
            t.join()
        raise


def _wait(wake: list[int], idle_s: float) -> bool:
    """Until the worker writes its next record (or up to idle_s); True when its pipe ended: it has exited.

    Without a pipe (a follower that did not start the worker, or once recovery writes the journal
    from this very process) the journal is looked at every POLL_S.
    """
    if not wake:
        time.sleep(POLL_S)
        return False
    if select.select(wake, [], [], idle_s)[0]:
        if not os.read(wake[0], 4096):
            wake.clear()
            return True
    return False


def _relay(rid: str, path, emit: Callable[[dict], None], deadline: float | None,
           recovering_out: list[threading.Thread], wake: list[int]) -> dict | None:
    offset, last_beat, last_check = 0, time.monotonic(), time.monotonic()
    worker_exited = False
    unsafe_since: float | None = None
    recovering: threading.Thread | None = None
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
            # The old configuration stays on the host (its env values are the host's business).
            # The old configuration stays here whole; anything else that carries an env leaves as names and hashes.
            safe = container_args.redacted_record(rec) if "env" in json.dumps(rec) else rec
            emit({"event": rec.get("step"), **{k: v for k, v in safe.items() if k not in ("step", "old_config")}})
            if rec.get("step") == Step.DONE:
                return rec
        now = time.monotonic()
        if not new and now - last_beat > HEARTBEAT_S:
            emit({"event": "heartbeat", "rollout_id": rid})
            last_beat = now
        elif new:
            last_beat = now
        if not new and recovering is None and (worker_exited or now - last_check > LOCK_CHECK_S):
            last_check, worker_exited = now, False
            try:
                held = lock.try_acquire("recovery", rid)
                unsafe_since = None
            except lock.LockUnsafe:
                # The lock's checks need the Docker socket's group: while dockerd restarts the socket is gone for a
                # moment. That says nothing about the worker (it holds its flock either way): look again shortly,
                # and give up only if the lock stays unusable.
                held, unsafe_since = None, unsafe_since or now
                if now - unsafe_since > LOCK_UNSAFE_GRACE_S:
                    raise
            if held is not None:
                # The worker is dead. Recover in a thread while this loop keeps relaying the
                # journal (and heartbeats), so the controller sees the restore as it happens.
                recovering = threading.Thread(target=_recover_holding, args=(rid, held), daemon=True)
                recovering.start()
                recovering_out.append(recovering)
        if recovering is not None and not recovering.is_alive() and not new:
            done = journal.outcome(journal.read(rid))
            if done is None or offset >= path.stat().st_size:
                return done
        if deadline and now > deadline:
            return None
        # The worker has exited: if it wrote no outcome, its lock is free now (looked at on the next pass).
        worker_exited = _wait(wake if recovering is None else [], min(LOCK_CHECK_S / 2, HEARTBEAT_S)) or worker_exited


def _recover_holding(rid: str, held: lock.Held) -> None:
    from .recovery import recover

    try:
        recover(rid)
    except Exception:  # noqa: BLE001 - the follower reports a missing outcome; the traceback goes to the agent log
        traceback.print_exc()
    finally:
        held.release()
