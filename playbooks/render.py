"""Text and JSON output for operators: tables, per-check reasons, plans."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from agent import vocabulary

from .agent_repaired import repaired_words
from .preflight import FAIL, PASS, WARN, Check
from .program import as_run

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
    # One line per distinct finding: an image shared by several services (or hosts) is named once, with where.
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for c in checks:
        if c.status != PASS:
            grouped.setdefault((c.status, c.detail, c.fix), []).append(f"{c.host} {c.check}")
    for (status, detail, fix), where in grouped.items():
        out.append(f"{MARK[status]:4} {', '.join(where)}: {detail}")
        if fix:
            out.append(f"     fix: {fix}")
    nfail = sum(c.status == FAIL for c in checks)
    nwarn = sum(c.status == WARN for c in checks)
    verdict = "preflight FAILED" if nfail else "preflight passed"
    out.append(f"{verdict}: {plural(len(hosts), 'host')}, {plural(len(checks), 'check')}, {nfail} failed, {plural(nwarn, 'warning')}")
    return "\n".join(out)


def _closed_pipe() -> None:
    """The reader went away (`fab history --json | head`): stop quietly, as Unix tools do, not with a traceback."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(1)


def say(text: str = "") -> None:
    """Every human-readable line a task prints: its hints (`fab thaw …`) in the words of the program that ran."""
    try:
        print(as_run(text), flush=True)
    except BrokenPipeError:
        _closed_pipe()


def dump_json(obj: Any, stream=None) -> None:
    """One write: json.dump writes token by token, a system call each on an unbuffered stdout (PYTHONUNBUFFERED)."""
    out = stream or sys.stdout
    try:
        out.write(json.dumps(obj, indent=2, default=str) + "\n")
        out.flush()
    except BrokenPipeError:
        _closed_pipe()


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def accepted_warnings(checks: list[Check]) -> list[str]:
    """The preflight WARNs a rollout went ahead with, one line per distinct finding (an image shared by services once)."""
    seen: dict[str, list[str]] = {}
    for c in checks:
        if c.status == WARN:
            what = c.check.split(":", 1)[1] if c.check.startswith("image:") else c.check
            seen.setdefault(c.detail + (f"; fix: {c.fix}" if c.fix else ""), []).append(f"{c.host} {what}")
    return [f"preflight WARN (accepted): {detail} [{', '.join(where)}]" for detail, where in seen.items()]


def _is_cause(s: dict) -> bool:
    """A service that failed on its own (not one sent back because another failed)."""
    return s.get("outcome") in vocabulary.FAILED and s.get("check") != "phase-revert"


def _row_refs(s: dict) -> str:
    """`what ran before -> what runs now`; for a release that failed, `what was tried (failed) -> what runs now`."""
    after = f"{s.get('after_tag') or '(none)'}@{(s.get('after_digest') or '')[7:19]}" if s.get("after_tag") else "(none)"
    if s.get("outcome") in vocabulary.NEEDS and not ((s.get("revert_gate") or {}).get("ok") and s.get("after_tag")):
        after = "NOT PROVEN HEALTHY"
    failed_release = s.get("action") != "revert" and s.get("outcome") not in (vocabulary.Outcome.REFUSED, vocabulary.Outcome.NEEDS_OPERATOR)
    if failed_release and s.get("check") == "phase-revert" and (s.get("gate") or {}).get("ok") and s.get("tried_tag"):
        return f"{s['tried_tag']} (passed its gate; sent back with its phase) -> {after}"  # not its failure
    if failed_release and s.get("outcome") in vocabulary.FAILED and s.get("tried_tag"):
        # A transaction cut short (a forced unlock, a killed agent) judged nothing: 'failed' contradicted the words
        # under it, 'nothing judged the release' (exploratory run).
        cut = s.get("check") == vocabulary.Step.RECOVERED and not s.get("at_fault", True)
        return f"{s['tried_tag']} ({'interrupted, not judged' if cut else 'failed'}) -> {after}"
    if s.get("outcome") == vocabulary.Outcome.SKIPPED and s.get("tried_tag"):  # a later batch, or after a failed service
        return f"{s['tried_tag']} (not started) -> {after}"
    return f"{s.get('before_tag') or '(none)'} -> {after}"


def rollout_text(r) -> str:
    out = []
    if r.preflight is not None and (not r.preflight.ok or r.state == vocabulary.State.DRY_RUN):
        out.append(preflight_text(r.preflight.checks, r.preflight.hosts))
    elif r.preflight is not None:
        out += accepted_warnings(r.preflight.checks)
    rows = [(h, s) for h, info in r.hosts.items() for s in info.get("services", [])]
    phase_wide = any(s.get("check") == "phase-revert" for _, s in rows)
    # In a phase-wide revert the service that failed leads, marked, so the cause is read before its consequences.
    for h, s in sorted(rows, key=lambda hs: 0 if _is_cause(hs[1]) else 1):
        g = s.get("gate") or {}
        tth = g.get("time_to_healthy_s")
        t = s.get("timings") or {}
        timing = f" pull {t.get('pull_s', 0):.2f}s stop {t.get('stop_s', 0):.2f}s healthy after {tth:.2f}s" if tth is not None else ""
        cause = "  <- cause" if phase_wide and _is_cause(s) else ""
        out.append(f"  {h:12} {s['service']:20} {s['outcome']:13} {_row_refs(s)}{timing}{cause}")
    out += r.messages
    out.append(f"rollout {r.rollout_id} phase {r.phase}: {r.state.upper()} in {r.elapsed_s:.1f}s")
    return "\n".join(out)


def status_text(st: dict) -> str:
    from .status import leftover_words

    rows, notes = [], []
    for h, info in st["hosts"].items():
        if not info.get("reachable"):
            rows.append([h, "-", "-", "-", "-", "-", "UNREACHABLE", "(below)"])
            notes.append(f"{h}: UNREACHABLE: {info.get('error', '')}")  # whole: a reason cut mid-word told nobody anything
            continue
        for s, v in info["services"].items():
            drift = "; ".join(x for x in (v["drift"], v.get("sha_drift")) if x) or "-"
            reported = (v.get("reported_git_sha") or "-")[:7] if "sha_drift" in v else "n/a"
            state = f"{v['status']}, {v.get('restarts', 0)} restarts" if v["status"] not in ("absent", "unknown") else v["status"]
            rows.append([h, s, v["tag"] or "-", (v["digest"] or "")[7:19] or "-", state, reported,
                         v["health"] or v["status"], drift])  # never cut: "crash loo" told nobody anything
        if info.get("docker_error"):  # before the rest: every row above and the last rollout's word hang on it
            notes.append(f"{h}: DOCKER DID NOT ANSWER: {info['docker_error']}; what runs there is unknown (its containers may"
                         f" be running); look at dockerd on {h} (systemctl status docker), then fab status -H {h} again")
        notes += [f"{h}: GPU NOT AS THE INVENTORY SAYS: {p}" for p in info.get("gpu_problems") or []]
        for s, v in info["services"].items():
            if v.get("proxy"):
                notes.append(f"{h}: proxy {s} {v['proxy']}")
        for g in info.get("gpus") or []:
            budgets = ", ".join(f"{s} {b:.1f} GB" for s, b in g["budgets_gb"].items()) or "none declared"
            notes.append(f"{h}: GPU {g['index']} {g['name']}: {g['used_gb']:.1f} of {g['total_gb']:.1f} GB in use;"
                         f" budgets: {budgets}")
        for o in info.get("orphans") or []:
            why = (f"fleetroll's container of {o['service']} under another name (renamed by hand?): no rollout touches it"
                   if o.get("renamed") else "no longer in the inventory for this host")
            notes.append(f"{h}: ORPHAN {o['name']} ({o['tag'] or '?'}, {o['status']}): started by fleetroll (rollout"
                         f" {o['rollout_id'] or '?'}), {why}; remove it with: fab remove -s {o['name']} -H {h}"
                         + (f", then fab rollout {o['service']}'s phase" if o.get("renamed") else ""))
        for k in info.get("kept_leftovers") or []:
            notes.append(f"{h}: LEFTOVER {leftover_words(k, h)}")
        for f in info.get("freezes") or []:
            kind = f"frozen automatically after rollout {f.get('rollout_id')}" if f.get("auto") else f"frozen by {f.get('by')}"
            under = f.get("kept_auto")
            notes.append(f"{h}: phase {f.get('phase')} {kind} since {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(f.get('ts') or 0))}:"
                         f" {f.get('reason')} (fab thaw --phase {f.get('phase')} --reason ...)"
                         + (f"; under it, the automatic freeze after rollout {under.get('rollout_id')}: {under.get('reason')}"
                            if under else ""))
        lock = info.get("lock")
        if lock and lock.get("unsafe"):
            notes.append(f"{h}: LOCK REFUSED (no rollout can run here): {lock['unsafe']}")
        elif lock:
            note = f"; {lock['note']}" if lock.get("note") else ""
            notes.append(f"{h}: locked by {lock.get('holder')} (rollout {lock.get('rollout_id')}, pid {lock.get('pid') or '?'}, running{note})")
        notes += [repaired_words(h, info["repaired"])] if info.get("repaired") else []
        for rec in info.get("recovered") or []:
            if rec.get("error"):
                notes.append(f"{h}: RECOVERY FAILED: {rec['error']}")
            else:
                svc = ", ".join(f"{s} {o}" for s, o in (rec.get("services") or {}).items())
                notes.append(f"{h}: recovered interrupted transaction {rec['rollout_id']} (stopped after"
                             f" {rec.get('interrupted_after')!r}): {svc}; host state {rec.get('state')}")
        if info.get("last_rollout"):
            notes.append(_last_rollout_note(h, info))
    if st.get("collector") == "unreachable":
        notes.append("collector: not answering; git SHA drift not checked")
    return "\n".join([table(rows, ["host", "service", "tag", "digest", "state", "reported git", "health", "drift"])] + notes)


def _last_rollout_note(h: str, info: dict) -> str:
    """The host's last transaction as its journal tells it; beside a silent Docker, not taken for what runs now."""
    last = info["last_rollout"]
    o = last.get("outcome") or {}
    what = f"{last['state']}" + (f", {'ok' if o.get('ok') else 'failed'}, host state {o.get('state')}" if o else "")
    if o.get("recovered"):
        what += f", recovered after an interruption at {o.get('interrupted_after')!r}"
    if last["state"] == vocabulary.Journal.FINISHED:
        svc = ", ".join(f"{x['service']} {x['outcome']}" for x in o.get("services", []))
        what += f" ({svc})" if svc else ""
    seen = " (its journal's record; Docker did not answer, so not what runs now)" if info.get("docker_error") else ""
    return f"{h}: last rollout {last['rollout_id']}: {what}{seen}"


def history_text(entries: list[dict], where: str) -> str:
    rows = [[e.get("started") or e.get("time", ""), e["rollout_id"], e.get("phase", ""), e.get("operator", ""), e.get("final", "")] for e in entries]
    notes = [f"{e['rollout_id']}: {e['note']}" for e in entries if e.get("note")]
    return "\n".join([table(rows, ["started", "rollout", "phase", "operator", "final"]), *notes, f"(ledger: {where})"])


def versions_text(out: dict) -> str:
    """`fab versions`: per replica, newest first; what can be rolled back to is marked."""
    return "\n\n".join(_replica_versions_text(r) for r in out["replicas"])


def _replica_versions_text(out: dict) -> str:
    rows = []
    run = out.get("running") or {}
    for v, n in _restarts_together(out["versions"]):
        when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(v.get("ts") or 0))
        # Another start of what runs (a restart, a rollback to it) is no rollback target: `--to` it does nothing.
        same = bool(run) and v["tag"] == run.get("tag") and v["digest"] == run.get("digest")
        can = v["outcome"].startswith("committed") and v.get("image_present") and not v.get("running") and not same
        lost = can and v.get("config_recorded") is False  # its configuration went with its container: --to refuses it
        mark = "running" if v.get("running") else ("same as running" if same else "- (configuration not kept)" if lost
                                                   else "rollback --to" if can else "-")
        kind = f"{v['kind']} x{n} (newest)" if n > 1 else v["kind"]
        rows.append([when, v["tag"], (v["digest"] or "")[7:19], v["rollout_id"], v["operator"], kind, v["outcome"], mark])
    head = f"{out['service']} on {out['host']}" + (f" (running {out['running'].get('tag')})" if out.get("running") else " (not running)")
    lines = [head, table(rows, ["started", "tag", "digest", "rollout", "operator", "kind", "outcome", "use"]) if rows else "  no versions recorded"]
    if out.get("note"):
        lines.append(out["note"])
    return "\n".join(lines)


def _restarts_together(versions: list[dict]) -> list[tuple[dict, int]]:
    """Back-to-back restarts of one version, one row with their count: fifty restarts are not fifty rows of one tag (pure).

    Only rows that say nothing apart are joined (kind restart, same tag, digest and outcome, neither running);
    `--json` keeps every row.
    """
    out: list[tuple[dict, int]] = []
    for v in versions:
        if out:
            last, n = out[-1]
            if (v["kind"] == last["kind"] == "restart" and not v.get("running") and not last.get("running")
                    and (v["tag"], v["digest"], v["outcome"]) == (last["tag"], last["digest"], last["outcome"])):
                out[-1] = (last, n + 1)
                continue
        out.append((v, 1))
    return out


def _up(seconds) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 86400}d{s % 86400 // 3600}h" if s >= 86400 else f"{s // 3600}h{s % 3600 // 60}m" if s >= 3600 else f"{s // 60}m{s % 60}s"


def details_text(out: dict) -> str:
    """`fab details`: one block per service (Kamal's `app details`, Nomad's `alloc status`)."""
    blocks = []
    for h, info in out["hosts"].items():
        if not info.get("reachable"):
            blocks.append(f"{h}: UNREACHABLE: {info.get('error')}")
            continue
        for svc, d in info["services"].items():
            c = d.get("container")
            frozen = [f"  frozen    {why}" for why in d.get("frozen") or []]
            if d.get("engine") == "swarm":
                from .swarm.details_view import text as swarm_text

                blocks.append("\n".join([*swarm_text(svc, h, d), *frozen]))
                continue
            kept = [f"  kept      {k['name']}: {k['tag']}@{k['digest'][:19]} ({k['status']}) — {_kept_words(k, h, info.get('transaction'))}"
                    for k in d.get("kept") or []]  # with or without a container under the service's name
            if c is None:
                blocks.append("\n".join([f"{svc} on {h}: no container (inventory tag {d['inventory_tag']})", *kept, *frozen]))
                continue
            state = c["status"] + (f", exit code {c['exit_code']}" if c["status"] == "exited" else "") + (", OOM-killed" if c["oom_killed"] else "")
            ports = ", ".join(f"{v}->{k}" for k, v in (c.get("ports") or {}).items()) or "-"
            gpus = {0: "none", -1: "all"}.get(c.get("gpus"), str(c.get("gpus")))
            lines = [f"{svc} on {h}",
                     f"  state     {state}; restarts {c['restart_count']}; up {_up(c.get('up_s'))} (since {c.get('started_at', '')[:19]})",
                     f"  image     {c['tag']}@{c['digest']}" + ("" if c["tag"] == d["inventory_tag"] else f"  (inventory: {d['inventory_tag']})"),
                     f"  rollout   {c['rollout_id']} by {c.get('operator') or '?'}; git {(c.get('git_sha') or '-')[:12]}",
                     f"  ports     {ports}; GPUs {gpus}; user {c.get('user')}; restart {c.get('restart_policy')}",
                     f"  health    {json.dumps(c.get('health') or {}, sort_keys=True)}"]
            prev = c.get("prev")
            if prev:
                lines.append(f"  -prev     {prev['tag']}@{prev['digest']} ({'pinned on the host' if prev['pinned'] else 'NOT on the host any more'})")
            lines += kept + frozen
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _kept_words(k: dict, h: str, tx: dict | None) -> str:
    """Whose a kept container is, by what the host said: the running transaction's, an interrupted one's, or nobody's."""
    from .status import nobody_holds_words

    if tx is None:  # an agent that does not say: no claim either way
        return "a transaction in progress, or one that ended and left it (the host's agent did not say which)"
    lock = tx.get("lock") or {}
    if lock.get("unsafe"):
        return f"whether a transaction holds it is unknown: the host's lock cannot be trusted ({lock['unsafe']})"
    if lock:
        return f"held by the running transaction {lock.get('rollout_id') or '?'} (pid {lock.get('pid') or '?'})"
    if tx.get("open"):
        return (f"its transaction {', '.join(tx['open'])} is still open and no process holds the lock: interrupted, and its"
                " recovery did not finish (fab status says why)")
    return nobody_holds_words({**k, "left_by": (tx.get("kept") or {}).get(k["name"])}, h)


def prune_text(out: dict) -> str:
    lines = []
    verb = "would remove" if out.get("dry_run") else "removed"
    for h, v in out["hosts"].items():
        if not v.get("reachable"):
            lines.append(f"{h}: UNREACHABLE: {v.get('error')}")
            continue
        if v.get("error") and not v.get("removed") and not v.get("failed"):
            lines.append(f"{h}: NOT PRUNED: {v['error']}")
            continue
        if out.get("dry_run"):  # nothing was freed: say what the images weigh (layers shared with kept ones would stay)
            size = sum(int(x.get("size") or 0) for x in v.get("removed", [])) / 1e6
            lines.append(f"{h}: {verb} {len(v.get('removed', []))} image(s) of {size:.0f} MB in all (layers shared with kept"
                         f" images stay); kept {len(v.get('kept', []))}")
        else:
            lines.append(f"{h}: {verb} {len(v.get('removed', []))} image(s), {v.get('freed_bytes', 0) / 1e6:.0f} MB freed;"
                         f" kept {len(v.get('kept', []))}")
        lines += [f"  - {', '.join(x['names'])}" for x in v.get("removed", [])]
        lines += [f"  kept {', '.join(x['names'])}: {x['why']}" for x in v.get("kept", [])]
        lines += [f"  FAILED {', '.join(x['names'])}: {x['error']}" for x in v.get("failed", [])]
    sw = out.get("swarm")
    if sw and sw.get("error"):
        lines.append(f"swarm: Swarm secrets not pruned: {sw['error']}")
    elif sw:
        lines.append(f"swarm (through {sw['manager']}): {verb} {len(sw['removed'])} Swarm secret(s) of earlier values;"
                     f" kept {len(sw['kept'])}")
        lines += [f"  - {n}" for n in sw["removed"]] + [f"  kept {k['name']}: {k['why']}" for k in sw["kept"]]
        lines += [f"  FAILED {x['name']}: {x['error']}" for x in sw["failed"]]
    return "\n".join(lines)
