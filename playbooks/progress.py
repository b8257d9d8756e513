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

SHOWN = {"batch", "pull", "pin-prev", "stop-old", "start-new", "gate", "gate-progress", "committed", "gate-failed",
         "reverting", "reverted", "revert-failed", "refused", "removed", "done"}
STYLE = {"batch": "bold", "committed": "green", "reverted": "yellow", "removed": "yellow", "revert-failed": "bold red", "refused": "red",
         "gate-failed": "red", "gate": "cyan", "gate-progress": "cyan", "reverting": "yellow", "done": "bold"}


def describe(ev: dict[str, Any]) -> tuple[str, str]:
    step = ev.get("event") or ""
    detail = ev.get("message") or ev.get("reason") or ev.get("ref") or ev.get("prev_ref") or ""
    if step == "done":
        detail = "host finished: " + ("ok" if ev.get("ok") else "FAILED")
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
        self._live = None

    def __call__(self, host: str, ev: dict) -> None:
        step, detail = describe(ev)
        if not self.enabled or step not in SHOWN:
            return
        svc = ev.get("service") or ""
        with self.lock:
            if not self.live_wanted:
                print(f"[{host}] {svc + ': ' if svc else ''}{step} {detail}".rstrip(), file=self.stream, flush=True)
                return
            self.rows[(host, svc or "(host)")] = (step, detail)
            self._render()

    def _table(self):
        from rich.table import Table
        from rich.text import Text

        t = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
        for col in ("host", "service", "step", "detail"):
            t.add_column(col, overflow="fold" if col == "detail" else "ellipsis")
        for (host, svc), (step, detail) in self.rows.items():
            t.add_row(host, svc, Text(step, style=STYLE.get(step, "")), detail[:160])
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
