"""The lab writes an inventory of its own (it never edits inventory/fleet.yml).

Its shape follows the default fleet: every host runs a `core-<host>` service in phase
core-infra; mainpc carries the GPU phase and pc2 the CPU phase. Extra hosts (node03..)
only take part in core-infra, so a 20-host lab rolls 20 hosts in one phase. With a proxy tag
(`fab lab.up --with-proxy`) it also holds the zero-downtime walkthrough's pieces
(docs/zero-downtime.md): phase `edge` with the per-host HAProxy, then phase `web` behind it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .model import LAB_DIR, LAB_USER, ORG, LabState


def observability_services(state: LabState, tag: str) -> dict:
    """The collector on pc2 (or the only host) and `hello` on mainpc and pc2, all on the CPU family."""
    names = [h.name for h in state.hosts]
    coll_host = "pc2" if "pc2" in names else names[0]
    out = {"fleetroll-collector": {
        "image": "fleetroll-collector", "tag": tag, "host": coll_host, "ports": ["9400:9400"],
        "volumes": ["fleetroll-collector-data:/data"], "stop_timeout": 5,
        "health": {"port": 9400, "healthy_deadline": 30, "min_healthy_time": 2, "interval": 0.25}}}
    for i, h in enumerate(n for n in ("mainpc", "pc2") if n in names):
        out[f"hello-{h}"] = {
            "image": "hello", "tag": tag, "host": h, "ports": [f"{8300 + i}:8080"], "env": {"MACHINE": h}, "stop_timeout": 5,
            "health": {"port": 8300 + i, "healthy_deadline": 30, "min_healthy_time": 2, "interval": 0.25}}
    return out


def _host_entry(h, state: LabState) -> dict:
    """A lab host as the inventory names it: its address, the lab's login, and its fake GPU if it has one."""
    entry = {"address": h.address, "user": LAB_USER, "key_filename": state.key, "role": "gpu" if h.name == "mainpc" else "cpu"}
    if h.driver:
        entry["gpus"] = {"model": h.gpu_name, "count": 1, "compute_capability": h.compute_capability, "min_driver": "535"}
    return entry


def _service(image: str, tags: dict[str, str], port: int, host: str, gpus=0, deadline: float = 5) -> dict:
    """A lab service on one host. Deadlines sized to the lab: a lab service answers in well under a second, so a release
    that is not healthy after 5 s never will be (the product default, 60 s, is for real services)."""
    return {
        "image": image,
        "tag": tags.get(image, "20261101-a1b2c3d"),
        "host": host,
        "ports": [f"{port}:8080"],
        "env": {"MACHINE": host},
        "gpus": gpus,
        "stop_timeout": 5,
        "health": {"port": port, "healthy_deadline": deadline, "min_healthy_time": 2, "interval": 0.25},
    }


# The zero-downtime walkthrough's names and ports (docs/zero-downtime.md): clients reach `web` at pc2:18080.
PROXY_SERVICE, WEB_SERVICE, WEB_LISTEN = "edge-proxy", "web", "18080"


def add_proxy(fleet: dict, phases: dict, proxy_tag: str, web_tag: str) -> None:
    """Put the proxy in phase `edge` and one service behind it in phase `web`, after the lab's phases.

    The fields are those tests/test_lab_zero_downtime.py's `edge` fixture rolls out, so the docs'
    two commands run what the tests prove: the proxy's health port is 8404 (reverse_proxy.health_port),
    `web` publishes no host port (the proxy holds 18080 on pc2) and its health port is the container's,
    and health settings sized to the lab (a lab service answers within a second).
    """
    names = set(fleet["hosts"])
    if not {"mainpc", "pc2"} <= names:
        raise ValueError(f"the proxy runs on mainpc and pc2; this lab has {', '.join(sorted(names))}: use --count 2 or more")
    fast = {"healthy_deadline": 20, "min_healthy_time": 1, "interval": 0.25}
    fleet["reverse_proxy"] = {"service": PROXY_SERVICE}
    fleet["services"][PROXY_SERVICE] = {"image": "fleetroll-proxy", "tag": proxy_tag, "hosts": ["mainpc", "pc2"],
                                        "stop_timeout": 5, "health": {"port": 8404, **fast}}
    fleet["services"][WEB_SERVICE] = {"image": "cpu-svc", "tag": web_tag, "host": "pc2", "stop_timeout": 5,
                                      "proxy": {"listen": WEB_LISTEN, "port": 8080}, "update": {"drain_s": 0.5},
                                      "health": {"port": 8080, **fast}}
    phases["phases"] += [
        {"name": "edge", "description": "the per-host reverse proxy (HAProxy), before the services behind it",
         "services": [PROXY_SERVICE]},
        {"name": "web", "description": "a service behind the proxy, swapped start-first", "services": [WEB_SERVICE]},
    ]


def build_inventory(state: LabState, tags: dict[str, str], extra: dict | None = None,
                    proxy_tag: str | None = None) -> tuple[dict, dict]:
    """The lab's fleet.yml and phases.yml documents; with `proxy_tag`, also the proxy and `web` (add_proxy)."""
    hosts, services = {}, {}
    core, gpu, cpu = [], [], []
    for h in state.hosts:
        hosts[h.name] = _host_entry(h, state)

        def svc(image: str, port: int, gpus=0, host=h.name, deadline: float = 5) -> dict:
            return _service(image, tags, port, host, gpus, deadline)

        services[f"core-{h.name}"] = svc("core", 9100, deadline=8)  # up to 20 hosts start at once on 2 cores
        core.append(f"core-{h.name}")
        if h.name == "mainpc":
            services["llm-api"] = svc("torch-svc", 8000, gpus="all")
            services["vision-api"] = svc("vision-svc", 8001, gpus="all")
            gpu += ["llm-api", "vision-api"]
        if h.name == "pc2":
            services["embed-api"] = svc("cpu-svc", 8100)
            services["rag-api"] = svc("cpu-svc", 8101)
            cpu += ["embed-api", "rag-api"]
    if extra:
        services.update(extra)
        core += list(extra)
    fleet = {
        "registry": {"host": state.registry, "org": ORG, "insecure": True},
        "ssh": {"known_hosts": state.known_hosts, "connect_timeout": 3, "max_parallel": 20},
        "defaults": {"disk_min_free_gb": 1},
        # Lab test images have no Trivy report; the gate warns instead of refusing.
        "security": {"artifacts": str(LAB_DIR / "artifacts"), "acceptances": str(LAB_DIR / "risk-acceptances.yml"),
                     "missing_report": "warn"},
        "hosts": hosts,
        "services": services,
    }
    if extra and "fleetroll-collector" in extra:
        fleet["observability"] = {"collector": "fleetroll-collector"}
    phases = {
        "phases": [
            {"name": "core-infra", "description": "core services on every lab host", "services": core},
            {"name": "gpu-mainpc", "description": "GPU services on mainpc", "services": gpu},
            {"name": "cpu-pc2", "description": "CPU services on pc2", "services": cpu},
        ]
    }
    if proxy_tag:
        add_proxy(fleet, phases, proxy_tag, tags.get("cpu-svc", "20261101-a1b2c3d"))
    return fleet, phases


_HEADER = "# Written by fleetroll's lab (fab lab.up); the default inventory is untouched.\n"


def _write(d: Path, fleet: dict, phases: dict) -> Path:
    (d / "fleet.yml").write_text(_HEADER + yaml.safe_dump(fleet, sort_keys=False))
    (d / "phases.yml").write_text(_HEADER + yaml.safe_dump(phases, sort_keys=False))
    return d / "fleet.yml"


def write_inventory(state: LabState, tags: dict[str, str], directory: Path | None = None, extra: dict | None = None,
                    proxy_tag: str | None = None) -> Path:
    d = directory or (LAB_DIR / "inventory")
    d.mkdir(parents=True, exist_ok=True)
    return _write(d, *build_inventory(state, tags, extra, proxy_tag))


def add_proxy_to_inventory(path: Path, proxy_tag: str) -> Path:
    """Add the proxy and `web` to the inventory lab.up wrote at `path` (fleet.yml, with phases.yml beside it).

    lab.up writes its inventory before the proxy image exists (building it takes a minute, so only
    --with-proxy pays for it); `web` runs the cpu-svc tag the lab already pushed for embed-api.
    """
    fleet = yaml.safe_load(path.read_text())
    phases = yaml.safe_load((path.parent / "phases.yml").read_text())
    web_tag = next((s["tag"] for s in fleet["services"].values() if s.get("image") == "cpu-svc"), None)
    if web_tag is None:
        raise ValueError(f"{path} has no cpu-svc service whose tag `web` could run; rerun fab lab.up")
    add_proxy(fleet, phases, proxy_tag, web_tag)
    return _write(path.parent, fleet, phases)
