"""The lab writes an inventory of its own (it never edits inventory/fleet.yml).

Its shape follows the default fleet: every host runs a `core-<host>` service in phase
core-infra; mainpc carries the GPU phase and pc2 the CPU phase. Extra hosts (node03..)
only take part in core-infra, so a 20-host lab rolls 20 hosts in one phase.
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


def build_inventory(state: LabState, tags: dict[str, str], extra: dict | None = None) -> tuple[dict, dict]:
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
    return fleet, phases


def write_inventory(state: LabState, tags: dict[str, str], directory: Path | None = None, extra: dict | None = None) -> Path:
    d = directory or (LAB_DIR / "inventory")
    d.mkdir(parents=True, exist_ok=True)
    fleet, phases = build_inventory(state, tags, extra)
    header = "# Written by fleetroll's lab (fab lab.up); the default inventory is untouched.\n"
    (d / "fleet.yml").write_text(header + yaml.safe_dump(fleet, sort_keys=False))
    (d / "phases.yml").write_text(header + yaml.safe_dump(phases, sort_keys=False))
    return d / "fleet.yml"
