"""Fabric tasks: parse options, call library code, turn outcomes into exit codes.

Tasks hold no logic of their own (Fabric/Invoke's thin-task style): everything they
call is importable and tested without a terminal.
"""

from __future__ import annotations

import sys

from .taskio import ask_unless_yes as _ask_unless_yes
from .taskio import confirm_or_yes as _confirm_or_yes
from .taskio import interrupted as _interrupted
from .taskio import print_reports as _print_reports
from .taskkit import SHORT_FLAGS, Exit, invoke, task  # noqa: F401 - SHORT_FLAGS: one meaning per short flag (tests read it)
from .taskkit import host_list as _hosts
from .taskkit import load_inventory as _inventory
from .taskkit import required as _required
from .taskkit import whole_number as _int

Collection = invoke.Collection


@task(
    help={
        "phase": "only the hosts and images this phase needs (phases.yml beside the inventory)",
        "hosts": "comma-separated host names to check (default: all, or the phase's)",
        "json": "print the result as JSON", "inventory": "inventory file (default: $FLEETROLL_INVENTORY or inventory/fleet.yml)",
        "max-parallel": "hosts checked at once (default: ssh.max_parallel)",
        "timings": "per host: waiting for a handshake slot, SSH connect, remote shell + agent start, agent work",
    }
)
def preflight(c, phase=None, hosts=None, json=False, inventory=None, max_parallel=None, timings=False):
    """Check every host before a rollout: SSH, Docker, driver, GPUs, images, disk, ports."""
    from . import render
    from . import timings as times
    from .runner import run_preflight

    inv = _inventory(inventory, json)
    report = run_preflight(inv, phase, _hosts(hosts), _int(max_parallel, "max-parallel"))
    per_host = {h: r.times for h, r in report.calls.items()}
    if json:
        render.dump_json({**report.to_json(), **({"timings": times.to_json(per_host)} if timings else {})})
    else:
        render.say(render.preflight_text(report.checks, report.hosts))
        if timings:
            render.say("\n" + times.text(per_host, report.elapsed_s))
    if not report.ok:
        raise Exit(code=1)


@task(
    help={
        "phase": "phase to roll out (phases.yml beside the inventory)",
        "all": "every phase in order, each gated on the previous one's success",
        "dry-run": "print the plan and change nothing", "hosts": "comma-separated hosts to limit the phase to",
        "max-parallel": "hosts changed at once",
        "on-failure": "a failed service always goes back; revert-phase (default): so does the whole phase, on every host;"
                      " revert-service: the rest carry on; stop: what passed stays, nothing after the failure starts",
        "json": "print the report as JSON", "yes": "do not ask for confirmation",
        "inventory": "inventory file",
        "timings": "per host: waiting for a handshake slot, SSH connect, remote shell + agent start, agent work (also in --json)",
    }
)
def rollout(c, phase=None, all=False, dry_run=False, hosts=None, max_parallel=None, on_failure="revert-phase",
            json=False, yes=False, inventory=None, timings=False):
    """Roll a phase out: preflight, plan, health-gated swaps, automatic rollback to -prev."""
    from . import executor

    inv = _inventory(inventory, json)
    if bool(phase) == bool(all):
        raise Exit(("--phase and --all: give one, not both" if phase else "say which: --phase P, or --all")
                   + " (phases: " + ", ".join(p.name for p in inv.phases) + ")", code=1)
    progress = executor.Progress(enabled=not json)
    kw = dict(hosts=_hosts(hosts), dry_run=dry_run, max_parallel=_int(max_parallel, "max-parallel"),
              on_failure=on_failure, confirm=_confirm_or_yes(yes), progress=progress)
    try:
        with progress:
            reports = executor.rollout_all(inv, **kw) if all else [executor.rollout(inv, phase, **kw)]
    except executor.Interrupted as exc:
        _interrupted(str(exc), json)
    except KeyboardInterrupt:
        _interrupted("interrupted before any host was asked to change anything; nothing was changed", json)
    _print_reports(reports, json)
    if timings and not json:
        from . import render
        from . import timings as times

        for r in reports:
            render.say(f"\ntimings, phase {r.phase}:\n" + times.text(r.timings, r.elapsed_s))
    code = executor.exit_code([executor.report_state(r) for r in reports])
    if code:
        raise Exit(code=code)


@task(help={"phase": "phase whose services go back", "service": "only this service", "hosts": "limit to these hosts",
            "to": "go back to this tag of --service (any version that passed its gate and is still on the host; see fab versions)",
            "json": "JSON output", "yes": "do not ask", "inventory": "inventory file"})
def rollback(c, phase=None, service=None, hosts=None, to=None, json=False, yes=False, inventory=None):
    """Put a phase's services (or one) back on the configuration they ran before their release (or --to a tag), health-gated."""
    from . import executor
    from .rollback import check_request
    from .targets import phase_of_service

    inv = _inventory(inventory, json)
    phase = phase or (service and phase_of_service(inv, service))  # a service is in one phase: -s names it enough
    phase = _required(phase, "phase", "fab rollback --phase gpu-mainpc [--service llm-api]")
    check_request(inv, phase, service, _hosts(hosts), to)  # bad input: exit 1 naming it, before the question
    _ask_unless_yes(yes, f"roll back {service or 'every service of ' + phase}?")
    with executor.Progress(enabled=not json) as progress:
        rep = executor.rollback(inv, phase, service, _hosts(hosts), progress=progress, to_tag=to)
    _print_reports([rep], json, one_object=True)
    if not rep.ok:
        raise Exit(code=executor.exit_code([rep.state]))


@task(help={"json": "JSON output", "hosts": "limit to these hosts", "inventory": "inventory file",
            "follow": "first re-attach to transactions running now (after Ctrl-C or a lost link) and wait for them"})
def status(c, json=False, hosts=None, inventory=None, follow=False):
    """What runs where: tag, digest, health, drift, last rollout, locks. Exit 1 when something needs looking at."""
    from . import executor, operate, render

    inv = _inventory(inventory, json)
    if follow:
        try:
            with executor.Progress(enabled=not json) as progress:
                done = operate.follow_running(inv, _hosts(hosts), progress=progress)
        except KeyboardInterrupt:
            _interrupted("stopped following; the hosts carry on", json)
        for h, d in done.items():
            svc = ", ".join(f"{s['service']} {s['outcome']}" for s in d["services"]) or d["error"]
            print(f"{h}: rollout {d['rollout_id']} ended: {svc}", file=sys.stderr)
        if not done:
            print("no transaction running on these hosts", file=sys.stderr)
    out = executor.status(inv, _hosts(hosts))
    if json:
        render.dump_json(out)
    else:
        render.say(render.status_text(out))
    if executor.needs_attention(out):
        raise Exit(code=1)


@task(help={"json": "JSON output", "limit": "show the last N rows (default 20)", "inventory": "ignored: the ledger is this controller's"})
def history(c, json=False, limit=None, inventory=None):
    """Rollouts, rollbacks, removals, freezes, thaws and prunes recorded in the ledger: who, when, phase, outcome."""
    from . import ledger, render

    entries = ledger.rollouts()[-(_int(limit, "limit") or 20):]
    if json:
        render.dump_json(entries)
    else:
        render.say(render.history_text(entries, str(ledger.path())))


@task(help={"host": "host to unlock", "reason": "why (recorded on the host, and in the ledger when --force stopped a rollout)",
            "force": "stop the live but stuck transaction process holding the lock, then recover its transaction",
            "inventory": "inventory file"})
def unlock(c, host=None, reason=None, force=False, inventory=None):
    """Free a host stuck behind a live transaction (--force); a dead holder's lock frees itself. Recorded with the reason."""
    from . import operate, render, transport
    from .plan import operator

    host = _required(host, "host", 'fab unlock --host mainpc --reason "why"')
    reason = _required(reason, "reason", 'fab unlock --host mainpc --reason "why"')
    inv = _inventory(inventory)
    inv.select_hosts([host], option="--host")
    res = transport.on_hosts(inv, [host], "unlock", lambda h: {"reason": reason, "force": force, "operator": operator()})[host]
    if res.answer is None:
        raise Exit(res.error, code=1)
    render.say(f"{host}: {res.answer.get('msg')}")
    if not res.ok:
        raise Exit(code=1)
    if force:  # fab history then says which rollout's transaction was cut short here, and by whom
        operate.record_unlock(host, res.answer, reason)


@task(help={"service": "service whose log to show", "host": "host to read from (default: the service's; with --agent: required)",
            "follow": "keep printing new lines, through restarts and swaps (the container that takes the service's name),"
                      " until none runs under it (Ctrl-C to leave)", "since": "only lines newer than this: 90s, 10m, 2h, 1d",
            "tail": "last N lines (default 100)", "agent": "the host's agent log instead (where a failed transaction's traceback goes)",
            "timestamps": "prefix each line with Docker's timestamp", "inventory": "inventory file"})
def logs(c, service=None, host=None, follow=False, since=None, tail=None, agent=False, timestamps=False, inventory=None):
    """A service's container log from its host (Kamal `app logs`), or a host's agent log with --agent."""
    from . import operate, render

    inv = _inventory(inventory)
    try:
        out = operate.logs(inv, service, host, tail=_int(tail, "tail") or 100, since=since, follow=follow, agent=agent,
                            timestamps=timestamps, on_line=render.say if follow else None)
    except KeyboardInterrupt:
        raise Exit("stopped following (Ctrl-C); nothing changed on the host" if follow else "interrupted (Ctrl-C)", code=130) from None
    if agent:
        render.say(f"{out['host']}: {out.get('path')}")
    if out.get("lines"):
        render.say("\n".join(out["lines"]))
    elif not follow:
        # Nothing at all looked like a hang or a wrong host; say what was asked and that it was empty.
        what = "the agent log" if agent else f"{service}'s container"
        render.say(f"{out['host']}: {what} has no log lines" + (f" since {since}" if since else "")
                   + (f" ({out['status']})" if out.get("status") else ""))
    if out.get("note"):
        render.say(f"{out['host']}: {out['note']}")


@task(help={"service": "one service (default: every service of the hosts)", "hosts": "limit to these hosts", "json": "JSON output",
            "inventory": "inventory file"})
def details(c, service=None, hosts=None, json=False, inventory=None):
    """Each service's container in detail: state, restarts, uptime, tag@digest, ports, GPU, kept container, -prev pin."""
    from . import operate, render

    inv = _inventory(inventory, json)
    out = operate.details(inv, service, _hosts(hosts))
    if json:
        render.dump_json(out)
    else:
        render.say(render.details_text(out))
    if any(not h.get("reachable") for h in out["hosts"].values()):
        raise Exit(code=1)


@task(positional=["target"], help={"target": "the container: HOST/SERVICE", "json": "JSON output", "inventory": "inventory file"})
def explain(c, target=None, json=False, inventory=None):
    """One container's chain: tag@digest, git SHA (label, reported), SBOM, Trivy, its rollout, -prev, freezes, drift, health."""
    from . import explain as ex
    from . import render

    if target in ("-h", "--help"):
        return render.say(ex.usage(explain))
    inv = _inventory(inventory, json)
    host, service = ex.parse_target(inv, target)  # checked before any host is asked
    out = ex.gather(inv, host, service)
    render.dump_json(out) if json else render.say(ex.explain_text(out))


@task(help={"service": "service whose versions to list", "host": "one replica's host (default: every replica)",
            "json": "JSON output", "inventory": "inventory file"})
def versions(c, service=None, host=None, json=False, inventory=None):
    """Versions a service has run on its host (tag, digest, when, rollout, operator, outcome), from the host's journal."""
    from . import operate, render

    service = _required(service, "service", "fab versions --service llm-inference")
    inv = _inventory(inventory, json)
    out = operate.versions(inv, service, host)
    if json:
        render.dump_json(out)
    else:
        render.say(render.versions_text(out))


@task(help={"service": "service to restart", "hosts": "only these replicas' hosts (default: every one, one after another)",
            "json": "JSON output", "yes": "do not ask", "inventory": "inventory file"})
def restart(c, service=None, hosts=None, json=False, yes=False, inventory=None):
    """Restart a service in a fresh container, same configuration, one replica at a time, gated; a failure stops it."""
    from . import executor
    from .targets import replica_hosts

    service = _required(service, "service", "fab restart -s llm-inference")
    inv = _inventory(inventory, json)
    replica_hosts(inv, service, _hosts(hosts))  # bad input: exit 1 naming it, before the question
    _ask_unless_yes(yes, f"restart {service}?")
    try:
        with executor.Progress(enabled=not json) as progress:
            rep = executor.restart(inv, service, progress=progress, hosts=_hosts(hosts))
    except KeyboardInterrupt:
        _interrupted("interrupted: the host being restarted finishes on its own (fab status --follow); the replicas the"
                     " restart had not reached are untouched", json)
    _print_reports([rep], json, one_object=True)
    code = executor.exit_code([executor.report_state(rep)])
    if code:
        raise Exit(code=code)


def _remainder_argv() -> list[str]:
    """The command after `--`, exactly as the shell split it (invoke only keeps it joined into one string)."""
    return sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []


@task(name="exec", help={"service": "service whose container runs the command", "host": "host (default: the service's)",
                         "inventory": "inventory file"})
def exec_(c, service=None, host=None, inventory=None):
    """Run a command in a service's container: fab exec -s SERVICE -- CMD ARGS... (argv passed through, no shell)."""
    from . import operate

    service = _required(service, "service", "fab exec -s llm-inference -- nvidia-smi")
    argv = _remainder_argv()
    if not argv:
        raise Exit("give the command after --, e.g. fab exec -s llm-inference -- nvidia-smi", code=1)
    inv = _inventory(inventory)
    try:
        out = operate.exec_in(inv, service, argv, host)
    except KeyboardInterrupt:  # Docker has no call that stops an exec: say that it may go on
        raise Exit(f"interrupted (Ctrl-C): the command may still run in {service}'s container (Docker cannot stop an exec"
                   " from outside it; end it from inside, e.g. with kill)", code=130) from None
    from .remote import clean_text

    sys.stdout.write(clean_text(out.get("stdout", "")) if out.get("stdout") else "")
    sys.stderr.write(clean_text(out.get("stderr", "")) if out.get("stderr") else "")
    if out.get("exit_code"):
        raise Exit(code=int(out["exit_code"]) if 0 < int(out["exit_code"]) < 256 else 1)


@task(help={"keep": "good versions kept per service, what runs among them (default 3); what runs, and what"
                    " fab rollback goes back to, stay whatever it says",
            "hosts": "limit to these hosts (Swarm secrets are pruned only without it)",
            "dry-run": "list what would go, remove nothing", "json": "JSON output",
            "inventory": "inventory file"})
def prune(c, keep=None, hosts=None, dry_run=False, json=False, inventory=None):
    """Remove images no container, rollback or recent good version needs (old -prev pins too); with swarm phases, unused Swarm secrets too."""
    from . import operate, render

    inv = _inventory(inventory, json)
    out = operate.prune(inv, _hosts(hosts), keep=_int(keep, "keep") or 3, dry_run=dry_run)
    if json:
        render.dump_json(out)
    else:
        render.say(render.prune_text(out))
    if any(not v.get("reachable") or not v.get("ok") for v in out["hosts"].values()) or (out.get("swarm") or {}).get("error") \
            or (out.get("swarm") or {}).get("failed"):
        raise Exit(code=1)


@task(help={"service": "the container to remove (a service the inventory no longer places on the host)",
            "host": "the host it runs on", "reason": "why (recorded on the host and in the ledger)", "json": "JSON output",
            "yes": "do not ask", "inventory": "inventory file",
            "force": "remove it even though the inventory still places it there (its next rollout starts it again)"})
def remove(c, service=None, host=None, reason="", json=False, yes=False, inventory=None, force=False):
    """Remove a container fleetroll started that the inventory no longer names (fab status lists them as ORPHAN)."""
    from . import operate, render

    service = _required(service, "service", "fab remove -s old-api -H pc2")
    host = _required(host, "host", "fab remove -s old-api -H pc2")
    inv = _inventory(inventory, json)
    out = operate.remove(inv, service, host, reason, force=force,  # asks once the host has said what it would remove
                         confirm=None if yes else lambda would: _ask_unless_yes(False, operate.remove_question(service, host, would)))
    if json:
        render.dump_json(out)
    else:
        render.say(f"{host}: {out['msg']}")


def _freeze(phase, reason, inventory, thaw: bool) -> None:
    from . import operate, render

    name = "thaw" if thaw else "freeze"
    phase = _required(phase, "phase", f'fab {name} --phase gpu-mainpc --reason "why"')
    reason = _required(reason, "reason", f'fab {name} --phase gpu-mainpc --reason "why"')
    inv = _inventory(inventory)
    ok, lines = operate.set_freeze(inv, phase, reason, thaw=thaw)
    render.say("\n".join(lines))
    if not ok:
        raise Exit(f"not every host of {phase} answered: the {name} is incomplete; run it again", code=1)


@task(help={"phase": "phase to freeze", "reason": "why (shown to whoever tries to roll it out)", "inventory": "inventory file"})
def freeze(c, phase=None, reason=None, inventory=None):
    """Stop rollouts of a phase until `fab thaw` (kept on its hosts, so every operator's controller sees it)."""
    _freeze(phase, reason, inventory, thaw=False)


@task(help={"phase": "phase to thaw", "reason": "why it may go ahead now (recorded)", "inventory": "inventory file"})
def thaw(c, phase=None, reason=None, inventory=None):
    """Lift a phase's freeze, manual or left by an automatic revert; recorded with the reason."""
    _freeze(phase, reason, inventory, thaw=True)


@task(
    help={"hosts": "comma-separated hosts (default: all)", "inventory": "inventory file",
          "accept": "HOST=SHA256:... — pin HOST's key if it has exactly this fingerprint (repeatable; for scripts)"},
    iterable=["accept"],
)
def hostkeys(c, hosts=None, inventory=None, accept=None):
    """Fetch each host's SSH key, show its fingerprint, pin only the keys you confirm (never trust on first use)."""
    from . import hostkeys as hk
    from . import render

    inv = _inventory(inventory)
    targets = inv.select_hosts(_hosts(hosts))
    try:
        expected = hk.parse_accepts(accept or [], targets)
        scans = hk.scan_hosts(inv, targets)
    except hk.HostKeyFileError as exc:
        raise Exit(str(exc), code=1) from None
    render.say(render.table([[s.host, s.entry, s.key.get_name() if s.key else "-", s.fingerprint or s.error, s.status] for s in scans],
                            ["host", "address", "type", "fingerprint", "status"]))
    ask = (lambda question: input(question).strip().lower() == "y") if sys.stdin.isatty() else None
    accepted, open_ = hk.decide(scans, expected, ask, render.say)
    hk.pin(accepted)
    for s in accepted:
        render.say(f"{s.host}: pinned {s.fingerprint} in {s.path}")
    if open_ or any(s.status == "unreachable" for s in scans):
        raise Exit(hk.not_done(open_), code=1)


from .tasks_build import audit, build, runbook  # noqa: E402 - the images and runbook tasks
from .tasks_swarm import swarm  # noqa: E402 - swarm.render (engine: swarm, docs/swarm.md)

ns = Collection(preflight, rollout, rollback, restart, exec_, prune, remove, status, details, explain, logs, history, versions, unlock, freeze, thaw, hostkeys, build, audit, runbook, swarm)
# lab.* is not here: the lab is a sandbox of the repository, added by fabfile.py for `fab` alone (lab/tasks.py).

