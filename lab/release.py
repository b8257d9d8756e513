"""Lab releases: push a new version of a service's image and write a lab inventory naming it.

Operators change the inventory by hand and commit; in the lab, the runbook and tests need
the same moves without touching any real inventory. `fab lab.release` pushes a test image
variant (healthy, degraded, crash, ...) under a fresh tag, optionally files a Trivy report
for it, and writes a copy of the lab inventory with that tag, printing its path.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import yaml

from . import images
from .model import LAB_DIR, ORG, LabError, LabState


def release(service: str, variant: str = "healthy", trivy_cve: str | None = None, name: str | None = None,
            health: dict | None = None, inventory: Path | None = None) -> Path:
    """Push a new version of `service` and write an inventory naming it; returns that inventory's path.

    `inventory`: an operator's own inventory for the lab (e.g. the zero-downtime walkthrough's),
    instead of the lab's. Its release is written beside it (release-<service>-<variant>.yml, or
    <name>.yml), so its relative paths and its phases.yml still apply.
    """
    state = LabState.load()
    src = Path(inventory) if inventory else Path(state.inventory)
    doc = yaml.safe_load(src.read_text())
    where = "lab inventory" if not inventory else str(src)
    if service not in (doc.get("services") or {}):
        raise LabError(f"{where} has no service {service!r}; services: {', '.join(doc.get('services') or {})}")
    reg = doc.get("registry") or {}
    if inventory and (reg.get("host"), reg.get("org")) != (state.registry, ORG):
        raise LabError(f"{src}: registry is {reg.get('host')}/{reg.get('org')}; lab.release pushes to the lab's"
                       f" {state.registry}/{ORG}: set registry: {{host: {state.registry}, org: {ORG}, insecure: true}}")
    if variant not in images.VARIANTS:
        raise LabError(f"unknown variant {variant!r}; variants: {', '.join(images.VARIANTS)}")
    svc = doc["services"][service]
    tag = f"{time.strftime('%Y%m%d', time.gmtime())}-{secrets.token_hex(4)[:7]}"
    arch = images.GPU_ARCH if svc.get("gpus") else None
    ref = images.push(state, svc["image"], tag, variant, arch)
    svc["tag"] = tag
    svc["health"].update(health or {})
    if trivy_cve:
        arts = (src.parent / ((doc.get("security") or {}).get("artifacts") or "../artifacts")) if inventory else LAB_DIR / "artifacts"
        report = arts / svc["image"] / tag / "trivy.json"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(images.trivy_report(ref, images.digest(ref), [
            {"VulnerabilityID": trivy_cve, "Severity": "HIGH", "PkgName": "busybox", "InstalledVersion": "1.35.0"}])))
    if inventory:
        out_file = src.parent / f"{name or f'release-{service}-{variant}'}.yml"
        out_file.write_text(f"# Written by fab lab.release from {src.name} (lab only).\n" + yaml.safe_dump(doc, sort_keys=False))
        return out_file
    out = LAB_DIR / "inventory" / "releases" / (name or f"{service}-{variant}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "fleet.yml").write_text("# Written by fab lab.release (lab only).\n" + yaml.safe_dump(doc, sort_keys=False))
    (out / "phases.yml").write_text((src.parent / "phases.yml").read_text())
    return out / "fleet.yml"
