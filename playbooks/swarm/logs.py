"""`fab logs -s SVC --follow` on a swarm service: `docker service logs --follow` through a manager, streamed.

The SSH push follows a container through its host's agent, whose log lines come back as events
that tasks.logs prints as they come (render.say) until the container stops, and Ctrl-C ends with
exit 130. Here a manager streams every task's lines of the service over the same strict SSH
connection (remote.Host.stream); each line is cleaned as every logs path cleans host output
(agent/motion.clean_lines: terminal escapes gone, long lines cut) before it reaches on_line, and
the same task prints it and ends it the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.motion import clean_lines

from ..errors import RolloutError
from .remote import Host, SwarmCommandError

MAX_PENDING = 64 << 10  # bytes of one line without a newline kept before it is printed as it is (clean_lines cuts it)


class Lines:
    """Output as it comes, in chunks, to whole cleaned lines handed to on_line (pure but for on_line)."""

    def __init__(self, on_line: Callable[[str], None]):
        self.on_line, self.pending = on_line, b""

    def feed(self, data: bytes) -> None:
        *whole, self.pending = (self.pending + data).split(b"\n")
        if len(self.pending) > MAX_PENDING:
            whole.append(self.pending)
            self.pending = b""
        for raw in whole:
            self._say(raw)

    def close(self) -> None:
        """What came after the last newline, if anything: the stream ended (or was stopped) without one."""
        if self.pending:
            self._say(self.pending)
            self.pending = b""

    def _say(self, raw: bytes) -> None:
        for line in clean_lines(raw.decode(errors="replace")):
            self.on_line(line)


def follow(manager: Host, argv: list[str], name: str, on_line: Callable[[str], None]) -> str:
    """Stream argv's lines to on_line until the stream ends; the note to print then. Ctrl-C goes up to the task (exit 130).

    An exit status other than 0 (the service gone, the daemon restarting) or a lost link is a RolloutError
    that says what failed where; the lines the manager wrote before it, its own words, were printed already.
    """
    lines = Lines(on_line)
    try:
        rc = manager.stream(argv, lines.feed)
    except SwarmCommandError as exc:
        raise RolloutError(f"following {name}'s log through {manager.name}: {exc}; nothing was changed; look: fab status,"
                           " then fab logs --follow again") from None
    finally:
        lines.close()
    if rc != 0:
        raise RolloutError(f"{manager.name}: docker service logs --follow {name} ended with exit {rc} (its words are above);"
                           " nothing was changed; look: fab status")
    return f"swarm: the log of {name} ended (docker service logs --follow through {manager.name} exited 0)"
