"""Fleet scale as the operator waits for it: the installed command against its floor, 2 to 100 lab hosts, in one run.

Every fleetroll figure is `fleetroll …` run as a fresh process, from spawn to exit (bench/command.py),
with the child's own CPU seconds and peak memory; the rollout's in-process `elapsed_s` (from its
--json report) is kept beside it. Per host count N (the first N hosts of one lab), 3 services per
host (`s1`–`s3`, one group of all N hosts, max_parallel N, connect_timeout 3), as an account with an
expensive login shell (the lab's frpyenv: bash, a ~/.bashrc costing 0.2 s, a python3 shim):

- no-op `fleetroll rollout -p scale -y --json` and `fleetroll preflight -p scale --json`, against the
  floor: a shell starting one OpenSSH `ssh` per host, all at once, each reading the host's
  containers (`docker inspect`) and each image's registry digest (one HEAD each), then `wait`.
  Each no-op also proves it asked each host once: agent_calls == N, one round trip per host.
- upgrade of the 3 services (new tags) on every host, against the floor: the same shell and ssh,
  each host running `docker pull, stop, rm, run`, then polling /health with curl, per service.
- no host may fail on a timeout: SSH failures are counted in every preflight and no-op.

    FLEETROLL_LAB_INSTANCE=7 .venv/bin/fab lab.up --count 100
    FLEETROLL_LAB_INSTANCE=7 .venv/bin/python bench/fleet_scale.py --sizes 2,20,50,100 --runs 3 --upgrade-sizes 2,20
    FLEETROLL_LAB_INSTANCE=7 .venv/bin/fab lab.down

Uses the lab that is up when it has enough hosts (else brings one up and leaves it up). Needs root.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import command  # noqa: E402
from lab import fleet, images, model  # noqa: E402

TMP = Path(tempfile.mkdtemp(prefix="frl-bench-scale-"))
ENV = {**os.environ, "FLEETROLL_LEDGER": str(TMP / "ledger.jsonl")}
SERVICES = {"s1": 8701, "s2": 8702, "s3": 8703}
HEAD = ("import http.client as h,sys\nc=h.HTTPConnection(sys.argv[1])\nfor p in sys.argv[2:]:\n"
        " c.request('HEAD',p,headers={'Accept':'application/vnd.oci.image.manifest.v1+json,"
        "application/vnd.docker.distribution.manifest.v2+json'})\n r=c.getresponse();r.read()\n"
        " assert r.getheader('Docker-Content-Digest')")


def tag() -> str:
    return f"20261126-{secrets.token_hex(4)[:7]}"


def lab(need: int) -> model.LabState:
    try:
        state = model.LabState.load()
        if len(state.hosts) >= need:
            return state
    except (OSError, ValueError, KeyError, model.LabError):
        pass
    return fleet.up(need)


# The SSH clients a no-op is timed with, side by side in one run (--clients): the inventory's ssh.client, and
# whether the command may start the hosts' logins while it starts up (playbooks/prewarm.py).
CLIENTS = {"openssh": ("auto", {}), "openssh-no-prewarm": ("openssh", {"FLEETROLL_PREWARM": "0"}), "paramiko": ("paramiko", {})}


def inventory(state: model.LabState, n: int, user: str, tags: dict[str, str], client: str = "auto") -> Path:
    """The first n lab hosts as `user`, services s1-s3 on all of them, one phase `scale`."""
    doc = yaml.safe_load(Path(state.inventory).read_text())
    hosts = [h.name for h in state.hosts[:n]]
    doc["hosts"] = {h: {**doc["hosts"][h], "user": user} for h in hosts}
    doc["groups"] = {"fleet": hosts}
    doc["ssh"].update(max_parallel=n, connect_timeout=3, client=client)
    doc["services"] = {s: {"image": "cpu-svc", "tag": tags[s], "group": "fleet", "ports": [f"{p}:8080"], "stop_timeout": 1,
                           "health": {"port": p, "healthy_deadline": 30, "min_healthy_time": 0, "interval": 0.05}}
                       for s, p in SERVICES.items()}
    doc.pop("reverse_proxy", None)
    d = TMP / secrets.token_hex(3)
    d.mkdir()
    (d / "fleet.yml").write_text(yaml.safe_dump(doc))
    (d / "phases.yml").write_text(yaml.safe_dump({"phases": [{"name": "scale", "services": list(SERVICES)}]}))
    return d / "fleet.yml"


def _ssh_all(state: model.LabState, n: int, user: str, remote: str) -> command.Ran:
    """A shell that runs `remote` on the first n hosts over OpenSSH, all at once, and waits for every one."""
    cfg = model.LAB_DIR / "ssh_config"
    lines = [f"ssh -F {cfg} -l {user} -o BatchMode=yes {h.address} {shlex.quote(remote)} || echo FAIL {h.name} &"
             for h in state.hosts[:n]]
    return command.run(["bash", "-c", "\n".join(lines) + "\nwait"])


def floor_noop(state: model.LabState, n: int, user: str, tags: dict[str, str]) -> command.Ran:
    paths = [f"/v2/{model.ORG}/cpu-svc/manifests/{tags[s]}" for s in SERVICES]
    remote = (f"docker inspect -f '{{{{.Image}}}}' {' '.join(SERVICES)} >/dev/null && "
              f"/usr/bin/python3 -c {shlex.quote(HEAD)} {state.registry} {' '.join(paths)}")
    return _ssh_all(state, n, user, remote)


def floor_upgrade(state: model.LabState, n: int, user: str, tags: dict[str, str]) -> command.Ran:
    steps = []
    for s, port in SERVICES.items():
        ref = f"{state.registry}/{model.ORG}/cpu-svc:{tags[s]}"
        steps.append(f"docker pull -q {ref} >/dev/null && docker stop -t 1 {s} >/dev/null && docker rm {s} >/dev/null && "
                     f"docker run -d --name {s} --user 10001:10001 --restart unless-stopped -p {port}:8080 {ref} >/dev/null && "
                     f"until curl -fso /dev/null http://127.0.0.1:{port}/health; do sleep 0.05; done")
    return _ssh_all(state, n, user, " && ".join(steps))


def failures(report: dict) -> tuple[int, int]:
    """(hosts whose SSH check failed, hosts with any other failed check: a registry timeout, say)."""
    checks = report.get("checks") or (report.get("preflight") or {}).get("checks") or []
    ssh = {c["host"] for c in checks if c["check"] == "ssh" and c["status"] == "fail"}
    return len(ssh), len({c["host"] for c in checks if c["status"] == "fail"} - ssh)


def noop(inv: Path, n: int, env: dict | None = None) -> tuple[command.Ran, dict]:
    ran = command.fleetroll("rollout", "-p", "scale", "-i", str(inv), "-y", "--json", env={**ENV, **(env or {})})
    rep = ran.json()["phases"][0]
    if rep["state"] == "noop":  # one SSH session and one agent call per host, and one round trip each
        assert rep["agent_calls"] == n and set(rep["preflight"]["round_trips"].values()) == {1}, rep["preflight"]["round_trips"]
    else:  # not a no-op (a refused preflight): counted in the row, never passed off as one
        print(f"no-op at {n} hosts ended {rep['state']}: {'; '.join(rep['messages'])[-600:]}", flush=True)
    return ran, rep


def rollout(inv: Path) -> tuple[command.Ran, dict]:
    ran = command.fleetroll("rollout", "-p", "scale", "-i", str(inv), "-y", "--json", env=ENV)
    rep = ran.json()["phases"][0]
    assert rep["state"] == "committed", rep["messages"]
    return ran, rep


def push(state: model.LabState) -> dict[str, str]:
    tags = {s: tag() for s in SERVICES}
    for t in tags.values():
        images.push(state, "cpu-svc", t, "healthy")
    return tags


def measure_size(state: model.LabState, n: int, user: str, runs: int, upgrade: bool,
                 clients: tuple[str, ...] = ("openssh",)) -> list[dict]:
    rows = []
    tags = push(state)
    inv = inventory(state, n, user, tags)
    for attempt in (1, 2):  # the first creates (or upgrades) s1-s3 on these hosts
        first = command.fleetroll("rollout", "-p", "scale", "-i", str(inv), "-y", "--json", env=ENV)
        if first.rc == 0:
            break
        said = "; ".join(first.json()["phases"][0]["messages"])[:600] if first.out.startswith("{") else first.err[-600:]
        print(f"initial rollout at {n} hosts, attempt {attempt}: exit {first.rc}: {said}", flush=True)
    else:
        raise SystemExit(f"initial rollout at {n} hosts failed twice (exit {first.rc})")
    rows.append(row("initial rollout (create 3 services per host)", n, [first], [], [first.json()["phases"][0]["elapsed_s"]]))
    fl, pre, pfails = [], [], [0, 0, 0]
    by = {c: {"inv": inventory(state, n, user, tags, CLIENTS[c][0]), "cmd": [], "inproc": [], "fails": [0, 0, 0]}
          for c in clients}
    for _ in range(runs):  # interleaved: drift in the machine's load hits every variant alike
        fl.append(floor_noop(state, n, user, tags))
        for c in clients:
            ran, rep = noop(by[c]["inv"], n, CLIENTS[c][1])
            by[c]["cmd"].append(ran)
            by[c]["inproc"].append(rep["elapsed_s"])
            by[c]["fails"] = [a + b for a, b in zip(by[c]["fails"], (*failures(rep), rep["state"] != "noop"), strict=True)]
        p = command.fleetroll("preflight", "-p", "scale", "-i", str(inv), "--json", env=ENV)
        pre.append(p)
        pfails = [a + b for a, b in zip(pfails, (*failures(p.json()), not p.json()["ok"]), strict=True)]
    for c in clients:
        rows.append(row("no-op" if c == "openssh" else f"no-op, {c}", n, by[c]["cmd"], fl, by[c]["inproc"], by[c]["fails"]))
    rows.append(row("preflight", n, pre, fl, [], pfails))
    if upgrade:
        ups, ufl, uin = [], [], []
        for _ in range(runs):
            new, by_hand = push(state), push(state)
            ran, rep = rollout(inventory(state, n, user, new))
            ups.append(ran)
            uin.append(rep["elapsed_s"])
            ufl.append(floor_upgrade(state, n, user, by_hand))
            # back under fleetroll: the hand-made containers go, fleetroll creates the next base (not timed)
            _ssh_all(state, n, user, f"docker rm -f {' '.join(SERVICES)} >/dev/null")
            rollout(inventory(state, n, user, new))
        rows.append(row("upgrade 3 services per host", n, ups, ufl, uin))
    return rows


def row(what: str, n: int, ran: list[command.Ran], floor: list[command.Ran], inproc: list[float],
        fails: tuple[int, int, int] = (0, 0, 0)) -> dict:
    """fails: hosts failed on SSH, hosts failed another check, runs that did not end as measured (summed over runs)."""
    med = statistics.median
    broken = [r.out for r in floor if "FAIL" in r.out or r.rc]
    assert not broken, broken[:1]
    return {"what": what, "hosts": n, "wall": med(r.wall_s for r in ran), "floor": med(r.wall_s for r in floor) if floor else None,
            "inproc": med(inproc) if inproc else None, "cpu": med(r.cpu_s for r in ran), "rss": max(r.maxrss_mb for r in ran),
            "machine": med(r.machine_cpu_s for r in ran), "floor_machine": med(r.machine_cpu_s for r in floor) if floor else None,
            "fails": fails, "runs": len(ran)}


def table(rows: list[dict]) -> str:
    out = ["| measure | hosts | fleetroll (command) | in-process | floor | ratio | controller CPU | CPU per host | peak RSS |"
           " machine CPU (floor's) | hosts failed: SSH / other check | runs not as named |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['wall'] / r['floor']:.2f}×" if r["floor"] else "—"
        machine = f"{r['machine']:.2f} s" + (f" ({r['floor_machine']:.2f} s)" if r["floor_machine"] is not None else "")
        out.append(f"| {r['what']} | {r['hosts']} | {r['wall']:.2f} s | {_s(r['inproc'])} | {_s(r['floor'])} | {ratio} |"
                   f" {r['cpu']:.2f} s | {r['cpu'] / r['hosts'] * 1000:.0f} ms | {r['rss']:.0f} MB | {machine} |"
                   f" {r['fails'][0]} / {r['fails'][1]} | {r['fails'][2]} of {r['runs']} |")
    return "\n".join(out)


def _s(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f} s"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2,20,50,100")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--upgrade-sizes", default="2,20")
    ap.add_argument("--user", default=model.LAB_PYENV_USER)
    ap.add_argument("--clients", default="openssh", help=f"no-op variants, comma-separated, of {', '.join(CLIENTS)}")
    args = ap.parse_args()
    clients = tuple(args.clients.split(","))
    if not set(clients) <= set(CLIENTS):
        ap.error(f"--clients: each of {', '.join(CLIENTS)}")
    sizes = [int(x) for x in args.sizes.split(",")]
    ups = {int(x) for x in args.upgrade_sizes.split(",") if x}
    state = lab(max(sizes))
    command.warm()
    rows = []
    for n in sizes:
        rows += measure_size(state, n, args.user, args.runs if n <= 20 else 1, n in ups, clients)
        print(table(rows), flush=True)
    print(f"\nuser {args.user}; medians of {args.runs} runs at 2 and 20 hosts, 1 at 50 and 100; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
