"""Preflight against the lab: real sshd, dockerd, registry and the fake NVML library."""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import testinfra

from lab import fleet, images
from playbooks import agentpack, transport
from playbooks.inventory import load
from playbooks.runner import run_preflight

from .conftest import derive_inventory

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parent.parent
FAB = str(Path(sys.executable).with_name("fab"))


def by(report, host, check):
    return next(c for c in report.checks if c.host == host and c.check == check)


def test_lab_hosts_are_real(lab):
    """testinfra over strict SSH: each host runs its own sshd and dockerd and sees its fake GPU."""
    for name in ("mainpc", "pc2"):
        host = testinfra.get_host(f"ssh://{name}", ssh_config=str(fleet.LAB_DIR / "ssh_config"))
        assert lab.host(name).address in host.interface("eth0").addresses  # its own namespace, its own address
        assert host.socket(f"tcp://{lab.host(name).address}:22").is_listening
        assert host.run("docker info --format '{{.DockerRootDir}}'").stdout.strip().startswith(str(fleet.LAB_DIR))
        assert host.environment()["FAKE_NVML_DRIVER"] == lab.host(name).driver


def test_fab_preflight_passes_on_mainpc_and_pc2(lab):
    r = subprocess.run(
        [FAB, "preflight", "--inventory", lab.inventory, "--hosts", "mainpc,pc2", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["hosts"] == ["mainpc", "pc2"]
    names = {(c["host"], c["check"]) for c in out["checks"]}
    assert ("mainpc", "nvidia-driver") in names and ("mainpc", "image:llm-api") in names
    assert all(c["status"] == "pass" for c in out["checks"])


def _gpu_service_on_bad_driver(lab, tmp_path):
    """The lab inventory with a GPU service placed on bad-driver (in core-infra), so R1 applies to that host."""

    def edit(doc):
        doc["services"]["bad-gpu"] = {"image": "torch-svc", "tag": "20261101-a1b2c3d", "host": "bad-driver", "ports": ["8600:8080"],
                                      "gpus": 1, "health": {"port": 8600}}

    return load(derive_inventory(lab, tmp_path, edit, lambda p: p["phases"][0]["services"].append("bad-gpu")))


def test_bad_driver_fails_naming_530_below_535_when_a_gpu_service_is_placed_there(lab, tmp_path):
    rep = run_preflight(_gpu_service_on_bad_driver(lab, tmp_path), hosts=["bad-driver"])
    c = by(rep, "bad-driver", "nvidia-driver")
    assert not rep.ok and c.status == "fail"
    assert "530.41.03 < required 535" in c.detail
    # no GPU service placed there: the same finding only warns, and says why, whichever phase is asked about
    inv = load(lab.inventory)
    for phase in (None, "core-infra"):
        c = by(run_preflight(inv, phase, hosts=["bad-driver"]), "bad-driver", "nvidia-driver")
        assert c.status == "warn" and "no GPU service is placed on this host in any phase" in c.detail, phase


def test_fab_preflight_exit_code_and_table(lab, tmp_path):
    inv = _gpu_service_on_bad_driver(lab, tmp_path)
    r = subprocess.run([FAB, "preflight", "--inventory", str(inv.path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "FAIL bad-driver nvidia-driver: driver 530.41.03 < required 535" in r.stdout
    assert "preflight FAILED" in r.stdout


def test_89_only_image_refused_on_86_host(lab, tmp_path):
    images.push(lab, "torch-svc", "20261102-89aaaaa", "healthy", arch="89")

    def edit(doc):
        doc["services"]["pc2-gpu"] = {
            "image": "torch-svc", "tag": "20261102-89aaaaa", "host": "pc2", "ports": ["8500:8080"],
            "gpus": 1, "health": {"port": 8500},
        }

    inv = load(derive_inventory(lab, tmp_path, edit, lambda p: p["phases"][2]["services"].append("pc2-gpu")))
    rep = run_preflight(inv, "cpu-pc2")
    c = by(rep, "pc2", "image:pc2-gpu")
    assert c.status == "fail" and "arch list '89' does not cover compute capability 8.6" in c.detail


def test_unknown_host_key_refused(lab, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(fleet.host_key_line(lab.host("pc2")))  # mainpc missing
    inv = load(derive_inventory(lab, tmp_path, lambda d: d["ssh"].update(known_hosts=str(kh))))
    rep = run_preflight(inv, hosts=["mainpc"])
    c = by(rep, "mainpc", "ssh")
    assert c.status == "fail" and "host key not in" in c.detail and "never trusts on first use" in c.detail
    assert rep.calls["mainpc"].error_kind == "host-key-unknown"


def test_changed_host_key_refused(lab, tmp_path):
    kh = tmp_path / "known_hosts"
    other = lab.host("pc2")  # pc2's key recorded under mainpc's address: as if mainpc's key changed
    kh.write_text(fleet.host_key_line(other).replace(other.address, lab.host("mainpc").address))
    inv = load(derive_inventory(lab, tmp_path, lambda d: d["ssh"].update(known_hosts=str(kh))))
    rep = run_preflight(inv, hosts=["mainpc"])
    assert rep.calls["mainpc"].error_kind == "host-key-changed"
    assert "HOST KEY CHANGED" in by(rep, "mainpc", "ssh").detail


def test_missing_tag_detected(lab, tmp_path):
    inv = load(derive_inventory(lab, tmp_path, lambda d: d["services"]["embed-api"].update(tag="20261103-deadbee")))
    rep = run_preflight(inv, "cpu-pc2")
    c = by(rep, "pc2", "image:embed-api")
    assert c.status == "fail" and "no such tag" in c.detail and "20261103-deadbee" in c.detail


def test_registry_down_detected(lab):
    inv = load(lab.inventory)
    fleet.stop_registry()
    try:
        rep = run_preflight(inv, "gpu-mainpc")
    finally:
        fleet.start_registry()
    c = by(rep, "mainpc", "image:llm-api")
    assert c.status == "fail" and "did not answer" in c.detail
    assert "registry is up" in c.fix


def test_unreachable_host_reported_within_timeout(lab, tmp_path):
    inv = load(derive_inventory(lab, tmp_path, lambda d: d["ssh"].update(connect_timeout=1.5)))
    fleet.set_link(lab.host("pc2"), False)
    try:
        t0 = time.monotonic()
        rep = run_preflight(inv, hosts=["mainpc", "pc2"])
        took = time.monotonic() - t0
    finally:
        fleet.set_link(lab.host("pc2"), True)
    assert by(rep, "pc2", "ssh").status == "fail"
    assert "no answer within 1.5s" in by(rep, "pc2", "ssh").detail
    assert by(rep, "mainpc", "docker").status == "pass"  # the other host is not hidden
    assert took < 1.5 + 3.0


def test_agent_uploaded_only_when_missing(lab):
    inv = load(lab.inventory)
    t = transport.Target.from_inventory(inv, "pc2")
    conn = transport.connect(t)
    try:
        _, digest = agentpack.build()
        conn.run(f"rm -rf ~/{agentpack.remote_name(digest)} ~/{agentpack.remote_name(digest)[:-4]}", hide=True, in_stream=False)
        first = transport.call_agent(conn, "pc2", "facts", {"gpu": True})
        second = transport.call_agent(conn, "pc2", "facts", {"gpu": True})
    finally:
        conn.close()
    assert first.ok and first.uploaded and first.round_trips == 3
    assert second.ok and not second.uploaded and second.round_trips == 1
    assert second.answer["data"]["nvml"]["gpus"][0]["name"] == "NVIDIA GeForce RTX 3060"


def test_agent_refuses_other_protocol(lab):
    inv = load(lab.inventory)
    conn = transport.connect(transport.Target.from_inventory(inv, "mainpc"))
    try:
        transport.call_agent(conn, "mainpc", "facts", {"gpu": False})  # make sure it is shipped
        r = conn.run(
            shlex.join(agentpack.command(agentpack.build()[1])),
            in_stream=io.StringIO('{"protocol": 99, "op": "facts"}'), hide=True, warn=True,
        )
    finally:
        conn.close()
    assert r.exited == 1 and "protocol mismatch" in r.stdout


def test_damaged_agent_on_a_host_is_uploaded_again(lab):
    """A truncated archive (disk full, an interrupted copy) must not wedge the host."""
    inv = load(lab.inventory)
    conn = transport.connect(transport.Target.from_inventory(inv, "pc2"))
    try:
        name = agentpack.remote_name(agentpack.build()[1])
        conn.run(f"rm -rf ~/{name[:-4]} && head -c 1000 ~/{name} > ~/{name}.t && mv ~/{name}.t ~/{name}", hide=True, in_stream=False)
        res = transport.call_agent(conn, "pc2", "facts", {"gpu": False})
    finally:
        conn.close()
    assert res.ok and res.uploaded, res.error


def _on_pc2(inv, fn):
    conn = transport.connect(transport.Target.from_inventory(inv, "pc2"))
    try:
        transport.call_agent(conn, "pc2", "facts", {"gpu": False})  # shipped and unpacked
        return fn(conn, agentpack.remote_name(agentpack.build()[1]))
    finally:
        conn.close()


def test_agent_archive_that_does_not_match_its_hash_is_replaced(lab):
    def tamper(conn, name):
        conn.run(f"printf x >> ~/{name}", hide=True, in_stream=False)
        r = conn.run(f"printf '{{}}' | {shlex.join(agentpack.command(agentpack.build()[1]))}", hide=True, warn=True,
                     in_stream=False)  # refused before it reads: no stdin writer to race its exit
        assert r.exited == 97 and "archive damaged" in r.stderr
        return transport.call_agent(conn, "pc2", "facts", {"gpu": False})

    res = _on_pc2(load(lab.inventory), tamper)
    assert res.ok and res.uploaded, res.error


def test_tampered_unpacked_tree_is_unpacked_again(lab):
    def tamper(conn, name):
        tree = name[:-4]
        conn.run(f"chmod u+w ~/{tree}/agent/ops.py && echo 'raise SystemExit(42)' > ~/{tree}/agent/ops.py"
                 f" && echo 'import os' > ~/{tree}/agent/extra.py", hide=True, in_stream=False)
        res = transport.call_agent(conn, "pc2", "status", {})
        ops = conn.run(f"head -c 200 ~/{tree}/agent/ops.py; ls ~/{tree}/agent", hide=True, in_stream=False).stdout
        return res, ops

    res, ops = _on_pc2(load(lab.inventory), tamper)
    assert res.ok and "SystemExit(42)" not in ops and "extra.py" not in ops


def test_agent_refuses_a_directory_others_can_write_and_a_missing_hash(lab):
    def loosen(conn, name):
        try:
            conn.run("chmod 0777 ~/.fleetroll", hide=True, in_stream=False)
            loose = transport.call_agent(conn, "pc2", "facts", {"gpu": False})
        finally:
            conn.run("chmod 0700 ~/.fleetroll", hide=True, in_stream=False)
        # The request through the remote shell, not Fabric's stdin thread: the archive exits before reading it, and a
        # stdin writer racing that exit fails the call with "Socket is closed" (seen once in CI).
        nohash = conn.run(f"printf '{{}}' | python3 -I ~/{name}", hide=True, warn=True, in_stream=False)
        return loose, nohash

    loose, nohash = _on_pc2(load(lab.inventory), loosen)
    # the verifier refuses it before any of the archive's code runs
    assert not loose.ok and "not writable by group or others" in loose.error and "chmod go-w" in loose.error
    assert nohash.exited == 96 and "must name the archive's SHA-256" in nohash.stderr


def test_an_account_with_a_pyenv_shell_runs_the_agent_under_the_named_interpreter(lab, tmp_path):
    from playbooks import executor

    def edit(doc):
        for h in ("mainpc", "pc2"):
            doc["hosts"][h]["user"] = fleet.LAB_PYENV_USER

    inv = load(derive_inventory(lab, tmp_path, edit))
    shim_log = fleet.lab_home(fleet.LAB_PYENV_USER) / ".pyenv" / "shim.log"
    before = shim_log.read_text() if shim_log.exists() else ""
    rep = run_preflight(inv, hosts=["mainpc", "pc2"])
    assert rep.ok, [c for c in rep.checks if c.status != "pass"]
    assert executor.rollout(inv, "core-infra", hosts=["mainpc", "pc2"]).state in ("noop", "committed")
    after = shim_log.read_text() if shim_log.exists() else ""
    assert after == before, "the agent ran through the account's python3 shim, not hosts.<h>.python"
    # a host whose interpreter is missing says so, naming the field to set
    bad = load(derive_inventory(lab, tmp_path / "bad", lambda d: d["hosts"]["mainpc"].update(python="/opt/nopython/bin/python3")))
    c = by(run_preflight(bad, hosts=["mainpc"]), "mainpc", "ssh")
    assert c.status == "fail" and "/opt/nopython/bin/python3 is not on this host" in c.detail and "hosts.mainpc.python" in c.detail


def test_gpu_memory_as_nvml_reports_it_gates_preflight_and_shows_in_status(lab, tmp_path):
    from playbooks import executor

    def budgets(llm: float, vision: float):
        def edit(doc):
            doc["defaults"]["gpu_memory_reserve_gb"] = 1.0
            doc["services"]["llm-api"]["gpu_memory_gb"] = llm
            doc["services"]["vision-api"]["gpu_memory_gb"] = vision

        return load(derive_inventory(lab, tmp_path / f"{llm}-{vision}", edit))

    fleet.set_gpu_used(lab.host("mainpc"), 9830)  # 9.6 GB in use, read by the fake NVML at the next call
    try:
        c = by(run_preflight(budgets(14, 12), "gpu-mainpc", hosts=["mainpc"]), "mainpc", "gpu-memory")
        assert c.status == "fail" and "14.0 + 12.0 GB + 1.0 GB reserve = 27.0 GB, the cards have 24.0 GB" in c.detail
        inv = budgets(14, 6)
        c = by(run_preflight(inv, "gpu-mainpc", hosts=["mainpc"]), "mainpc", "gpu-memory")
        assert c.status == "pass" and "9.6 GB in use now" in c.detail
        st = executor.status(inv, ["mainpc"])
        g = st["hosts"]["mainpc"]["gpus"][0]
        assert g["total_gb"] == 24.0 and g["used_gb"] == 9.6 and g["budgets_gb"] == {"llm-api": 14.0, "vision-api": 6.0}
    finally:
        fleet.set_gpu_used(lab.host("mainpc"), 0)
