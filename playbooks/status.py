"""`fab status`: what each host runs, whether it is healthy, what its proxy serves, and what the ledger missed.

The judgements (health, SHA drift, the proxy's route, GPU memory) are pure functions over
what the hosts answered; `status()` asks them.
"""

from __future__ import annotations

import re
import time
from typing import Any

from . import ledger, transport
from .hostcalls import record_recoveries
from .inventory import Inventory


def sha_drift(tag: str, report: dict | None, container_started: str) -> str:
    """Compare what a service reported at start-up with what its tag names (pure)."""
    if report is None:
        return "no start-up report"
    tag_sha = tag.rsplit("-", 1)[-1]
    got = str(report.get("git_sha", ""))
    # At least 7 hex digits, and at least as long as the tag's: a shorter report ("a", "") matches nothing.
    if not re.fullmatch(r"[0-9a-f]{7,40}", got) or not got.startswith(tag_sha):
        return f"reported git {got[:12] or '(none)'}, tag names {tag_sha}"
    try:
        reported = time.mktime(time.strptime(report["started_at"][:19], "%Y-%m-%dT%H:%M:%S"))
        started = time.mktime(time.strptime(container_started[:19], "%Y-%m-%dT%H:%M:%S"))
        if reported < started - 5:
            return f"stale report (from a start at {report['started_at']}, container started {container_started[:19]}Z)"
    except (KeyError, ValueError):
        pass
    return ""


CRASH_LOOP_S = 60  # a container that restarted and has been up for less than this is not (yet) healthy


def service_health(c: dict | None, probe: dict) -> tuple[bool, str]:
    """Healthy means the container runs (not restarting, not exited) *and* /health answered ok. Pure.

    A crash-looping container answers /health between crashes; the probe alone would call it healthy.
    """
    if c is None:
        return False, "not running (no container)"
    state = c.get("status") or "unknown"
    if c.get("secret_files_missing"):  # after a reboot: down (a Mounts bind) or up without its secrets (a Binds string)
        return False, f"container {state}; {c['secret_files_missing']}"
    if not c.get("running") or state != "running":
        return False, f"container {state}" + (f" ({c.get('restart_count')} restarts)" if c.get("restart_count") else "")
    up = c.get("up_s")
    looping = f"restarted {c.get('restart_count')} times, up only {up or 0:.0f}s (crash loop?)" if (
        c.get("restart_count") and up is not None and up < CRASH_LOOP_S) else ""
    if not probe.get("ok"):  # between two crashes the probe fails too: the loop is the news, the probe its symptom
        why = probe.get("reason") or "no /health answer"
        return False, f"{looping}; /health: {why}" if looping else why
    if looping:
        return False, looping
    return True, "healthy" + (f" ({c['restart_count']} restarts)" if c.get("restart_count") else "")


def proxy_route_view(view: dict | None, service: str, container: dict | None, network: str) -> str:
    """Which backend the host's proxy sends `service` to, in words (pure): the service's container, or what else."""
    return proxy_route(view, service, container, network)[1]


def proxy_route(view: dict | None, service: str, container: dict | None, network: str) -> tuple[str, str]:
    """(why the proxy does not send `service`'s requests to its running container alone, or "" if it does;
    the route in words). Pure."""
    if not view or not view.get("ok"):
        return "the proxy is not answering", f"proxy not answering: {(view or {}).get('error', 'not asked')}"
    be = (view.get("backends") or {}).get(service)
    if be is None:
        return "the proxy has no backend for it", "the proxy has no backend for it (roll out the proxy's phase)"
    serving = be.get("serving") or []
    if not serving:
        return "the proxy has no ready server for it", "no ready server: requests fail"
    mine = ((container or {}).get("addresses") or {}).get(network, "")
    if len(serving) == 1 and mine and serving[0].split(":")[0] == mine:
        return "", f"-> {service} ({(container or {}).get('id', '')[:12]}) at {serving[0]}"
    return ("the proxy sends its requests elsewhere",
            f"-> {', '.join(serving)}, which is not the running {service} container ({mine or 'no address'})")


def served_health(healthy: bool, health: str, not_served: str) -> tuple[bool, str]:
    """A proxied service is healthy for its clients only if the proxy serves its container (pure).

    Its own /health can pass while the host's proxy is down or routes elsewhere: the operator's
    question, "does it work?", is then no, and `fab status` exits 1 saying why (the route in full
    is the proxy line under the table).
    """
    if healthy and not_served:
        return False, f"{health}, but not served: {not_served}"
    return healthy, health


def gpu_memory_view(inv: Inventory, host: str, nvml: dict | None) -> list[dict[str, Any]]:
    """Each GPU's memory as NVML reports it, beside the budgets of the GPU services placed on the host. Pure."""
    if not nvml or not nvml.get("ok"):
        return []
    budgets = inv.gpu_budgets(host)
    return [{"index": g["index"], "name": g["name"], "total_gb": round(g.get("memory_mib", 0) / 1024, 1),
             "used_gb": round(g.get("memory_used_mib", 0) / 1024, 1), "budgets_gb": budgets} for g in nvml.get("gpus") or []]


def orphans(containers: list[dict], placed: list[str]) -> list[dict[str, Any]]:
    """Containers fleetroll started on a host under a name the inventory does not place there (pure).

    One whose service label names a placed service was renamed by hand (`docker rename rag-api
    rag-api-old`): it is listed too, `renamed`, since no rollout will ever touch it. Kept
    containers of a transaction (`<service>--kept-…`) are not orphans: the transaction (or its
    recovery) owns them.
    """
    return [{"name": c["name"], "service": c.get("service") or c["name"], "tag": c.get("tag", ""), "status": c.get("status", ""),
             "rollout_id": c.get("rollout_id", ""), "renamed": c.get("service") in placed}
            for c in containers if c["name"] not in placed and "--kept-" not in c["name"]]


def status(inv: Inventory, hosts: list[str] | None = None, max_parallel: int | None = None) -> dict[str, Any]:
    targets = inv.select_hosts(hosts)
    coll = inv.fleet.observability.collector
    coll_host = inv.fleet.hosts_of(coll)[0] if coll else None

    def args(h: str) -> dict:
        a: dict[str, Any] = {"health": {s: inv.fleet.health_spec(s) for s in inv.services_for(None, [h])},
                             "gpu": inv.fleet.hosts[h].gpus is not None, "proxy": bool(inv.fleet.proxied_on(h))}
        if h == coll_host:
            a["collector_port"] = inv.fleet.services[coll].port_pairs()[0][0]
        if waiting:  # rollouts this controller never saw end: the host says how they did, even under a later one
            a["pending"] = waiting
        return a

    waiting = sorted(ledger.pending())[-20:]

    if coll_host and coll_host not in targets:
        targets = [*targets, coll_host]
    results = transport.on_hosts(inv, targets, "status", args, max_parallel=max_parallel, timeout=30)
    reports: dict[tuple[str, str], dict] | None = None
    if coll_host and results[coll_host].answer:
        c = (results[coll_host].answer.get("data") or {}).get("collector") or {}
        if c.get("ok"):
            # A host's answer is untrusted input: a row without a host and service is dropped, not a KeyError.
            reports = {(r["host"], r["service"]): r for r in c.get("services") or []
                       if isinstance(r, dict) and r.get("host") and r.get("service")}
    out: dict[str, Any] = {"hosts": {}, "collector": None if not coll else ("ok" if reports is not None else "unreachable")}
    for h in inv.select_hosts(hosts):
        r = results[h]
        out["hosts"][h] = {"reachable": False, "error": r.error} if r.answer is None else host_view(inv, h, r.answer, reports)
    record_recoveries(results)
    for h in inv.select_hosts(hosts):
        ledger.observe(h, out["hosts"][h].get("last_rollout"))  # first: the host's last word on its last transaction
        for earlier in ((results[h].answer or {}).get("data") or {}).get("earlier") or []:
            ledger.observe(h, earlier)
    swarm_rows(inv, out, inv.select_hosts(hosts))
    return out


def needs_attention(out: dict[str, Any]) -> bool:
    """fab status's exit 1 (pure): a host unreachable, its Docker silent, a kept container left, its cards not the
    inventory's, its agent's files found changed (and unpacked again), or a service not healthy."""
    return any(not h.get("reachable") or h.get("docker_error") or h.get("kept_leftovers") or h.get("gpu_problems")
               or h.get("repaired")
               or any(not v["healthy"] for v in (h.get("services") or {}).values()) for h in out["hosts"].values())


def gpu_problems(inv: Inventory, h: str, nvml: dict | None) -> dict[str, Any]:
    """{"gpu_problems": [...]} when the host's cards or driver are not what the inventory says, else {} (pure).

    Found by an exploratory run: with mainpc's RTX 4090 swapped for an RTX 3060 (or its driver below min_driver),
    fab status printed the card and said nothing; only a rollout's preflight compared it. The same check, on the
    NVML facts status reads anyway.
    """
    spec = inv.fleet.hosts[h].gpus
    if spec is None or nvml is None:
        return {}
    from .preflight import FAIL, _gpu_checks

    found = [f"{c.detail} ({c.fix})" for c in _gpu_checks(h, spec, nvml) if c.status == FAIL]
    return {"gpu_problems": found} if found else {}


def host_view(inv: Inventory, h: str, answer: dict, reports: dict | None) -> dict[str, Any]:
    """One reachable host's part of `fab status` from its agent's answer (pure).

    A Docker daemon that did not answer (hung, stopped, its socket gone) says nothing about what
    runs: its containers may all be running. Its rows then say "unknown" and unhealthy, never
    "absent", and no orphan is listed from an empty list.
    """
    data = answer.get("data") or {}
    docker = data.get("docker") or {}
    placed = inv.services_for(None, [h])
    base = {"reachable": True, "lock": data.get("lock"), "last_rollout": data.get("last"),
            "recovered": answer.get("recovered") or [], "repaired": answer.get("repaired") or "",
            "freezes": data.get("freezes") or [],
            "gpus": gpu_memory_view(inv, h, data.get("nvml")), **gpu_problems(inv, h, data.get("nvml"))}
    if not docker.get("ok"):
        err = str(docker.get("error") or answer.get("msg") or "the agent's answer says nothing of Docker")
        return {**base, "docker_error": err, "services": {s: docker_unknown_row(err) for s in placed}, "orphans": []}
    containers = {c["name"]: c for c in docker.get("containers") or []}
    found = orphans(list(containers.values()), placed)
    services = {s: _service_row(inv, h, s, containers.get(s), data, reports) for s in placed}
    for o in found:
        row = services.get(o["service"])
        if o.get("renamed") and row is not None and containers.get(o["service"]) is None:
            row["health"] = f"no container named {o['service']}; {renamed_words(o['name'], h)}"
    left = kept_leftovers(list(containers.values()), data)
    for k in left:
        if k["service"] in services:
            row = services[k["service"]]
            row["drift"] = "; ".join(x for x in (row["drift"], leftover_words(k, h)) if x)
    return {**base, "services": services, "orphans": found, "kept_leftovers": left}


def kept_leftovers(containers: list[dict], data: dict) -> list[dict[str, Any]]:
    """Kept containers (`<service>--kept-…`) no transaction holds now: no journal open, the lock free (pure).

    A transaction removes its kept container on commit or starts it again on a revert; one whose revert
    failed leaves it, running or not, and nothing removes it later. While a journal is open or the lock
    is held (or cannot be read, or the agent does not say) it may be a transaction's own: none is listed.
    """
    if "open" not in data or data.get("open") or data.get("lock"):
        return []
    origins = data.get("kept") or {}
    return [{"name": c["name"], "service": c.get("service") or c["name"].partition("--kept-")[0], "tag": c.get("tag", ""),
             "status": c.get("status", ""), "left_by": origins.get(c["name"])} for c in containers if "--kept-" in c["name"]]


def left_by_words(origin: dict | None) -> str:
    """Which transaction set a kept container aside and how it ended, from the host's journal (pure)."""
    if not origin:
        return "left by a transaction whose journal is no longer on the host"
    rid = origin.get("rollout_id")
    if not origin.get("ended"):
        return f"left by rollout {rid}, interrupted before it wrote an outcome"
    if origin.get("outcome") == "revert-failed":
        return f"left by rollout {rid} (its revert failed)"
    return f"left by rollout {rid} (it ended {origin.get('outcome') or origin.get('state') or 'without an outcome for it'})"


def leftover_words(k: dict[str, Any], h: str) -> str:
    """A leftover kept container in words, with the command that removes it (pure).

    `fab remove` takes a container by its name, under the host's lock (it refuses while a transaction runs).
    """
    return f"kept container {k['name']} ({k['status'] or '?'}, {k['tag'] or '?'}) {nobody_holds_words(k, h)}"


def nobody_holds_words(k: dict[str, Any], h: str) -> str:
    """Who left a kept container that no transaction holds, and what removes it (pure)."""
    return f"{left_by_words(k.get('left_by'))}, no transaction holds it now; remove it with: fab remove -s {k['name']} -H {h}"


def docker_unknown_row(err: str) -> dict[str, Any]:
    """A service's row on a host whose Docker daemon did not answer: what runs is unknown, not absent (pure)."""
    return {"tag": None, "digest": None, "status": "unknown", "restarts": 0, "healthy": False,
            "health": f"Docker daemon did not answer: {err}", "drift": "unknown (Docker did not answer)", "rollout_id": None}


def renamed_words(name: str, h: str) -> str:
    """What to do about a fleetroll container of a placed service that runs under another name (pure)."""
    return (f"a fleetroll container {name} holds this service's release: renamed by hand? fab remove -s {name} -H {h},"
            " then fab rollout")


def _service_row(inv: Inventory, h: str, s: str, c: dict | None, data: dict, reports: dict | None) -> dict[str, Any]:
    """One service's row of `fab status` from its host's answer (pure)."""
    want = inv.fleet.services[s].tag
    probe = (data.get("health") or {}).get(s) or {}
    if c is None:
        drift = "not running"
    elif c.get("tag") != want:
        drift = f"runs {c.get('tag')}, inventory says {want}"
    else:
        drift = config_drift(inv, s, h, c)
    if c and c.get("secrets_since_created"):
        drift = "; ".join(x for x in (drift, secrets_drift(s, c["secrets_since_created"], h)) if x)
    healthy, health = service_health(c, probe)
    alien = (data.get("foreign") or {}).get(s) if c is None else None
    if alien:  # the name is held by a container a rollout will not touch: say so, not "no container"
        health = f"a container fleetroll did not start holds the name ({alien.get('image')}, {alien.get('id')})"
        drift = "not fleetroll's: remove or rename it, then roll out"
    row = {"tag": c.get("tag") if c else None, "digest": c.get("digest") if c else None,
           "status": c.get("status") if c else (f"foreign, {alien.get('status')}" if alien else "absent"), "restarts": c.get("restart_count", 0) if c else 0,
           "healthy": healthy, "health": health, "drift": drift, "rollout_id": c.get("rollout_id") if c else None}
    if inv.fleet.services[s].proxy is not None:
        not_served, row["proxy"] = proxy_route(data.get("proxy"), s, c, inv.fleet.reverse_proxy.network)
        row["healthy"], row["health"] = served_health(healthy, health, not_served)
    if reports is not None and c:
        rep = reports.get((h, s))
        row["reported_git_sha"] = rep.get("git_sha") if rep else None
        row["sha_drift"] = sha_drift(c.get("tag", ""), rep, c.get("started_at", ""))
    return row


def secrets_drift(s: str, found: dict[str, list[str]], host: str = "") -> str:
    """What the host's secrets did since the container was created (agent/secrets.since_created), in words (pure)."""
    out = []
    if found.get("changed"):
        names = ", ".join(found["changed"])
        out.append(f"secret {names} changed on the host since the container was created; it still has the value it was"
                   f" created with (fab restart -s {s}{f' -H {host}' if host else ''})")
    if found.get("gone"):
        names = ", ".join(found["gone"])
        out.append(f"secret {names} is no longer on the host; the next start of {s} will be refused (put it back:"
                   " fab preflight names it)")
    return "; ".join(out)


def config_drift(inv: Inventory, s: str, h: str, c: dict) -> str:
    """Does the container run the inventory's configuration of `s` on `h`? "" if so, else what to do (pure).

    The tag alone hid changed ports, env, volumes, health settings, and the proxy's own routes (a
    `proxy.listen` edited in a service changes the proxy's configuration, not the service's tag). The
    container's configuration label is compared with the hash a rollout would give it, for the digest
    the container runs: the inventory's tag already names that digest here.
    """
    from .plan import container_spec, hand_changed, runs_inventory_config
    from .targets import phase_of_service

    spec = container_spec(inv, s, h)
    same = runs_inventory_config(inv, s, h, c, spec)
    if same is None:
        return "no configuration label (started by hand?)"
    if same:
        return ""
    how = f"(how: fab rollout -p {phase_of_service(inv, s)} -n)"
    return f"{hand_changed(c, spec) or 'configuration differs from the inventory'} {how}"


def swarm_rows(inv: Inventory, out: dict[str, Any], hosts: list[str]) -> None:
    """Rows of swarm phases' services from a manager: Swarm names its own containers, which the agents do not know."""
    if any(inv.fleet.engine_of(p) == "swarm" for p in inv.phases):
        from .swarm.status_view import overlay

        overlay(inv, out, hosts)
