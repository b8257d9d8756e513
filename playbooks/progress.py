"""What the operator sees while hosts work: one line per service, updated in place on a terminal, plain lines otherwise.

On a terminal (stderr is a TTY, TERM is not dumb) a rich Live table holds one row per host and
service and rewrites it as events come, coloured by outcome; NO_COLOR is honoured (rich reads
it). Piped or redirected, each event is one plain line, `[host] service: step detail`, which
scripts and logs can read. stdout stays free for --json either way.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from agent.vocabulary import PROGRESS, Step

SHOWN = PROGRESS  # every step whose name the host journals and the operator should see, the failing ones included
STYLE = {Step.BATCH: "bold", Step.COMMITTED: "green", Step.REVERTED: "yellow", Step.REMOVED: "yellow",
         Step.REVERT_FAILED: "bold red", Step.NEEDS_OPERATOR: "bold red", Step.REFUSED: "red", Step.SWAP_FAILED: "red",
         Step.SETTLE: "yellow", Step.GATE: "cyan", Step.GATE_PROGRESS: "cyan", Step.REVERTING: "yellow", Step.FROZEN: "bold red",
         Step.DONE: "bold"}


# The steps a failed swap goes through next; the failure stays shown beside them.
FAILURE_FOLLOWS = frozenset({Step.SWAP_FAILED, Step.REVERTING, Step.REVERTED, Step.REVERT_FAILED, Step.REMOVED, Step.SETTLE,
                             Step.GATE, Step.GATE_PROGRESS, Step.NEEDS_OPERATOR, Step.FROZEN, Step.DONE})


def describe(ev: dict[str, Any]) -> tuple[str, str]:
    step = ev.get("event") or ""
    detail = ev.get("message") or ev.get("reason") or ev.get("ref") or ev.get("prev_ref") or ""
    if step == Step.DONE:
        detail = "host finished: " + ("ok" if ev.get("ok") else "FAILED")
    if step == Step.SWITCHED:  # journalled also when the proxy already served that container: nothing moved then
        detail = f"the proxy now serves it ({ev.get('switch_ms')} ms)" if ev.get("switched") else "the proxy serves it: confirmed, nothing to switch"
    return step, str(detail)


class Progress:
    def __init__(self, enabled: bool = True, stream=None, live: bool | None = None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        if live is None:
            live = bool(getattr(self.stream, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"
        self.live_wanted = live
        self.lock = threading.Lock()
        self.rows: dict[tuple[str, str], tuple[str, str]] = {}
        self.failures: dict[tuple[str, str], str] = {}  # the failing step's reason, per row, while its revert runs
        self._live = None

    def __call__(self, host: str, ev: dict) -> None:
        step, detail = describe(ev)
        if not self.enabled or step not in SHOWN or (step == Step.COMMITTED and ev.get("revert")):
            return  # a rollback's own commit of the version it brought back: its line is `reverted`, which follows
        svc = ev.get("service") or ""
        with self.lock:
            if not self.live_wanted:
                print(f"[{host}] {svc + ': ' if svc else ''}{step} {detail}".rstrip(), file=self.stream, flush=True)
                return
            key = (host, svc or "(host)")
            failed = self.failures.get(key)
            if step == Step.SWAP_FAILED:
                self.failures[key] = failed = detail
            elif failed and step not in FAILURE_FOLLOWS:
                self.failures.pop(key, None)  # a new attempt (a restart, a later batch): the old failure is history
                failed = None
            # On a terminal a row shows only its latest step: the failure stays on the row while its revert runs.
            self.rows[key] = (f"{Step.SWAP_FAILED} -> {step}", f"{failed} | {detail}" if detail else failed) \
                if failed and step != Step.SWAP_FAILED else (step, detail)
            self._render()

    def _table(self):
        from rich.table import Table
        from rich.text import Text

        t = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
        for col in ("host", "service", "step", "detail"):
            t.add_column(col, overflow="fold" if col == "detail" else "ellipsis")
        for (host, svc), (step, detail) in self.rows.items():
            style = STYLE.get(step, "") if not step.startswith(Step.SWAP_FAILED) else "bold red"
            t.add_row(host, svc, Text(step, style=style), detail[:300])
        return t

    def _render(self) -> None:
        if self._live is None:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._table(), console=Console(file=self.stream), auto_refresh=False, transient=False)
            self._live.start()
        self._live.update(self._table(), refresh=True)

    def close(self) -> None:
        with self.lock:
            if self._live is not None:
                self._live.stop()
                self._live = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
