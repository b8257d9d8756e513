"""Fleet-scale benchmark: no-op and preflight against their floor on two lab accounts, and a canary/batched upgrade.

Measured in one run on a 20-host lab, as ratios to floors taken in the same run:

(a) no-op rollout and preflight, 2 hosts (3 containers each) and 20 hosts (1 each), for the
    plain lab account (frlab) and for an account like many operators' (frpyenv: bash, a
    ~/.bashrc costing 0.2 s, a python3 shim first in PATH). Floor: one SSH session per host,
    hosts in parallel, that reads the host's containers (docker inspect) and the registry
    digest of each of its images (one HEAD per image, /usr/bin/python3). Target <= 1.3x.
(b) upgrade of one service replicated on 20 hosts with canary 1, max_parallel 5, against the
    same batches done by hand (docker CLI: pull, stop, rm, run, poll /health; the hosts of a
    batch in parallel, batches one after another). Target <= 1.2x.

    .venv/bin/python bench/fleet_scale.py [--runs 3]

Needs root; brings a 20-host lab up and down.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
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

from lab import fleet, images  # noqa: E402
from playbooks import executor, transport  # noqa: E402
from playbooks.inventory import load  # noqa: E402
from playbooks.runner import run_preflight  # noqa: E402

TMP = Path(tempfile.mkdtemp(prefix="frl-bench-scale-"))
os.environ.setdefault("FLEETROLL_LEDGER", str(TMP / "ledger.jsonl"))
WORKERS = 20
SETTLE_S = 1.0
PAIR = ("mainpc", "pc2")


def tag() -> str:
    return f"20261126-{secrets.token_hex(4)[:7]}"


def inventory(state, user: str, embeddings_tag: str | None = None) -> Path:
    """The lab inventory as `user`, with a phase `pair` holding every service of mainpc and pc2 (3 each) and,
    optionally, `embeddings` on every host (group all, canary 1, max_parallel 5) in phase `replicas`."""
    src = Path(state.inventory)
    doc = yaml.safe_load(src.read_text())
    phases = yaml.safe_load((src.parent / "phases.yml").read_text())
    for h in doc["hosts"].values():
        h["user"] = user
    # `pair`: the GPU services of mainpc and the CPU services of pc2, two containers each; core-infra keeps one
    # container on each of the 20 hosts.
    pair = [n for n, s in doc["services"].items() if s.get("host") in PAIR and not n.startswith("core-")]
    for p in phases["phases"]:
        p["services"] = [s for s in p["services"] if s not in pair]
    phases["phases"] = [p for p in phases["phases"] if p["services"]]
    phases["phases"].append({"name": "pair", "services": pair})
    if embeddings_tag:
        doc["groups"] = {"all": list(doc["hosts"])}
        doc["services"]["embeddings"] = {
            "image": "cpu-svc", "tag": embeddings_tag, "group": "all", "update": {"canary": 1, "max_parallel": 5},
            "ports": ["8700:8080"], "stop_timeout": 1,
            "health": {"port": 8700, "healthy_deadline": 20, "min_healthy_time": 0, "interval": 0.05}}
        phases["phases"].append({"name": "replicas", "services": ["embeddings"]})
    d = TMP / secrets.token_hex(3)
    d.mkdir()
    (d / "fleet.yml").write_text(yaml.safe_dump(doc))
    (d / "phases.yml").write_text(yaml.safe_dump(phases))
    return d / "fleet.yml"


def ssh_floor(inv, phase: str) -> float:
    """One SSH session per host reading its containers and each image's registry digest; hosts in parallel."""
    reg = inv.fleet.registry
    by_host: dict[str, list[str]] = {}
    for s, h in inv.replicas(phase):
        by_host.setdefault(h, []).append(s)

    def cmd(services: list[str]) -> str:
        paths = [f"/v2/{reg.org}/{inv.fleet.services[s].image}/manifests/{inv.fleet.services[s].tag}" for s in services]
        py = ("import http.client as h,sys\nc=h.HTTPConnection(sys.argv[1])\nfor p in sys.argv[2:]:\n"
              " c.request('HEAD',p,headers={'Accept':'application/vnd.oci.image.manifest.v1+json,"
              "application/vnd.docker.distribution.manifest.v2+json'})\n r=c.getresponse();r.read()\n"
              " print(r.getheader('Docker-Content-Digest'))")
        return (f"docker inspect -f '{{{{.Id}}}}' {' '.join(services)} >/dev/null && "
                f"/usr/bin/python3 -c {shlex.quote(py)} {shlex.quote(reg.host)} {' '.join(map(shlex.quote, paths))}")

    def one(h: str) -> None:
        conn = transport.connect(transport.Target.from_inventory(inv, h))
        try:
            r = conn.run(cmd(by_host[h]), hide=True, warn=True)
            assert r.ok and "sha256:" in r.stdout, r.stderr
        finally:
            conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(h,)) for h in by_host]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as r:
            return r.status == 200
    except OSError:
        return False


def swap_by_hand(state, inv, host: str, ref: str) -> None:
    h = state.host(host)
    env = {**os.environ, "DOCKER_HOST": h.docker_host}
    svc = inv.fleet.services["embeddings"]

    def docker(*a):
        subprocess.run(["docker", *a], env=env, check=True, capture_output=True)

    docker("pull", "-q", ref)
    docker("stop", "-t", str(svc.stop_timeout), "embeddings")
    docker("rm", "embeddings")
    docker("run", "-d", "--name", "embeddings", "--user", svc.user, "--restart", svc.restart, "-p", "8700:8080", ref)
    while not healthy(f"http://{h.address}:8700/health"):
        time.sleep(0.05)


def batches_by_hand(state, inv, ref: str) -> float:
    hosts = inv.fleet.hosts_of("embeddings")
    order = [hosts[:1]] + [hosts[i:i + 5] for i in range(1, len(hosts), 5)]
    t0 = time.perf_counter()
    for batch in order:
        threads = [threading.Thread(target=swap_by_hand, args=(state, inv, h, ref)) for h in batch]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return time.perf_counter() - t0


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rows: list[tuple[str, float, float, str]] = []
    try:
        state = fleet.up(WORKERS)
        for user in (fleet.LAB_USER, fleet.LAB_PYENV_USER):
            inv = load(inventory(state, user))
            for phase, n in (("pair", 2), ("core-infra", WORKERS)):
                assert executor.rollout(inv, phase, max_parallel=20).ok
                noop, pre, floor = [], [], []
                for _ in range(args.runs):  # interleaved, so drift in machine load hits all alike
                    # a pause before each: the previous measure's sessions end (remote interpreters exit) first
                    time.sleep(SETTLE_S)
                    floor.append(ssh_floor(inv, phase))
                    time.sleep(SETTLE_S)
                    t0 = time.perf_counter()
                    rep = executor.rollout(inv, phase, max_parallel=20)
                    noop.append(time.perf_counter() - t0)
                    assert rep.state == "noop", rep.messages
                    time.sleep(SETTLE_S)
                    t0 = time.perf_counter()
                    assert run_preflight(inv, phase, max_parallel=20).ok
                    pre.append(time.perf_counter() - t0)
                rows.append((f"no-op, {n} hosts, {user}", med(noop), med(floor), "<= 1.3x"))
                rows.append((f"preflight, {n} hosts, {user}", med(pre), med(floor), "<= 1.3x"))
        # (b) canary + batches on 20 hosts, against the same batches by hand
        t_base = tag()
        images.push(state, "cpu-svc", t_base, "healthy")
        base = load(inventory(state, fleet.LAB_USER, t_base))
        assert executor.rollout(base, "replicas", max_parallel=20).ok
        ups, hand = [], []
        for _ in range(args.runs):
            t_new, t_hand = tag(), tag()
            for t in (t_new, t_hand):
                images.push(state, "cpu-svc", t, "healthy")
            inv = load(inventory(state, fleet.LAB_USER, t_new))
            t0 = time.perf_counter()
            rep = executor.rollout(inv, "replicas", max_parallel=20)
            ups.append(time.perf_counter() - t0)
            assert rep.ok, rep.messages
            hand.append(batches_by_hand(state, inv, f"{inv.repo('embeddings')}:{t_hand}"))
            # back under fleetroll's management for the next run: the hand-made containers go, fleetroll recreates
            for h in inv.fleet.hosts_of("embeddings"):
                subprocess.run(["docker", "rm", "-f", "embeddings"], env={**os.environ, "DOCKER_HOST": state.host(h).docker_host},
                               check=True, capture_output=True)
            assert executor.rollout(load(inventory(state, fleet.LAB_USER, t_base)), "replicas", max_parallel=20).ok
        rows.append(("upgrade 1 service x 20 hosts, canary 1, max_parallel 5", med(ups), med(hand), "<= 1.2x"))
    finally:
        fleet.down()
    print(f"{'measure':58} {'fleetroll':>10} {'floor':>8} {'ratio':>6}  target")
    for name, v, f, target in rows:
        print(f"{name:58} {v:9.3f}s {f:7.3f}s {v / f:5.2f}x  {target}")


if __name__ == "__main__":
    main()
