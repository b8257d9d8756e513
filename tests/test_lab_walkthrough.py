"""docs/zero-downtime.md's two-command walk-through, run as written: `fab lab.up --with-proxy`, then step 2's line.

The commands are read from the page itself (its ```sh blocks), not retyped here, so the page
cannot drift from what runs. The page shows the default lab's names (/tmp/frlab, 10.213.0.x);
a test worker's lab is instance n (lab/model.py), so only those two prefixes are mapped to this
lab's. Step 2 runs in a terminal (a pty), as a reader would: each rollout asks to confirm and the
test answers "y", as the page says. Then a client asks pc2's listen port (step 4's curl), and the
ports the page says are closed to clients are.

It replaces this worker's lab (stage 1) and builds the fleetroll-proxy family with buildah (reused
when test_lab_zero_downtime built it for this commit). Measured alone on two cores: 27 s with the
proxy image already built for the commit, 47 s building it; not marked slow, so CI keeps the
page true.
"""

from __future__ import annotations

import http.client
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import fleet
from lab.model import LAB_DIR, SUBNET

from . import conftest

pytestmark = [pytest.mark.lab, pytest.mark.images, pytest.mark.stage(1)]  # it replaces the lab
ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "zero-downtime.md"


def doc_commands(heading: str) -> list[str]:
    """The command lines of the ```sh blocks in the section whose heading starts with `heading`, in order."""
    text = DOC.read_text()
    section = text[text.index(f"\n## {heading}") + 1:]
    section = section[:section.find("\n## ")] if "\n## " in section else section
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert blocks, f"no ```sh block under '## {heading}' in {DOC}"
    return [line for b in blocks for line in b.splitlines() if line.strip()]


def for_this_lab(command: str) -> str:
    """The page's default-lab names as this worker's lab names them (identity for instance 0)."""
    return command.replace("/tmp/frlab/", f"{LAB_DIR}/").replace("10.213.0.", f"{SUBNET}.")


def shell_env() -> dict[str, str]:
    """The page's `fab` is .venv/bin/fab from the repository root: on PATH, as the page suggests."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def run_in_a_terminal(command: str, timeout: float) -> tuple[int, str, int]:
    """Run `command` with a pty for stdin/stdout/stderr, answering "y" to each [y/N] question.

    Returns (exit code, everything it printed, how many questions it asked).
    """
    master, slave = os.openpty()
    p = subprocess.Popen(["bash", "-c", command], stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=shell_env(),
                         start_new_session=True)
    os.close(slave)
    out, asked, deadline = b"", 0, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if p.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every process holding the terminal is gone
                break
            if not chunk:
                break
            out += chunk
            if out.count(b"[y/N]") > asked:
                asked += 1
                os.write(master, b"y\n")
        else:
            os.killpg(p.pid, signal.SIGTERM)
            pytest.fail(f"{command!r} still running after {timeout:.0f}s:\n{out.decode(errors='replace')[-3000:]}")
        return p.wait(timeout=30), out.decode(errors="replace"), asked
    finally:
        os.close(master)


def test_the_zero_downtime_walkthrough_runs_as_written(lab_session):
    why = conftest._lab_possible()
    if why:
        pytest.skip(why)
    conftest._current.clear()
    conftest._current["key"] = ("walkthrough",)  # lab.up replaces this worker's lab: the next ensure_lab() brings its own

    (step1,) = doc_commands("1.")
    assert step1 == "fab lab.up --with-proxy"
    t0 = time.monotonic()
    up = subprocess.run(["bash", "-c", step1], cwd=ROOT, env=shell_env(), capture_output=True, text=True, timeout=900)
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
    state = fleet.LabState.load()
    pc2 = state.host("pc2").address
    (step2,) = doc_commands("2.")
    step2 = for_this_lab(step2)
    # lab.up ends with step 2's commands, the page's line exactly, and where clients connect
    assert f"lab up: mainpc, pc2; registry {state.registry}" in up.stdout, up.stdout
    assert f"inventory: {LAB_DIR}/inventory/fleet.yml" in up.stdout and state.inventory == f"{LAB_DIR}/inventory/fleet.yml"
    assert f"try: {step2}; then curl http://{pc2}:18080/health" in up.stdout, (step2, up.stdout)
    up_s = time.monotonic() - t0

    # The page: "the proxy must run before the services behind it: preflight's proxy check fails for phase web until
    # edge-proxy answers on pc2". Asked before step 2 (a dry run changes nothing).
    early = subprocess.run(["bash", "-c", f"fab rollout -p web --dry-run -i {state.inventory}"], cwd=ROOT, env=shell_env(),
                           capture_output=True, text=True, timeout=120)
    assert early.returncode != 0 and "FAIL pc2 proxy: the proxy edge-proxy does not answer" in early.stdout + early.stderr, early
    assert "roll out the proxy first: fab rollout --phase edge" in early.stdout + early.stderr

    rc, printed, asked = run_in_a_terminal(step2, timeout=600)
    assert rc == 0, printed[-4000:]
    assert asked == 2, f"each of the two rollouts asks to confirm; {asked} asked:\n{printed[-3000:]}"
    assert "security WARN" in printed and "no Trivy report" in printed, printed[-3000:]  # the gate warns and goes on

    curl = for_this_lab(doc_commands("4.")[0])
    assert curl.startswith(f"curl -s http://{pc2}:18080/health")
    got = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30)
    assert got.returncode == 0 and '"status":"ok"' in got.stdout, got
    answers = []
    for _ in range(20):  # a client keeps getting answers through the proxy's listen port
        c = http.client.HTTPConnection(pc2, 18080, timeout=5)
        c.request("GET", "/health")
        answers.append(c.getresponse().status)
        c.close()
    assert answers == [200] * 20
    for closed in (8404, 8080):  # the proxy's health port and the container's: published nowhere
        with pytest.raises(OSError):
            socket.create_connection((pc2, closed), timeout=3).close()
    status = subprocess.run(["bash", "-c", for_this_lab(doc_commands("4.")[1].split("#")[0])], cwd=ROOT, env=shell_env(),
                            capture_output=True, text=True, timeout=120)
    assert re.search(r"pc2: proxy web -> web \([0-9a-f]{12}\) at [0-9.]+:8080", status.stdout), status.stdout + status.stderr
    # The two commands roll out edge and web only: the lab's own services are absent, and status says so with exit 1.
    absent = {row.split()[1] for row in status.stdout.splitlines() if " absent " in row}
    own = {s for p in ("core-infra", "gpu-mainpc", "cpu-pc2") for s in lab_phase(state, p)}
    assert absent == own and status.returncode == 1, status.stdout
    step2_s = time.monotonic() - t0 - up_s

    swap_under_load(pc2)
    print(f"walkthrough: lab.up --with-proxy {up_s:.0f}s, step 2 and the client {step2_s:.0f}s,"
          f" step 5 {time.monotonic() - t0 - up_s - step2_s:.0f}s")


def lab_phase(state, name: str) -> list[str]:
    import yaml

    phases = yaml.safe_load((Path(state.inventory).parent / "phases.yml").read_text())["phases"]
    return next(p["services"] for p in phases if p["name"] == name)


def swap_under_load(pc2: str) -> None:
    """Step 5: a new release of web, its dry run, then the swap while a client keeps asking through the proxy."""
    from .test_lab_zero_downtime import Load

    release, dry_run = (for_this_lab(c.split("#")[0].strip()) for c in doc_commands("5.")[:2])
    assert release.startswith("REL=$(fab lab.release --service web") and dry_run.endswith('-i "$REL"'), (release, dry_run)
    r = subprocess.run(["bash", "-c", f'{release}\n{dry_run}\necho "RC=$? REL=$REL"'], cwd=ROOT, env=shell_env(),
                       capture_output=True, text=True, timeout=300)
    rel = r.stdout.rsplit("REL=", 1)[-1].strip()
    assert rel == f"{LAB_DIR}/inventory/releases/web-healthy/fleet.yml", r.stdout + r.stderr
    # the page's claims about the dry run: exit 2 (changes to make), a replace of web, start-first behind the proxy
    assert "RC=2 " in r.stdout and "start-first, behind the proxy and on no GPU" in r.stdout, r.stdout
    swap = for_this_lab(doc_commands("5.")[3].split("#")[0].strip())  # after the client loop, the page's swap
    assert swap.startswith("fab rollout --phase web --yes"), swap
    load = Load(pc2, 18080, rate=40.0)
    load.start()
    time.sleep(1)
    done = subprocess.run(["bash", "-c", swap], cwd=ROOT, env={**shell_env(), "REL": rel}, capture_output=True, text=True,
                          timeout=300)
    time.sleep(1)
    seen = load.finish()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert seen["requests"] > 40 and seen["failed"] == 0, seen  # "Every answer is 200"
