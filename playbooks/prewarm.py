"""The hosts' SSH logins started while the `fleetroll` command is still starting up (OpenSSH client only).

A command spends ~0.15 s importing its libraries and checking the inventory before it can send
a byte, and each host then spends ~0.3 s on TCP, SSH, its login shell and the agent's start
(bench/REPORT.md). Both are waits the operator sits through one after the other; started
first, each login in an `ssh` process of its own, they overlap.

Why this is safe to do before the inventory is validated:
- a prewarmed process runs only the agent's fixed command line (the verifier and the archive's
  hash); the agent reads a request before it does anything, and a process nobody claims gets
  the end of its stdin and exits having done nothing. A wrong guess (an inventory that then
  fails validation, a host the command does not call) costs one idle login, never a change;
- a process is used only if the validated inventory yields the very same ssh command line
  (openssh.argv of transport.Target.from_inventory): the raw YAML read here decides nothing;
- values that would not pass validation (an address that is not a host name or IP address, a
  login name that is not one) are never put on an ssh command line; such a host is skipped.
Only the tasks that call the hosts of a phase at once (rollout of one phase, preflight,
status); never when FLEETROLL_PREWARM=0 or ssh.client is not OpenSSH.
"""

from __future__ import annotations

import atexit
import os
import threading
from pathlib import Path
from typing import Any

from . import openssh
from .ssh_connection import Target, TransportError
from .ssh_names import LOGIN_RE, PYTHON_RE, address_problem

TASKS = ("rollout", "preflight", "status")
# The schema's defaults for what goes on the ssh command line (tests/test_openssh_unit.py holds them equal).
DEFAULTS = {"port": 22, "user": "root", "python": "/usr/bin/python3", "known_hosts": "known_hosts", "connect_timeout": 5.0,
            "client": "auto", "max_parallel": 10}

_warm: dict[tuple[str, ...], openssh.Session] = {}
_lock = threading.Lock()


VALUED = {"-p": "phase", "--phase": "phase", "-H": "hosts", "--hosts": "hosts", "-i": "inventory", "--inventory": "inventory",
          "--max-parallel": "max_parallel", "--on-failure": None}
FLAGS = ("-y", "--yes", "-j", "--json", "--timings")


def wanted(argv: list[str]) -> dict[str, Any] | None:
    """The task, phase, hosts and inventory a command line names, when it is one prewarm serves; else None.

    Only a command line read exactly as invoke reads it: any word not known here (another
    flag, combined short flags, a second task) means no prewarm rather than a guess, so a
    login never goes to a host of an inventory the operator did not name.
    """
    if not argv or argv[0] not in TASKS:
        return None
    opts: dict[str, Any] = {"task": argv[0], "phase": None, "hosts": None, "inventory": None, "max_parallel": None}
    i = 1
    while i < len(argv):
        w = argv[i]
        key, eq, value = w.partition("=")
        if not eq and len(w) > 2 and w[:2] in ("-p", "-H", "-i") and w[1] != "-":
            key, value = w[:2], w[2:]  # -pPHASE, as invoke reads it
        elif key in VALUED and not eq:
            if i + 1 >= len(argv):
                return None
            i, value = i + 1, argv[i + 1]
        if key in VALUED:
            if VALUED[key]:
                opts[VALUED[key]] = value
        elif w not in FLAGS:
            return None  # --all, --dry-run, --help, --follow, a second task, or anything else: not one set of hosts now
        i += 1
    if opts["task"] == "rollout" and not opts["phase"]:
        return None
    return opts


def _parallel(flag: str | None, fleet: dict) -> int:
    """How many hosts the command contacts at once (--max-parallel, else ssh.max_parallel, else 10): no more logins
    than that are started ahead; the command starts the others when their turn comes, as without prewarm."""
    value = flag if flag is not None else (fleet.get("ssh") or {}).get("max_parallel", DEFAULTS["max_parallel"])
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _raw(path: Path) -> dict:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        data = yaml.load(f, Loader=loader)  # noqa: S506 - a safe loader, C or Python
    return data if isinstance(data, dict) else {}


def _hosts_of(fleet: dict, service: str) -> list[str]:
    svc = (fleet.get("services") or {}).get(service) or {}
    if svc.get("host"):
        return [svc["host"]]
    if svc.get("hosts"):
        return list(svc["hosts"])
    return list((fleet.get("groups") or {}).get(svc.get("group") or "", []))


def hosts_for(fleet: dict, phases: dict, phase: str | None, named: str | None) -> list[str]:
    """The hosts the command will call, from the raw files; [] whenever that is not plain (a swarm phase, odd shapes)."""
    hosts = fleet.get("hosts") or {}
    chosen = list(hosts)
    if phase:
        found = [p for p in phases.get("phases") or [] if isinstance(p, dict) and p.get("name") == phase]
        if len(found) != 1 or (found[0].get("engine") or fleet.get("engine") or "ssh") != "ssh":
            return []
        touched = {h for s in found[0].get("services") or [] for h in _hosts_of(fleet, s)}
        chosen = [h for h in hosts if h in touched]
    if named:
        chosen = [h for h in chosen if h in named.split(",")]
    return chosen


def target(inventory: Path, fleet: dict, host: str) -> Target | None:
    """The Target the validated inventory will give this host (transport.Target.from_inventory), or None if unsure."""
    h, ssh = (fleet.get("hosts") or {}).get(host), fleet.get("ssh") or {}
    if not isinstance(h, dict) or not isinstance(ssh, dict):
        return None
    address, user = str(h.get("address", "")), h.get("user", DEFAULTS["user"])
    port, python = h.get("port", DEFAULTS["port"]), h.get("python", DEFAULTS["python"])
    timeout, key = ssh.get("connect_timeout", DEFAULTS["connect_timeout"]), h.get("key_filename")
    if not (_address_ok(address) and isinstance(user, str) and LOGIN_RE.fullmatch(user) and type(port) is int
            and 1 <= port <= 65535 and isinstance(python, str) and PYTHON_RE.fullmatch(python)
            and type(timeout) in (int, float) and timeout > 0 and (key is None or isinstance(key, str))):
        return None
    known = h.get("known_hosts") or ssh.get("known_hosts") or DEFAULTS["known_hosts"]
    if not isinstance(known, str):
        return None
    known = Path(known).expanduser()
    return Target(name=host, address=address, port=port, user=user,
                  known_hosts=known if known.is_absolute() else inventory.parent / known,
                  key_filename=str(Path(key).expanduser()) if key else None, connect_timeout=float(timeout), python=python)


def _address_ok(v: str) -> bool:
    return address_problem(v) is None


def start(argv: list[str], default_inventory) -> int:
    """Start the logins the command line will need; how many. Never raises: this is a guess, and the command goes on
    (and says what is wrong, if anything is) whatever happens here."""
    try:
        want = wanted(argv)
        if want is None or os.environ.get("FLEETROLL_PREWARM", "1") == "0" or not openssh.usable():
            return 0
        path = Path(want["inventory"] or default_inventory())
        fleet = _raw(path)
        if ((fleet.get("ssh") or {}).get("client") or DEFAULTS["client"]) not in ("auto", "openssh"):
            return 0
        phases = _raw(path.parent / "phases.yml") if want["phase"] else {}
        hosts = hosts_for(fleet, phases, want["phase"], want["hosts"])[: _parallel(want["max_parallel"], fleet)]
        targets = [t for t in (target(path, fleet, h) for h in hosts) if t]
        if targets:
            atexit.register(discard)  # a command that ends before it calls a host (bad input, a refusal) ends them too
        waiting = []
        for t in targets:  # as many as there are free handshake slots, here: a thread would wait on the imports' GIL
            sess = _register(t)
            if sess is not None and not _try(sess, blocking=False):
                waiting.append(sess)
        if waiting:
            threading.Thread(target=lambda: [_try(s, blocking=True) for s in waiting], name="fleetroll-prewarm",
                             daemon=True).start()
        return len(targets)
    except Exception:  # noqa: BLE001
        return 0


def _register(t: Target) -> openssh.Session | None:
    try:
        sess = openssh.Session(t, openssh.agent_command(t.python))
        key = (t.name, *openssh.argv(t, sess.command))  # a path OpenSSH would misread: PathError, no login for this host
    except (OSError, RuntimeError, ValueError):
        return None
    with _lock:
        return _warm.setdefault(key, sess)  # keyed by host name too: its errors then name that host


def _try(sess: openssh.Session, blocking: bool) -> bool:
    try:
        return sess.start(blocking)
    except (OSError, TransportError):
        return True  # it will not start: the claimer's own connect() says why


def claim(t: Target, command: str) -> openssh.Session | None:
    """The process started ahead for exactly this command line, if any; each is handed out once."""
    with _lock:
        return _warm.pop((t.name, *openssh.argv(t, command)), None)  # not spawned yet: connect() spawns it (once)


def discard() -> None:
    """Close every process nobody claimed: its agent reads the end of its input and exits having done nothing."""
    with _lock:
        left = list(_warm.values())
        _warm.clear()
    for sess in left:
        if sess.authed_at is None:
            sess.kill()  # still logging in (or waiting for a slot): nothing of it runs on the host yet
        else:
            sess.close(wait_s=0)  # its agent reads the end of its input and exits; ssh follows
