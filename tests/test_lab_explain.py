"""`fab explain HOST/SERVICE` against the lab: one answer from container to commit, and what is missing said plainly."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lab import images
from lab.model import ORG
from playbooks import executor

from .conftest import baseline, derive_inventory, new_tag, with_tags

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parent.parent
FAB = str(Path(sys.executable).with_name("fab"))
CVE = "CVE-2026-4242"


def fab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FAB, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def debian_records(packages: tuple[str, ...]) -> str:
    """This machine's dpkg status entries for `packages`: the Debian packages the lab image's files come from."""
    stanzas = Path("/var/lib/dpkg/status").read_text().split("\n\n")
    found = [b for b in stanzas if any(line == f"Package: {p}" for p in packages for line in b.splitlines())]
    assert len(found) == len(packages), f"dpkg here does not list all of {packages}"
    return "\n\n".join(found) + "\n"


def push_with_package_records(lab, repo: str, tag: str, tmp_path: Path) -> str:
    """A lab image that carries its Debian package records, as a family image does, pushed as repo:tag.

    Lab images are busybox-static and tini-static copied FROM scratch, with no dpkg database, so the
    SBOM generator would find nothing in them; a family image lists its packages in
    /var/lib/dpkg/status. This one gets the two records its binaries come from.
    """
    base = images.push(lab, repo, new_tag(), "healthy", arch=images.GPU_ARCH)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "status").write_text(debian_records(("busybox-static", "tini")))
    (ctx / "Dockerfile").write_text(f"FROM {base}\nCOPY status /var/lib/dpkg/status\n"
                                    f"LABEL org.opencontainers.image.revision={tag.split('-')[-1]}\n")
    ref = f"{lab.registry}/{ORG}/{repo}:{tag}"
    docker = ["docker", "-H", lab.hosts[0].docker_host]
    for argv in (["build", "-q", "-t", ref, str(ctx)], ["push", "-q", ref]):
        r = subprocess.run([*docker, *argv], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    return ref


def test_explain_shows_the_sbom_and_the_trivy_verdict_of_the_digest_that_runs(lab, tmp_path):
    baseline(lab)  # the phase at the lab's tags: llm-api is the rollout's only change, the only image the gate checks
    tag = new_tag()
    ref = push_with_package_records(lab, "torch-svc", tag, tmp_path)
    digest = images.digest(ref)
    where = tmp_path / "artifacts" / "torch-svc" / tag  # where the security gate reads an image's artifacts
    sbom = images.write_sbom(lab, ref, where / "sbom.spdx.json")
    assert {"busybox-static", "tini"} <= {p["name"] for p in sbom["packages"]}
    # THIS REPORT IS WRITTEN BY THE TEST, NOT BY TRIVY (there is no Trivy binary here, nor a network to fetch its
    # database): a report in Trivy's JSON schema (SchemaVersion 2) naming exactly this digest, with one HIGH finding.
    (where / "trivy.json").write_text(json.dumps(images.trivy_report(ref, digest, [
        {"VulnerabilityID": CVE, "Severity": "HIGH", "PkgName": "busybox-static", "InstalledVersion": "1:1.35.0-4+deb12u1+b1"}])))
    expires = dt.date.today() + dt.timedelta(days=30)
    acc = tmp_path / "risk-acceptances.yml"
    acc.write_text(yaml.safe_dump({"acceptances": [{"image": "torch-svc", "cve": CVE, "owner": "ops-oncall", "digest": digest,
                                                    "reason": "busybox httpd only; the finding is in an applet not run", "expires": expires}]}))

    def edit(doc):
        doc["services"]["llm-api"]["tag"] = tag
        # refuse, not the lab's warn: the rollout goes ahead only because the report counts for this digest
        doc["security"].update(artifacts=str(tmp_path / "artifacts"), acceptances=str(acc), missing_report="refuse")

    inv = str(derive_inventory(lab, tmp_path / "inv", edit))
    r = fab("rollout", "--phase", "gpu-mainpc", "--yes", "--json", "--inventory", inv)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rid = json.loads(r.stdout)["phases"][0]["rollout_id"]

    r = fab("explain", "mainpc/llm-api", "--json", "--inventory", inv)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["image"]["tag"] == tag and out["image"]["digest"] == digest  # what runs, read from the host
    assert out["sbom"] == {"path": str(where / "sbom.spdx.json"), "present": True, "packages": len(sbom["packages"])}
    t = out["trivy"]
    assert (t["status"], t["digest"], t["for_running_digest"]) == ("warn", digest, True)
    assert [(a["cve"], a["owner"], a["expires"], a["digest"]) for a in t["accepted"]] == [(CVE, "ops-oncall", str(expires), digest)]
    assert out["rollout"]["rollout_id"] == rid and out["missing"] == [], out["missing"]
    r = fab("explain", "mainpc/llm-api", "--inventory", inv)
    assert r.returncode == 0, r.stderr
    for want in (f"SBOM      {len(sbom['packages'])} packages, {where / 'sbom.spdx.json'}", f"Trivy     warn for {digest[:19]}",
                 f"accepted  {CVE} by ops-oncall until {expires}", f"rollout   {rid}"):
        assert want in r.stdout, (want, r.stdout)

    # The tag's report replaced by one of another image (the lab's baseline torch-svc): not this container's verdict.
    other = images.digest(f"{lab.registry}/{ORG}/torch-svc:{images.BASELINE_TAG}")
    assert other != digest
    (where / "trivy.json").write_text(json.dumps(images.trivy_report(ref, other, [
        {"VulnerabilityID": CVE, "Severity": "HIGH", "PkgName": "busybox-static", "InstalledVersion": "1"}])))
    out = json.loads(fab("explain", "mainpc/llm-api", "-j", "--inventory", inv).stdout)  # -j: the short flag
    t = out["trivy"]
    assert t["for_running_digest"] is False and t["accepted"] == [] and t["status"] == "refuse", t
    assert other[:19] in t["why_not"] and any(m.startswith(f"no Trivy report for the running digest {digest[:19]}")
                                              for m in out["missing"]), out["missing"]
    text = fab("explain", "mainpc/llm-api", "--inventory", inv).stdout
    assert f"Trivy     no report for the running digest {digest[:19]}" in text and "accepted  " not in text, text


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
