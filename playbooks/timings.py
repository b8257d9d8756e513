"""Where each host's seconds went: waiting for a handshake slot, SSH connect, remote shell + agent start, agent work.

An operator who sees a slow command needs to know whether the time went to SSH (network,
handshakes queued behind others), to the host's login shell and Python start (a pyenv
`.bashrc`, an interpreter shim), or to the agent's own work (registry checks, a health gate).
The transport measures three clocks per call and the agent reports its own (`uptime_s` in
agent/answer.py, seconds since the agent's modules were loaded); this module splits and adds
them up, and renders them. Pure: no I/O, tested without hosts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class HostTimes:
    """One host's seconds in one command (None: not measured, e.g. the agent never answered)."""

    wait_s: float = 0.0  # queued for a handshake slot (the SSH timeouts start after it)
    connect_s: float | None = None  # TCP connect + SSH handshake + authentication
    start_s: float | None = None  # exec -> the agent running: the remote login shell, the interpreter, the archive check
    agent_s: float | None = None  # the agent's own work, by its own clock
    calls: int = 0  # agent calls answered
    ahead: int = 0  # logins prewarm started while the command itself started up: their connect began before its clock

    def add(self, other: HostTimes) -> HostTimes:
        """This host's times with another call's added (connects and starts add up; a None stays unknown only alone)."""
        return HostTimes(
            wait_s=self.wait_s + other.wait_s,
            connect_s=plus(self.connect_s, other.connect_s),
            start_s=plus(self.start_s, other.start_s),
            agent_s=plus(self.agent_s, other.agent_s),
            calls=self.calls + other.calls,
            ahead=self.ahead + other.ahead,
        )

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def plus(a: float | None, b: float | None) -> float | None:
    """a + b where None is unknown: unknown only if both are."""
    if a is None:
        return b
    return a if b is None else a + b


def first_call(exec_to_answer_s: float, uptime_s: Any) -> tuple[float | None, float | None]:
    """(shell + agent start, agent work) of a call whose exec started the agent process.

    The controller sees exec -> answer; the agent says how long it has run (uptime_s). What is
    left is the remote login shell, the interpreter's start and the archive check. An answer
    without uptime_s (an older agent) leaves both unknown rather than guessed.
    """
    if isinstance(uptime_s, bool) or not isinstance(uptime_s, (int, float)) or uptime_s < 0:
        return None, None
    work = min(float(uptime_s), exec_to_answer_s)  # two clocks: never more work than the controller waited
    return exec_to_answer_s - work, work


def total(times: dict[str, HostTimes]) -> HostTimes:
    out = HostTimes()
    for t in times.values():
        out = out.add(t)
    return out


def _cell(v: float | None) -> str:
    return "?" if v is None else f"{v:.3f}"


def text(times: dict[str, HostTimes], wall_s: float | None = None) -> str:
    """A table, one row per host, slowest first, then the sums; the reader sees where a slow host's time went."""
    header = ["host", "slot wait", "ssh connect", "shell+agent start", "agent work", "calls"]
    order = sorted(times, key=lambda h: -sum(v or 0.0 for v in (times[h].wait_s, times[h].connect_s, times[h].start_s,
                                                                  times[h].agent_s)))
    rows = [[h, _cell(t.wait_s), _cell(t.connect_s), _cell(t.start_s), _cell(t.agent_s), str(t.calls)]
            for h, t in ((h, times[h]) for h in order)]
    s = total(times)
    rows.append(["(sum)", _cell(s.wait_s), _cell(s.connect_s), _cell(s.start_s), _cell(s.agent_s), str(s.calls)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{widths[0]}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [line.format(*header)] + [line.format(*r) for r in rows]
    out.append("seconds per host; hosts run in parallel, so the sums are work done, not time waited"
               + (f" (the command took {wall_s:.3f} s)" if wall_s is not None else ""))
    if s.ahead:
        out.append(f"{s.ahead} of {len(times)} hosts' logins started while the command itself was starting up (prewarm):"
                   " their ssh connect and start began before the command's clock")
    return "\n".join(x.rstrip() for x in out)


def to_json(times: dict[str, HostTimes]) -> dict[str, dict[str, Any]]:
    return {h: t.to_json() for h, t in times.items()}
