"""Opt-in (pytest -m slow): build the GPU families for real. Downloads about 2.5 GB of wheels."""

from __future__ import annotations

import os
import shutil

import pytest

from playbooks.images import audit, build, spec

pytestmark = [pytest.mark.slow, pytest.mark.images]


@pytest.mark.parametrize("family", ["family-torch-cu121", "family-vision-cu121"])
def test_gpu_family_builds_within_budget(family):
    if os.geteuid() != 0 or not shutil.which("buildah"):
        pytest.skip("needs root and buildah")
    fam = spec.load().family(family)
    r = build.build_family(family, allow_dirty=True)
    print(f"\n{family}: {r.size_mb} MB (budget {fam.size_budget_mb} MB) digest {r.digest}")
    assert r.size_mb <= fam.size_budget_mb
    rep = audit.audit_image(family, fam, r.local_ref, f"{build.LOCAL}/{fam.base}:base")
    assert rep.ok, rep.problems
    assert any(p["name"] == "torch" and p["version"].startswith("2.2.2") for p in rep.python_packages)
