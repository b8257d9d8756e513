"""Entry point: JSON requests on stdin, JSON lines out; each request ends with its answer.

Request:  {"protocol": 1, "op": "facts" | "prepare" | "rollout" | "status" | "unlock" | "journal" | "freeze" | "versions" | "logs" | "details" | "exec" | "prune" | "remove" | "swarm_secrets" | "proxy_handover", "args": {...}}
Answer:   {"protocol": 1, "op": ..., "ok": bool, "changed": bool, "msg": str, "data": {...}}
Progress lines ({"event": ...}) may come before the answer so the controller can show
what a host is doing while a long operation runs.

One request per process is the default. A request with "session": true keeps the process
reading further requests, one per line, until stdin closes: a rollout's preflight and its
transaction then share one agent process (and one import of its modules) per host.
"""

from __future__ import annotations

import json
import os
import sys

from . import PROTOCOL
from .answer import answer
from .session import SESSION, controller_gone


def emit(obj: dict) -> None:
    """One line out. A progress line first checks that the controller is still there (controller_gone)."""
    if "event" in obj and SESSION["open"] and controller_gone():
        raise BrokenPipeError("the controller closed its side of the session")
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def handle(request: dict) -> dict:
    op = request.get("op", "")
    if request.get("protocol") != PROTOCOL:
        return answer(op, False, f"protocol mismatch: controller speaks {request.get('protocol')}, agent speaks {PROTOCOL}")
    args = request.get("args") or {}
    recovered = _recover()
    result = _run(op, args)
    if recovered:
        # Said in the answer of whatever call found and finished an interrupted transaction.
        result["recovered"] = recovered
    return result


def _recover() -> list[dict]:
    from .recovery import recover_pending

    try:
        return recover_pending()
    except Exception as exc:  # noqa: BLE001 - the call itself must still be answered
        import traceback

        return [{"error": f"recovery of an interrupted transaction failed: {exc}", "traceback": traceback.format_exc()}]


def _run(op: str, args: dict) -> dict:
    if op == "facts":
        from .facts import gather

        return answer(op, True, data=gather(args))
    if op in ("rollout", "status", "unlock", "journal", "prepare", "freeze", "versions", "logs", "details", "exec", "prune", "remove",
              "swarm_secrets", "proxy_handover"):
        from . import ops

        return ops.dispatch(op, args, emit)
    return answer(op, False, f"unknown op {op!r}")


def serve_one(raw: str) -> tuple[dict, dict]:
    try:
        request = json.loads(raw)
    except ValueError as exc:
        return {}, answer("", False, f"request is not JSON: {exc}")
    SESSION["open"] = isinstance(request, dict) and bool(request.get("session"))
    try:
        result = handle(request)
    except Exception as exc:  # noqa: BLE001 - the controller must always get an answer
        import traceback  # here, not at the top: ~1.5 ms of every call's start, for the rare failure

        result = answer(request.get("op", ""), False, f"agent error: {exc}", {"traceback": traceback.format_exc()})
    return request, result


def main() -> int:
    # Journal and lock files are shared by every user of this host's Docker group.
    os.umask(0o007)
    raw = sys.stdin.readline()
    while True:
        request, result = serve_one(raw)
        emit(result)
        if not request.get("session"):
            break
        raw = sys.stdin.readline()
        if not raw.strip():
            break
    return 0 if result["ok"] else (2 if not request else 1)


if __name__ == "__main__":
    sys.exit(main())
