"""Benchmark the rollout against the lab, with the physical floor measured in the same run.

Every rollout is the installed `fleetroll rollout … --json` run as a fresh process and timed from
spawn to exit (bench/command.py): what the operator waits for, start-up and inventory included.

(a) no-op re-run: 2 hosts x 3 services, and 20 hosts (phase core-infra)
(b) upgrade vs floor: the same swaps done directly with the docker CLI (pull, stop, run,
    poll /health) on each host, hosts in parallel, as a ratio
(c) downtime per swap, polling /health every 50 ms, against stop + start + first
    healthy answer + 0.3 s from the transaction's own timings
(d) failed rollout (a release whose /health says "degraded") to reverted and healthy

Targets (issue 4, set for the in-process figure; a command also pays start-up and the inventory:
bench/fleet_scale.py holds the no-op against its floor): no-op <= 0.6 s for 2 hosts and <= 1.5 s for 20; upgrade <= 1.2x floor;
downtime <= stop + start + first healthy + 0.3 s. Needs root; brings the lab up and down.

    FLEETROLL_LAB_INSTANCE=7 .venv/bin/python bench/rollout.py [--runs 3] [--skip-20]
"""

from __future__ import annotations

import argparse
import http.client
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import command  # noqa: E402
from lab import fleet, images  # noqa: E402
from playbooks.inventory import load  # noqa: E402

TMP = Path(tempfile.mkdtemp(prefix="frl-bench-"))
os.environ.setdefault("FLEETROLL_LEDGER", str(TMP / "ledger.jsonl"))


def tag() -> str:
    return f"20261126-{secrets.token_hex(4)[:7]}"


def bench_inventory(state, tags: dict[str, str] | None = None, window: float = 0.0, deadline: float = 20.0) -> Path:
    """The lab inventory with every service of mainpc and pc2 in one phase `bench`."""
    src = Path(state.inventory)
    doc = yaml.safe_load(src.read_text())
    for name, svc in doc["services"].items():
        svc["health"].update(min_healthy_time=window, healthy_deadline=deadline, interval=0.05)
        if tags and name in tags:
            svc["tag"] = tags[name]
    d = TMP / secrets.token_hex(3)
    d.mkdir()
    names = [n for n, s in doc["services"].items() if s["host"] in ("mainpc", "pc2")]
    phases = yaml.safe_load((src.parent / "phases.yml").read_text())
    phases["phases"].append({"name": "bench", "services": names})
    # a service belongs to one phase: bench takes them out of the others
    for p in phases["phases"][:-1]:
        p["services"] = [s for s in p["services"] if s not in names]
    (d / "fleet.yml").write_text(yaml.safe_dump(doc))
    (d / "phases.yml").write_text(yaml.safe_dump(phases))
    return d / "fleet.yml"


class Report(dict):
    """One phase of `fleetroll rollout --json`, read like the in-process report (ok, state, messages, hosts)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def rollout(inv, phase: str, max_parallel: int | None = None) -> tuple[float, Report]:
    """`fleetroll rollout -p PHASE -i INVENTORY -y --json` as a child process: (seconds from spawn to exit, its report)."""
    extra = ["--max-parallel", str(max_parallel)] if max_parallel else []
    ran = command.fleetroll("rollout", "-p", phase, "-i", str(inv.path), "-y", "--json", *extra,
                            env={**os.environ, "FLEETROLL_LEDGER": os.environ["FLEETROLL_LEDGER"]})
    return ran.wall_s, Report(ran.json()["phases"][0])


def healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200 and b'"ok"' in r.read()
    except (OSError, http.client.HTTPException):  # a server stopping mid-answer is "down", not a crash
        return False


def floor_swap(state, inv, service: str) -> None:
    """What an operator would type by hand: pull, stop, rm, run, poll /health."""
    svc = inv.fleet.services[service]
    h = state.host(svc.host)
    env = {**os.environ, "DOCKER_HOST": h.docker_host}
    ref = inv.image_ref(service)
    name = f"{service}"

    def docker(*a):
        subprocess.run(["docker", *a], env=env, check=True, capture_output=True)

    docker("pull", "-q", ref)
    docker("stop", "-t", str(svc.stop_timeout), name)
    docker("rm", name)
    args = ["run", "-d", "--name", name, "--user", svc.user, "--restart", svc.restart]
    for p in svc.ports:
        args += ["-p", p]
    for k, v in svc.env.items():
        args += ["-e", f"{k}={v}"]  # the lab inventory has no secret references
    if svc.wants_gpu:
        args += ["--gpus", "all"]
    docker(*args, ref)
    url = f"http://{h.address}:{svc.health.port}/health"
    while not healthy(url, 0.5):
        time.sleep(0.05)


def floor(state, inv, phase: str) -> float:
    by_host: dict[str, list[str]] = {}
    for s in inv.services_for(phase):
        by_host.setdefault(inv.fleet.services[s].host, []).append(s)

    def host_run(services):
        for s in services:
            floor_swap(state, inv, s)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=host_run, args=(v,)) for v in by_host.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


class Downtime:
    """Poll each service's /health every 50 ms; the longest run of failures is its downtime."""

    def __init__(self, state, inv, phase):
        self.urls = {s: f"http://{state.host(inv.fleet.services[s].host).address}:{inv.fleet.services[s].health.port}/health"
                     for s in inv.services_for(phase)}
        self.stop = threading.Event()
        self.gaps = {s: 0.0 for s in self.urls}

    def watch(self, s, url):
        down_since = None
        while not self.stop.is_set():
            t = time.perf_counter()
            ok = healthy(url, 0.2)
            if not ok and down_since is None:
                down_since = t
            if ok and down_since is not None:
                self.gaps[s] = max(self.gaps[s], t - down_since)
                down_since = None
            time.sleep(max(0.0, 0.05 - (time.perf_counter() - t)))

    def __enter__(self):
        self.threads = [threading.Thread(target=self.watch, args=(s, u)) for s, u in self.urls.items()]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        time.sleep(0.3)
        self.stop.set()
        for t in self.threads:
            t.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-20", action="store_true")
    args = ap.parse_args()
    rows = []
    command.warm()
    try:
        state = fleet.up(2)
        base_inv = load(bench_inventory(state))
        assert rollout(base_inv, "bench")[1].ok
        noop2 = [rollout(base_inv, "bench")[0] for _ in range(args.runs)]
        rows.append(("(a) no-op, 2 hosts x 3 services", statistics.median(noop2), "<= 0.6 s"))

        repos = {"core": None, "torch-svc": "89;86", "vision-svc": "89;86", "cpu-svc": None}
        ratios, downs, floor_downs = [], [], []
        for _ in range(args.runs):
            t_new = tag()
            for repo, arch in repos.items():
                images.push(state, repo, t_new, "healthy", arch)
            inv = load(bench_inventory(state, {s: t_new for s in base_inv.services_for("bench")}))
            with Downtime(state, inv, "bench") as dt:
                up_s, rep = rollout(inv, "bench")
            assert rep.ok, rep.messages
            for h in rep.hosts.values():
                for s in h["services"]:
                    t = s["timings"]
                    budget = t.get("stop_s", 0) + t.get("start_s", 0) + (s["gate"]["time_to_healthy_s"] or 0) + 0.3
                    downs.append((dt.gaps[s["service"]], budget))
            # the floor: the same images again, by hand (docker CLI), on each host in parallel
            t_floor = tag()
            for repo, arch in repos.items():
                images.push(state, repo, t_floor, "healthy", arch)
            finv = load(bench_inventory(state, {s: t_floor for s in base_inv.services_for("bench")}))
            with Downtime(state, finv, "bench") as fdt:  # same polling load as the fleetroll run
                fl = floor(state, finv, "bench")
            floor_downs += list(fdt.gaps.values())
            ratios.append((up_s, fl))
            for svc in finv.services_for("bench"):  # hand-run containers are not fleetroll's: clear them
                h = state.host(finv.fleet.services[svc].host)
                subprocess.run(["docker", "-H", h.docker_host, "rm", "-f", svc], capture_output=True)
            rep = rollout(base_inv, "bench")[1]
            assert rep.ok, rep.messages
        up_med = statistics.median(u for u, _ in ratios)
        fl_med = statistics.median(f for _, f in ratios)
        rows.append(("(b) upgrade 2x3 (fleetroll)", up_med, ""))
        rows.append(("(b) upgrade 2x3 (docker CLI floor)", fl_med, ""))
        rows.append(("(b) ratio fleetroll / floor", up_med / fl_med, "<= 1.2x"))
        over = [d - b for d, b in downs]
        rows.append(("(c) downtime per swap, median", statistics.median(d for d, _ in downs), ""))
        rows.append(("(c) downtime minus budget, worst", max(over), "<= 0 s"))
        rows.append(("(c) downtime per swap, docker CLI, median", statistics.median(floor_downs), ""))

        bad = tag()
        images.push(state, "torch-svc", bad, "degraded", "89;86")
        binv = load(bench_inventory(state, {"llm-api": bad}, deadline=3.0))
        fail_s, rep = rollout(binv, "bench")
        assert rep.state == "reverted", rep.messages
        rows.append(("(d) failed rollout -> reverted (deadline 3 s)", fail_s, ""))

        if not args.skip_20:
            state = fleet.up(20)
            inv20 = load(state.inventory)
            assert rollout(inv20, "core-infra", max_parallel=20)[1].ok
            noop20 = [rollout(inv20, "core-infra", max_parallel=20)[0] for _ in range(args.runs)]
            rows.append(("(a) no-op, 20 hosts", statistics.median(noop20), "<= 1.5 s"))
    finally:
        fleet.down()
    print(f"{'measure':48} {'value':>9}  target")
    for name, val, target in rows:
        unit = "x" if "ratio" in name else "s"
        print(f"{name:48} {val:>8.3f}{unit}  {target}")


if __name__ == "__main__":
    main()
