"""Benchmark: start-up cost of the controller, timed as the operator's commands (issue 24).

Each command runs as a fresh process N times; the median wall time is what an operator waits
for, and the median CPU time (user + system of the child) shows how much of it is our own work
rather than a busy machine. Targets: `fab --list` / `fleetroll --help` <= 0.15 s; <= 0.25 s from
the command's start to its first SSH packet.

"First SSH packet" is measured without a fleet: a throw-away inventory names one host at
127.0.0.1 on a port this script listens on (its key pinned in a known_hosts of its own), and the
time from spawning `fab status` to the listener's accept() is the time before the first byte
could reach a host. The task then fails on the closed connection; that is expected.

    .venv/bin/python bench/startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
COMMANDS = [
    ["fab", "--list"],
    ["fleetroll", "--help"],
    ["fab", "status", "--help"],
    ["fleetroll", "status", "--help"],
]
# Any valid key will do: the listener never speaks SSH, so the client never gets to compare it.
KEY = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_command(argv: list[str], runs: int, env: dict | None = None) -> tuple[float, float]:
    """Median wall and median CPU seconds of `argv` run `runs` times (after one warm-up run)."""
    walls, cpus = [], []
    for i in range(runs + 1):
        cpu0, t0 = _children_cpu(), time.perf_counter()
        subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
        if i:  # the first run fills the page cache and __pycache__: not what an operator's next command pays
            walls.append(time.perf_counter() - t0)
            cpus.append(_children_cpu() - cpu0)
    return statistics.median(walls), statistics.median(cpus)


def _inventory(d: Path, port: int) -> Path:
    (d / "fleet.yml").write_text(
        "registry: {host: 127.0.0.1:5000, org: bench, insecure: true}\n"
        "ssh: {known_hosts: known_hosts, connect_timeout: 2, max_parallel: 1}\n"
        f"hosts:\n  h1: {{address: 127.0.0.1, port: {port}, user: root, role: cpu}}\n"
        "services:\n  svc: {image: svc, tag: 20250101-abc1234, host: h1, ports: [\"8080:8080\"], health: {port: 8080}}\n")
    (d / "phases.yml").write_text("phases:\n  - {name: one, services: [svc]}\n")
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} ssh-ed25519 {KEY}\n")
    return d / "fleet.yml"


def time_to_first_packet(task: list[str], runs: int) -> float | None:
    """Median seconds from spawning `fab TASK -i INV` to the first TCP connection reaching the host's port."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    accepted: list[float] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            accepted.append(time.perf_counter())
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        inv = _inventory(Path(tmp), port)
        env = {**os.environ, "FLEETROLL_LEDGER": str(Path(tmp) / "ledger.jsonl")}
        for i in range(runs + 1):
            accepted.clear()
            t0 = time.perf_counter()
            r = subprocess.run([str(BIN / task[0]), *task[1:], "-i", str(inv)], cwd=ROOT, capture_output=True, text=True,
                               env=env, timeout=60)
            if not accepted:
                print(f"  {' '.join(task)}: never connected (exit {r.returncode}): {r.stderr.strip()[:200]}", file=sys.stderr)
                return None
            if i:
                out.append(accepted[0] - t0)
    srv.close()
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    print(f"median of {a.runs} runs, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    print(f"{'command':32} {'wall s':>8} {'cpu s':>8}")
    floor = time_command([sys.executable, "-c", "pass"], a.runs)
    print(f"{'python -c pass (floor)':32} {floor[0]:8.3f} {floor[1]:8.3f}")
    for argv in COMMANDS:
        wall, cpu = time_command([str(BIN / argv[0]), *argv[1:]], a.runs)
        print(f"{' '.join(argv):32} {wall:8.3f} {cpu:8.3f}")
    for task in (["fab", "status"], ["fleetroll", "status"]):
        t = time_to_first_packet(task, a.runs)
        print(f"{' '.join(task) + ' -> first SSH packet':32} {t:8.3f}" if t is not None else f"{' '.join(task)}: no packet")


if __name__ == "__main__":
    main()
