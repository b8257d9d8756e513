"""Small process helpers of the lab, and its records of what it started (the only things it signals or deletes).

Every process the lab starts is recorded with its pid and start time (processes.jsonl), every
account it creates in users.json: teardown acts on these records and on its own network
namespaces, never on a match of a name or a command line.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .model import LAB_DIR, LAB_USERS, LabError


def sh(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(list(argv), capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()[:400]}")
    return r


def wait_for(what: str, ready, timeout: float = 30.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(interval)
    raise LabError(f"lab: {what} not ready after {timeout:.0f}s")


def tcp_open(addr: str, port: int) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=0.3):
            return True
    except OSError:
        return False


def require_tools() -> None:
    missing = [t for t in ("ip", "nsenter", "dockerd", "docker-registry", "ssh-keygen", "gcc") if not shutil.which(t)]
    if not os.path.exists("/usr/sbin/sshd"):
        missing.append("sshd")
    if missing:
        raise LabError(
            f"lab needs {', '.join(missing)}; install: apt-get install docker.io docker-registry"
            " openssh-server tini busybox-static iproute2 gcc"
        )
    if os.geteuid() != 0:
        raise LabError("lab needs root (network namespaces, dockerd)")


def nsenter(ns: str) -> list[str]:
    return ["nsenter", f"--net=/var/run/netns/{ns}"]


def record_process(pid: int, what: str) -> None:
    """Remember a process the lab started (pid + start time), the only kind it signals by pid."""
    from agent.lock import start_time

    with open(LAB_DIR / "processes.jsonl", "a") as f:
        f.write(json.dumps({"pid": pid, "start": start_time(pid), "what": what}) + "\n")


def recorded(what: str | None = None) -> list[int]:
    """Recorded processes that are still the very processes the lab started."""
    from agent.lock import same_process

    path = LAB_DIR / "processes.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        kind = str(r.get("what", ""))
        if (what is None or kind == what or kind.startswith(what + ":")) and same_process(int(r["pid"]), str(r["start"])):
            out.append(int(r["pid"]))
    return out


def pid_in(pidfile: Path) -> int | None:
    """The pid a daemon wrote, once it has written all of it (it creates the file first)."""
    try:
        text = pidfile.read_text()
    except OSError:
        return None
    return int(text.strip()) if text.endswith("\n") and text.strip().isdigit() else None


def created_users() -> list[str]:
    path = LAB_DIR / "users.json"
    return [u for u in json.loads(path.read_text()) if u in LAB_USERS] if path.exists() else []
