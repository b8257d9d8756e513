"""The lab's names and shapes: where it lives, its accounts, its hosts (planned, not started), its saved state.

Pure data and the one file the lab keeps about itself (lab.json); bring-up (lab/hosts.py,
lab/registry.py), teardown (lab/teardown.py) and the entry points (lab/fleet.py) build on it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


def instance() -> int:
    """Which lab this process addresses: FLEETROLL_LAB_INSTANCE (0-9, default 0).

    Why more than one: the test suite runs three workers, each against a lab of its own, so the
    lab's waiting (health gates, restarts) overlaps instead of adding up. Instance 0 keeps the
    names an operator sees in the docs (/tmp/frlab, frlab0, 10.213.0.0/24); instance n gets its
    own directory, bridge, namespaces, links, subnet and accounts, so two labs never touch each
    other's things (teardown finds only its own names).
    """
    raw = os.environ.get("FLEETROLL_LAB_INSTANCE", "0") or "0"
    if not (raw.isdigit() and 0 <= int(raw) <= 9):
        raise ValueError(f"FLEETROLL_LAB_INSTANCE={raw!r}: expected a number 0-9 (unset it for the default lab)")
    return int(raw)


INSTANCE = instance()
_SUFFIX = str(INSTANCE) if INSTANCE else ""
LAB_DIR = Path(os.environ.get("FLEETROLL_LAB_DIR", f"/tmp/frlab{_SUFFIX}"))
BRIDGE = f"frlab{INSTANCE}"
NS_PREFIX = f"frl{_SUFFIX}-"
VETH_PREFIX = f"fr{INSTANCE}v" if INSTANCE else "frv"  # "fr1v3": no lab's prefix is a prefix of another's links
SUBNET = f"10.213.{INSTANCE}"
GATEWAY = f"{SUBNET}.1"
REGISTRY_NS = f"{NS_PREFIX}registry"
REGISTRY_ADDR = f"{SUBNET}.2:5000"
ORG = "lab"
# Lab hosts are entered as this unprivileged user (in the docker group), with /bin/sh as
# its shell and a home inside the lab: root's own dotfiles on the machine running the
# lab (pyenv init and the like) must not run on every SSH command and skew timings.
LAB_USER = f"frlab{_SUFFIX}"
# A second operator account on every lab host (same key, also in the docker group): two
# SSH users driving one Docker daemon must share its lock and its journal.
LAB_OPS_USER = f"frops{_SUFFIX}"
# An account like many real operators': bash as its shell, a ~/.bashrc that runs a pyenv-style init
# (~0.2 s, sourced by bash for every SSH command) and a `python3` shim first in its PATH.
LAB_PYENV_USER = f"frpyenv{_SUFFIX}"
LAB_USERS = (LAB_USER, LAB_OPS_USER, LAB_PYENV_USER)
PYENV_BASHRC = """# what `eval "$(pyenv init -)"` and friends cost on a real account, roughly
sleep 0.2
export PATH="$HOME/.pyenv/shims:$PATH"
"""
PYENV_SHIM = """#!/bin/bash
# a pyenv shim: a shell, a version lookup, then the real interpreter (and a note that it ran)
sleep 0.05
echo "$$ $*" >> "$HOME/.pyenv/shim.log"
exec /usr/bin/python3 "$@"
"""
SRC = Path(__file__).resolve().parent


class LabError(Exception):
    pass


@dataclass
class LabHost:
    name: str
    index: int
    address: str
    netns: str
    veth: str
    driver: str | None = None  # NVIDIA driver the fake NVML reports; None = no GPU
    gpu_name: str = ""
    compute_capability: str = ""
    gpu_memory_mib: int = 0
    hook: bool = True  # stub nvidia-container-runtime-hook on dockerd's PATH

    @property
    def dir(self) -> Path:
        return LAB_DIR / "hosts" / self.name

    @property
    def docker_sock(self) -> Path:
        return self.dir / "docker.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.docker_sock}"


@dataclass
class LabState:
    hosts: list[LabHost] = field(default_factory=list)
    registry: str = REGISTRY_ADDR
    inventory: str = ""
    known_hosts: str = ""
    key: str = ""

    def host(self, name: str) -> LabHost:
        return next(h for h in self.hosts if h.name == name)

    def save(self) -> None:
        (LAB_DIR / "lab.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls) -> LabState:
        path = LAB_DIR / "lab.json"
        if not path.exists():
            raise LabError(f"no lab is up ({path} is missing); run: fab lab.up")
        raw = json.loads(path.read_text())
        raw["hosts"] = [LabHost(**h) for h in raw["hosts"]]
        return cls(**raw)


GPU_PROFILES = {
    "mainpc": ("550.54.14", "NVIDIA GeForce RTX 4090", "8.9", 24564),
    "pc2": ("535.183.01", "NVIDIA GeForce RTX 3060", "8.6", 12288),
    "bad-driver": ("530.41.03", "NVIDIA GeForce RTX 3060", "8.6", 12288),
}


def plan_hosts(count: int, extras: list[str] | None = None) -> list[LabHost]:
    """Host names and addresses: mainpc, pc2, node03.. then extras such as bad-driver."""
    names = ["mainpc", "pc2"][:count] + [f"node{i:02d}" for i in range(3, count + 1)]
    names += [e for e in (extras or []) if e not in names]
    hosts = []
    for i, name in enumerate(names):
        h = LabHost(name=name, index=i, address=f"{SUBNET}.{10 + i}", netns=f"{NS_PREFIX}{name}", veth=f"{VETH_PREFIX}{i}")
        if name in GPU_PROFILES:
            h.driver, h.gpu_name, h.compute_capability, h.gpu_memory_mib = GPU_PROFILES[name]
        hosts.append(h)
    return hosts
