"""Taking the lab down: every process, mount, namespace, link, file and account it made, and only those.

The lab directory is rm -rf'd as root, so it is refused unless it is plainly the lab's own
(root's, closed to others' writes, marked by up()).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from .model import BRIDGE, LAB_DIR, NS_PREFIX, VETH_PREFIX, LabError
from .procs import created_users, recorded, sh

MARKER = ".frlab-owned"  # written by up() into a directory it created: the only kind down() deletes


def check_lab_dir() -> None:
    """Refuse a lab directory that could be anything but the lab's own (it is rm -rf'd as root)."""
    raw = Path(os.path.abspath(LAB_DIR))
    if raw.is_symlink():
        raise LabError(f"lab directory {raw} is a symlink; refusing to use it (set FLEETROLL_LAB_DIR to a plain directory)")
    real = raw.resolve()
    vital = {Path("/"), Path("/tmp"), Path("/var/tmp"), Path.home().resolve(), Path("/root"), Path("/etc"), Path("/usr"),
             Path("/var"), Path("/home"), Path("/srv"), Path("/opt"), Path("/boot"), Path.cwd().resolve()}
    for v in vital:
        if real == v or v.is_relative_to(real):
            raise LabError(f"lab directory {real} is {v} or a parent of it; refusing (set FLEETROLL_LAB_DIR to a directory of"
                           " its own, e.g. /tmp/frlab)")
    if real.exists():
        st = real.stat()
        if not real.is_dir() or st.st_uid != 0 or st.st_mode & 0o022:
            raise LabError(f"lab directory {real} is not a root-owned directory closed to others' writes; refusing to touch it")
        if not (real / MARKER).is_file():
            raise LabError(f"lab directory {real} was not made by fab lab.up (no {MARKER} in it); refusing to touch it —"
                           " remove it yourself if it is a leftover")


def _lab_pids() -> set[int]:
    """What the lab started: recorded processes, whatever runs inside its own network namespaces,
    and the processes of the login users it created. Never a match on a name or a command line."""
    pids: set[int] = set(recorded())
    r = sh("ip", "netns", "list", check=False)
    for line in r.stdout.splitlines():
        ns = line.split()[0] if line.strip() else ""
        if ns.startswith(NS_PREFIX):
            out = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            pids |= {int(p) for p in out if p.isdigit()}
    for user in created_users():
        r = sh("pgrep", "-u", user, check=False)
        pids |= {int(p) for p in r.stdout.split() if p.isdigit()}
    pids.discard(os.getpid())
    return pids


def _kill_all(sig: int) -> set[int]:
    pids = _lab_pids()
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


def down(quiet: bool = False) -> list[str]:
    """Remove every trace of the lab — and only the lab: processes, mounts, namespaces, bridge, files, users."""
    check_lab_dir()
    done = []
    # dockerd first, politely, so it stops containers and unmounts its layers itself.
    dockerds = recorded("dockerd")
    for pid in dockerds:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and recorded("dockerd"):
        time.sleep(0.2)
    if _kill_all(signal.SIGTERM):
        time.sleep(0.5)
    for _ in range(20):
        if not _kill_all(signal.SIGKILL):
            break
        time.sleep(0.2)
    done.append("processes")
    for m in reversed(_lab_mounts()):
        sh("umount", "-l", m, check=False)
    r = sh("ip", "netns", "list", check=False)
    for line in r.stdout.splitlines():
        ns = line.split()[0] if line.strip() else ""
        if ns.startswith(NS_PREFIX):
            sh("ip", "netns", "del", ns, check=False)
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        sh("ip", "link", "del", BRIDGE, check=False)
    for link in Path("/sys/class/net").iterdir():
        if link.name.startswith(VETH_PREFIX):
            sh("ip", "link", "del", link.name, check=False)
    for user in created_users():
        sh("userdel", user, check=False)
    _remove_lab_dir()
    done.append("namespaces, bridge, mounts, files, users")
    return done


def _remove_lab_dir() -> None:
    """Everything in the lab directory, its marker last: a teardown interrupted half-way (Ctrl-C, a killed test
    worker) leaves the marker, so the next down() may finish the job instead of refusing a directory it made."""
    if not LAB_DIR.exists():
        return
    for child in LAB_DIR.iterdir():  # checked above: root's, closed to others' writes, marked as the lab's own
        if child.name == MARKER:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    if [c.name for c in LAB_DIR.iterdir()] == [MARKER]:  # anything left keeps the marker: the next down() retries it
        (LAB_DIR / MARKER).unlink()
        LAB_DIR.rmdir()


def _lab_mounts() -> list[str]:
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            mp = line.split()[1]
            if mp == str(LAB_DIR) or mp.startswith(f"{LAB_DIR}/") or mp.startswith(f"/run/netns/{NS_PREFIX}") or \
                    mp.startswith(f"/var/run/netns/{NS_PREFIX}"):
                out.append(mp)
    return out


def leftovers() -> list[str]:
    """What down() should have removed but is still there (used by tests and lab.up)."""
    found = []
    r = sh("ip", "netns", "list", check=False)
    found += [f"netns {line.split()[0]}" for line in r.stdout.splitlines() if line.startswith(NS_PREFIX)]
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        found.append(f"bridge {BRIDGE}")
    found += [f"pid {p}" for p in _lab_pids()]
    found += [f"mount {m}" for m in _lab_mounts()]
    return found
