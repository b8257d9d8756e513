"""Whether the controller is still there: the end of the agent's stdin during a session.

A request with "session": true means the controller keeps our stdin open and sends nothing
while it waits for the answer, so the end of stdin mid-op can only mean it died or gave up.
Over paramiko a dead controller closes the whole channel and the next write fails; over
OpenSSH the controller's `ssh` can outlive it, still reading our output, and only passes on
the end of its input. Either way the op stops there: a rollout's transaction runs detached
and finishes (or is recovered) without it.
"""

from __future__ import annotations

import select
import sys
import threading
from collections.abc import Callable

SESSION = {"open": False}  # a "session" request: the controller keeps our stdin open until it has the answer


def controller_gone() -> bool:
    """Our stdin at its end while an op runs. Peeking cannot take a byte of a next request."""
    try:
        if not select.select([sys.stdin], [], [], 0)[0]:
            return False
        return sys.stdin.buffer.peek(1) == b""
    except (OSError, ValueError):
        return False


def on_controller_gone(act: Callable[[], None]) -> threading.Event:
    """In a session, call `act` (from a thread of its own) once our stdin ends; the event says it happened.

    For an op that waits on something other than its own progress (a `logs -f` of a quiet
    container blocks on Docker's stream for hours): checking at each line it writes, as
    emit() does, would leave it running until the container next says something. Outside a
    session the controller closes stdin right after the request, so nothing is watched.
    """
    gone = threading.Event()
    if not SESSION["open"]:
        return gone

    def watch() -> None:
        try:
            select.select([sys.stdin], [], [])  # readable: the end of stdin, or (not in a session's rules) a byte
            if sys.stdin.buffer.peek(1) != b"":
                return  # a next request arrived after the op: the op has ended, nothing to stop
        except (OSError, ValueError):
            return
        gone.set()
        act()

    threading.Thread(target=watch, name="controller-watch", daemon=True).start()
    return gone
