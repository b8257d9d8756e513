"""`fab explain HOST/SERVICE` against the lab: one answer from container to commit, and what is missing said plainly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab import images
from playbooks import executor

from .conftest import new_tag, with_tags

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parent.parent
FAB = str(Path(sys.executable).with_name("fab"))


def test_explain_follows_a_rolled_out_service_from_its_container_to_its_rollout(lab, tmp_path):
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")
    inv = with_tags(lab, tmp_path, {"llm-api": tag})
    rep = executor.rollout(inv, "gpu-mainpc")
    assert rep.ok, rep.messages
    r = subprocess.run([FAB, "explain", "mainpc/llm-api", "--json", "--inventory", str(inv.path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["image"]["tag"] == tag and out["image"]["digest"].startswith("sha256:")
    assert out["rollout"]["rollout_id"] == rep.plan.rollout_id and out["rollout"]["phase"] == "gpu-mainpc"
    assert out["drift"]["action"] == "noop" and out["health"]["healthy"] is True
    # lab test images carry no SBOM and no Trivy report: said, not invented
    assert out["sbom"]["present"] is False and out["trivy"]["present"] is False
    text = subprocess.run([FAB, "explain", "mainpc/llm-api", "--inventory", str(inv.path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120).stdout
    assert f"llm-api:{tag}" in text or tag in text
    assert "no SBOM at" in text and "no Trivy report" in text, text


def test_explain_of_a_service_not_on_that_host_names_the_valid_ones_and_asks_no_host(lab):
    r = subprocess.run([FAB, "explain", "pc2/llm-api", "--inventory", lab.inventory], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "llm-api" in r.stderr + r.stdout, r.stderr
