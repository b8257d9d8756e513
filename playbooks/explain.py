"""`fab explain HOST/SERVICE`: the running container's chain, from image to commit to rollout, in one answer.

Kamal's `app details`, Swarm's `service inspect` and Nomad's `alloc status` each show a part:
the image, or the rollout, or the health. An operator asking "what is this and how did it get
here" needs them joined: tag@digest, the git SHA the image carries and the one the container
reported, the SBOM and Trivy verdict of that image, the ledger's rollout that started it, the
release a revert would go back to, freezes, drift from the inventory, and health now.

Each piece comes from the module that already owns it (operate.details/versions, status,
the plan, the security gate, the ledger); `assemble` joins them and says plainly which link is
missing, and `explain_text` prints it. Both are pure; `gather` asks the host, all four questions
on one SSH connection and one agent process (playbooks/explain_hosts.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import RolloutError
from .inventory import Inventory
from .plan import NOOP


def usage(task: Any) -> str:
    """The task's help, printed by the task itself: invoke's parser gives a missing positional argument the next
    token before it looks at flags, so `fab explain --help` reaches the task with target '--help'."""
    import inspect

    from invoke.parser import ParserContext

    from .program import program

    rows = [f"  {flags:<30}  {text}" for flags, text in ParserContext(args=task.get_arguments()).help_tuples()]
    return "\n".join([f"Usage: {program()} [--core-opts] explain [--options] HOST/SERVICE", "", "Docstring:",
                      f"  {inspect.getdoc(task)}", "", "Options:", *rows, ""])


def parse_target(inv: Inventory, target: str | None) -> tuple[str, str]:
    """HOST/SERVICE as the inventory places it, or one line naming the valid choices (before any host is asked)."""
    first = next(((h, s) for h in inv.fleet.hosts for s in inv.services_for(None, [h])), ("mainpc", "llm-inference"))
    example = f"fab explain {first[0]}/{first[1]}"  # one of this inventory's, not the sample's
    if not target or target.count("/") != 1:
        raise RolloutError(f"give the container as HOST/SERVICE, e.g. {example} (hosts: {', '.join(inv.fleet.hosts)})")
    host, service = target.split("/")
    if host not in inv.fleet.hosts:
        raise RolloutError(f"{target}: no host {host!r} in {inv.path}; hosts: {', '.join(inv.fleet.hosts)}")
    placed = inv.services_for(None, [host])
    if service not in inv.fleet.services:
        raise RolloutError(f"{target}: no service {service!r} in {inv.path}; services on {host}: {', '.join(placed) or 'none'}."
                           f" A container fleetroll started that the inventory no longer names: fab status -H {host} lists it"
                           f" (ORPHAN, with the rollout that started it); fab remove -s {service} -H {host} removes it")
    if service not in placed:
        raise RolloutError(f"{target}: the inventory does not place {service} on {host}; it runs on"
                           f" {', '.join(inv.fleet.hosts_of(service))} (services on {host}: {', '.join(placed) or 'none'})")
    return host, service


def sbom_facts(path: Path) -> dict[str, Any]:
    """The SBOM's package count, or why there is none to count (reads one file)."""
    if not path.is_file():
        return {"path": str(path), "present": False}
    try:
        doc = json.loads(path.read_text())
        return {"path": str(path), "present": True, "packages": len(doc.get("packages") or [])}
    except (OSError, ValueError, AttributeError) as exc:
        return {"path": str(path), "present": True, "problem": f"not readable as SPDX JSON: {exc}"}


def security_facts(inv: Inventory, service: str, tag: str, digest: str) -> tuple[dict, dict]:
    """(SBOM, Trivy) for the image the container runs, through the rollout's own security gate (no second parser)."""
    from .images import security
    from .rollout import acceptances_path

    sec = inv.fleet.security
    image = inv.fleet.services[service].image
    where = inv.resolve(sec.artifacts) / image / tag
    trivy: dict[str, Any] = {"path": str(where / "trivy.json"), "present": (where / "trivy.json").is_file(),
                             "acceptances_file": str(acceptances_path(inv)), "digest": digest}
    if trivy["present"]:
        trivy.update(report_binding(where / "trivy.json", digest))
    try:
        v = security.check(image, tag, digest, inv.resolve(sec.artifacts), acceptances_path(inv), sec.missing_report,
                           max_days=sec.max_acceptance_days)
        trivy.update(status=v.status, reasons=v.reasons, accepted=v.accepted, policy=sec.missing_report)
    except ValueError as exc:  # an invalid acceptance file: the gate refuses every rollout until it is fixed
        trivy.update(status="unknown", reasons=[str(exc)], accepted=[], policy=sec.missing_report)
    return sbom_facts(where / "sbom.spdx.json"), trivy


def report_binding(path: Path, digest: str) -> dict[str, Any]:
    """Whether the Trivy report at `path` is the running digest's, by the gate's own test (security.report_problem).

    The report sits under the image's tag; a tag pushed again names another digest, and a report
    of that other image must not be shown as this container's verdict.
    """
    from .images import security

    try:
        problem = security.report_problem(json.loads(path.read_text()), digest)
    except (OSError, ValueError) as exc:
        problem = ("malformed", f"not readable as JSON: {exc}")
    return {"for_running_digest": problem is None, **({"why_not": problem[1]} if problem else {})}


def ledger_facts(entries: list[dict], rollout_id: str, host: str, service: str) -> dict[str, Any] | None:
    """The ledger's story of the rollout that started the container: who, when, phase, outcome, gate, timings (pure)."""
    entry = next((e for e in entries if e.get("rollout_id") == rollout_id), None) if rollout_id else None
    if entry is None:
        return None
    mine = next((s for s in entry.get("services") or [] if s.get("host") == host and s.get("service") == service), {})
    gate = mine.get("gate") or {}
    return {"rollout_id": rollout_id, "started": entry.get("started"), "finished": entry.get("finished"),
            "operator": entry.get("operator"), "phase": entry.get("phase"), "final": entry.get("final"),
            "outcome": mine.get("outcome"), "order": mine.get("order"),
            "gate": {k: gate[k] for k in ("ok", "phase", "reason", "time_to_healthy_s", "elapsed_s") if k in gate} or None,
            "timings": (entry.get("timings") or {}).get(host), "elapsed_s": entry.get("elapsed_s"), "note": entry.get("note"),
            "interrupted": entry.get("interrupted")}


def git_facts(label: str, reported: str | None, why_not: str) -> dict[str, Any]:
    """The image's revision label beside what the container reported at start-up, and whether they agree (pure).

    Agreement is a shared prefix of at least 7 hex digits: a short SHA and its full form are one commit.
    """
    out: dict[str, Any] = {"label": label or None, "reported": reported or None, "not_reported": "" if reported else why_not}
    if label and reported:
        a, b = label.lower(), reported.lower()
        out["agree"] = min(len(a), len(b)) >= 7 and (a.startswith(b) or b.startswith(a))
    else:
        out["agree"] = None  # nothing to compare: never claimed either way
    return out


def revert_facts(prev: dict | None, replica: dict | None) -> dict[str, Any] | None:
    """The -prev release a revert would go back to, with what the host's journal says of it (pure)."""
    if not prev:
        return None
    rows = (replica or {}).get("versions") or []
    # The container's label names the pin (<tag>-prev, agent/decisions.pin_for); the journal names the release's own tag.
    release = str(prev.get("tag") or "").removesuffix("-prev")
    seen = next((v for v in rows if v.get("tag") == release and v.get("digest") == prev.get("digest")), None)
    return {**prev, **({k: seen.get(k) for k in ("ts", "rollout_id", "operator", "outcome", "image_present")} if seen else {})}


def missing_links(out: dict[str, Any]) -> list[str]:
    """Each link of the chain that is not there, in plain words (pure)."""
    gone = []
    if out["container"] is None:
        return [f"no container named {out['service']} on {out['host']}: nothing runs to explain"]
    if not out["sbom"]["present"]:
        gone.append(f"no SBOM at {out['sbom']['path']}")
    if not out["trivy"]["present"]:
        gone.append(f"no Trivy report at {out['trivy']['path']}")
    elif not out["trivy"].get("for_running_digest"):
        gone.append(f"no Trivy report for the running digest {out['trivy']['digest'][:19]}: the one at {out['trivy']['path']}"
                    f" does not count ({out['trivy'].get('why_not')})")
    if out["rollout"] is None:
        gone.append(f"no ledger record of the rollout that started it ({out['container'].get('rollout_id') or 'no rollout id label'})"
                    f" in {out['ledger']}")
    if not out["git"]["label"]:
        gone.append("no org.opencontainers.image.revision label on the image")
    if out["revert_to"] is None:
        gone.append("no -prev release recorded on the container: a revert has nothing to go back to")
    return gone


def assemble(host: str, service: str, details: dict, health: dict | None, step: dict | None, versions: dict | None,
             sbom: dict, trivy: dict, rollout: dict | None, reported: tuple[str | None, str], ledger_path: str) -> dict[str, Any]:
    """One answer from the pieces each module gave (pure). `health`, `step`, `versions` are None or {"error": ...} when not read."""
    c = details.get("container")
    out: dict[str, Any] = {
        "host": host, "service": service, "container": c, "inventory_tag": details.get("inventory_tag"),
        "image": {"tag": c.get("tag"), "digest": c.get("digest"), "ref": c.get("image")} if c else None,
        "git": git_facts((c or {}).get("git_sha", ""), reported[0], reported[1]),
        "sbom": sbom, "trivy": trivy, "rollout": rollout, "ledger": ledger_path,
        "revert_to": revert_facts((c or {}).get("prev"), versions if versions and "error" not in versions else None),
        "versions_error": (versions or {}).get("error"),
        "freezes": details.get("frozen") or [], "drift": step, "health": health,
    }
    out["missing"] = missing_links(out)
    return out


def gather(inv: Inventory, host: str, service: str) -> dict[str, Any]:
    """Ask the host (details, status, versions, facts: one SSH session, playbooks/explain_hosts.py) and join what it
    said with the image's artifacts and the ledger."""
    from . import ledger
    from .explain_hosts import ask_host

    d, now, reported, versions, step = ask_host(inv, host, service)
    c = d.get("container") or {}
    sbom, trivy = security_facts(inv, service, c.get("tag", ""), c.get("digest", "")) if c else (
        {"path": "", "present": False}, {"path": "", "present": False})
    entries = ledger.rollouts() if c else []
    rollout = ledger_facts(entries, c.get("rollout_id", ""), host, service) if c else None
    made = c.get("created_by") or ""
    if rollout is not None and made and made != c.get("rollout_id"):  # a rollback or restart made this very container
        by = next((e for e in entries if e.get("rollout_id") == made), None)
        rollout["recreated_by"] = {"rollout_id": made, **({k: by.get(k) for k in ("started", "operator", "final")} if by else {})}
    return assemble(host, service, d, now, step, versions, sbom, trivy, rollout, reported, str(ledger.path()))


def _git_line(g: dict) -> str:
    label = (g["label"] or "none")[:12]
    if g["reported"] is None:
        return f"  git       image label {label}; {g['not_reported']}"
    verdict = {True: "they agree", False: "they DISAGREE: the container runs another commit than its image says"}[g["agree"]] \
        if g["agree"] is not None else "nothing to compare"
    return f"  git       image label {label}; reported at start-up {g['reported'][:12]}; {verdict}"


def _security_lines(sbom: dict, trivy: dict) -> list[str]:
    lines = [f"  SBOM      no SBOM at {sbom['path']}" if not sbom["present"]
             else f"  SBOM      {sbom['path']}: {sbom['problem']}" if sbom.get("problem")
             else f"  SBOM      {sbom['packages']} packages, {sbom['path']}"]
    if not trivy["present"]:
        lines.append(f"  Trivy     no Trivy report at {trivy['path']} (the gate's policy for a missing report: {trivy.get('policy')})")
    elif not trivy.get("for_running_digest"):
        lines.append(f"  Trivy     no report for the running digest {trivy['digest'][:19]}: the one at {trivy['path']} does not"
                     f" count ({trivy.get('why_not')}); the gate's verdict: {trivy['status']}")
    else:
        lines.append(f"  Trivy     {trivy['status']} for {trivy['digest'][:19]} ({trivy['path']})")
        lines += [f"            {r}" for r in trivy.get("reasons") or []]
    for a in trivy.get("accepted") or []:
        lines.append(f"  accepted  {a['cve']} by {a['owner']} until {a['expires']}: {a['reason']} ({trivy['acceptances_file']})")
    return lines


def _rollout_lines(out: dict) -> list[str]:
    r = out["rollout"]
    if r is None:
        return [f"  rollout   no ledger record of the rollout that started it"
                f" ({out['container'].get('rollout_id') or 'no rollout id label'}; ledger {out['ledger']})"]
    # Unfinished: the controller stopped watching (Ctrl-C, killed); the note below says how the hosts ended it, if known.
    ended = (f"finished {r['finished']}" if r.get("finished") else
             f"the controller was interrupted at {r['interrupted']}" if r.get("interrupted") else "the controller never recorded its end")
    lines = [f"  rollout   {r['rollout_id']}: phase {r['phase']}, by {r['operator']}, started {r['started']}, {ended};"
             f" {r['final']}" + (f"; here {r['outcome']}" if r.get("outcome") else "")]
    again = r.get("recreated_by")
    if again:  # the configuration is that rollout's; the container itself was made later, by this one
        lines.append(f"  made by   {again['rollout_id']}" + (f" ({again.get('operator')}, {again.get('started')}, {again.get('final')})"
                                                            if again.get("started") else " (not in this ledger)")
                     + f", which recreated {r['rollout_id']}'s configuration")
    g = r.get("gate")
    if g:
        healthy = f"healthy after {g['time_to_healthy_s']:.1f}s, " if g.get("time_to_healthy_s") is not None else ""
        lines.append(f"  gate      {'passed' if g.get('ok') else 'FAILED'} ({healthy}{g.get('elapsed_s', 0):.1f}s in all)"
                     + (f": {g['reason']}" if g.get("reason") and not g.get("ok") else ""))
    else:
        lines.append("  gate      no gate result in the ledger for this host and service")
    if r.get("timings"):
        t = r["timings"]
        lines.append("  timings   " + ", ".join(f"{k} {v:.2f}s" if k.endswith("_s") else f"{k} {v}"  # calls: a count
                                             for k, v in t.items() if isinstance(v, int | float)))
    if r.get("note"):
        lines.append(f"  note      {r['note']}")
    return lines


def _revert_line(out: dict) -> str:
    p = out["revert_to"]
    if p is None:
        return "  revert to no -prev release recorded on the container: nothing to go back to"
    where = "pinned on the host" if p.get("pinned") else "NOT on the host any more"
    seen = f"; ran from rollout {p['rollout_id']} ({p['outcome']})" if p.get("rollout_id") else \
        (f"; versions not read: {out['versions_error']}" if out.get("versions_error") else "; not in the host's journal")
    return f"  revert to {p['tag']}@{(p.get('digest') or '')[:19]} ({where}){seen}"


def _now_lines(out: dict) -> list[str]:
    d, h = out["drift"] or {}, out["health"] or {}
    if "error" in d:
        drift = [f"  drift     unknown: {d['error']}"]
    elif d.get("action") == NOOP:
        drift = [f"  drift     none: {d['reason']}"]
    else:
        held = "; a freeze below may refuse it" if out.get("freezes") else ""  # two facts side by side, not a contradiction
        drift = [f"  drift     a rollout of phase {d.get('phase')} would {d.get('action')}: {d.get('reason')}{held}"]
        drift += [f"            ~ {c}" for c in d.get("changes") or []]
    health = (f"  health    unknown: {h['error']}" if "error" in h else
              f"  health    {'healthy' if h['healthy'] else 'NOT HEALTHY'}: {h['text']}; {h['restarts']} restarts"
              + (f"; {h['sha_drift']}" if h.get("sha_drift") else ""))
    return [*drift, health]


def explain_text(out: dict) -> str:
    """`fab explain`: the chain top to bottom, each missing link said where it belongs (pure)."""
    c = out["container"]
    head = f"{out['service']} on {out['host']}"
    if c is None:
        return "\n".join([f"{head}: no container (inventory tag {out['inventory_tag']})",
                          *[f"  frozen    {why}" for why in out["freezes"]], *_now_lines(out)])
    lines = [head,
             f"  image     {c['tag']}@{c['digest']}" + ("" if c["tag"] == out["inventory_tag"] else f" (inventory: {out['inventory_tag']})"),
             _git_line(out["git"]), *_security_lines(out["sbom"], out["trivy"]), *_rollout_lines(out), _revert_line(out),
             *([f"  frozen    {why}" for why in out["freezes"]] or ["  frozen    no"]), *_now_lines(out)]
    if out["missing"]:
        lines.append("  missing   " + "; ".join(out["missing"]))
    return "\n".join(lines)
