"""Security boundaries against the lab: what the inventory or a forged plan asks for cannot reach the host."""

from __future__ import annotations

import subprocess

import pytest

from playbooks import executor, transport
from playbooks.inventory import load
from playbooks.lab import images
from playbooks.plan import build_plan
from playbooks.runner import run_preflight

from .conftest import derive_inventory
from .test_lab_integrity import snapshot
from .test_lab_rollout import FAB, ROOT, baseline, new_tag, with_tags

pytestmark = pytest.mark.lab


@pytest.fixture(autouse=True)
def own_ledger(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETROLL_LEDGER", str(tmp_path / "ledger" / "ledger.jsonl"))


@pytest.mark.parametrize("change,why", [({"user": "0:0"}, "numeric non-root"), ({"volumes": ["/etc:/hostetc"]}, "/etc"),
                                        ({"volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}, "docker.sock")])
def test_forged_plan_is_refused_on_the_host_and_nothing_changes(lab, tmp_path, change, why):
    baseline(lab)
    before = snapshot(lab, "llm-api")
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")
    inv = with_tags(lab, tmp_path, {"llm-api": tag})
    plan = build_plan(inv, "gpu-mainpc", run_preflight(inv, "gpu-mainpc").facts)
    args = executor._step_args(plan, "mainpc", "revert-phase", inv)
    for s in args["steps"]:
        s["spec"].update(change)  # what no valid inventory can say
    res = transport.on_hosts(inv, ["mainpc"], "rollout", lambda h: args)["mainpc"]
    s = next(x for x in res.answer["data"]["services"] if x["service"] == "llm-api")
    assert s["outcome"] == "refused" and s["check"] == "container-config" and why in s["message"]
    assert snapshot(lab, "llm-api") == before


def test_inventory_asking_for_root_exits_2_naming_the_field_and_nothing_changes(lab, tmp_path):
    baseline(lab)
    before = snapshot(lab, "llm-api")
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")

    def edit(doc):
        doc["services"]["llm-api"].update(tag=tag, user="0:0", volumes=["/etc:/hostetc"])

    path = derive_inventory(lab, tmp_path / "root", edit)
    r = subprocess.run([FAB, "rollout", "--phase", "gpu-mainpc", "--yes", "--inventory", str(path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert f"{path}:" in out and "services.llm-api.user" in out and "services.llm-api.volumes" in out and "fix:" in out
    assert "Traceback" not in out
    assert snapshot(lab, "llm-api") == before
    assert load(lab.inventory).fleet.services["llm-api"].user == "10001:10001"
