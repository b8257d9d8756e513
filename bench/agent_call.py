"""Benchmark: what one agent call costs a host's CPU, the facts call every no-op and preflight makes (issue 24).

Every command starts the agent afresh on every host (the verifier, the bootstrap's tree check,
the agent's imports, the facts), so at 20 hosts on 2 cores this per-call CPU is most of what the
no-op waits for beside the logins. Timed on the host, not the controller: one SSH session runs
the agent `--calls` times in a row with the exact request a no-op of the lab's `scale` phase
sends (bench/fleet_scale.py's three services), through the real verifier, and reads the shell's
`times` (user + system of its children). Repeated `--rounds` times; the median is reported.

Run it with a tree on PYTHONPATH to measure that tree's agent (it is uploaded first by a real
facts call), and interleave two trees to compare them:

    FLEETROLL_LAB_INSTANCE=3 .venv/bin/fab lab.up --count 2
    for t in /tmp/snapA /tmp/snapB /tmp/snapA /tmp/snapB; do
        FLEETROLL_LAB_INSTANCE=3 PYTHONPATH=$t env -u PYTHONDONTWRITEBYTECODE .venv/bin/python $t/bench/agent_call.py
    done
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.vocabulary import State  # noqa: E402
from bench import fleet_scale  # noqa: E402
from lab import model  # noqa: E402
from playbooks import agentpack, executor, preflight, transport  # noqa: E402
from playbooks.inventory import load  # noqa: E402

TIMES = re.compile(r"(\d+)m([\d.]+)s\s+(\d+)m([\d.]+)s")


def loop_script(argv: list[str], request: dict, calls: int) -> str:
    """A POSIX shell script that runs the agent `calls` times with `request` on stdin, then prints `times`."""
    req = json.dumps(request)
    return "\n".join([
        "set -e", "d=$(mktemp -d)", f"printf '%s\\n' {shlex.quote(req)} > \"$d/req\"",
        f"i=0; while [ $i -lt {calls} ]; do {shlex.join(argv)} < \"$d/req\" > \"$d/out\"; i=$((i+1)); done",
        "head -c 300 \"$d/out\" >&2; rm -rf \"$d\"", "times",
    ])


def children_cpu(times_output: str) -> float:
    """User + system seconds of the shell's children: the second of the two lines `times` prints."""
    lines = [m for m in (TIMES.fullmatch(line.strip()) for line in times_output.splitlines()) if m]
    if len(lines) < 2:
        raise SystemExit(f"could not read `times` output: {times_output!r}")
    m = lines[1]
    return int(m.group(1)) * 60 + float(m.group(2)) + int(m.group(3)) * 60 + float(m.group(4))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="", help="lab host to measure on (default: the lab's first)")
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    state = fleet_scale.lab(1)
    host = args.host or state.hosts[0].name
    lab_host = next(h for h in state.hosts if h.name == host)
    tags = fleet_scale.push(state)
    inv = load(fleet_scale.inventory(state, len(state.hosts), model.LAB_USER, tags))
    rep = executor.rollout(inv, "scale")  # the services run, as in a no-op (this also uploads this tree's agent)
    if rep.state not in (State.COMMITTED, State.NOOP):
        raise SystemExit(f"the rollout of the bench's services ended {rep.state}: {rep.messages}")
    request = {"protocol": transport.PROTOCOL, "op": "facts", "args": preflight.request_args(inv, host, "scale")}
    first = transport.on_hosts(inv, [host], "facts", lambda h: request["args"], max_parallel=1, timeout=60)[host]
    if not first.ok:  # a check that the request is one the agent answers
        raise SystemExit(f"{host}: the facts call failed: {first.error or first.answer}")
    _data, digest = agentpack.build()
    script = loop_script(agentpack.command(digest), request, args.calls)
    per_call = []
    for _ in range(args.rounds):
        r = subprocess.run(["ssh", "-F", str(model.LAB_DIR / "ssh_config"), "-l", model.LAB_USER, "-o", "BatchMode=yes",
                            lab_host.address, "sh -s"], input=script, capture_output=True, text=True, timeout=600)
        if r.returncode:
            raise SystemExit(f"{host}: the loop failed ({r.returncode}): {r.stderr[-500:]}")
        if '"ok": true' not in r.stderr.replace('"ok":true', '"ok": true'):
            raise SystemExit(f"{host}: the agent did not answer ok: {r.stderr[-300:]}")
        per_call.append(children_cpu(r.stdout) / args.calls * 1000)
    print(json.dumps({"tree": str(Path(agentpack.__file__).resolve().parent.parent), "agent": digest[:16], "host": host,
                      "calls": args.calls, "per_call_ms": [round(x, 1) for x in per_call],
                      "median_ms": round(statistics.median(per_call), 1)}))


if __name__ == "__main__":
    main()
