"""Zero-downtime swaps behind each host's real reverse proxy (HAProxy from the fleetroll-proxy family image).

A load generator sends requests through the proxy from outside the host while fleetroll
upgrades the service behind it; every request must come back 200. GPU services choose
start-first or stop-first from the free memory the (fake) NVML reports, which the tests
change while the hosts run, and a "model" is on the GPU when the test's feeder lists the
container's process in NVML's compute processes — with the memory the test says it uses.
"""

from __future__ import annotations

import collections
import http.client
import itertools
import json
import statistics
import threading
import time

import docker
import pytest

from agent import proxy as agent_proxy
from lab import fleet, images
from playbooks import executor, operate
from playbooks.inventory import load

from .conftest import derive_inventory, new_tag

pytestmark = pytest.mark.lab

WEB_PORT, LLM_PORT = 18080, 18000
CARD_MIB = 24564  # the lab's RTX 4090


class Load(threading.Thread):
    """Requests through the proxy at a steady rate, each on a new connection; counts every failure."""

    def __init__(self, address: str, port: int, rate: float = 80.0, workers: int = 4):
        super().__init__(daemon=True)
        self.address, self.port, self.rate, self.workers = address, port, rate, workers
        self.stop_at: float | None = None
        self.latencies: list[float] = []
        self.answered: list[float] = []  # monotonic times at which a request ended, good or bad
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self.t0 = self.t1 = 0.0

    def _worker(self) -> None:
        period = self.workers / self.rate
        nxt = time.monotonic()
        while self.stop_at is None or time.monotonic() < self.stop_at:
            nxt += period
            t = time.perf_counter()
            try:
                c = http.client.HTTPConnection(self.address, self.port, timeout=5)
                c.request("GET", "/health")
                r = c.getresponse()
                body = r.read()
                c.close()
                bad = "" if r.status == 200 else f"HTTP {r.status} {body[:80]!r}"
            except Exception as exc:  # noqa: BLE001 - every failure counts
                bad = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.latencies.append(time.perf_counter() - t)
                self.answered.append(time.monotonic())
                if bad:  # when, from the load's start: a failure is placed against the rollouts' timeline
                    self.failures.append(f"{time.monotonic() - self.t0:.1f}s {bad}")
            time.sleep(max(0.0, nxt - time.monotonic()))

    def run(self) -> None:
        self.t0 = time.monotonic()
        threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(self.workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.t1 = time.monotonic()

    def finish(self) -> dict:
        """What the clients saw. `rate` falls when the suite's other workers load the 2 cores, so the tests judge
        coverage by `longest_gap_s` (no moment without answers) rather than by throughput."""
        self.stop_at = time.monotonic()
        self.join(30)
        lat = sorted(self.latencies)
        ends = sorted([self.t0, *self.answered, self.t1])
        return {"requests": len(lat), "failed": len(self.failures), "rate": round(len(lat) / max(0.001, self.t1 - self.t0), 1),
                "longest_gap_s": round(max(b - a for a, b in itertools.pairwise(ends)), 2),
                "p50_ms": round(statistics.median(lat) * 1000, 2) if lat else None,
                "p99_ms": round(lat[max(0, int(len(lat) * 0.99) - 1)] * 1000, 2) if lat else None,
                "slower_than_500ms": sum(1 for x in lat if x > 0.5),
                "first_failures": self.failures[:5], "last_failures": self.failures[-3:] if len(self.failures) > 5 else [],
                "failure_kinds": dict(collections.Counter(f.split(" ", 1)[1][:60] for f in self.failures).most_common(4))}


class GpuFeeder(threading.Thread):
    """Plays the model: every running container of `service` on mainpc appears in NVML's compute processes.

    `mib(tag)` says how much memory the container of that tag uses on GPU 0.
    """

    def __init__(self, lab, service: str, mib):
        super().__init__(daemon=True)
        self.h, self.service, self.mib = lab.host("mainpc"), service, mib
        self.client = docker.DockerClient(base_url=self.h.docker_host)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            procs = []
            for c in self.client.containers.list(filters={"label": f"io.fleetroll.service={self.service}"}):
                pid = (c.attrs.get("State") or {}).get("Pid")
                if pid:
                    procs.append((0, pid, self.mib(c.labels.get("io.fleetroll.tag", ""))))
            fleet.set_gpu_processes(self.h, procs)
            self.done.wait(0.1)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join(5)
        fleet.set_gpu_processes(self.h, [])


def free_gb(lab, gb: float) -> None:
    fleet.set_gpu_used(lab.host("mainpc"), int(CARD_MIB - gb * 1024))


@pytest.fixture(scope="module")
def edge(lab_session, tmp_path_factory):
    lab = lab_session()
    tmp = tmp_path_factory.mktemp("edge")
    proxy_tag = images.push_proxy(lab)
    tags = {"web": new_tag(), "llm-edge": new_tag()}
    images.push(lab, "cpu-svc", tags["web"], "healthy")
    images.push(lab, "torch-svc", tags["llm-edge"], "healthy", arch="89;86")
    fast = {"healthy_deadline": 20, "min_healthy_time": 1, "interval": 0.25}

    def edit(doc):
        doc["reverse_proxy"] = {"service": "edge-proxy"}
        doc["services"]["edge-proxy"] = {"image": "fleetroll-proxy", "tag": proxy_tag, "hosts": ["mainpc", "pc2"],
                                         "stop_timeout": 5, "health": {"port": 8404, **fast}}
        doc["services"]["web"] = {"image": "cpu-svc", "tag": tags["web"], "host": "pc2", "stop_timeout": 5,
                                  "proxy": {"listen": str(WEB_PORT), "port": 8080}, "update": {"drain_s": 0.5},
                                  "health": {"port": 8080, **fast}}
        doc["services"]["llm-edge"] = {"image": "torch-svc", "tag": tags["llm-edge"], "host": "mainpc", "gpus": "all",
                                       "gpu_memory_gb": 14.0, "stop_timeout": 5, "update": {"drain_s": 0.5},
                                       "proxy": {"listen": str(LLM_PORT), "port": 8080}, "health": {"port": 8080, **fast}}

    def phases(doc):
        doc["phases"] += [{"name": "edge", "services": ["edge-proxy"]}, {"name": "web", "services": ["web"]},
                          {"name": "llm-edge", "services": ["llm-edge"]}]

    path = derive_inventory(lab, tmp / "base", edit, phases)
    state = {"lab": lab, "tmp": tmp, "path": path, "tags": tags, "edit": edit, "phases": phases}
    free_gb(lab, 20)
    inv = load(path)
    for phase in ("edge", "web"):
        rep = executor.rollout(inv, phase)
        assert rep.state == "committed", rep.messages
    with GpuFeeder(lab, "llm-edge", lambda tag: 13 * 1024):
        rep = executor.rollout(inv, "llm-edge")
    assert rep.state == "committed", rep.messages
    yield state
    fleet.set_gpu_used(lab.host("mainpc"), 0)
    for phase in ("edge", "web", "llm-edge"):  # a failed release froze its phase on the host: leave the lab unfrozen
        operate.set_freeze(load(path), phase, "test cleanup", thaw=True)
    for host, names in (("mainpc", ("llm-edge", "edge-proxy")), ("pc2", ("web", "edge-proxy"))):
        client = docker.DockerClient(base_url=lab.host(host).docker_host)
        for c in client.containers.list(all=True, filters={"label": "io.fleetroll.managed=true"}):
            if c.labels.get("io.fleetroll.service") in names:
                c.remove(force=True)


def inventory_with(edge, name: str, **changes):
    """The edge inventory with per-service changes, e.g. web={"tag": T}."""

    def edit(doc):
        edge["edit"](doc)
        for svc, fields in changes.items():
            doc["services"][svc].update(fields)

    return load(derive_inventory(edge["lab"], edge["tmp"] / name, edit, edge["phases"]))


def serving(lab, host: str, service: str) -> tuple[list[str], str]:
    """What the host's proxy sends the service to, and the address of the container named `service`."""
    from agent import paths  # noqa: F401 - the socket path is per host: read it from the lab host's state dir

    rt = agent_proxy.Runtime(lab.host(host).dir / "state" / "proxy-run" / agent_proxy.SOCKET_NAME)
    live = [f"{s.addr}:{s.port}" for s in rt.slots(service).values() if s.live]
    c = docker.DockerClient(base_url=lab.host(host).docker_host).containers.get(service)
    return live, agent_proxy.container_address(c.attrs, "fleetroll")


def svc(rep, host, service):
    return next(s for s in rep.hosts[host]["services"] if s["service"] == service)


def test_ten_upgrades_and_a_failed_release_drop_no_request(edge):
    lab = edge["lab"]
    load_gen = Load(lab.host("pc2").address, WEB_PORT)
    load_gen.start()
    timings = []
    try:
        for i in range(10):
            tag = new_tag()
            images.push(lab, "cpu-svc", tag, "healthy")
            rep = executor.rollout(inventory_with(edge, f"up{i}", web={"tag": tag}), "web")
            assert rep.state == "committed", rep.messages
            s = svc(rep, "pc2", "web")
            assert s["order"] == "start-first" and s["switch"]["switched"], s
            timings.append(s["timings"])
            assert any("web: start-first, behind the proxy and on no GPU" in m and "the proxy switched to it" in m
                       for m in rep.messages), rep.messages
        before = docker.DockerClient(base_url=lab.host("pc2").docker_host).containers.get("web").id
        bad = new_tag()
        images.push(lab, "cpu-svc", bad, "degraded")  # HTTP 200 with {"status":"degraded"}: fails the gate
        rep = executor.rollout(inventory_with(edge, "bad", web={"tag": bad}), "web")
    finally:
        result = load_gen.finish()
    print(f"\nload through the proxy during 10 upgrades + 1 failed release: {json.dumps(result)}")
    print("per-swap timings: " + json.dumps(timings))
    assert rep.state == "reverted", rep.messages
    s = svc(rep, "pc2", "web")
    assert s["outcome"] == "reverted" and s["order"] == "start-first" and not s["switch"].get("switched"), s
    text = "\n".join(rep.messages)
    assert "start-first: the proxy was never switched; the old container served throughout" in text, text
    assert docker.DockerClient(base_url=lab.host("pc2").docker_host).containers.get("web").id == before
    live, addr = serving(lab, "pc2", "web")
    assert live == [f"{addr}:8080"], (live, addr)
    assert result["failed"] == 0, result
    assert result["requests"] >= 200 and result["longest_gap_s"] < 3, result  # the load ran through every swap


def test_status_shows_which_backend_the_proxy_serves(edge):
    st = executor.status(load(edge["path"]), ["pc2"])
    line = st["hosts"]["pc2"]["services"]["web"]["proxy"]
    _live, addr = serving(edge["lab"], "pc2", "web")
    assert line.startswith("-> web (") and f"at {addr}:8080" in line, line


def test_gpu_service_stop_first_when_the_card_lacks_room_start_first_when_it_has_it(edge):
    lab = edge["lab"]
    free_gb(lab, 9)
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")
    inv = inventory_with(edge, "gpu9", **{"llm-edge": {"tag": tag}})
    dry = executor.rollout(inv, "llm-edge", dry_run=True)
    reason = "llm-edge: stop-first, needs 14.0 GB beside the running copy, 9.0 GB free on GPU 0"
    assert any("stop-first, needs 14.0 GB beside the running copy, 9.0 GB free on GPU 0" in m for m in dry.messages), dry.messages
    with GpuFeeder(lab, "llm-edge", lambda t: 13 * 1024):
        rep = executor.rollout(inv, "llm-edge")
    assert rep.state == "committed", rep.messages
    s = svc(rep, "mainpc", "llm-edge")
    # (the new container may get the old one's freed address, so the proxy need not even switch)
    assert s["order"] == "stop-first" and s["switch"], s
    assert any(reason in m for m in rep.messages), rep.messages
    live, addr = serving(lab, "mainpc", "llm-edge")
    assert live == [f"{addr}:8080"]

    free_gb(lab, 20)
    tag2 = new_tag()
    images.push(lab, "torch-svc", tag2, "healthy", arch="89;86")
    load_gen = Load(lab.host("mainpc").address, LLM_PORT)
    load_gen.start()
    try:
        with GpuFeeder(lab, "llm-edge", lambda t: 13 * 1024):
            rep = executor.rollout(inventory_with(edge, "gpu20", **{"llm-edge": {"tag": tag2}}), "llm-edge")
    finally:
        result = load_gen.finish()
    print(f"\nGPU start-first under load: {json.dumps(result)}")
    assert rep.state == "committed", rep.messages
    s = svc(rep, "mainpc", "llm-edge")
    assert s["order"] == "start-first", s
    assert any("llm-edge: start-first, needs 14.0 GB beside the running copy, 20.0 GB free on GPU 0" in m for m in rep.messages)
    assert result["failed"] == 0 and result["requests"] >= 50 and result["longest_gap_s"] < 3, result


def test_a_plan_that_cannot_fit_the_card_is_refused_in_preflight(edge):
    lab = edge["lab"]
    free_gb(lab, 20)
    before = docker.DockerClient(base_url=lab.host("mainpc").docker_host).containers.get("llm-edge").id
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")
    rep = executor.rollout(inventory_with(edge, "gpu26", **{"llm-edge": {"tag": tag, "gpu_memory_gb": 26.0}}), "llm-edge")
    text = "\n".join(rep.messages)
    assert rep.state in ("failed", "refused") and not rep.ok, text
    assert "llm-edge needs 26.0 GB but the largest card here has 24.0 GB" in text, text
    assert docker.DockerClient(base_url=lab.host("mainpc").docker_host).containers.get("llm-edge").id == before


def test_a_release_using_more_gpu_memory_than_declared_fails_its_gate_and_the_old_keeps_serving(edge):
    lab = edge["lab"]
    free_gb(lab, 20)
    client = docker.DockerClient(base_url=lab.host("mainpc").docker_host)
    before = client.containers.get("llm-edge")
    old_tag = before.labels["io.fleetroll.tag"]
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")
    load_gen = Load(lab.host("mainpc").address, LLM_PORT)
    load_gen.start()
    try:
        with GpuFeeder(lab, "llm-edge", lambda t: 13 * 1024 if t == old_tag else 18 * 1024):
            rep = executor.rollout(inventory_with(edge, "gpu-over", **{"llm-edge": {"tag": tag}}), "llm-edge")
    finally:
        result = load_gen.finish()
    s = svc(rep, "mainpc", "llm-edge")
    assert rep.state == "reverted" and s["check"] == "health-gpu", rep.messages
    assert s["order"] == "start-first" and client.containers.get("llm-edge").id == before.id
    live, addr = serving(lab, "mainpc", "llm-edge")
    assert live == [f"{addr}:8080"]
    assert result["failed"] == 0, result


@pytest.mark.parametrize("after", ["set-aside", "start-new", "gate", "switched", "stop-old"])
def test_start_first_killed_at_each_step_boundary_is_recovered_without_dropping_a_request(edge, after):
    """SIGKILL the host's transaction at each start-first boundary: recovery brings the old container back
    beside whatever the proxy serves, switches back, removes the new one — and the load sees no failure."""
    from .test_lab_integrity import Killer

    lab = edge["lab"]
    client = docker.DockerClient(base_url=lab.host("pc2").docker_host)
    before = client.containers.get("web")
    tag = new_tag()
    images.push(lab, "cpu-svc", tag, "healthy")
    load_gen = Load(lab.host("pc2").address, WEB_PORT)
    load_gen.start()
    killer = Killer(lab, host="pc2")
    killer.start()
    try:
        rep = executor.rollout(inventory_with(edge, f"kill-{after}", web={"tag": tag}), "web",
                               failpoint={"after": after, "service": "web"})
        killer.join(5)
    finally:
        result = load_gen.finish()
    assert killer.killed, "the failpoint was never reached"
    text = "\n".join(rep.messages)
    assert rep.state == "reverted" and "host recovered it" in text, text
    now = client.containers.get("web")
    assert now.id == before.id and now.status == "running"
    assert [c.name for c in client.containers.list(all=True) if c.name.startswith("web--kept-")] == []
    live, addr = serving(lab, "pc2", "web")
    assert live == [f"{addr}:8080"], (live, addr)
    recs = [json.loads(x) for x in (killer.dir / f"{rep.rollout_id}.jsonl").read_text().splitlines()]
    assert recs[-1]["recovered"] is True and [r["step"] for r in recs].count("failpoint") == 1
    assert result["failed"] == 0, (result["first_failures"], result)


def test_a_service_put_behind_a_proxy_that_does_not_know_it_yet_is_refused_in_preflight(edge):
    lab = edge["lab"]

    def edit(doc):
        edge["edit"](doc)
        doc["services"]["web2"] = {**doc["services"]["web"], "proxy": {"listen": "18082", "port": 8080}}

    def phases(doc):
        edge["phases"](doc)
        doc["phases"].append({"name": "web2", "services": ["web2"]})

    inv = load(derive_inventory(lab, edge["tmp"] / "web2", edit, phases))
    rep = executor.rollout(inv, "web2")
    text = "\n".join(rep.messages)
    assert not rep.ok and rep.state in ("failed", "refused"), text
    assert "no backend for web2" in text and "fab rollout --phase edge" in text, text
    assert not docker.DockerClient(base_url=lab.host("pc2").docker_host).containers.list(all=True, filters={"name": "^web2$"})


def test_start_first_rollback_of_a_crash_looping_release_brings_the_old_one_back_behind_the_proxy(edge):
    """The running web crash-loops (restart: always) on the proxy network: rollback settles it first, never races Docker."""
    lab = edge["lab"]
    tag = new_tag()
    images.push(lab, "cpu-svc", tag, "healthy")
    inv = inventory_with(edge, "sf-crash", web={"tag": tag})
    assert executor.rollout(inv, "web").state == "committed"
    client = docker.DockerClient(base_url=lab.host("pc2").docker_host)
    c = client.containers.get("web")
    labels = dict(c.labels)
    c.remove(force=True)
    crash = images.push(lab, "cpu-svc", new_tag(), "crash")
    client.images.pull(crash)
    c = client.containers.run(crash, name="web", labels=labels, network="fleetroll", restart_policy={"Name": "always"},
                              user="10001:10001", detach=True)
    deadline = time.time() + 30
    while time.time() < deadline and (c.reload() or c.attrs["RestartCount"] < 2):
        time.sleep(0.1)
    rep = executor.rollback(inv, "web", "web")
    assert rep.state == "reverted", rep.messages
    s = svc(rep, "pc2", "web")
    assert s["outcome"] == "reverted" and s["order"] == "start-first", s
    live, addr = serving(lab, "pc2", "web")
    assert live == [f"{addr}:8080"], (live, addr)
    now = client.containers.get("web")
    assert now.attrs["State"]["Running"] and not now.attrs["State"]["Restarting"] and now.labels["io.fleetroll.tag"] != tag


def test_lab_release_of_a_hand_made_inventory_writes_it_beside_and_rolls_out(edge):
    """`fab lab.release -i INV` made releases for the lab's own inventory only: a walkthrough inventory needed a workaround."""
    from lab.release import release

    rel = release("web", "healthy", inventory=edge["path"])
    assert rel.parent == edge["path"].parent and rel.name == "release-web-healthy.yml"
    inv = load(rel)
    assert inv.fleet.services["web"].tag != load(edge["path"]).fleet.services["web"].tag
    rep = executor.rollout(inv, "web")
    assert rep.state == "committed", rep.messages
