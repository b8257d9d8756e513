"""The lab's registry: docker-registry in a namespace of its own, and the fault injection that stops it."""

from __future__ import annotations

import os
import signal
import subprocess

from .model import LAB_DIR, REGISTRY_ADDR, REGISTRY_NS
from .procs import nsenter, record_process, recorded, tcp_open, wait_for


def make_registry() -> None:
    d = LAB_DIR / "registry"
    (d / "data").mkdir(parents=True)
    (d / "config.yml").write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage:\n  filesystem: {{rootdirectory: {d / 'data'}}}\n  delete: {{enabled: true}}\n"
        f"http:\n  addr: {REGISTRY_ADDR}\n"
    )
    _spawn_registry()


def _spawn_registry() -> None:
    d = LAB_DIR / "registry"
    with open(d / "registry.log", "a") as log:
        p = subprocess.Popen(
            nsenter(REGISTRY_NS) + ["setsid", "docker-registry", "serve", str(d / "config.yml")],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
    (d / "registry.pid").write_text(str(p.pid))
    record_process(p.pid, "registry")


def registry_up() -> bool:
    host, port = REGISTRY_ADDR.split(":")
    return tcp_open(host, int(port))


def stop_registry() -> None:
    """Fault injection for tests: the registry goes away, everything else stays."""
    for pid in recorded("registry"):
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    wait_for("registry stop", lambda: not registry_up() and not recorded("registry"), 10)


def start_registry() -> None:
    _spawn_registry()
    wait_for("registry", registry_up, 15)
