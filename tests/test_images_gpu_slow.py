"""Opt-in (pytest -m slow): build the GPU families for real. Downloads about 2.7 GB of wheels once.

Measures what a host pulls: each family's layers compressed as a push compresses them, the
torch family within its 3.0 GB budget, vision sharing every torch layer (a host that has
torch pulls only vision's own layers), and triton only in its variant. The figures are
written to build/gpu-families.json (docs/families.md records them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from playbooks.images import audit, build, spec
from playbooks.images.sbom import validate

pytestmark = [pytest.mark.slow, pytest.mark.images]
FIGURES = build.BUILD_DIR / "gpu-families.json"


def _need_root():
    if os.geteuid() != 0 or not shutil.which("buildah"):
        pytest.skip("needs root and buildah")


def _record(key: str, value) -> None:
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data[key] = value
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(data, indent=1))


@pytest.fixture(scope="module")
def torch_family():
    _need_root()
    return build.build_family("family-torch-cu121", allow_dirty=True)


def test_torch_family_default_is_within_3_gb_as_pulled_and_has_no_triton(torch_family):
    r, fam = torch_family, spec.load().family("family-torch-cu121")
    layers = build.compressed_layers(r.local_ref, uncompressed=True)
    pulled = round(sum(x["compressed_mb"] for x in layers), 1)
    _record("family-torch-cu121", {"tag": r.tag, "digest": r.digest, "compressed_mb": pulled,
                                   "uncompressed_mb": build.image_size_mb(r.local_ref), "layers": layers})
    print(f"\nfamily-torch-cu121: {pulled} MB compressed, layers {json.dumps(layers)}")
    assert r.measure == "compressed" and pulled == r.size_mb and pulled <= fam.size_budget_mb
    validate(r.sbom)
    rep = audit.audit_image("family-torch-cu121", fam, r.local_ref, f"{build.LOCAL}/{fam.base}:base")
    assert rep.ok, rep.problems
    assert rep.variant == "default" and not any(p["name"] == "triton" for p in rep.python_packages)
    assert any(p["name"] == "torch" and p["version"].startswith("2.2.2") for p in rep.python_packages)


def test_vision_family_shares_every_torch_layer_and_adds_only_its_own(torch_family):
    fam = spec.load().family("family-vision-cu121")
    r = build.build_family("family-vision-cu121", allow_dirty=True)
    assert r.base == f"{build.LOCAL}/family-torch-cu121@{torch_family.digest}"
    torch_layers = build.compressed_layers(torch_family.local_ref)
    layers = build.compressed_layers(r.local_ref, uncompressed=True)
    assert [x["diff_id"] for x in layers[:len(torch_layers)]] == [x["diff_id"] for x in torch_layers]
    own = layers[len(torch_layers):]
    extra = round(sum(x["compressed_mb"] for x in own), 1)
    _record("family-vision-cu121", {"tag": r.tag, "digest": r.digest, "compressed_mb": r.size_mb,
                                    "uncompressed_mb": build.image_size_mb(r.local_ref), "own_layers": own,
                                    "pulled_with_torch_present_mb": extra})
    print(f"\nfamily-vision-cu121: {r.size_mb} MB compressed in all; with torch present a host pulls {extra} MB: {json.dumps(own)}")
    assert r.size_mb <= fam.size_ceiling_mb
    validate(r.sbom)
    names = {p["name"].lower() for p in json.loads(open(r.sbom).read())["packages"]}
    assert {"torch", "torchvision", "torchaudio", "nvidia-cublas-cu12", "libsndfile1"} <= names  # both layers' contents
    rep = audit.audit_image("family-vision-cu121", fam, r.local_ref, f"{build.LOCAL}/{fam.base}:base")
    assert rep.ok, rep.problems


def test_triton_variant_adds_triton_and_says_so(torch_family):
    fam = spec.load().family("family-torch-cu121")
    r = build.build_family("family-torch-cu121", allow_dirty=True, variant="triton")
    assert r.family == "family-torch-cu121-triton"
    rep = audit.audit_image("family-torch-cu121", fam, r.local_ref, f"{build.LOCAL}/{fam.base}:base")
    assert rep.ok and rep.variant == "triton", rep.problems
    _record("family-torch-cu121-triton", {"tag": r.tag, "compressed_mb": r.size_mb,
                                          "triton_costs_mb": round(r.size_mb - torch_family.size_mb, 1)})
    out = subprocess.run(["buildah", "inspect", "--type", "image", r.local_ref], capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["OCIv1"]["config"]["Labels"]["io.fleetroll.triton"] == "1"
