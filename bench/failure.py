"""Benchmark failure handling as the operator waits for it: a failed release back on last-known-good, proven healthy.

Target (issue 24, from the transaction-integrity issue): the installed `fleetroll rollout -p P -i INV -y --json`,
spawn to exit, for a release that fails its gate on every host, <= healthy_deadline + 1.2 x the floor of one swap;
the floor is one stop-first swap per service by the docker CLI over plain OpenSSH (pull, stop, rm, run, poll
/health), every host in parallel, measured in the same run, interleaved with the fleetroll runs.

Each bad release changes the tag *and* an env value. Per run, per variant (bench/failcase.py):
  floor     the docker CLI swap above, on a container `floor` beside the service (fleetroll's are left alone);
  all-bad   every host gets the bad release: exit 4 (reverted), and each host's dockerd then shows the service on
            its very old container (same id), old tag and env, running and healthy;
  one-bad   the first host gets it, the others a good one (they commit; the phase-wide revert then recreates their
            recorded configuration: same tag and env, a new container id).
Variants: stop-first (the lab's core services, a published port) and start-first (one service per host behind the
host's reverse proxy, `update: {order: start-first}`: the old container serves while the new one fails its gate).
Every fleetroll figure is the command from spawn to exit (bench/command.py: its CPU and peak RSS too), with its
in-process `elapsed_s` beside it; the hosts' journals and the command's `timings` say where the time went.

    FLEETROLL_LAB_INSTANCE=6 .venv/bin/fab lab.up --count 20 --with-proxy
    git archive HEAD | tar -x -C /tmp/frsnapB     # measure a committed tree, run from a small directory
    cd /tmp/frb6 && FLEETROLL_LAB_INSTANCE=6 PYTHONPATH=/tmp/frsnapB /work/main/.venv/bin/python /tmp/frsnapB/bench/failure.py \\
        --sizes 2,20 --runs 3 [--variants stop-first,start-first] [--also /tmp/frsnapA]
    FLEETROLL_LAB_INSTANCE=6 .venv/bin/fab lab.down

`--also TREE` runs every fleetroll measure a second time from another source tree (PYTHONPATH=TREE: controller
and agent), interleaved, for a before/after in the same run. Uses the lab that is up (20 hosts, with the proxy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import command  # noqa: E402
from bench import failcase as fc  # noqa: E402
from lab import images, model  # noqa: E402

FLEETROLL = Path(sys.executable).parent / "fleetroll"
CWD = fc.TMP / "cwd"  # a directory with nothing in it: the measured commands' working directory


def fleetroll(tree: Path, inv: Path, phase: str, want_rc: int) -> tuple[command.Ran, dict, float]:
    """`fleetroll rollout -p PHASE -i INV -y --json` from `tree`, spawn to exit: (ran, its phase report, spawn wall clock)."""
    env = command.operator_env({**os.environ, "PYTHONPATH": str(tree), "FLEETROLL_LEDGER": str(fc.TMP / "ledger.jsonl")})
    spawn = time.time()
    ran = command.run([str(FLEETROLL), "rollout", "-p", phase, "-i", str(inv), "-y", "--json"], env=env, cwd=str(CWD))
    rep = ran.json()["phases"][0] if ran.out.startswith("{") else {}
    assert ran.rc == want_rc, f"exit {ran.rc}, wanted {want_rc}: {rep.get('messages') or ran.err[-1500:]}"
    return ran, rep, spawn


def which_tree(tree: Path) -> str:
    """Where the tree's commands import from (and their bytecode cached, so no measured run compiles)."""
    env = command.operator_env({**os.environ, "PYTHONPATH": str(tree)})
    command.run([str(FLEETROLL), "--help"], env=env, cwd=str(CWD))
    out = command.run([sys.executable, "-c", "import playbooks.executor, playbooks.rollout, playbooks.runner, playbooks.transport,"
                       " playbooks.inventory, playbooks.render, playbooks.plan, agent; print(playbooks.__file__, agent.__file__)"],
                      env=env, cwd=str(CWD))
    return out.out.strip() or out.err[-500:]


def measure(state: model.LabState, n: int, variant: str, runs: int, deadline: float, trees: list[Path]) -> dict:
    base = fc.inventory(state, n, variant, deadline, proxy_tag=fc.proxy_tag(state))
    if variant == "start-first":
        fleetroll(trees[0], base, "edge", 0)  # the proxy on these hosts first (a no-op where it runs already)
    fleetroll(trees[0], base, fc.PHASE, 0)  # the baseline, with the release's gate settings (the restore gates by them)
    base_tag = fc.base_tag(state)
    old_ref = f"{state.registry}/{model.ORG}/core:{base_tag}"
    names = [fc.name_of(variant, h.name) for h in state.hosts[:n]]
    out: dict = {"floor": [], "load": []}
    for tree in trees:
        out[str(tree)] = {"all-bad": [], "one-bad": [], "cpu": [], "rss": [], "inproc": [], "split": {}, "times": {}}
    for i in range(runs):
        load0 = os.getloadavg()
        good, bad = fc.new_tag(), fc.new_tag()
        images.push(state, "core", good, "healthy")
        images.push(state, "core", bad, "degraded")
        out["floor"].append(fc.floor(state, n, variant, old_ref, f"{state.registry}/{model.ORG}/core:{good}"))
        for k, tree in enumerate(trees):
            # Each tree's release is a configuration of its own (RELEASE=...-k): a failed release stays frozen (every one
            # of a service's failed releases is refused), so the next tree's run of the same one would be refused, not timed.
            o = out[str(tree)]
            before = fc.containers(state, n, variant)
            inv = fc.inventory(state, n, variant, deadline, {s: bad for s in names}, f"bad-{i}-{k}", fc.proxy_tag(state))
            ran, rep, spawn = fleetroll(tree, inv, fc.PHASE, 4)
            assert rep["state"] == "reverted", rep["messages"]
            problems = fc.back_on_old(state, n, variant, base_tag, before, set(names))
            assert not problems, problems
            o["all-bad"].append(ran.wall_s)
            o["inproc"].append(rep["elapsed_s"])
            o["cpu"].append(ran.cpu_s)
            o["rss"].append(ran.maxrss_mb)
            fc.merge(o["split"], fc.journal_split(state, n, rep["rollout_id"], spawn, spawn + ran.wall_s))
            fc.merge(o["times"], fc.host_times(rep))
            before = fc.containers(state, n, variant)
            one = {s: (bad if k == 0 else good) for k, s in enumerate(names)}
            ran, rep, _ = fleetroll(tree, fc.inventory(state, n, variant, deadline, one, f"mixed-{i}-{k}", fc.proxy_tag(state)), fc.PHASE, 4)
            assert rep["state"] == "reverted", rep["messages"]
            problems = fc.back_on_old(state, n, variant, base_tag, before, {names[0]})
            assert not problems, problems
            o["one-bad"].append(ran.wall_s)
        out["load"].append((load0, os.getloadavg()))
        print(f"  {variant} {n} hosts run {i + 1}: floor {out['floor'][-1]:.2f}s; "
              + "; ".join(f"{Path(t).name}: all-bad {out[str(t)]['all-bad'][-1]:.2f}s one-bad {out[str(t)]['one-bad'][-1]:.2f}s"
                          for t in trees)
              + f"; load {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
    return out


def rows(n: int, variant: str, m: dict, deadline: float, trees: list[Path]) -> list[dict]:
    med = statistics.median
    fl = med(m["floor"])
    out = []
    for tree in trees:
        o = m[str(tree)]
        target = deadline + 1.2 * fl
        out.append({"variant": variant, "hosts": n, "tree": str(tree), "floor": fl, "all_bad": med(o["all-bad"]),
                    "inproc": med(o["inproc"]), "one_bad": med(o["one-bad"]), "target": target,
                    "met": med(o["all-bad"]) <= target, "cpu": med(o["cpu"]), "rss": max(o["rss"]),
                    "split": {k: fc.med(v) for k, v in o["split"].items()}, "times": {k: fc.med(v) for k, v in o["times"].items()},
                    "load": m["load"], "runs": m["floor"], "all_runs": o["all-bad"], "one_runs": o["one-bad"]})
    return out


def table(rs: list[dict]) -> str:
    lines = ["| variant | hosts | tree | floor | fleetroll (command), all bad | in-process | target: deadline + 1.2 × floor | met |"
             " one bad, rest phase-reverted | controller CPU | peak RSS |", "|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rs:
        lines.append(f"| {r['variant']} | {r['hosts']} | {Path(r['tree']).name} | {r['floor']:.2f} s | {r['all_bad']:.2f} s |"
                     f" {r['inproc']:.2f} s | {r['target']:.2f} s | {'yes' if r['met'] else '**no**'} | {r['one_bad']:.2f} s |"
                     f" {r['cpu']:.2f} s | {r['rss']:.0f} MB |")
    lines.append("")
    lines.append("| variant | hosts | tree | " + " | ".join(fc.SEGMENTS) + " | slot wait | SSH connect | shell+agent start | agent work |")
    lines.append("|---|---:|---|" + "---:|" * (len(fc.SEGMENTS) + 4))
    for r in rs:
        t = r["times"]
        lines.append(f"| {r['variant']} | {r['hosts']} | {Path(r['tree']).name} | "
                     + " | ".join(f"{r['split'].get(s, float('nan')):.2f}" for s in fc.SEGMENTS)
                     + " | " + " | ".join(f"{t.get(k, float('nan')):.2f}" for k in ("wait_s", "connect_s", "start_s", "agent_s")) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="2,20")
    ap.add_argument("--variants", default="stop-first,start-first")
    ap.add_argument("--deadline", type=float, default=3.0)
    ap.add_argument("--also", action="append", default=[], help="another source tree to measure beside this one")
    args = ap.parse_args()
    CWD.mkdir()
    trees = [ROOT, *(Path(t).resolve() for t in args.also)]
    state = model.LabState.load()
    sizes = [int(x) for x in args.sizes.split(",")]
    variants = args.variants.split(",")
    assert len(state.hosts) >= max(sizes), f"the lab has {len(state.hosts)} hosts; bring up {max(sizes)}"
    assert "start-first" not in variants or fc.proxy_tag(state), "start-first needs the proxy: fab lab.up --with-proxy"
    for t in trees:
        print(f"tree {t}: {which_tree(t)}", flush=True)
    rs = []
    print(f"start {time.strftime('%H:%M:%S', time.gmtime())} UTC, load {os.getloadavg()}", flush=True)
    for n in sizes:
        for v in variants:
            rs += rows(n, v, measure(state, n, v, args.runs, args.deadline, trees), args.deadline, trees)
            print(table(rs), flush=True)
    print(f"end {time.strftime('%H:%M:%S', time.gmtime())} UTC, load {os.getloadavg()}")
    (fc.TMP / "rows.json").write_text(json.dumps(rs, indent=1, default=str))
    print(f"rows: {fc.TMP / 'rows.json'}")


if __name__ == "__main__":
    main()
