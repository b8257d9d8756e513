"""`fab unlock` on the host: who holds the lock is the kernel's word; --force stops only the agent that holds it."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

from . import lock
from .answer import answer as _answer
from .paths import state_dir


def unlock(args: dict[str, Any]) -> dict:
    """A dead holder needs no unlock (the kernel released it); a live but stuck one is stopped with --force.

    Who holds the lock is the kernel's word (/proc/locks and the holder's fdinfo), never the
    lock file's content. --force signals a process only when the kernel confirms it holds the
    flock on this very inode, it is a Python interpreter (the agent) and the holder record names
    that very process (pid + start time); then recovery finishes its transaction, so the host is
    left in a good state, not merely unlocked.
    """
    try:
        info = lock.read()
    except lock.LockUnsafe as exc:
        return _answer("unlock", False, f"{exc}; nothing was signalled")
    rec: dict[str, Any] = {"ts": time.time(), "by": args.get("operator"), "reason": args.get("reason"), "holder": info}
    if info is None:
        msg = "not locked: no live transaction holds this host's lock (a dead one releases it by itself)"
    elif not args.get("force"):
        note = f" ({info['note']})" if info.get("note") else ""
        return _answer("unlock", False, f"lock is held by a live transaction (pid {info.get('pid') or '?'}, rollout {info.get('rollout_id')},"
                       f" {info.get('holder')}){note}; it releases it when done. If it is stuck: {_force_words(info)}",
                       {"lock": info})
    else:
        pid, start = int(info.get("pid") or 0), str(info.get("start") or "")
        if not (pid and info.get("record_agrees") and lock.is_python(pid)):
            why = info.get("note") or f"pid {pid} is not a Python interpreter (not the agent)"
            return _answer("unlock", False, f"not signalling anything: the kernel does not confirm that the agent process the"
                           f" lock file names holds the lock: {why}. Look at {info.get('path')} with `cat /proc/locks` on the"
                           " host and stop the holder yourself once you know what it is.", {"lock": info})
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            lock.signal_holder(pid, start, sig)
            end = time.monotonic() + wait
            while time.monotonic() < end and lock.same_process(pid, start):
                time.sleep(0.05)
            if not lock.same_process(pid, start):
                break
        msg = f"stopped pid {pid} ({info.get('holder')}, rollout {info.get('rollout_id')})"
    from .recovery import recover_pending

    rec["recovered"] = recover_pending(f"unlock by {args.get('operator')}")
    if rec["recovered"]:
        msg += "; recovered " + ", ".join(f"{r['rollout_id']} ({r['state']})" for r in rec["recovered"])
    with open(state_dir() / "unlocks.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    return _answer("unlock", True, msg, rec, changed=bool(info))


def _force_words(info: dict[str, Any]) -> str:
    """What --force would do, for this caller: another account's process is not ours to signal (exploratory run:
    the other operator account was told '--force stops that process', and --force then refused)."""
    try:
        owner = os.stat(f"/proc/{int(info.get('pid') or 0)}").st_uid
    except (OSError, ValueError):
        owner = None
    if owner is not None and os.geteuid() not in (0, owner):
        return (f"that process belongs to another account (uid {owner}), which this one may not stop: ask that operator"
                " (fab unlock --force as that user) or root on the host.")
    return "--force stops that process and recovers its transaction."
