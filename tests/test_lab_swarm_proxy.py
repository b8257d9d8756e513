"""Zero-downtime on Swarm: the per-node proxy (fleetroll-proxy, HAProxy) in front of a start-first service, under load.

The lab's hosts form a real swarm; one swarm phase runs the proxy on both nodes (`mode: global`, its listen port
published in host mode) and `web` behind it on both nodes (no host port, start-first), reached over the dnsrr
overlay by DNS (`tasks.fr-<phase>_web`). An independent client (the SSH push's zero-downtime load generator,
tests/test_lab_zero_downtime.py `Load`) sends requests through each node's proxy while fleetroll rolls 5 new
releases out and then one whose /health says "degraded": every request must come back 200, the 5 commit, and the
failed one is rolled back by Swarm, reported `reverted`, exit 4.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from lab import images

from .conftest import FAB, ROOT, dclient, derive_inventory, new_tag, swarm_formed
from .test_lab_zero_downtime import Load

pytestmark = pytest.mark.lab

PHASE, PROXY, WEB, LISTEN = "swarm-edge", "edge", "web", 18090
UPGRADES = 5
FAST = {"healthy_deadline": 3, "min_healthy_time": 1, "interval": 0.25}


def fab(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([FAB, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def inventory(lab, tmp, proxy_tag: str, web_tag: str):
    """The lab inventory plus one swarm phase: the proxy first, then `web` behind it, both on mainpc and pc2."""
    def edit(doc):
        doc["swarm"] = {"managers": ["mainpc"], "healthcheck": "wget"}  # web is busybox; the proxy's probe is bash's (render.PROXY_PROBE)
        doc["reverse_proxy"] = {"service": PROXY}
        doc["services"][PROXY] = {"image": "fleetroll-proxy", "tag": proxy_tag, "hosts": ["mainpc", "pc2"], "stop_timeout": 2,
                                  "health": {"port": 8404, **FAST}}
        doc["services"][WEB] = {"image": "core", "tag": web_tag, "hosts": ["mainpc", "pc2"], "stop_timeout": 2,
                                "proxy": {"listen": str(LISTEN), "port": 8080}, "health": {"port": 8080, **FAST}}

    def edit_phases(doc):
        doc["phases"].append({"name": PHASE, "engine": "swarm", "services": [PROXY, WEB]})

    return derive_inventory(lab, tmp, edit, edit_phases)


def rollout(inv) -> tuple[int, dict, str]:
    r = fab("rollout", "-p", PHASE, "-i", str(inv), "-y", "-j")
    try:
        rep = json.loads(r.stdout)["phases"][0]
    except (ValueError, KeyError, IndexError):
        rep = {}
    return r.returncode, rep, r.stdout[-3000:] + r.stderr[-2000:]


def outcomes(rep: dict) -> dict[tuple[str, str], str]:
    return {(h, s["service"]): s["outcome"] for h, v in rep.get("hosts", {}).items() for s in v["services"]}


def web_tags(lab) -> dict[str, set[str]]:
    """{host: tags} of the running `web` containers on each node, from that node's own dockerd: start-first, the old
    task may still be draining (Docker stops it 2 s after taking it out of DNS) when Swarm says the update completed."""
    return {h: {c.attrs["Config"]["Image"].split("@")[0].rsplit(":", 1)[1]
                for c in dclient(lab, h).containers.list(filters={"label": f"com.docker.swarm.service.name=fr-{PHASE}_{WEB}"})}
            for h in ("mainpc", "pc2")}


def _no_ssh_copies(lab) -> None:
    """An earlier module on this worker's lab may have left SSH-pushed containers of these names (the hand-over test ends
    on the SSH push): the swarm rollout rightly refuses a host where one runs, so the lab starts without them here."""
    import docker

    for h in ("mainpc", "pc2"):
        for name in (PROXY, WEB):
            try:
                c = dclient(lab, h).containers.get(name)
            except docker.errors.NotFound:
                continue
            if c.labels.get("io.fleetroll.managed") == "true":  # a test's own, started through fleetroll
                c.remove(force=True)


@pytest.fixture(scope="module")
def proxied(lab_session, tmp_path_factory):
    lab = lab_session()
    tmp = tmp_path_factory.mktemp("swarm-proxy")
    _no_ssh_copies(lab)
    proxy_tag = images.push_proxy(lab)
    inv = inventory(lab, tmp / "base", proxy_tag, images.BASELINE_TAG)
    with swarm_formed(lab, inv) as formed:
        assert "network fr-proxy" in formed.stdout, formed.stdout
        yield lab, tmp, proxy_tag


def test_five_upgrades_and_a_failed_release_through_the_per_node_proxy_drop_no_request(proxied):
    lab, tmp, proxy_tag = proxied
    t0 = time.monotonic()
    rc, rep, said = rollout(inventory(lab, tmp / "create", proxy_tag, images.BASELINE_TAG))
    assert rc == 0 and set(outcomes(rep).values()) == {"committed"}, said
    assert len(outcomes(rep)) == 4, outcomes(rep)  # the proxy and web, each on both nodes
    created = time.monotonic() - t0
    loads = [Load(lab.host(h).address, LISTEN, rate=40.0) for h in ("mainpc", "pc2")]  # each node's own proxy
    for g in loads:
        g.start()
    try:
        for i in range(UPGRADES):
            tag = new_tag()
            images.push(lab, "core", tag, "healthy")
            rc, rep, said = rollout(inventory(lab, tmp / f"up{i}", proxy_tag, tag))
            print(f"{time.monotonic() - loads[0].t0:.1f}s upgrade {i + 1} ended, exit {rc}")  # against the failures' times
            assert rc == 0, said
            assert outcomes(rep) == {(h, WEB): "committed" for h in ("mainpc", "pc2")}, said  # the proxy: nothing to do
            assert all(tag in tags for tags in web_tags(lab).values()), web_tags(lab)
        good = tag
        bad = new_tag()
        images.push(lab, "core", bad, "degraded")
        rc, rep, said = rollout(inventory(lab, tmp / "bad", proxy_tag, bad))
        print(f"{time.monotonic() - loads[0].t0:.1f}s the failed release ended, exit {rc}")
        assert rc == 4 and rep.get("state") == "reverted", said
        assert outcomes(rep) == {(h, WEB): "reverted" for h in ("mainpc", "pc2")}, said
        assert all(good in tags and bad not in tags for tags in web_tags(lab).values()), web_tags(lab)
    finally:
        results = [g.finish() for g in loads]
    took = time.monotonic() - t0 - created
    sent, failed = sum(r["requests"] for r in results), sum(r["failed"] for r in results)
    print(f"through the per-node proxies (mainpc, pc2): {sent} requests, {failed} failed, over {UPGRADES} upgrades and 1 failed"
          f" release in {took:.1f}s (create {created:.1f}s); p99 {[r['p99_ms'] for r in results]} ms")
    assert sent > 100 and failed == 0, results
