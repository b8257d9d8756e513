"""Benchmark the collector and the start-up emitter on the lab.

(a) collector ingestion: 50 concurrent honest senders posting real, signed start-up reports
    (the CPU family's SBOM, gzip+base64) for a fixed time: payloads/s and latency p50/p99
(a') the same 50 senders while a slowloris on another lab host (mainpc's network namespace:
    its own address) keeps 400 connections open (a header line every 2 s, never finishing a
    request, reconnecting whenever cut off) and 100 more that connect and say nothing:
    target honest p99 <= 2x its unloaded value in the same run, and the collector's memory
    bounded (peak container memory during the attack vs before it)
(b) emitter's added start-up latency: time from `docker start` to the first healthy
    /health answer of `hello`, with and without FLEETROLL_COLLECTOR_URL, N runs each;
    target: median added <= 50 ms

Needs root, buildah and mmdebstrap; builds the images, brings the lab up and down.

    .venv/bin/python bench/collector.py [--seconds 10] [--runs 15] [--slow 400]
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import hmac
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import docker
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import secrets  # noqa: E402
from lab import fleet  # noqa: E402
from playbooks import executor  # noqa: E402
from playbooks.images import build  # noqa: E402
from playbooks.inventory import load  # noqa: E402

TMP = Path(tempfile.mkdtemp(prefix="frl-bench-coll-"))
os.environ.setdefault("FLEETROLL_LEDGER", str(TMP / "ledger.jsonl"))


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def ingest(url: str, body_for, senders: int, seconds: float) -> tuple[int, list[float], int]:
    """`body_for(i, n)` gives (body, signature) for sender i's n-th report."""
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def sender(i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            body, sig = body_for(i, n)
            t0 = time.perf_counter()
            try:
                req = urllib.request.Request(url, data=body, method="POST",
                                             headers={"Content-Type": "application/json", "X-Fleetroll-Signature": sig})
                with urllib.request.urlopen(req, timeout=30) as r:
                    ok = r.status == 201
            except OSError:
                ok = False
            dt = time.perf_counter() - t0
            with lock:
                if ok:
                    lat.append(dt)
                else:
                    errors[0] += 1
            n += 1

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(lat), lat, errors[0]


class Slowloris:
    """`n` connections that trickle a header line every `every` s and never finish; `mute` that say nothing."""

    def __init__(self, addr: str, port: int, n: int, mute: int, every: float = 2.0):
        self.addr, self.port, self.n, self.mute, self.every = addr, port, n, mute, every
        self.stop = threading.Event()
        self.reconnects = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def _open(self, first: bytes) -> socket.socket | None:
        try:
            s = socket.create_connection((self.addr, self.port), timeout=5)
            if first:
                s.sendall(first)
            return s
        except OSError:
            return None

    def run(self) -> None:
        start = b"POST /v1/startup HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\n"
        slow = [self._open(start) for _ in range(self.n)]
        mute = [self._open(b"") for _ in range(self.mute)]
        i = 0
        while not self.stop.wait(self.every):
            i += 1
            for k, s in enumerate(slow):
                try:
                    if s is None:
                        raise OSError
                    s.sendall(f"X-Pad-{i}: {'a' * 8}\r\n".encode())
                except OSError:  # cut off: come back, as an attacker would
                    self.reconnects += 1
                    slow[k] = self._open(start)
            for k, s in enumerate(mute):
                if s is None or s.fileno() < 0:
                    mute[k] = self._open(b"")
        for s in slow + mute:
            if s is not None:
                s.close()

    def __enter__(self):
        self.thread.start()
        time.sleep(self.every + 1)  # every connection open before the honest senders start
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


class RemoteSlowloris:
    """The Slowloris above, run by this script in another lab host's network namespace (another source address)."""

    def __init__(self, netns: str, addr: str, port: int, n: int, mute: int, seconds: float):
        self.cmd = ["ip", "netns", "exec", netns, sys.executable, __file__, "--slowloris-child",
                    json.dumps([addr, port, n, mute, seconds])]
        self.reconnects = 0

    def __enter__(self):
        import subprocess

        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        return self

    def __exit__(self, *exc):
        out, _ = self.proc.communicate(timeout=120)
        self.reconnects = json.loads(out.strip().splitlines()[-1])["reconnects"]


def slowloris_child(spec: str) -> None:
    addr, port, n, mute, seconds = json.loads(spec)
    with Slowloris(addr, port, n, mute) as s:
        print("ready", flush=True)
        time.sleep(seconds)
    print(json.dumps({"reconnects": s.reconnects}), flush=True)


class MemoryWatch:
    """Peak memory of a container (cgroup usage as `docker stats` reports it), sampled every 0.5 s."""

    def __init__(self, container):
        self.c, self.peak, self.stop = container, 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def now(self) -> int:
        return int(self.c.stats(stream=False)["memory_stats"].get("usage", 0))

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.now())
            self.stop.wait(0.5)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def time_to_healthy(d, ref: str, addr: str, port: int, env: dict) -> float:
    c = d.containers.create(ref, environment=env, ports={"8080/tcp": port}, user="10001:10001")
    try:
        t0 = time.monotonic()
        c.start()
        while True:
            try:
                with urllib.request.urlopen(f"http://{addr}:{port}/health", timeout=0.5) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                time.sleep(0.005)
    finally:
        c.remove(force=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--slow", type=int, default=400, help="slowloris connections")
    ap.add_argument("--slowloris-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.slowloris_child:
        return slowloris_child(args.slowloris_child)
    try:
        state = fleet.up(2)
        fam = build.build_family("family-cpu-py311", allow_dirty=True)
        reg = f"{state.registry}/{fleet.ORG}"
        coll = build.build_service("fleetroll-collector", fam.local_ref, reg, push=True, allow_dirty=True, insecure=True)
        build.build_service("hello", fam.local_ref, reg, push=True, allow_dirty=True, insecure=True)
        doc = yaml.safe_load(Path(state.inventory).read_text())
        doc["services"]["fleetroll-collector"] = {
            "image": "fleetroll-collector", "tag": coll.tag, "host": "pc2", "ports": ["9400:9400"],
            "volumes": ["frl-bench-collector:/data"], "health": {"port": 9400, "min_healthy_time": 1}}
        doc["observability"] = {"collector": "fleetroll-collector"}  # gives it the fleet's report secret
        phases = yaml.safe_load((Path(state.inventory).parent / "phases.yml").read_text())
        phases["phases"].append({"name": "bench", "services": ["fleetroll-collector"]})
        (TMP / "fleet.yml").write_text(yaml.safe_dump(doc))
        (TMP / "phases.yml").write_text(yaml.safe_dump(phases))
        inv = load(TMP / "fleet.yml")
        assert executor.rollout(inv, "bench").ok
        url = f"http://{state.host('pc2').address}:9400/v1/startup"
        sbom_b64 = base64.b64encode(gzip.compress(Path(fam.sbom).read_bytes())).decode()

        fleet_secret = fleet.report_secret(state)

        def body(i: int, n: int) -> tuple[bytes, str]:
            digest = f"sha256:{n:064x}"
            b = json.dumps({"host": "bench", "service": f"s{i:02d}", "git_sha": "0" * 40, "image_digest": digest,
                            "started_at": "2026-11-26T00:00:00Z", "sbom": sbom_b64}).encode()
            key = secrets.report_key(fleet_secret, "bench", f"s{i:02d}", digest)
            return b, "sha256=" + hmac.new(key.encode(), b, hashlib.sha256).hexdigest()

        collector = docker.DockerClient(base_url=state.host("pc2").docker_host).containers.get("fleetroll-collector")
        ingest(url, body, 50, 2)  # warm-up: first connections, SQLite pages
        mem_before = MemoryWatch(collector).now()
        count, lat, errors = ingest(url, body, 50, args.seconds)
        attack = RemoteSlowloris(state.host("mainpc").netns, state.host("pc2").address, 9400, args.slow, 100, args.seconds + 2)
        with MemoryWatch(collector) as mem, attack as slow:
            count_l, lat_l, errors_l = ingest(url, body, 50, args.seconds)
        mem_after = MemoryWatch(collector).now()
        d = docker.DockerClient(base_url=state.host("mainpc").docker_host)
        ref = f"{state.registry}/{fleet.ORG}/hello:{coll.tag}"
        addr = state.host("mainpc").address
        d.images.pull(ref)  # pulled once: the pull is not what is measured
        with_url = {"FLEETROLL_COLLECTOR_URL": f"http://{state.host('pc2').address}:9400", "FLEETROLL_SERVICE": "hello",
                    "FLEETROLL_HOST": "mainpc"}
        base, emit = [], []
        for i in range(args.runs):  # interleaved, so drift in machine load hits both alike
            base.append(time_to_healthy(d, ref, addr, 8500 + 2 * i, {}))
            emit.append(time_to_healthy(d, ref, addr, 8501 + 2 * i, with_url))
    finally:
        fleet.down()
    sbom_kb = len(sbom_b64) / 1024
    print(f"(a) collector, 50 concurrent senders, {args.seconds:g} s, {sbom_kb:.0f} KB payloads:")
    print(f"    {count / args.seconds:.1f} payloads/s, p50 {statistics.median(lat) * 1000:.0f} ms, p99 {pct(lat, 99) * 1000:.0f} ms,"
          f" {errors} errors")
    p99, p99_l = pct(lat, 99), pct(lat_l, 99)
    print(f"(a') the same, during a slowloris from mainpc of {args.slow} trickling + 100 silent connections"
          f" ({slow.reconnects} reconnects after being cut off):")
    print(f"    {count_l / args.seconds:.1f} payloads/s, p50 {statistics.median(lat_l) * 1000:.0f} ms, p99 {p99_l * 1000:.0f} ms,"
          f" {errors_l} errors; p99 ratio loaded/unloaded {p99_l / p99:.2f} (target <= 2.00)")
    print(f"    collector memory: {mem_before / 1e6:.0f} MB before, peak {mem.peak / 1e6:.0f} MB during, {mem_after / 1e6:.0f} MB after")
    added = [e - b for b, e in zip(base, emit, strict=True)]
    print(f"(b) time to healthy without emitter: median {statistics.median(base) * 1000:.0f} ms; with: "
          f"median {statistics.median(emit) * 1000:.0f} ms")
    print(f"    added by the emitter: median {statistics.median(added) * 1000:.0f} ms, p99 {pct(added, 99) * 1000:.0f} ms"
          f" (target median <= 50 ms)")


if __name__ == "__main__":
    main()
