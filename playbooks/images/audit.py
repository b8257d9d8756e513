"""Dependency audit (blueprint phase 2): what an image holds, and what a family must not hold.

The rules are pure functions over plain data (the lock file's text, the SBOM's package
list, the image's shared-library names), so each is unit-tested without building
anything; `audit_image` gathers that data from a built image.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .spec import FAMILIES_DIR, Family

GPU_WHEELS = re.compile(r"^(nvidia-.*|triton|cupy.*|pycuda|tensorrt.*|jax-cuda.*|nvidia)$", re.I)
GPU_DEBS = re.compile(r"^(cuda.*|libcuda.*|libcudnn.*|libnccl.*|libcublas.*|libcufft.*|libcurand.*|libcusolver.*|libcusparse.*|libnvidia-.*|nvidia-.*)$")
GPU_LIBS = re.compile(r"^lib(cuda|cudart|cudnn\w*|nccl|cublas\w*|cufft\w*|curand|cusolver\w*|cusparse\w*|nvrtc\w*|nvjitlink|nvToolsExt)\.so")


@dataclass
class AuditReport:
    family: str
    image: str
    python_packages: list[dict] = field(default_factory=list)
    debian_packages: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    variant: str = "default"  # default | triton: what the image holds, from its packages (and its label)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def lock_problems(text: str, where: str) -> list[str]:
    """Every requirement pinned with == and carrying at least one sha256 hash."""
    problems = []
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = line.split()[0]
        if not re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[A-Za-z0-9_.+!\-]+", req):
            problems.append(f"{where}: {req!r} is not pinned with == to one version; regenerate the lock (uv pip compile --generate-hashes)")
        if "--hash=sha256:" not in line:
            problems.append(f"{where}: {req!r} has no --hash; pip --require-hashes will refuse it")
    return problems


def gpu_problems(python_pkgs: list[dict], debs: list[dict], libs: list[str]) -> list[str]:
    """GPU-only dependencies that must never reach a CPU family."""
    out = []
    for p in python_pkgs:
        name, ver = p["name"], p.get("version", "")
        if GPU_WHEELS.match(name):
            out.append(f"python package {name} {ver} is GPU-only (CUDA runtime wheel)")
        elif name.lower() == "torch" and "+cpu" not in ver:
            out.append(f"python package torch {ver} is a CUDA build (PyPI's Linux torch bundles CUDA); use a +cpu build or move the service to a GPU family")
    out += [f"Debian package {d['name']} {d.get('version', '')} is GPU-only" for d in debs if GPU_DEBS.match(d["name"])]
    out += [f"shared library {lib} is a CUDA/cuDNN/NCCL library" for lib in sorted(set(libs)) if GPU_LIBS.match(Path(lib).name)]
    return out


def system_package_problems(debs: list[dict], base_debs: set[str], allowed: list[str]) -> list[str]:
    extra = sorted({d["name"] for d in debs} - base_debs - set(allowed))
    return [f"Debian package {n} is not in the base and not in allowed_system_packages (families.yml)" for n in extra]


def packages_from_sbom(doc: dict) -> tuple[list[dict], list[dict]]:
    py, deb = [], []
    for p in doc.get("packages", []):
        purl = next((r["referenceLocator"] for r in p.get("externalRefs", []) if r.get("referenceType") == "purl"), "")
        entry = {"name": p["name"], "version": p.get("versionInfo", "")}
        (py if purl.startswith("pkg:pypi/") else deb).append(entry)
    return py, deb


def audit_data(family: str, fam: Family, image: str, sbom_doc: dict, libs: list[str], base_debs: set[str] | None) -> AuditReport:
    py, deb = packages_from_sbom(sbom_doc)
    rep = AuditReport(family, image, py, deb)
    lock = FAMILIES_DIR / family / "requirements.txt"
    if fam.kind == "python":  # the proxy installs no Python packages of its own: no lock to check
        rep.problems += lock_problems(lock.read_text(), str(lock.relative_to(FAMILIES_DIR.parent)))
    elif py:
        rep.problems += [f"{family} is not a Python family but its SBOM lists Python packages:"
                         f" {', '.join(sorted(x['name'] for x in py))}"]
    if not fam.gpu:
        rep.problems += gpu_problems(py, deb, libs)
    if base_debs is not None:
        rep.problems += system_package_problems(deb, base_debs, fam.allowed_system_packages)
    return rep


def variant_of(python_pkgs: list[dict], labels: dict[str, str]) -> tuple[str, str]:
    """(variant, problem): an image with triton is the `triton` variant; its label must say the same (pure)."""
    has = any(p["name"].lower() == "triton" for p in python_pkgs)
    said = labels.get("io.fleetroll.triton")
    variant = "triton" if has else "default"
    if said is not None and (said == "1") != has:
        return variant, (f"the image's label io.fleetroll.triton={said} does not match what it holds"
                         f" (triton {'present' if has else 'absent'})")
    return variant, ""


def _labels(ref: str) -> dict[str, str]:
    from .build import run

    try:
        info = json.loads(run("buildah", "inspect", "--type", "image", ref))
    except Exception:  # noqa: BLE001 - an image buildah cannot read has no labels to compare
        return {}
    return (info.get("OCIv1") or {}).get("config", {}).get("Labels") or {}


def sbom_gen():
    """families/sbom_gen.py is shipped into images as a script; load the same file here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fleetroll_sbom_gen", FAMILIES_DIR / "sbom_gen.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def audit_image(family: str, fam: Family, image: str, base_image: str | None = None) -> AuditReport:
    from .build import Mounted

    with Mounted(image) as root:
        doc = json.loads((root / "usr/share/fleetroll/sbom.spdx.json").read_text())
        libs = [p.name for d in ("usr/lib", "opt/venv/lib", "usr/local/lib") for p in (root / d).rglob("*.so*") if (root / d).exists()]
        # the SBOM is written at build time: also list what is on disk now, in case it was added later
        extra = [p for p in sbom_gen().python_packages(root) if p["name"] not in {x["name"] for x in packages_from_sbom(doc)[0]}]
    base_debs = None
    if base_image:
        with Mounted(base_image) as broot:
            base_debs = {d["name"] for d in sbom_gen().dpkg_packages(broot)}
    rep = audit_data(family, fam, image, doc, libs, base_debs)
    rep.variant, problem = variant_of(rep.python_packages, _labels(image))
    if problem:
        rep.problems.append(problem)
    if extra:
        rep.python_packages += extra
        if not fam.gpu:
            rep.problems += gpu_problems(extra, [], [])
        rep.problems += [f"python package {p['name']} {p['version']} is on disk but not in the image's SBOM" for p in extra]
    return rep
