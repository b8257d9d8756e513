"""The lab fleet: real sshd + dockerd per host in network namespaces, and a real registry.

`fab lab.up`, `fab lab.down` and the pytest session fixture all call `up()`/`down()`
here, so what the tests exercise is what an operator tries by hand. Each host is a
network namespace on one bridge with its own sshd (fresh host keys, recorded in the
lab's own known_hosts) and its own dockerd (started with `nsenter --net`, which keeps
the cgroup mounts dockerd needs). GPU hosts get a fake libnvidia-ml.so.1 built from C,
configured through the sshd's SetEnv, so the agent's real pynvml code path runs.
Everything the lab makes lives under one directory and a fixed name prefix, which is
how `down()` (and a second `up()` after a crash) finds and removes all of it.

This module is the entry point; the pieces live beside it: names and state (model.py),
process helpers and records (procs.py), hosts (hosts.py), the registry (registry.py) and
teardown (teardown.py).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

# The lab's pieces, under the names the lab tasks, the tests and the benchmarks use (fleet.X).
from .hosts import (  # noqa: F401
    client_key,
    fake_nvml,
    host_env,
    host_key_line,
    lab_home,
    make_network,
    make_users,
    put_secret,
    restart_dockerd,
    set_gpu_processes,
    set_gpu_used,
    set_link,
    ssh_config,
    start_host,
    wait_host,
)
from .model import (  # noqa: F401
    BRIDGE,
    LAB_DIR,
    LAB_OPS_USER,
    LAB_PYENV_USER,
    LAB_USER,
    LAB_USERS,
    NS_PREFIX,
    ORG,
    REGISTRY_ADDR,
    LabError,
    LabHost,
    LabState,
    plan_hosts,
)
from .procs import require_tools, wait_for
from .registry import make_registry, registry_up, start_registry, stop_registry  # noqa: F401
from .teardown import MARKER, down, leftovers  # noqa: F401

_host_env = host_env  # the name tests/test_lab_integrity.py and tests/test_lab_lock_forgery.py use


def up(count: int = 2, extras: list[str] | None = None, images: bool = True, observability: bool = False) -> LabState:
    """Bring up a fresh lab of `count` hosts (+ extras); tears down any earlier one first."""
    require_tools()
    down()
    LAB_DIR.mkdir(parents=True, mode=0o711)
    LAB_DIR.chmod(0o711)  # others may traverse (lab users reach their homes and state), not list or write
    (LAB_DIR / MARKER).write_text(json.dumps({"created": time.time(), "by": os.getpid()}))
    hosts = plan_hosts(count, extras)
    try:
        make_network(hosts)
        make_registry()
        fake_nvml()
        make_users()
        key = client_key()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(start_host, hosts))
            wait_for("registry", registry_up, 15)
            list(pool.map(wait_host, hosts))
        (LAB_DIR / "known_hosts").write_text("".join(host_key_line(h) for h in hosts))
        ssh_config(hosts, key)
        # The fleet's start-up report secret, on every host as an operator would place it.
        fleet_secret = secrets.token_urlsafe(32)
        for h in hosts:
            put_secret(h, REPORT_SECRET, fleet_secret)
        state = LabState(hosts=hosts, known_hosts=str(LAB_DIR / "known_hosts"), key=str(key))
        from . import images as lab_images
        from .inventory import write_inventory

        tags = lab_images.seed(state) if images else {}
        extra = None
        if observability:
            from .inventory import observability_services

            extra = observability_services(state, _build_observability(state))
        state.inventory = str(write_inventory(state, tags, extra=extra))
        state.save()
        return state
    except BaseException:
        down()
        raise


def _build_observability(state: LabState) -> str:
    """Build the CPU family, the collector and hello from this commit; push them; return the tag."""
    from playbooks.images import build

    if build.revision().dirty:
        raise LabError("--with-observability builds images from this commit: commit families/ first")
    fam = build.build_family("family-cpu-py311")
    reg = f"{state.registry}/{ORG}"
    for svc in ("fleetroll-collector", "hello"):
        build.build_service(svc, fam.local_ref, reg, push=True, insecure=True)
    return fam.tag


REPORT_SECRET = "fleetroll-report-key"  # the inventory's default observability.report_key_secret


def report_secret(state: LabState) -> str:
    """The lab fleet's report secret (tests and the bench sign reports with keys derived from it)."""
    return (state.hosts[0].dir / "secrets" / REPORT_SECRET).read_text().strip()
