"""Benchmark failure handling: a failed release back on last-known-good, proven healthy, at 2 and 20 hosts.

Target (transaction-integrity issue): time from `fab rollout` to every host back on its
old container and proven healthy <= healthy_deadline + 1.2 x the floor, where the floor is
one stop-first swap per service done by hand with the docker CLI (pull, stop, rm, run,
poll /health), on every host in parallel, measured in the same run.

Two failures, each a release that changes the tag *and* an env value together (the case
that could not be reverted before):
  all-bad   every host gets the bad release: each host restores its own kept container;
  one-bad   one host gets it, the others a good one: they commit, then the phase-wide revert
            recreates their recorded old configuration.

    .venv/bin/python bench/failure.py [--runs 3] [--sizes 2,20] [--deadline 3]

Needs root; brings the lab up and down. Prints a table and the line for bench/REPORT.md.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rollout import TMP, floor, healthy, tag, timed  # noqa: E402

from lab import fleet, images  # noqa: E402
from playbooks import executor  # noqa: E402
from playbooks.inventory import load  # noqa: E402


def inventory(state, tags: dict[str, str], env_value: str, deadline: float) -> Path:
    doc = yaml.safe_load(Path(state.inventory).read_text())
    for name, svc in doc["services"].items():
        svc["health"].update(min_healthy_time=0.0, healthy_deadline=deadline, interval=0.05)
        if name in tags:
            svc["tag"] = tags[name]
            svc["env"] = {**svc.get("env", {}), "RELEASE": env_value}
    d = TMP / secrets.token_hex(3)
    d.mkdir()
    (d / "fleet.yml").write_text(yaml.safe_dump(doc))
    (d / "phases.yml").write_text((Path(state.inventory).parent / "phases.yml").read_text())
    return d / "fleet.yml"


def all_healthy_on(state, inv, base_tag: str) -> bool:
    for s in inv.services_for("core-infra"):
        svc = inv.fleet.services[s]
        h = state.host(svc.host)
        if not healthy(f"http://{h.address}:{svc.health.port}/health"):
            return False
        c = __import__("docker").DockerClient(base_url=h.docker_host).containers.get(s)
        if c.labels["io.fleetroll.tag"] != base_tag or any(e.startswith("RELEASE=") for e in c.attrs["Config"]["Env"]):
            return False
    return True


args_verbose = False


def measure(n: int, runs: int, deadline: float) -> dict[str, float]:
    state = fleet.up(n)
    # The baseline runs with the same gate settings as the releases: a restore gates the old
    # container on its own recorded settings, and the budget assumes no stability window.
    base = load(inventory(state, {}, "", deadline))
    assert executor.rollout(base, "core-infra", max_parallel=n).ok
    base_tag = base.fleet.services[base.services_for("core-infra")[0]].tag
    services = base.services_for("core-infra")
    out: dict[str, list[float]] = {"floor": [], "all-bad": [], "one-bad": []}
    for _ in range(runs):
        good, bad = tag(), tag()
        images.push(state, "core", good, "healthy")
        images.push(state, "core", bad, "degraded")
        # floor: one stop-first swap per service by hand, every host in parallel
        finv = load(inventory(state, {s: good for s in services}, "floor", deadline))
        out["floor"].append(floor(state, finv, "core-infra"))
        for svc in services:  # hand-made containers are not fleetroll's: put the baseline back
            h = state.host(base.fleet.services[svc].host)
            __import__("subprocess").run(["docker", "-H", h.docker_host, "rm", "-f", svc], capture_output=True)
        assert executor.rollout(base, "core-infra", max_parallel=n).ok
        inv = load(inventory(state, {s: bad for s in services}, "bad", deadline))
        t, rep = timed(lambda inv=inv: executor.rollout(inv, "core-infra", max_parallel=n))
        assert rep.state == "reverted", rep.messages
        assert all_healthy_on(state, base, base_tag)
        out["all-bad"].append(t)
        if args_verbose:
            svc = rep.hosts[state.hosts[0].name]["services"][0]
            print(f"  {n} hosts all-bad {t:.2f}s: preflight {rep.preflight.elapsed_s:.2f}s, host {rep.hosts[state.hosts[0].name]['elapsed_s']:.2f}s,"
                  f" timings {svc['timings']}, gate {svc['gate'].get('elapsed_s', 0):.2f}s, restore gate"
                  f" {svc['revert_gate'].get('elapsed_s', 0):.2f}s", flush=True)
            recs = [__import__("json").loads(x) for x in (state.hosts[0].dir / "state" / "journal" / f"{rep.rollout_id}.jsonl")
                    .read_text().splitlines()]
            print("   " + " ".join(f"{r['step']}+{r['ts'] - recs[0]['ts']:.2f}" for r in recs if r["step"] != "gate-progress"))
        one = {s: (bad if i == 0 else good) for i, s in enumerate(services)}
        inv = load(inventory(state, one, "mixed", deadline))
        t, rep = timed(lambda inv=inv: executor.rollout(inv, "core-infra", max_parallel=n))
        assert rep.state == "reverted", rep.messages
        assert all_healthy_on(state, base, base_tag)
        out["one-bad"].append(t)
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="2,20")
    ap.add_argument("--deadline", type=float, default=3.0)
    ap.add_argument("--verbose", action="store_true", help="print where the time of each failed rollout went")
    args = ap.parse_args()
    global args_verbose
    args_verbose = args.verbose
    rows = []
    try:
        for n in (int(x) for x in args.sizes.split(",")):
            m = measure(n, args.runs, args.deadline)
            budget = args.deadline + 1.2 * m["floor"]
            rows.append((n, m["floor"], m["all-bad"], m["one-bad"], budget))
    finally:
        fleet.down()
    print(f"{'hosts':>5} {'floor':>7} {'all-bad':>8} {'one-bad':>8} {'budget':>7}  (deadline {args.deadline:g} s, medians of {args.runs})")
    for n, fl, a, o, b in rows:
        verdict = "ok" if max(a, o) <= b else "OVER"
        print(f"{n:>5} {fl:>7.2f} {a:>8.2f} {o:>8.2f} {b:>7.2f}  {verdict}")


if __name__ == "__main__":
    main()
