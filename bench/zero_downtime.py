"""Zero-downtime benchmark: requests dropped per swap, swap time start-first vs stop-first, proxy switch time.

Measured in one run on a 20-host lab with the real fleetroll-proxy (HAProxy) on every host:

(a) a load generator sends requests through pc2's proxy (new connection each, --rate req/s)
    while a service behind it is upgraded --swaps times start-first and --swaps times
    stop-first: failed requests per swap (connection errors and non-200) and latency p50/p99;
(b) wall time of one rollout upgrading the service on 2 hosts and on 20 hosts (one replica
    each, all at once), start-first against stop-first, median of --runs;
(c) the proxy's upstream switch (one runtime-API command line: idle slot ready, live slot
    drain), as the hosts reported it for every start-first swap above, and measured directly
    on pc2's proxy --switches times.

    .venv/bin/python bench/zero_downtime.py [--swaps 5] [--runs 3] [--rate 80]

Needs root; brings a 20-host lab up and down.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import proxy as agent_proxy  # noqa: E402
from lab import fleet, images  # noqa: E402
from playbooks import executor  # noqa: E402
from playbooks.inventory import load  # noqa: E402
from tests.test_lab_zero_downtime import Load  # noqa: E402

TMP = Path(tempfile.mkdtemp(prefix="frl-bench-zd-"))
os.environ.setdefault("FLEETROLL_LEDGER", str(TMP / "ledger.jsonl"))
HOSTS = 20
PAIR_PORT, ALL_PORT = 18080, 18081
FAST = {"healthy_deadline": 20, "min_healthy_time": 1, "interval": 0.25}


def tag() -> str:
    return f"20261126-{secrets.token_hex(4)[:7]}"


def inventory(state, proxy_tag: str, tags: dict[str, str], order: str) -> Path:
    """The lab inventory plus the proxy on every host, `web-pair` on mainpc+pc2 and `web-all` on all hosts."""
    src = Path(state.inventory)
    doc = yaml.safe_load(src.read_text())
    phases = yaml.safe_load((src.parent / "phases.yml").read_text())
    doc["groups"] = {"all": list(doc["hosts"])}
    doc["reverse_proxy"] = {"service": "edge"}
    doc["services"]["edge"] = {"image": "fleetroll-proxy", "tag": proxy_tag, "group": "all", "stop_timeout": 5,
                               "health": {"port": 8404, **FAST}}
    for name, port, where in (("web-pair", PAIR_PORT, {"hosts": ["mainpc", "pc2"]}), ("web-all", ALL_PORT, {"group": "all"})):
        doc["services"][name] = {"image": "cpu-svc", "tag": tags[name], **where, "stop_timeout": 2,
                                 "proxy": {"listen": str(port), "port": 8080}, "update": {"order": order, "drain_s": 0.5},
                                 "health": {"port": 8080, **FAST}}
    phases["phases"] += [{"name": "edge", "services": ["edge"]}, {"name": "pair", "services": ["web-pair"]},
                         {"name": "all", "services": ["web-all"]}]
    d = TMP / secrets.token_hex(3)
    d.mkdir()
    (d / "fleet.yml").write_text(yaml.safe_dump(doc))
    (d / "phases.yml").write_text(yaml.safe_dump(phases))
    return d / "fleet.yml"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[max(0, min(len(xs) - 1, int(round(q * len(xs))) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--swaps", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", type=float, default=80.0)
    ap.add_argument("--switches", type=int, default=200)
    args = ap.parse_args()
    out: dict = {}
    try:
        state = fleet.up(HOSTS)
        proxy_tag = images.push_proxy(state)
        tags = {"web-pair": tag(), "web-all": tag()}
        for t in tags.values():
            images.push(state, "cpu-svc", t, "healthy")
        inv = load(inventory(state, proxy_tag, tags, "auto"))
        for phase in ("edge", "pair", "all"):
            rep = executor.rollout(inv, phase, max_parallel=20)
            assert rep.state == "committed", rep.messages

        def upgrade(service: str, phase: str, order: str) -> executor.RolloutReport:
            tags[service] = tag()
            images.push(state, "cpu-svc", tags[service], "healthy")
            rep = executor.rollout(load(inventory(state, proxy_tag, tags, order)), phase, max_parallel=20)
            assert rep.state == "committed", rep.messages
            return rep

        # (a) requests dropped per swap, through pc2's proxy
        switch_ms: list[float] = []
        for order in ("start-first", "stop-first"):
            gen = Load(state.host("pc2").address, PAIR_PORT, rate=args.rate)
            gen.start()
            for _ in range(args.swaps):
                rep = upgrade("web-pair", "pair", order)
                switch_ms += [s["switch"]["switch_ms"] for h in rep.hosts.values() for s in h["services"]
                              if s.get("switch", {}).get("switched")]
            res = gen.finish()
            res["failed_per_swap"] = round(res["failed"] / args.swaps, 1)
            res["downtime_per_swap_s"] = round(res["failed"] / args.swaps / res["rate"], 3) if res["rate"] else None
            out[f"load {order}"] = res
        # (b) swap time, 2 and 20 hosts
        for service, phase, n in (("web-pair", "pair", 2), ("web-all", "all", HOSTS)):
            for order in ("start-first", "stop-first"):
                times = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    upgrade(service, phase, order)
                    times.append(time.perf_counter() - t0)
                out[f"swap {n} hosts {order}"] = round(statistics.median(times), 3)
        # (c) the switch itself, directly on pc2's proxy (no load running)
        rt = agent_proxy.Runtime(state.host("pc2").dir / "state" / "proxy-run" / agent_proxy.SOCKET_NAME)
        live = next(s for s in rt.slots("web-pair").values() if s.live)
        direct = []
        for i in range(args.switches):
            addr = "127.0.0.2" if i % 2 == 0 else live.addr
            direct.append(rt.point("web-pair", addr, live.port)["switch_ms"])
        rt.point("web-pair", live.addr, live.port)
        rt.retire("web-pair", live.addr, live.port)
        out["switch ms, reported by the swaps in (a)"] = {"n": len(switch_ms), "median": statistics.median(switch_ms),
                                                           "p99": pct(switch_ms, 0.99)}
        out["switch ms, direct"] = {"n": len(direct), "median": round(statistics.median(direct), 3), "p99": round(pct(direct, 0.99), 3)}
    finally:
        fleet.down()
    print(json.dumps(out, indent=1))
    a, b = out["load start-first"], out["load stop-first"]
    print(f"\n{'measure':46} {'start-first':>14} {'stop-first':>14}")
    print(f"{'failed requests per swap (' + str(args.swaps) + ' swaps)':46} {a['failed_per_swap']:>14} {b['failed_per_swap']:>14}")
    print(f"{'requests slower than 500 ms per swap':46} {a['slower_than_500ms'] / args.swaps:>14} {b['slower_than_500ms'] / args.swaps:>14}")
    print(f"{'request rate, req/s':46} {a['rate']:>14} {b['rate']:>14}")
    print(f"{'latency p50 / p99, ms':46} {str(a['p50_ms']) + ' / ' + str(a['p99_ms']):>14} {str(b['p50_ms']) + ' / ' + str(b['p99_ms']):>14}")
    for k in ("switch ms, reported by the swaps in (a)", "switch ms, direct"):
        print(f"{k + ': median / p99':46} {out[k]['median']:>7.2f} / {out[k]['p99']:.2f}  (n={out[k]['n']})")
    for n in (2, HOSTS):
        print(f"{'swap wall time, ' + str(n) + ' hosts, s':46} {out[f'swap {n} hosts start-first']:>14} {out[f'swap {n} hosts stop-first']:>14}")


if __name__ == "__main__":
    main()
