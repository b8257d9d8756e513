"""The --json report reaches its reader in one write, and is the JSON it says it is."""

from __future__ import annotations

import io
import json

from playbooks import render


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def test_a_report_is_written_once_not_token_by_token():
    """json.dump writes each token apart: with PYTHONUNBUFFERED, a system call each (1,870 for a 2-host failure)."""
    out = CountingStream()
    report = {"state": "reverted", "phases": [{"hosts": {h: {"services": list(range(50))} for h in ("mainpc", "pc2")}}]}
    render.dump_json(report, out)
    assert out.writes == 1
    assert json.loads(out.getvalue()) == report and out.getvalue().endswith("}\n")
