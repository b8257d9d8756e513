"""Benchmark: warm `fab preflight` on 2 and on 20 lab hosts.

Prints wall time per run and SSH round trips per host. Targets (issue 3): 2 hosts <= 1.0 s,
20 hosts <= 2.5 s, one round trip per host once the agent is cached. Needs root (it brings
up the lab, and takes it down at the end).

    .venv/bin/python bench/preflight.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import fleet  # noqa: E402
from playbooks.inventory import load  # noqa: E402
from playbooks.runner import run_preflight  # noqa: E402


def measure(count: int, runs: int) -> dict:
    state = fleet.up(count)
    inv = load(state.inventory)
    run_preflight(inv)  # ship the agent and unpack it: the cold run is not what we measure
    times, trips = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        rep = run_preflight(inv)
        times.append(time.perf_counter() - t0)
        trips.append(max(r.round_trips for r in rep.calls.values()))
        assert rep.ok, [c for c in rep.checks if c.status == "fail"]
    return {"hosts": count, "median_s": statistics.median(times), "max_s": max(times), "round_trips_per_host": max(trips)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", default="2,20")
    args = ap.parse_args()
    targets = {2: 1.0, 20: 2.5}
    try:
        rows = [measure(int(n), args.runs) for n in args.sizes.split(",")]
    finally:
        fleet.down()
    print(f"{'hosts':>5}  {'median s':>8}  {'max s':>6}  {'RT/host':>7}  target")
    for r in rows:
        t = targets.get(r["hosts"])
        verdict = "" if t is None else f"<= {t} s {'met' if r['median_s'] <= t else 'MISSED'}"
        print(f"{r['hosts']:>5}  {r['median_s']:>8.3f}  {r['max_s']:>6.3f}  {r['round_trips_per_host']:>7}  {verdict}")


if __name__ == "__main__":
    main()
