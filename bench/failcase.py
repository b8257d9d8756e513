"""bench/failure.py's pieces: the two inventories, the docker CLI floor over OpenSSH, the checks on the hosts, the journal.

Two variants of one service per host (the lab's `core` image, a busybox httpd behind tini):
  stop-first   `core-<host>` publishing 9100, as the lab's core-infra runs it: a failed release stops
               the old container, starts the new one, and after the deadline starts the old one again;
  start-first  `front-<host>` behind the host's reverse proxy (the lab's fleetroll-proxy image, phase
               `edge`) with `update: {order: start-first}`: the old container keeps serving while the
               new one fails its gate; the proxy is never switched.
Pure helpers and thin subprocess wrappers; no fleetroll module is imported (the measured code is the
installed command, run from whichever tree PYTHONPATH names).
"""

from __future__ import annotations

import json
import secrets
import shlex
import statistics
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import yaml

from bench import command
from lab import model

TMP = Path(tempfile.mkdtemp(prefix="frl-bench-fail-"))
PHASE = "fail"
PROXY_PORT, FLOOR_PORT = "18080", 9200


def new_tag() -> str:
    return f"20261130-{secrets.token_hex(4)[:7]}"


def base_tag(state: model.LabState) -> str:
    """The tag the lab's core services run (the baseline every failed release must come back to)."""
    return yaml.safe_load(Path(state.inventory).read_text())["services"]["core-mainpc"]["tag"]


def name_of(variant: str, host: str) -> str:
    return f"{'core' if variant == 'stop-first' else 'front'}-{host}"


def inventory(state: model.LabState, n: int, variant: str, deadline: float, tags: dict[str, str] | None = None,
              env: str = "", proxy_tag: str = "") -> Path:
    """The first n lab hosts, one service each of `variant`; `tags` (service -> tag) and RELEASE=env mark a release."""
    doc = yaml.safe_load(Path(state.inventory).read_text())
    hosts = [h.name for h in state.hosts[:n]]
    base = doc["services"]["core-mainpc"]["tag"]
    doc["hosts"] = {h: doc["hosts"][h] for h in hosts}
    doc["ssh"]["max_parallel"] = n
    gate = {"healthy_deadline": deadline, "min_healthy_time": 0.0, "interval": 0.05}
    services, phases = {}, []
    for h in hosts:
        name = name_of(variant, h)
        s = {"image": "core", "tag": (tags or {}).get(name, base), "host": h, "env": {"MACHINE": h}, "stop_timeout": 5}
        if variant == "stop-first":
            s.update(ports=["9100:8080"], health={"port": 9100, **gate})
        else:
            s.update(proxy={"listen": PROXY_PORT, "port": 8080}, update={"order": "start-first", "drain_s": 0.5},
                     health={"port": 8080, **gate})
        if env and name in (tags or {}):
            s["env"]["RELEASE"] = env
        services[name] = s
    doc.pop("reverse_proxy", None)
    if variant == "start-first":
        doc["reverse_proxy"] = {"service": "edge-proxy"}
        services["edge-proxy"] = {"image": "fleetroll-proxy", "tag": proxy_tag, "hosts": hosts, "stop_timeout": 5,
                                  "health": {"port": 8404, "healthy_deadline": 20, "min_healthy_time": 1, "interval": 0.25}}
        phases.append({"name": "edge", "services": ["edge-proxy"]})
    phases.append({"name": PHASE, "services": [name_of(variant, h) for h in hosts]})
    doc["services"] = services
    d = TMP / secrets.token_hex(3)
    d.mkdir()
    (d / "fleet.yml").write_text(yaml.safe_dump(doc))
    (d / "phases.yml").write_text(yaml.safe_dump({"phases": phases}))
    return d / "fleet.yml"


def proxy_tag(state: model.LabState) -> str:
    """The fleetroll-proxy tag `fab lab.up --with-proxy` pushed ("" if the lab was brought up without it)."""
    doc = yaml.safe_load(Path(state.inventory).read_text())
    return ((doc["services"].get("edge-proxy") or {}).get("tag")) or ""


# --- the floor: one stop-first swap per host by the docker CLI, over plain OpenSSH, every host at once ----------

def _run_args(variant: str, host: str, ref: str, release: str) -> str:
    net = "--network fleetroll" if variant == "start-first" else f"-p {FLOOR_PORT}:8080"
    env = f"-e MACHINE={host}" + (f" -e RELEASE={release}" if release else "")
    return f"docker run -d --name floor --user 10001:10001 --restart unless-stopped {net} {env} {ref} >/dev/null"


def _until_healthy(variant: str) -> str:
    """Poll /health until it says ok: on the published port, or (behind the proxy) at the container's own address."""
    if variant == "stop-first":
        return f"until curl -fs http://127.0.0.1:{FLOOR_PORT}/health | grep -q ok; do sleep 0.05; done"
    return ("ip=$(docker inspect -f '{{(index .NetworkSettings.Networks \"fleetroll\").IPAddress}}' floor) && "
            "until curl -fs http://$ip:8080/health | grep -q ok; do sleep 0.05; done")


def ssh_all(state: model.LabState, n: int, remote: dict[str, str]) -> command.Ran:
    """A shell starting one OpenSSH `ssh` per host (its own remote command), all at once, then `wait`."""
    cfg = model.LAB_DIR / "ssh_config"
    lines = [f"ssh -F {cfg} -l {model.LAB_USER} -o BatchMode=yes {h.address} {shlex.quote(remote[h.name])} || echo FAIL {h.name} &"
             for h in state.hosts[:n]]
    ran = command.run(["bash", "-c", "\n".join(lines) + "\nwait"])
    assert "FAIL" not in ran.out and ran.rc == 0, (ran.out, ran.err[-800:])
    return ran


def floor(state: model.LabState, n: int, variant: str, old_ref: str, new_ref: str) -> float:
    """Seconds for the timed swap of a container `floor` (old_ref -> new_ref, same settings as the service) on every host.

    Beside fleetroll's container, not instead of it: fleetroll's state (and the proxy) stay as they are. The old
    one is started first (untimed), and the new one is removed afterwards (untimed), so no hand-made container runs
    during the fleetroll runs.
    """
    hosts = [h.name for h in state.hosts[:n]]
    ssh_all(state, n, {h: f"docker rm -f floor >/dev/null 2>&1; {_run_args(variant, h, old_ref, '')} && {_until_healthy(variant)}"
                       for h in hosts})
    swap = {h: (f"docker pull -q {new_ref} >/dev/null && docker stop -t 5 floor >/dev/null && docker rm floor >/dev/null && "
                f"{_run_args(variant, h, new_ref, 'floor')} && {_until_healthy(variant)}") for h in hosts}
    t = ssh_all(state, n, swap).wall_s
    ssh_all(state, n, {h: "docker rm -f floor >/dev/null" for h in hosts})
    return t


# --- what the hosts' own dockerds say --------------------------------------------------------------------------

def inspect(state: model.LabState, host: str, name: str) -> dict:
    out = subprocess.run(["docker", "-H", state.host(host).docker_host, "inspect", name], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)[0]


def containers(state: model.LabState, n: int, variant: str) -> dict[str, str]:
    """service -> id of the container running under the service's name."""
    return {name_of(variant, h.name): inspect(state, h.name, name_of(variant, h.name))["Id"] for h in state.hosts[:n]}


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200 and b'"ok"' in r.read()
    except OSError:
        return False


def back_on_old(state: model.LabState, n: int, variant: str, base_tag: str, before: dict[str, str], same: set[str]) -> list[str]:
    """Problems (none: every service on its old tag and env, running, healthy; those in `same` on the very same container).

    Behind the proxy: healthy through the proxy, and the proxy's one live server is that container's address.
    """
    problems = []
    for h in state.hosts[:n]:
        name = name_of(variant, h.name)
        c = inspect(state, h.name, name)
        labels, env = c["Config"]["Labels"], c["Config"]["Env"]
        if name in same and c["Id"] != before[name]:
            problems.append(f"{name}: container {c['Id'][:12]}, not the old {before[name][:12]}")
        if labels.get("io.fleetroll.tag") != base_tag or any(e.startswith("RELEASE=") for e in env):
            problems.append(f"{name}: tag {labels.get('io.fleetroll.tag')}, env {[e for e in env if e.startswith('RELEASE=')]}")
        if not c["State"]["Running"]:
            problems.append(f"{name}: {c['State']['Status']}")
        port = 9100 if variant == "stop-first" else int(PROXY_PORT)
        if not healthy(f"http://{h.address}:{port}/health"):
            problems.append(f"{name}: /health on {h.address}:{port} is not ok")
        if variant == "start-first":
            problems += _served(state, h, name, c)
    return problems


def _served(state: model.LabState, h: model.LabHost, name: str, c: dict) -> list[str]:
    from agent import proxy  # the measured tree's (PYTHONPATH): only its runtime-API client

    live = [f"{s.addr}:{s.port}" for s in proxy.Runtime(h.dir / "state" / "proxy-run" / proxy.SOCKET_NAME).slots(name).values()
            if s.live]
    want = f"{proxy.container_address(c, 'fleetroll')}:8080"
    return [] if live == [want] else [f"{name}: the proxy serves {live}, not the old container at {want}"]


# --- where the time went: each host's journal on the command's own clock ------------------------------------------

SEGMENTS = ("start + preflight", "pull", "prepare", "set aside + stop old", "start new", "gate (deadline)", "restore", "close",
            "to exit")
MARKS = ("accepted", "set-aside", "start-new", "gate", "swap-failed", "reverted", "done")


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def journal_split(state: model.LabState, n: int, rid: str, spawn: float, exit_: float) -> dict[str, list[float]]:
    """Per host, seconds between marks on one clock (the lab's hosts share the machine's): the command's spawn ->
    the fleet-wide pull starting on the host (its -prepare journal: the command's start-up and preflight before it) ->
    accepted (the pull, the answer, the rollout call) -> set-aside -> start-new -> gate -> swap-failed -> reverted ->
    done, then the last host's done -> the command's exit. Hosts without every mark are left out."""
    out: dict[str, list[float]] = {s: [] for s in SEGMENTS}
    last_done = spawn
    for h in state.hosts[:n]:
        jdir = h.dir / "state" / "journal"
        at: dict[str, float] = {}
        for r in _records(jdir / f"{rid}.jsonl"):
            at.setdefault(r["step"], r["ts"])
        pulled = _records(jdir / f"{rid}-prepare.jsonl")
        if not all(m in at for m in MARKS) or not pulled:
            continue
        ts = [spawn, pulled[0]["ts"], *(at[m] for m in MARKS)]
        for seg, a, b in zip(SEGMENTS[:-1], ts[:-1], ts[1:], strict=True):
            out[seg].append(b - a)
        last_done = max(last_done, at["done"])
    out["to exit"].append(exit_ - last_done)
    return out


def host_times(report: dict) -> dict[str, list[float]]:
    """The command's own per-host clocks (--json `timings`): slot wait, SSH connect, shell + agent start, agent work."""
    t = report.get("timings") or {}
    return {k: [v[k] for v in t.values() if v.get(k) is not None] for k in ("wait_s", "connect_s", "start_s", "agent_s")}


def merge(into: dict[str, list[float]], more: dict[str, list[float]]) -> None:
    for k, v in more.items():
        into.setdefault(k, []).extend(v)


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")
