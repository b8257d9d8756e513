"""Build the CPU family for real (mmdebstrap base, buildah, offline hash-checked wheels)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from playbooks.images import audit, build, spec
from playbooks.images.sbom import validate

pytestmark = pytest.mark.images
FAMILY = "family-cpu-py311"


def _possible() -> str:
    missing = [t for t in ("buildah", "mmdebstrap") if not shutil.which(t)]
    if os.geteuid() != 0:
        return "image builds need root"
    return f"needs {', '.join(missing)}" if missing else ""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    why = _possible()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    first = build.build_family(FAMILY, allow_dirty=True)
    return first


def test_cpu_family_is_reproducible(built, monkeypatch):
    monkeypatch.setenv("FLEETROLL_BUILD_FRESH", "1")  # built afresh: a reuse of the first build would prove nothing
    again = build.build_family(FAMILY, allow_dirty=True)
    assert again.digest == built.digest, "the same commit must give the same image digest"
    assert again.tag == built.tag


def test_cpu_family_within_budget_and_labelled(built):
    fam = spec.load().family(FAMILY)
    assert built.size_mb <= fam.size_budget_mb
    info = json.loads(subprocess.run(["buildah", "inspect", "--type", "image", built.local_ref], capture_output=True, text=True,
                                     check=True).stdout)
    cfg = info["OCIv1"]["config"]
    assert cfg["User"] == "10001:10001" and cfg["Entrypoint"][0] == "/usr/bin/tini"
    labels = cfg["Labels"]
    assert labels["org.opencontainers.image.revision"] == build.revision().sha
    assert labels["org.opencontainers.image.version"] == built.tag
    assert labels["org.opencontainers.image.base.name"] == built.base and "@sha256:" in built.base


def test_cpu_family_sbom_validates_and_lists_the_lock(built):
    validate(built.sbom)
    doc = json.loads(open(built.sbom).read())
    names = {p["name"].lower() for p in doc["packages"]}
    assert {"starlette", "uvicorn", "tenacity", "libc6", "python3.11"} <= names


def test_cpu_family_runs_as_10001(built):
    ctr = subprocess.run(["buildah", "from", "-q", built.local_ref], capture_output=True, text=True, check=True).stdout.strip()
    try:
        out = subprocess.run(["buildah", "run", "--user", "10001:10001", ctr, "--", "python3", "-c",
                              "import os, starlette, uvicorn; print(os.getuid(), starlette.__version__)"],
                             capture_output=True, text=True, check=True).stdout
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
    assert out.startswith("10001 0.41.3")


def test_audit_passes_on_the_built_family(built):
    fam = spec.load().family(FAMILY)
    rep = audit.audit_image(FAMILY, fam, built.local_ref, f"{build.LOCAL}/{fam.base}:base")
    assert rep.ok, rep.problems
    assert any(p["name"] == "starlette" for p in rep.python_packages)


def test_planted_gpu_dependency_is_refused(built, tmp_path):
    ctx = tmp_path / "ctx"
    meta = ctx / "nvidia_cublas_cu12-12.1.3.1.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: nvidia-cublas-cu12\nVersion: 12.1.3.1\n")
    (ctx / "libcudnn.so.8").write_bytes(b"\x7fELF fake")
    (ctx / "Dockerfile").write_text(
        f"FROM {built.local_ref}\n"
        "COPY nvidia_cublas_cu12-12.1.3.1.dist-info /opt/venv/lib/python3.11/site-packages/nvidia_cublas_cu12-12.1.3.1.dist-info\n"
        "COPY libcudnn.so.8 /opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib/libcudnn.so.8\n"
    )
    ref = f"{build.LOCAL}/planted:test"
    subprocess.run(["buildah", "bud", "-q", "--isolation", "chroot", "-t", ref, str(ctx)], check=True, capture_output=True)
    rep = audit.audit_image(FAMILY, spec.load().family(FAMILY), ref)
    assert not rep.ok
    text = "\n".join(rep.problems)
    assert "nvidia-cublas-cu12 12.1.3.1 is GPU-only" in text and "libcudnn.so.8 is a CUDA/cuDNN/NCCL library" in text
    assert "not in the image's SBOM" in text


def test_build_refuses_a_dirty_tree_without_allow_dirty(monkeypatch):
    rev = build.Revision("a" * 40, "aaaaaaa", 0, "19700101", dirty=True)
    with pytest.raises(build.BuildError, match="uncommitted changes"):
        build.build_family(FAMILY, rev=rev)
    with pytest.raises(build.BuildError, match="refusing to push a -dirty build"):
        build.build_family(FAMILY, rev=rev, allow_dirty=True, push=True)


def test_static_only_family_says_why():
    with pytest.raises(build.BuildError, match="Debian 12 ships only Python 3.11"):
        build.build_family("family-cpu-py310-legacy", allow_dirty=True)


def test_proxy_family_builds_reproducibly_runs_haproxy_as_10001_and_passes_the_audit():
    """The reverse proxy's image: same pipeline (mmdebstrap base, buildah, SBOM inside), non-root, tini, audited."""
    why = _possible()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    fam = spec.load().family("fleetroll-proxy")
    first = build.build_family("fleetroll-proxy", allow_dirty=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLEETROLL_BUILD_FRESH", "1")  # built afresh: a reuse of the first build would prove nothing
        again = build.build_family("fleetroll-proxy", allow_dirty=True)
    assert first.digest == again.digest and first.size_mb <= fam.size_budget_mb
    cfg = json.loads(subprocess.run(["buildah", "inspect", "--type", "image", first.local_ref], capture_output=True, text=True,
                                    check=True).stdout)["OCIv1"]["config"]
    assert cfg["User"] == "10001:10001" and cfg["Entrypoint"][:2] == ["/usr/bin/tini", "--"]
    validate(first.sbom)
    assert "haproxy" in {p["name"] for p in json.loads(open(first.sbom).read())["packages"]}
    rep = audit.audit_image("fleetroll-proxy", fam, first.local_ref, f"{build.LOCAL}/{fam.base}:base")
    assert rep.ok, rep.problems
    ctr = subprocess.run(["buildah", "from", "-q", first.local_ref], capture_output=True, text=True, check=True).stdout.strip()
    try:
        r = subprocess.run(["buildah", "run", "--user", "10001:10001", ctr, "--", "/usr/sbin/haproxy", "-v"],
                           capture_output=True, text=True)
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
    assert r.returncode == 0 and "HAProxy version 2.6" in r.stdout, r.stdout + r.stderr


def test_a_build_of_the_same_inputs_is_reused_and_a_changed_input_is_not(built, tmp_path, monkeypatch):
    """Each family is built at most once per commit and locks on a machine; what it is made from decides."""
    again = build.build_family(FAMILY, allow_dirty=True)
    assert again.digest == built.digest and any("reused this machine's build" in n for n in again.notes)
    ctx = build.FAMILIES_DIR / FAMILY
    key = build.inputs_key(FAMILY, ctx, {"A": "1"}, True)
    assert build.inputs_key(FAMILY, ctx, {"A": "2"}, True) != key, "another build argument (a base digest, a commit) is another build"
    lock = next(ctx.glob("requirements*.txt"))
    before = lock.read_bytes()
    try:
        lock.write_bytes(before + b"\n# changed\n")
        assert build.inputs_key(FAMILY, ctx, {"A": "1"}, True) != key, "a changed lock is another build"
    finally:
        lock.write_bytes(before)
