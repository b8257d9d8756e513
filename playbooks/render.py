"""Text and JSON output for operators: tables, per-check reasons, plans."""

from __future__ import annotations

import json
import sys
from typing import Any

from .preflight import FAIL, PASS, WARN, Check

MARK = {PASS: "ok", WARN: "WARN", FAIL: "FAIL"}


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*[str(c) for c in r]) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def preflight_text(checks: list[Check], hosts: list[str]) -> str:
    names: list[str] = []
    for c in checks:
        base = c.check.split(":")[0] if c.check.startswith("image:") else c.check
        if base not in names:
            names.append(base)
    rows = []
    for h in hosts:
        row = [h]
        for n in names:
            mine = [c for c in checks if c.host == h and (c.check == n or c.check.startswith(n + ":"))]
            if not mine:
                row.append("-")
            else:
                worst = FAIL if any(c.status == FAIL for c in mine) else WARN if any(c.status == WARN for c in mine) else PASS
                row.append(MARK[worst])
        rows.append(row)
    out = [table(rows, ["host"] + names), ""]
    problems = [c for c in checks if c.status != PASS]
    for c in problems:
        out.append(f"{MARK[c.status]:4} {c.host} {c.check}: {c.detail}")
        if c.fix:
            out.append(f"     fix: {c.fix}")
    nfail = sum(c.status == FAIL for c in checks)
    nwarn = sum(c.status == WARN for c in checks)
    verdict = "preflight FAILED" if nfail else "preflight passed"
    out.append(f"{verdict}: {len(hosts)} hosts, {len(checks)} checks, {nfail} failed, {nwarn} warnings")
    return "\n".join(out)


def dump_json(obj: Any, stream=None) -> None:
    json.dump(obj, stream or sys.stdout, indent=2, default=str)
    (stream or sys.stdout).write("\n")
