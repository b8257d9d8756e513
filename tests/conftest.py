"""Shared fixtures. Lab tests run against real sshd, dockerd and a registry (see lab/)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

# Each pytest-xdist worker (gw0, gw1, …) drives a lab of its own (lab/model.py: instance), so two
# workers' health gates and restarts overlap instead of queueing behind one lab. Worker n takes
# instance FLEETROLL_LAB_INSTANCE + n (so a second checkout's suite can run beside the first with
# FLEETROLL_LAB_INSTANCE=4). Set before the lab is imported: its names derive from the instance.
# A worker past instance 9 runs its unit tests and fails only a test that needs a lab (the runbook's own `pytest` of
# static checks runs inside a lab test whose worker has set FLEETROLL_LAB_INSTANCE to its own instance).
_NO_LAB_INSTANCE = ""
if os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw"):
    _base = os.environ.get("FLEETROLL_LAB_INSTANCE", "0")
    _mine = (int(_base) if _base.isdigit() else 0) + int(os.environ["PYTEST_XDIST_WORKER"][2:])
    if _mine > 9:
        _NO_LAB_INSTANCE = (f"FLEETROLL_LAB_INSTANCE={_base} with {os.environ.get('PYTEST_XDIST_WORKER')}: lab instances go"
                            " up to 9; lower the base or the number of workers (-n)")
    else:
        os.environ["FLEETROLL_LAB_INSTANCE"] = str(_mine)
        if os.environ.get("FLEETROLL_LAB_DIR") and _mine:  # a lab directory given by hand: each worker's lab its own
            os.environ["FLEETROLL_LAB_DIR"] += str(_mine)

from lab import fleet  # noqa: E402

_current: dict = {}
ROOT = Path(__file__).resolve().parent.parent
FAB = str(Path(sys.executable).with_name("fab"))


@pytest.fixture(autouse=True)
def own_ledger(tmp_path, monkeypatch):
    """Every test writes its own ledger: none ever touches the operator's (~/.local/state/fleetroll)."""
    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger" / "ledger.jsonl"))
    # Nor reads the login of whoever runs the suite: the registry and pull tests see only the logins they write.
    # buildah insists that a DOCKER_CONFIG it is given holds a config.json: an empty one, the runner's own mode.
    (tmp_path / "docker-config").mkdir()
    (tmp_path / "docker-config" / "config.json").write_text('{"auths": {}}')
    (tmp_path / "docker-config" / "config.json").chmod(0o600)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))


# What one module takes in CI (seconds of a worker, measured on 2 cores with six workers' labs beside it): the
# scheduler starts the longest first, so no long module is left to start when the others are nearly done. Only an
# order: a module missing here (a new one) runs after these, by its stage.
MEASURED_S = {
    "test_lab_zero_downtime": 239, "test_lab_operator": 210, "test_lab_rollout": 196, "test_lab_swarm": 192,
    "test_lab_container_states": 187, "test_images_build": 150, "test_lab_integrity": 135, "test_lab_runbook": 126,
    "test_lab_security": 122, "test_lab_swarm_proxy": 97, "test_lab_swarm_handover": 66, "test_lab_scale": 51,
    "test_lab_installed": 51, "test_lab_observability": 48, "test_lab_lifecycle": 35, "test_lab_preflight": 32,
    "test_lab_explain": 28, "test_lab_walkthrough": 23,
}
# A module of many independent subprocess tests (no lab) is cut into this many units, so its two minutes are shared
# by the workers instead of being one worker's tail.
SPLIT = {"test_cli_behaviour": 4}


def _unit_of_work(nodeid: str) -> str:
    """What one xdist worker runs as a whole: a module (its fixtures set a lab up once), or a slice of a SPLIT one."""
    module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
    if module not in SPLIT:
        return module
    return f"{module}#{zlib.crc32(nodeid.encode()) % SPLIT[module]}"


def pytest_xdist_make_scheduler(config, log):
    """Schedule by unit of work (xdist's own loadgroup cannot rename node ids under pytest 9)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByUnitOfWork(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit_of_work(nodeid)

    return ByUnitOfWork(config, log)


def pytest_collection_modifyitems(items):
    """Order for the xdist workers (pyproject.toml), each with a lab of its own: longest first.

    Lab modules the longest first (MEASURED_S), then those not measured by `stage` (a stage replaces the lab, so it
    comes after the modules that share the default one); then the other modules, the split ones first, which fill
    the gaps at the end. Longest first costs a worker a lab brought up again where a module that replaced the lab is
    followed by one on the default lab (~15 s), less than a long module started last. Without xdist (`-n 0`) the same
    order runs in one process.
    """
    def key(item) -> tuple[int, float, int]:
        mod = item.module.__name__.rsplit(".", 1)[-1]
        if item.get_closest_marker("lab") or mod in MEASURED_S:
            m = item.get_closest_marker("stage")
            return (1, -MEASURED_S.get(mod, 0), m.args[0] if m else 0)
        return (2, -float(mod in SPLIT), 0)

    items.sort(key=key)  # stable: collection order within a key


def _lab_possible() -> str:
    if _NO_LAB_INSTANCE:
        return _NO_LAB_INSTANCE
    if os.geteuid() != 0:
        return "lab tests need root"
    missing = [t for t in ("dockerd", "docker-registry", "nsenter", "gcc") if not shutil.which(t)]
    return f"lab tests need {', '.join(missing)}" if missing else ""


def ensure_lab(count: int = 2, extras: tuple[str, ...] = ("bad-driver",)) -> fleet.LabState:
    """Reuse the running lab if it has this shape, else bring up a fresh one (up() cleans first)."""
    why = _lab_possible()
    if why:
        if os.environ.get("CI") or _NO_LAB_INSTANCE:
            pytest.fail(why)  # in CI a missing lab is a broken set-up, not a skip
        pytest.skip(why)
    key = (count, extras)
    if _current.get("key") != key:
        _current["state"] = fleet.up(count, list(extras))
        _current["key"] = key
    return _current["state"]


@pytest.fixture(scope="session")
def lab_session():
    yield ensure_lab
    if _current:
        fleet.down()


@pytest.fixture
def lab(lab_session) -> fleet.LabState:
    return lab_session()


def derive_inventory(state: fleet.LabState, tmp: Path, edit=None, edit_phases=None) -> Path:
    """Copy the lab's inventory into tmp, applying edits; the lab's own file stays as written."""
    src = Path(state.inventory)
    fleet_doc = yaml.safe_load(src.read_text())
    phases_doc = yaml.safe_load((src.parent / "phases.yml").read_text())
    if edit:
        edit(fleet_doc)
    if edit_phases:
        edit_phases(phases_doc)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "fleet.yml").write_text(yaml.safe_dump(fleet_doc, sort_keys=False))
    (tmp / "phases.yml").write_text(yaml.safe_dump(phases_doc, sort_keys=False))
    return tmp / "fleet.yml"


# --- host transaction against the fake Docker client (no hosts) ---------------------------


@pytest.fixture
def host_state(tmp_path, monkeypatch):
    """The agent's state and lock directories in tmp; the registry's tag check is skipped (no registry)."""
    from agent.transaction import Transaction

    monkeypatch.setenv("FLEETROLL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("FLEETROLL_LOCK_DIR", str(tmp_path))
    monkeypatch.setattr(Transaction, "_tag_still_names", lambda self, ref, digest: None)


@pytest.fixture
def daemon(monkeypatch):
    """A fake Docker daemon whose containers answer health probes as their image's behaviour says."""
    from agent import health

    from .fakedocker import FakeDaemon

    d = FakeDaemon()
    monkeypatch.setattr(health, "probe", d.probe)
    return d


# --- lab helpers ----------------------------------------------------------------------------


def new_tag() -> str:
    return f"20261126-{secrets.token_hex(4)[:7]}"


def with_tags(lab, tmp_path: Path, tags: dict[str, str], **health):
    """The lab inventory with new tags (and health settings) for some services, in a fresh directory under tmp_path."""
    from playbooks.inventory import load

    def edit(doc):
        for svc, tag in tags.items():
            doc["services"][svc]["tag"] = tag
            doc["services"][svc]["health"].update(health)

    return load(derive_inventory(lab, tmp_path / secrets.token_hex(3), edit))


@contextmanager
def crash_looping(lab, service: str, repo: str, port: int):
    """Replace `service` on mainpc by hand with a container that crashes 1 s after each start (restart: always).

    Yields the container once Docker has restarted it twice; removes it afterwards (the caller
    rolls the real one back out).
    """
    import docker

    from lab import images

    ref = images.push(lab, repo, new_tag(), "crash", arch="89;86")
    cl = docker.DockerClient(base_url=lab.host("mainpc").docker_host)
    old = cl.containers.get(service)
    labels = dict(old.labels)
    old.remove(force=True)
    try:
        cl.images.pull(ref)
        c = cl.containers.run(ref, name=service, labels=labels, ports={"8080/tcp": port}, restart_policy={"Name": "always"},
                              environment={"CRASH_AFTER": "1"}, user="10001:10001", detach=True)
        deadline = time.time() + 30
        while time.time() < deadline and (c.reload() or c.attrs["RestartCount"] < 2):
            time.sleep(0.2)
        yield c
    finally:
        cl.containers.get(service).remove(force=True)


def dclient(lab, host="mainpc"):
    import docker

    return docker.DockerClient(base_url=lab.host(host).docker_host)


def baseline(lab, phase="gpu-mainpc"):
    """Bring the phase to the lab inventory's tags (idempotent; cheap when already there)."""
    from playbooks import executor
    from playbooks.inventory import load

    rep = executor.rollout(load(lab.inventory), phase)
    assert rep.ok, rep.messages
    return rep


def health_of(lab, host, port) -> str:
    """/health from inside the host's namespace (busybox wget crashes under nsenter here; python does not)."""
    code = "import sys,urllib.request as u;print(u.urlopen(sys.argv[1],timeout=2).read().decode())"
    cmd = ["nsenter", f"--net=/var/run/netns/{lab.host(host).netns}", "/usr/bin/python3", "-c", code, f"http://127.0.0.1:{port}/health"]
    return subprocess.run(cmd, capture_output=True, text=True).stdout


def svc_result(rep, host, service):
    """The outcome `host` reported for `service`; when there is none, fail with what the report said instead."""
    found = [s for s in (rep.hosts.get(host) or {}).get("services", []) if s["service"] == service]
    assert found, f"{host} reported no outcome for {service}; the report said: {rep.state}: {rep.messages}"
    return found[0]


def kept_leftovers(lab, host="mainpc") -> list[str]:
    return [c.name for c in dclient(lab, host).containers.list(all=True) if "--kept-" in c.name]


def snapshot(lab, service, host="mainpc") -> dict:
    c = dclient(lab, host).containers.get(service)
    return {"id": c.id, "env": sorted(c.attrs["Config"]["Env"]), "ports": c.attrs["HostConfig"]["PortBindings"],
            "tag": c.labels["io.fleetroll.tag"]}


@contextmanager
def swarm_formed(lab, inv: Path):
    """The lab's hosts formed into one swarm from `inv` (`fab swarm.form`), left at the end (`fab swarm.leave`).

    Left even when the test fails, and checked left: the lab's dockerds must be in no swarm for the tests after.
    """
    def fab(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([FAB, *args], cwd=ROOT, capture_output=True, text=True, timeout=240, env=os.environ.copy())

    formed = fab("swarm.form", "-i", str(inv))
    try:
        assert formed.returncode == 0, formed.stdout + formed.stderr
        yield formed
    finally:
        left = fab("swarm.leave", "-i", str(inv))
        assert left.returncode == 0, left.stdout + left.stderr
        states = {h.name: dclient(lab, h.name).info()["Swarm"]["LocalNodeState"] for h in lab.hosts}
        assert states == {h.name: "inactive" for h in lab.hosts}, states
