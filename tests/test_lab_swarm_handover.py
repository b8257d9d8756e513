"""Moving a phase from the SSH push to Swarm and back behind the SSH push's proxy, under load: no request dropped.

The lab's hosts form a real swarm; the proxy (fleetroll-proxy, HAProxy) runs on an SSH phase on mainpc and pc2, and
`web` behind it on both, first on the SSH push. Because the inventory has a `swarm:` section, the proxy's backend
for web also resolves web's Swarm tasks (`tasks.fr-<phase>_web`) once the proxy joins the overlay fr-proxy. An
independent client (tests/test_lab_zero_downtime.py `Load`) sends requests through each node's proxy while:

1. web's phase moves to `engine: swarm` (`fab rollout`): the stack is deployed beside the SSH containers, each
   proxy sees the tasks UP, drains slots a/b, and the SSH containers are removed; then the proxy's own phase is
   rolled out with another stop_timeout while the proxy is on fr-proxy (stop-first: its ports close for that swap, so
   the load pauses around it): it commits, and the new proxy is on fr-proxy and serves web's tasks;
2. web is upgraded on Swarm (start-first: new task IPs, which the proxy follows by DNS);
3. web's phase moves back to `engine: ssh` (`fab rollout`, then `fab swarm.down`, which drains the task slots
   before `docker stack rm`).

Every request sent while no proxy swap runs must come back 200, and each step must say what it did.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from lab import images
from playbooks import ledger

from .conftest import FAB, ROOT, dclient, derive_inventory, new_tag, swarm_formed
from .test_lab_zero_downtime import Load

pytestmark = pytest.mark.lab

EDGE, WEB_PHASE, PROXY, WEB, LISTEN = "hand-edge", "hand-web", "edge", "web", 18092
HOSTS = ("mainpc", "pc2")
# A deadline only bounds a failure, and none is expected here: under load (the 2-core machine at load 30) the proxy's
# start script alone spends up to 2 s resolving a backend name that has no container yet, so 3 s failed its gate.
FAST = {"healthy_deadline": 20, "min_healthy_time": 1, "interval": 0.25}


def fab(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([FAB, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def inventory(lab, tmp, proxy_tag: str, web_tag: str, engine: str, proxy_stop: int = 2):
    """The lab inventory with `swarm:`, the proxy on an SSH phase and web behind it on a phase of `engine`."""
    def edit(doc):
        doc["swarm"] = {"managers": ["mainpc"], "healthcheck": "wget"}
        doc["reverse_proxy"] = {"service": PROXY}
        doc["services"][PROXY] = {"image": "fleetroll-proxy", "tag": proxy_tag, "hosts": list(HOSTS),
                                  "stop_timeout": proxy_stop, "health": {"port": 8404, **FAST}}
        doc["services"][WEB] = {"image": "core", "tag": web_tag, "hosts": list(HOSTS), "stop_timeout": 2,
                                "proxy": {"listen": str(LISTEN), "port": 8080}, "update": {"drain_s": 0.5},
                                "health": {"port": 8080, **FAST}}

    def edit_phases(doc):
        doc["phases"] += [{"name": EDGE, "engine": "ssh", "services": [PROXY]},
                          {"name": WEB_PHASE, "engine": engine, "services": [WEB]}]

    return derive_inventory(lab, tmp, edit, edit_phases)


def run(*args: str) -> tuple[int, dict, str]:
    r = fab(*args, "-y", "-j")
    try:
        rep = json.loads(r.stdout)
    except ValueError:
        rep = {}
    return r.returncode, rep, r.stdout[-4000:] + r.stderr[-2000:]


def outcomes(rep: dict) -> dict[tuple[str, str], str]:
    ph = (rep.get("phases") or [{}])[0]
    return {(h, s["service"]): s["outcome"] for h, v in ph.get("hosts", {}).items() for s in v["services"]}


def messages(rep: dict) -> str:
    return "\n".join((rep.get("phases") or [{}])[0].get("messages") or [])


def ssh_web(lab) -> dict[str, bool]:
    """{host: whether the SSH push's container `web` exists there}, from each node's own dockerd."""
    return {h: bool(dclient(lab, h).containers.list(all=True, filters={"name": f"^/{WEB}$"})) for h in HOSTS}


def swarm_web(lab) -> dict[str, int]:
    label = f"com.docker.swarm.service.name=fr-{WEB_PHASE}_{WEB}"
    return {h: len(dclient(lab, h).containers.list(filters={"label": label})) for h in HOSTS}


@pytest.fixture(scope="module")
def handover_lab(lab_session, tmp_path_factory):
    lab = lab_session()
    tmp = tmp_path_factory.mktemp("swarm-handover")
    proxy_tag = images.push_proxy(lab)
    inv = inventory(lab, tmp / "base", proxy_tag, images.BASELINE_TAG, "ssh")
    with swarm_formed(lab, inv) as formed:
        assert "network fr-proxy" in formed.stdout and "attachable" in formed.stdout, formed.stdout
        yield lab, tmp, proxy_tag, inv


def test_a_phase_moves_to_swarm_is_upgraded_there_and_moves_back_without_dropping_a_request(handover_lab):
    lab, tmp, proxy_tag, ssh_inv = handover_lab
    for phase in (EDGE, WEB_PHASE):
        rc, rep, said = run("rollout", "-p", phase, "-i", str(ssh_inv))
        assert rc == 0 and set(outcomes(rep).values()) == {"committed"}, said
    loads = [Load(lab.host(h).address, LISTEN, rate=20.0) for h in HOSTS]
    for g in loads:
        g.start()
    timings, results = {}, []
    try:
        t = time.monotonic()
        to_swarm = inventory(lab, tmp / "to-swarm", proxy_tag, images.BASELINE_TAG, "swarm")
        rc, rep, said = run("rollout", "-p", WEB_PHASE, "-i", str(to_swarm))
        timings["to swarm"] = time.monotonic() - t
        assert rc == 0 and outcomes(rep) == {(h, WEB): "committed" for h in HOSTS}, said
        assert all(f"hand-over {WEB} on {h}: the proxy serves" in messages(rep) for h in HOSTS), said
        assert "hand-over: the proxy on mainpc, pc2 is on fr-proxy" in messages(rep), said
        assert ssh_web(lab) == dict.fromkeys(HOSTS, False) and all(swarm_web(lab).values()), (ssh_web(lab), swarm_web(lab))

        # The proxy's own stop-first swap while it is on the overlay: Docker renames no running container on a swarm
        # overlay, so the agent stops the old proxy and takes it off fr-proxy before it sets it aside. Its ports close
        # for that swap (as for any change of the proxy): the load pauses around it.
        results += [g.finish() for g in loads]
        t = time.monotonic()
        rc, rep, said = run("rollout", "-p", EDGE, "-i", str(inventory(lab, tmp / "edge", proxy_tag, images.BASELINE_TAG,
                                                                          "swarm", proxy_stop=3)))
        timings["proxy rollout on fr-proxy"] = time.monotonic() - t
        assert rc == 0 and outcomes(rep) == {(h, PROXY): "committed" for h in HOSTS}, said
        assert all("fr-proxy" in dclient(lab, h).containers.get(PROXY).attrs["NetworkSettings"]["Networks"]
                   for h in HOSTS), said
        loads = [Load(lab.host(h).address, LISTEN, rate=20.0) for h in HOSTS]
        for g in loads:
            g.start()

        t = time.monotonic()
        tag = new_tag()
        images.push(lab, "core", tag, "healthy")
        rc, rep, said = run("rollout", "-p", WEB_PHASE, "-i", str(inventory(lab, tmp / "up", proxy_tag, tag, "swarm", 3)))
        timings["upgrade on swarm"] = time.monotonic() - t
        assert rc == 0 and outcomes(rep) == {(h, WEB): "committed" for h in HOSTS}, said

        t = time.monotonic()
        back = inventory(lab, tmp / "back", proxy_tag, tag, "ssh", 3)
        rc, rep, said = run("rollout", "-p", WEB_PHASE, "-i", str(back))
        assert rc == 0 and outcomes(rep) == {(h, WEB): "committed" for h in HOSTS}, said
        assert ssh_web(lab) == dict.fromkeys(HOSTS, True), ssh_web(lab)
        rc, rep, said = run("swarm.down", "-p", WEB_PHASE, "-i", str(back))
        timings["back to ssh"] = time.monotonic() - t
        assert rc == 0 and rep.get("ok"), said
        lines = "\n".join(rep["lines"])
        assert all(f"hand-over {WEB} on {h}: the proxy serves the SSH container" in lines for h in HOSTS), said
        assert swarm_web(lab) == dict.fromkeys(HOSTS, 0), swarm_web(lab)
        moves = [(r["to"], sorted(r["hosts"])) for r in ledger.read() if r.get("kind") == "handover"]
        assert moves == [("swarm", list(HOSTS)), ("ssh", list(HOSTS))], moves
        time.sleep(1)
    finally:
        results += [g.finish() for g in loads]
    sent, failed = sum(r["requests"] for r in results), sum(r["failed"] for r in results)
    print(f"hand-over through the SSH push's proxies (mainpc, pc2), the proxy swap aside: {sent} requests, {failed} failed;"
          f" {', '.join(f'{k} {v:.1f}s' for k, v in timings.items())}; p99 {[r['p99_ms'] for r in results]} ms;"
          f" per proxy {[(r['requests'], r['failed']) for r in results]}")
    assert sent > 100 and failed == 0, results
