"""fleetroll against pyinfra, no-op, as commands, in one run with the floor (issue 24: >= 1.5x faster at 20 hosts).

The same lab, hosts, account and containers as bench/fleet_scale.py (whose functions this reuses): the first N
lab hosts, 3 services per host (`s1`-`s3`, cpu-svc, ports 8701-8703), entered as the lab's frpyenv account
(bash, a ~/.bashrc costing 0.2 s). fleetroll creates the containers once; then each round runs, in a rotating
order, each of these as a fresh process timed from spawn to exit by bench/command.py (wall, the child's CPU
seconds, its peak RSS, and the whole machine's busy CPU while it ran: on the lab that is the hosts' side too):

- floor: one bash starting one OpenSSH `ssh` per host, each running `docker inspect` of s1-s3 and one registry
  HEAD per image (fleet_scale.floor_noop);
- fleetroll: `fleetroll rollout -p scale -y --json`; asserts state noop, agent_calls == N and one round trip per
  host (fleet_scale.noop);
- pyinfra: `pyinfra pyinfra_inventory.py deploy_plain.py -y --parallel N`, an inventory of the same N hosts (same user, key and
  known_hosts, strict host keys, paramiko) and a deploy of three `pyinfra.operations.docker.container`
  operations stating each service's image:tag, ports, user and restart policy; asserts from its results table
  that no operation changed anything or failed;
- pyinfra + drift check: the same deploy, but before each `docker.container` it reads pyinfra's own
  DockerContainer and DockerImage facts and passes `force=True` (recreate) if the container is not running the
  tag's image id with those ports, user and restart policy. In pyinfra 3.10 `docker.container` alone compares
  nothing but presence and running state (`ContainerSpec.diff_from_inspect` is a stub that returns no
  differences), so this variant is what it takes in pyinfra to check what fleetroll's plan compares.

pyinfra goes into its own virtual environment (.venv-pyinfra, git-ignored), made here with the same base
interpreter as the project's .venv (`python3 -m venv`, then pip, pinned to PYINFRA). It is never a dependency of
fleetroll.

    FLEETROLL_LAB_INSTANCE=8 .venv/bin/fab lab.up --count 20
    FLEETROLL_LAB_INSTANCE=8 .venv/bin/python bench/vs_pyinfra.py --sizes 2,20 --rounds 7
    FLEETROLL_LAB_INSTANCE=8 .venv/bin/fab lab.down

Needs root (the lab) and a package index for the one-time pip install.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import command, fleet_scale  # noqa: E402
from lab import model  # noqa: E402

PYINFRA = "3.10.0"
VENV = Path(__file__).resolve().parent.parent / ".venv-pyinfra"
PYINFRA_BIN = VENV / "bin" / "pyinfra"
USER, RESTART = "10001:10001", "unless-stopped"  # what fleetroll gives every container (its plan's spec)

DEPLOY = '''"""The operator's deploy: each service in host.data.services present and running, as stated."""
from pyinfra import host
from pyinfra.operations import docker

CHECK = {check}
if CHECK:
    from pyinfra.facts.docker import DockerContainer, DockerImage


def drifted(name, svc):
    """True if the container exists but is not the one stated (image id, ports, user, restart policy)."""
    have = host.get_fact(DockerContainer, object_id=name)
    if not have:
        return False  # absent: docker.container creates it
    c, image = have[0], host.get_fact(DockerImage, object_id=svc["image"])
    ports = {{f"{{p.split(':')[1]}}/tcp": [p.split(":")[0]] for p in svc["ports"]}}
    bound = {{k: sorted(b["HostPort"] for b in v or []) for k, v in (c["HostConfig"]["PortBindings"] or {{}}).items()}}
    return (not image or c["Image"] != image[0]["Id"] or bound != ports or c["Config"]["User"] != svc["user"]
            or c["HostConfig"]["RestartPolicy"]["Name"] != svc["restart"])


for name, svc in host.data.services.items():
    docker.container(
        name=f"{{name}}: {{svc['image']}} on {{', '.join(svc['ports'])}}",
        container=name, image=svc["image"], ports=svc["ports"], user=svc["user"], restart_policy=svc["restart"],
        present=True, start=True, force=CHECK and drifted(name, svc),
    )
'''


def ensure_pyinfra() -> str:
    """pyinfra PYINFRA in VENV (made on first use); returns what `pyinfra --version` says."""
    if not PYINFRA_BIN.exists():
        subprocess.run([sys._base_executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", f"pyinfra=={PYINFRA}"], check=True)
    said = command.run([str(PYINFRA_BIN), "--version"], env=command.operator_env())  # also fills the bytecode cache
    if said.rc or PYINFRA not in said.out + said.err:
        raise SystemExit(f"{PYINFRA_BIN} is not pyinfra {PYINFRA}: {(said.out + said.err).strip()} (remove {VENV})")
    return (said.out + said.err).strip()


def pyinfra_files(state: model.LabState, n: int, user: str, tags: dict[str, str], inv: Path) -> dict[str, tuple[Path, Path]]:
    """The inventory of the first n lab hosts and the two deploys, beside fleetroll's inventory `inv`."""
    services = {s: {"image": f"{state.registry}/{model.ORG}/cpu-svc:{tags[s]}", "ports": [f"{p}:8080"], "user": USER,
                    "restart": RESTART} for s, p in fleet_scale.SERVICES.items()}
    hosts = [(h.name, {"ssh_hostname": h.address, "ssh_user": user, "ssh_key": state.key,
                       "ssh_known_hosts_file": state.known_hosts, "ssh_strict_host_key_checking": "yes",
                       "ssh_allow_agent": False, "ssh_look_for_keys": False, "services": services})
             for h in state.hosts[:n]]
    inventory = inv.parent / "pyinfra_inventory.py"
    inventory.write_text(f"fleet = {hosts!r}\n")
    out = {}
    for kind, check in (("pyinfra", False), ("pyinfra + drift check", True)):
        deploy = inv.parent / f"deploy_{'checked' if check else 'plain'}.py"
        deploy.write_text(DEPLOY.format(check=check))
        out[kind] = (inventory, deploy)
    return out


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def pyinfra_noop(inventory: Path, deploy: Path, n: int) -> command.Ran:
    """One `pyinfra INVENTORY DEPLOY -y --parallel n`; asserts its results: 3n operations, none changed or failed."""
    ran = command.run([str(PYINFRA_BIN), str(inventory), str(deploy), "-y", "--parallel", str(n)],
                      env=command.operator_env(fleet_scale.ENV), cwd=str(deploy.parent))
    said = ANSI.sub("", ran.out + ran.err)
    total = re.search(r"Grand total\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", said)
    want = (str(3 * n), "-", "-", str(3 * n))  # hosts x operations, changed, failed, no change
    assert ran.rc == 0 and total and total.groups() == want, f"pyinfra exit {ran.rc}, totals {total and total.groups()}: {said[-1500:]}"
    return ran


def measure(state: model.LabState, n: int, user: str, rounds: int) -> dict[str, list]:
    tags = fleet_scale.push(state)
    inv = fleet_scale.inventory(state, n, user, tags)
    fleet_scale.rollout(inv)  # fleetroll creates s1-s3 on these hosts (not timed)
    deploys = pyinfra_files(state, n, user, tags, inv)
    for files in deploys.values():  # one untimed run each: the same containers are a no-op for pyinfra too
        pyinfra_noop(*files, n)
    fleet_scale.noop(inv, n)
    runs: dict[str, list] = {"floor": [], "fleetroll": [], **{k: [] for k in deploys}, "not noop": [], "timings": [], "load": []}
    sides = ["floor", "fleetroll", *deploys]
    for r in range(rounds):  # interleaved, the order rotated each round: drift in the machine's load hits all alike
        for side in sides[r % len(sides):] + sides[:r % len(sides)]:
            if side == "floor":
                runs[side].append(fleet_scale.floor_noop(state, n, user, tags))
            elif side == "fleetroll":
                ran, rep = fleet_scale.noop(inv, n)
                runs[side].append(ran)
                runs["not noop"].append(rep["state"] != "noop")
                runs["timings"].append({k: statistics.median(t[k] for t in rep["timings"].values())
                                        for k in ("wait_s", "connect_s", "start_s", "agent_s")})
            else:
                runs[side].append(pyinfra_noop(*deploys[side], n))
        runs["load"].append(os.getloadavg()[0])
    broken = [r.out for r in runs["floor"] if "FAIL" in r.out or r.rc]
    assert not broken, broken[:1]
    return runs


def table(results: dict[int, dict[str, list]]) -> str:
    med = statistics.median
    out = ["| hosts | command (no-op) | wall | CPU | machine CPU | peak RSS | ratio to floor | fleetroll faster by |",
           "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for n, runs in results.items():
        floor, fr = med(r.wall_s for r in runs["floor"]), med(r.wall_s for r in runs["fleetroll"])
        for side in [k for k in runs if k not in ("not noop", "timings", "load")]:
            ran = runs[side]
            wall = med(r.wall_s for r in ran)
            if side.startswith("pyinfra"):  # per round too: pyinfra's wall over fleetroll's in the same round
                per = [p.wall_s / f.wall_s for p, f in zip(ran, runs["fleetroll"], strict=True)]
                faster = f"**{wall / fr:.2f}×** ({min(per):.2f}–{max(per):.2f}×)"
            else:
                faster = "—"
            name = f"fleetroll ({sum(runs['not noop'])} of {len(ran)} not a no-op)" if side == "fleetroll" else side
            out.append(f"| {n} | {name} | {wall:.2f} s | {med(r.cpu_s for r in ran):.2f} s | {med(r.machine_cpu_s for r in ran):.2f} s | "
                       f"{max(r.maxrss_mb for r in ran):.0f} MB | {wall / floor:.2f}× | {faster} |")
    for n, runs in results.items():  # fleetroll's own per-host clocks (its --json `timings`), median host, median round
        t = {k: med(r[k] for r in runs["timings"]) for k in runs["timings"][0]}
        out.append(f"\nfleetroll at {n} hosts, median host: waiting for a handshake slot {t['wait_s']:.2f} s, SSH connect "
                   f"{t['connect_s']:.2f} s, remote shell + agent start {t['start_s']:.2f} s, agent work {t['agent_s']:.2f} s")
    return "\n".join(out)


def _fig(r):
    return ({"wall_s": r.wall_s, "cpu_s": r.cpu_s, "machine_cpu_s": r.machine_cpu_s, "maxrss_mb": r.maxrss_mb, "rc": r.rc}
            if isinstance(r, command.Ran) else r)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2,20")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--user", default=model.LAB_PYENV_USER)
    ap.add_argument("--json", help="also write every run's figures here")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    version = ensure_pyinfra()
    state = fleet_scale.lab(max(sizes))
    command.warm()
    results, loads = {}, [os.getloadavg()]
    for n in sizes:
        results[n] = measure(state, n, args.user, args.rounds)
        loads.append(os.getloadavg())
        print(table(results), flush=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=VENV.parent).stdout.strip()
    dirty = subprocess.run(["git", "status", "--short", "--untracked-files=no"], capture_output=True, text=True, cwd=VENV.parent).stdout
    print(f"\nfleetroll: the installed (editable) tree at {head}, {len(dirty.splitlines())} files modified in the work tree; "
          f"{version}; user {args.user}; medians of {args.rounds} rounds (peak RSS: the largest); speed-up = pyinfra's median "
          f"wall / fleetroll's (in brackets: the range of the per-round ratios); load averages (1/5/15 min) at start and "
          f"after each size: {'; '.join(' '.join(f'{x:.1f}' for x in la) for la in loads)}; 1-min load after each round: "
          f"{', '.join(f'{x:.1f}' for n in sizes for x in results[n]['load'])}")
    if args.json:
        Path(args.json).write_text(json.dumps({str(n): {k: [_fig(r) for r in v] for k, v in runs.items()}
                                               for n, runs in results.items()}, indent=1, default=str))


if __name__ == "__main__":
    main()
