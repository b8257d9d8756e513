"""Commands the operator wrote (hooks, runbook steps) run in a process group of their own, stopped as a whole.

subprocess.run(timeout=) kills only the direct child, and Ctrl-C reaches nothing a shell put in the
background: an exploratory run left a hook's `sleep 300` and a runbook step's `sleep 200 &` running,
re-parented to PID 1, after fab had exited. Each command is started with start_new_session=True, so
its process group holds exactly what it started; stopping signals that group and nothing else (never
a match on a command line), while the unreaped leader keeps the group's id from naming anyone else's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

GRACE_S = 2.0


def stop(proc: subprocess.Popen, grace: float = GRACE_S, ctrl_c_first: bool = False) -> str:
    """SIGTERM proc's process group, SIGKILL what is left after `grace` s, reap proc; returns what was done, for messages.

    ctrl_c_first: pass the operator's Ctrl-C on first (SIGINT, then `grace` s), so a `fab rollout` a runbook
    step runs records its own interruption; SIGTERM follows for what ignores SIGINT (a shell's `cmd &`).
    The leader is waited for without being reaped (WNOWAIT) until the SIGKILL, so the group id
    cannot have been reused by then; processes that left the group (setsid) are not ours to find.
    """
    pgid, sent = proc.pid, []
    for sig in ([signal.SIGINT] if ctrl_c_first else []) + [signal.SIGTERM]:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:  # the group had already ended
            break
        sent.append(sig.name)
        _leader_ends(pgid, grace)
    if not sent:
        proc.wait()
        return f"found its process group {pgid} already ended"
    try:
        os.killpg(pgid, signal.SIGKILL)  # whatever ignored the others or outlived its parent
    except ProcessLookupError:
        pass
    proc.wait()
    return (f"stopped it and every process it started (process group {pgid}: {', then '.join(sent)},"
            f" then SIGKILL, at most {grace:g} s apart)")


def _leader_ends(pid: int, grace: float) -> None:
    """Wait up to `grace` s for the group's leader to exit, leaving it unreaped (its pid keeps naming our group)."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        time.sleep(0.02)


def output_after_stop(proc: subprocess.Popen, grace: float = GRACE_S) -> tuple[str, str]:
    """What a stopped command had written (stdout, stderr); empty if something outside the group still holds its pipes."""
    try:
        out, err = proc.communicate(timeout=grace)
    except (subprocess.TimeoutExpired, ValueError, OSError):
        return "", ""
    return out or "", err or ""
