"""The host-side journal: each step is written (and fsync'd) before it is done.

If the controller dies or the link drops, whoever looks next (`fab status`, the next
rollout) reads here what the host did and how it ended. One JSON-lines file per
rollout, plus `last` naming the most recent one, and an empty marker under `open/` for
each transaction that has not written its outcome: the next agent call finds
interrupted transactions there without reading every journal ever written.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from . import vocabulary
from .paths import state_dir

TYPE_CHECKING = False  # importing typing costs every agent call ~2.5 ms; Any is only ever an annotation here
if TYPE_CHECKING:
    from typing import Any


def _dir() -> Path:
    d = state_dir() / "journal"
    d.mkdir(parents=True, exist_ok=True)
    return d


def path_for(rollout_id: str) -> Path:
    safe = "".join(ch for ch in rollout_id if ch.isalnum() or ch in "-_.T")
    return _dir() / f"{safe}.jsonl"


_wake: list[int] = []  # in a detached transaction: the pipe its follower waits on (ops._detach)


def wake_follower_through(fd: int) -> None:
    """From now on every record written by this process also writes a byte to `fd` (non-blocking).

    The agent process that relays a detached transaction's journal to the controller then waits
    on the pipe, not on a timer: each record reaches the controller when it is written, and a
    follower idle through a long gate costs the host nothing. The journal stays the only record;
    the byte says nothing but "look again".
    """
    os.set_blocking(fd, False)
    _wake[:] = [fd]


def append(rollout_id: str, step: str, **fields: Any) -> dict:
    """Write one record and fsync it. A step outside the vocabulary is a programming error, refused before writing."""
    if not vocabulary.is_step(step):
        raise ValueError(f"journal step {step!r} is not in agent/vocabulary.py")
    rec = {"ts": round(time.time(), 3), "rollout_id": rollout_id, "step": step, **fields}
    line = (json.dumps(rec, separators=(",", ":"), default=str) + "\n").encode()
    fd = os.open(path_for(rollout_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o660)
    try:
        os.write(fd, line)  # one write of one line: never interleaved, never half a record
        os.fsync(fd)
    finally:
        os.close(fd)
    if _wake:
        try:
            os.write(_wake[0], b"\n")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups the follower has not read yet: it will look anyway
        except OSError:
            _wake.clear()  # the follower is gone (its controller went): nobody waits any more
    return rec


def mark_last(rollout_id: str) -> None:
    tmp = _dir() / f".last.{os.getpid()}"
    tmp.write_text(rollout_id)
    os.replace(tmp, _dir() / "last")


def last_id() -> str | None:
    p = _dir() / "last"
    return p.read_text().strip() if p.exists() else None


def read(rollout_id: str) -> list[dict]:
    p = path_for(rollout_id)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a torn last line after a power cut: ignore it
    return out


def outcome(records: list[dict]) -> dict | None:
    done = [r for r in records if r.get("step") == vocabulary.Step.DONE]
    return done[-1] if done else None


def _open_dir() -> Path:
    d = _dir() / "open"
    d.mkdir(exist_ok=True)
    return d


def mark_open(rollout_id: str) -> None:
    (_open_dir() / path_for(rollout_id).name).touch()


def mark_closed(rollout_id: str) -> None:
    try:
        (_open_dir() / path_for(rollout_id).name).unlink()
    except FileNotFoundError:
        pass


def ids() -> list[str]:
    """Every journal kept here, by its file's name (the rollout id as path_for made it safe); none is read."""
    return [p.name[: -len(".jsonl")] for p in _dir().glob("*.jsonl")]


def open_ids() -> list[str]:
    """Transactions that were accepted and have not (yet) written their outcome."""
    d = _dir() / "open"
    if not d.is_dir():
        return []
    out = []
    for marker in sorted(d.iterdir()):
        recs = read(marker.name[: -len(".jsonl")])
        out.append(recs[0]["rollout_id"] if recs else marker.name[: -len(".jsonl")])
    return out


def redaction_key() -> bytes:
    """This host's key for hashing env values in answers: random, made once, readable by the state dir's group only."""
    from .keyfile import load_or_create

    return load_or_create(state_dir() / "redaction.key", 0o640)
