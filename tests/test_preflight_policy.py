"""Preflight rules over captured facts: no hosts needed."""

from __future__ import annotations

from pathlib import Path

from agent.listening import parse_proc_net
from playbooks import agentpack, preflight
from playbooks.inventory import load

ROOT = Path(__file__).resolve().parent.parent
INV = load(ROOT / "inventory" / "fleet.yml")
GOOD_IMAGE = {
    "ok": True,
    "digest": "sha256:" + "a" * 64,
    "user": "10001:10001",
    "entrypoint": ["/usr/bin/tini", "--"],
    "labels": {"org.opencontainers.image.revision": "0a1b2c3", "io.fleetroll.cuda-arch-list": "89;86"},
}


def facts(driver="550.54.14", name="NVIDIA GeForce RTX 4090", cc="8.9", images=None, ports=(), hook="/usr/bin/hook"):
    return {
        "docker": {"ok": True, "version": "20.10.24", "api_version": "1.41", "containers": []},
        "nvml": {"ok": True, "driver_version": driver, "gpus": [{"index": 0, "name": name, "compute_capability": cc}]},
        "runtime": {"hook": hook, "nvidia_runtime": False},
        "disk": {"path": "/var/lib/docker", "free_gb": 100.0},
        "ports": list(ports),
        "images": images if images is not None else {INV.image_ref(s): GOOD_IMAGE for s in INV.fleet.services},
    }


def by_name(checks):
    return {c.check: c for c in checks}


def test_all_pass_on_good_facts():
    checks = preflight.evaluate(INV, "mainpc", "gpu-mainpc", facts())
    assert [c for c in checks if c.status != "pass"] == []
    assert {"ssh", "docker", "nvidia-driver", "gpus", "nvidia-runtime", "disk", "ports"} <= set(by_name(checks))


def test_driver_below_minimum_names_both_versions():
    c = by_name(preflight.evaluate(INV, "mainpc", "gpu-mainpc", facts(driver="530.41.03")))["nvidia-driver"]
    assert c.status == "fail" and "530.41.03 < required 535" in c.detail and "R1" in c.fix


def test_driver_compares_numerically():
    c = by_name(preflight.evaluate(INV, "mainpc", None, facts(driver="1000.1")))["nvidia-driver"]
    assert c.status == "pass"


def test_wrong_gpu_model_and_cc():
    c = by_name(preflight.evaluate(INV, "mainpc", None, facts(name="NVIDIA GeForce RTX 3060", cc="8.6")))["gpus"]
    assert c.status == "fail" and "RTX 3060" in c.detail and "8.6" in c.detail


def test_arch_list_89_only_refused_on_86():
    assert preflight.arch_covers("89", "8.6")[0] == "fail"
    assert preflight.arch_covers("8.9;8.6", "8.6")[0] == "pass"
    assert preflight.arch_covers("8.0+PTX", "8.6")[0] == "warn"


def test_image_contract_root_and_no_tini():
    bad = {**GOOD_IMAGE, "user": "", "entrypoint": ["/app/run"]}
    found = preflight.image_contract(bad, None, False)
    assert [f[0] for f in found] == ["fail", "fail"]
    assert "root" in found[0][1] and "tini" in found[1][1]


def test_missing_image_tag_fails_with_fix():
    ref = INV.image_ref("llm-inference")
    imgs = {**facts()["images"], ref: {"ok": False, "kind": "missing", "error": f"{ref}: no such tag"}}
    c = by_name(preflight.evaluate(INV, "mainpc", "gpu-mainpc", facts(images=imgs)))["image:llm-inference"]
    assert c.status == "fail" and "fab build --push" in c.fix


def test_port_held_by_someone_else():
    c = by_name(preflight.evaluate(INV, "mainpc", "gpu-mainpc", facts(ports=[8000])))["ports"]
    assert c.status == "fail" and "8000 (wanted by llm-inference)" in c.detail


def test_port_held_by_the_service_itself_passes():
    f = facts(ports=[8000])
    f["docker"]["containers"] = [{"name": "llm-inference", "running": True, "host_ports": ["8000"]}]
    assert by_name(preflight.evaluate(INV, "mainpc", "gpu-mainpc", f))["ports"].status == "pass"


def test_missing_runtime_hook_only_matters_for_gpu_services():
    assert by_name(preflight.evaluate(INV, "mainpc", "gpu-mainpc", facts(hook=None)))["nvidia-runtime"].status == "fail"
    assert "nvidia-runtime" not in by_name(preflight.evaluate(INV, "pc2", "cpu-pc2", facts(hook=None)))


def test_unreachable_host_is_one_failed_check():
    checks = preflight.evaluate(INV, "pc2", None, None, "pc2: no answer within 5s")
    assert [(c.check, c.status) for c in checks] == [("ssh", "fail")]


def test_low_disk():
    f = facts()
    f["disk"]["free_gb"] = 3.0
    c = by_name(preflight.evaluate(INV, "pc2", None, f))["disk"]
    assert c.status == "fail" and "need >= 20 GB" in c.detail


def test_proc_net_parse():
    text = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n"
        "   1: 0100007F:0016 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2\n"
    )
    assert parse_proc_net(text) == {8080}


def test_agent_archive_is_deterministic_and_self_contained():
    agentpack.build.cache_clear()
    a, ha = agentpack.build()
    agentpack.build.cache_clear()
    b, hb = agentpack.build()
    assert a == b and ha == hb
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(a)).namelist()
    assert "__main__.py" in names and "agent/__main__.py" in names and "pynvml.py" in names
    assert not any(n.startswith("playbooks/") for n in names)


def test_agent_never_imports_controller_code():
    for path in (ROOT / "agent").rglob("*.py"):
        assert "playbooks" not in path.read_text(), path


def test_driver_verdict_is_the_same_whatever_the_phase():
    pc2 = facts(driver="530.41.03", name="NVIDIA GeForce RTX 3060", cc="8.6")
    assert not any(INV.fleet.services[s].wants_gpu for s in INV.services_for(None, ["pc2"]))
    for phase in (None, "core-infra", "cpu-pc2", "gpu-mainpc"):
        c = by_name(preflight.evaluate(INV, "pc2", phase, pc2))
        assert c["nvidia-driver"].status == "warn" and "no GPU service is placed on this host in any phase" in c["nvidia-driver"].detail
        # mainpc runs GPU services in some phase: a low driver fails there, asked about any phase
        c = by_name(preflight.evaluate(INV, "mainpc", phase, facts(driver="530.41.03")))
        assert c["nvidia-driver"].status == "fail", phase


def test_agent_upload_needed_only_when_python_cannot_run_it():
    from playbooks.transport import agent_needs_upload

    assert agent_needs_upload(2, "python3: can't open file '/home/x/.fleetroll/agent-1.pyz': [Errno 2]")
    assert agent_needs_upload(1, "SyntaxError: Non-UTF-8 code starting with '\\x80' in file agent.pyz")
    assert not agent_needs_upload(1, "Traceback ... docker.errors.DockerException")
    assert not agent_needs_upload(0, "")


def _gpu_inv(tmp_path, budgets: dict[str, float], reserve: float = 0.0):
    svcs = "".join(f"  {n}:\n    image: family-torch-cu121\n    tag: 20261126-abc1234\n    host: gpu1\n    gpus: all\n"
                   f"    gpu_memory_gb: {b}\n    ports: [\"{8000 + i}:8080\"]\n    health: {{port: {8000 + i}}}\n"
                   for i, (n, b) in enumerate(budgets.items()))
    (tmp_path / "fleet.yml").write_text(
        f"registry: {{host: reg.example, org: acme}}\ndefaults: {{gpu_memory_reserve_gb: {reserve}}}\n"
        f"hosts:\n  gpu1:\n    address: 10.0.0.9\n    gpus: {{model: RTX, count: 1, compute_capability: '8.9'}}\nservices:\n{svcs}")
    (tmp_path / "phases.yml").write_text(f"phases:\n  - name: gpu\n    services: [{', '.join(budgets)}]\n")
    return load(tmp_path / "fleet.yml")


def _nvml(total_mib: int, used_mib: int) -> dict:
    return {"ok": True, "driver_version": "550.54.14", "gpus": [{"index": 0, "name": "RTX", "compute_capability": "8.9",
                                                                 "memory_mib": total_mib, "memory_used_mib": used_mib,
                                                                 "memory_free_mib": total_mib - used_mib}]}


def test_gpu_services_that_cannot_fit_the_card_fail_preflight_naming_each_and_the_numbers(tmp_path):
    inv = _gpu_inv(tmp_path, {"llm": 14.0, "vision": 12.0}, reserve=1.0)
    for phase in (None, "gpu"):
        c = by_name(preflight.evaluate(inv, "gpu1", phase, {**facts(), "nvml": _nvml(24576, 3000)}))["gpu-memory"]
        assert c.status == "fail", c
        assert "14.0 + 12.0 GB + 1.0 GB reserve = 27.0 GB, the cards have 24.0 GB (llm 14.0 GB, vision 12.0 GB)" in c.detail
    inv = _gpu_inv(tmp_path, {"llm": 30.0})
    c = by_name(preflight.evaluate(inv, "gpu1", None, {**facts(), "nvml": _nvml(24576, 0)}))["gpu-memory"]
    assert c.status == "fail" and "llm needs 30.0 GB but the largest card here has 24.0 GB" in c.detail


def test_gpu_services_that_fit_pass_and_say_what_is_in_use(tmp_path):
    inv = _gpu_inv(tmp_path, {"llm": 14.0, "vision": 6.0}, reserve=1.0)
    c = by_name(preflight.evaluate(inv, "gpu1", "gpu", {**facts(), "nvml": _nvml(24576, 9830)}))["gpu-memory"]
    assert c.status == "pass" and "budgets 20.0 GB + 1.0 GB reserve of 24.0 GB" in c.detail and "9.6 GB in use now" in c.detail


def test_a_gpu_memory_budget_needs_a_gpu(tmp_path):
    import pytest as _pytest

    from playbooks.inventory import InventoryError

    (tmp_path / "fleet.yml").write_text(
        "registry: {host: r, org: o}\nhosts:\n  h:\n    address: 10.0.0.1\nservices:\n  s:\n    image: x\n    tag: 20261126-abc1234\n"
        "    host: h\n    gpu_memory_gb: 4\n    ports: ['8000:8080']\n    health: {port: 8000}\n")
    (tmp_path / "phases.yml").write_text("phases:\n  - name: p\n    services: [s]\n")
    with _pytest.raises(InventoryError) as exc:
        load(tmp_path / "fleet.yml")
    assert any("services.s.gpu_memory_gb: a GPU memory budget on a service with gpus: 0" in p for p in exc.value.problems)


def test_a_host_mid_transaction_is_a_warning_naming_the_rollout_and_the_way_to_wait():
    busy = {"rollout_id": "r-live", "holder": "ana@laptop", "pid": 4242}
    c = by_name(preflight.evaluate(INV, "mainpc", "gpu-mainpc", {**facts(), "busy": busy}))["transaction"]
    assert c.status == preflight.WARN and "rollout r-live runs here now (ana@laptop, pid 4242)" in c.detail
    assert c.fix == "wait for it: fab status --follow"
    assert "transaction" not in by_name(preflight.evaluate(INV, "mainpc", "gpu-mainpc", facts()))
