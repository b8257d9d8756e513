"""Test images for the lab, built FROM scratch with Debian's busybox-static and tini-static.

There is no Docker Hub here, so every image the tests roll out is made on the spot: a
busybox HTTP server behind tini, running as 10001:10001, in variants that fail the
health gate in each way a real service can (wrong body, HTTP 500, crash inside the
stability window, a /health that never answers) or break the image contract (root
user, no tini). Variants are built once on a lab daemon and pushed to the lab registry
under whatever repository and tag a test needs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .model import ORG, LabError, LabHost, LabState

BUSYBOX = "/bin/busybox"
TINI = "/usr/bin/tini-static"
APPLETS = ("sh", "httpd", "nc", "sleep", "cat", "echo", "printf", "date", "wget")
GPU_ARCH = "89;86"

RUN = """#!/bin/sh
# Lab service: behaviour chosen at build time by VARIANT.
PORT=${PORT:-8080}
case "$VARIANT" in
  crash) httpd -p "$PORT" -h /www; sleep "${CRASH_AFTER:-1}"; echo "lab: crashing on purpose (exit 3)" >&2; exit 3 ;;
  http500) exec nc -ll -p "$PORT" -e /app/respond500 ;;
  hang) exec nc -ll -p "$PORT" -e /app/hang ;;
  banner) exec nc -ll -p "$PORT" -e /app/banner ;;
  ansi) printf '\033]0;pwned\007\033[2J\033[31mansi crash\r\n' >&2; exit 4 ;;
  *) exec httpd -f -p "$PORT" -h /www ;;
esac
"""
RESPOND500 = """#!/bin/sh
read -r _line
printf 'HTTP/1.0 500 Internal Server Error\\r\\nContent-Type: application/json\\r\\n\\r\\n{"status":"error","detail":"lab http500 variant"}'
"""
HANG = "#!/bin/sh\nsleep 3600\n"
# The health port speaks another protocol (a port taken by the wrong process): not HTTP at all.
BANNER = "#!/bin/sh\nprintf 'SSH-2.0-OpenSSH_9.2p1 Debian-2\\r\\n'\nsleep 1\n"

VARIANTS = {
    # name: (health body, user, tini entrypoint)
    "healthy": ('{"status":"ok"}', "10001:10001", True),
    "degraded": ('{"status":"degraded"}', "10001:10001", True),
    "http500": ('{"status":"ok"}', "10001:10001", True),
    "crash": ('{"status":"ok"}', "10001:10001", True),
    "hang": ('{"status":"ok"}', "10001:10001", True),
    "banner": ('{"status":"ok"}', "10001:10001", True),
    "ansi": ('{"status":"ok"}', "10001:10001", True),  # logs terminal escape sequences, then exits
    "root": ('{"status":"ok"}', "0:0", True),
    "notini": ('{"status":"ok"}', "10001:10001", False),
}


def _context(variant: str, arch: str | None, revision: str) -> Path:
    body, user, tini = VARIANTS[variant]
    ctx = Path(tempfile.mkdtemp(prefix=f"frl-img-{variant}-"))
    for d in ("bin", "tmp", "www", "etc", "app"):
        (ctx / d).mkdir()
    (ctx / "tmp").chmod(0o1777)
    shutil.copy(BUSYBOX, ctx / "bin" / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", ctx / "bin" / applet)
    shutil.copy(TINI, ctx / "tini")
    (ctx / "www" / "health").write_text(body)
    (ctx / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\napp:x:10001:10001::/tmp:/bin/sh\n")
    (ctx / "etc" / "group").write_text("root:x:0:\napp:x:10001:\n")
    for name, text in (("run", RUN), ("respond500", RESPOND500), ("hang", HANG), ("banner", BANNER)):
        (ctx / "app" / name).write_text(text)
        (ctx / "app" / name).chmod(0o755)
    entry = '["/tini", "--", "/app/run"]' if tini else '["/app/run"]'
    labels = [f'org.opencontainers.image.revision="{revision}"', f'io.fleetroll.lab-variant="{variant}"']
    if arch:
        labels.append(f'io.fleetroll.cuda-arch-list="{arch}"')
    (ctx / "Dockerfile").write_text(
        "FROM scratch\nCOPY . /\n"
        f"ENV VARIANT={variant} PORT=8080 PATH=/bin\n"
        f"LABEL {' '.join(labels)}\n"
        f"USER {user}\nENTRYPOINT {entry}\n"
    )
    (ctx / ".dockerignore").write_text("Dockerfile\n")
    return ctx


def _docker(h: LabHost, *args: str) -> str:
    r = subprocess.run(["docker", "-H", h.docker_host, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise LabError(f"docker {' '.join(args)} on lab host {h.name}: {r.stderr.strip()[:300]}")
    return r.stdout.strip()


def push(state: LabState, repo: str, tag: str, variant: str = "healthy", arch: str | None = None) -> str:
    """Build `variant` and push it as <lab registry>/<ORG>/<repo>:<tag>; return the ref."""
    builder = state.hosts[0]
    ref = f"{state.registry}/{ORG}/{repo}:{tag}"
    ctx = _context(variant, arch, tag.split("-")[-1])
    try:
        _docker(builder, "build", "-q", "-t", ref, str(ctx))
        _docker(builder, "push", "-q", ref)
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    return ref


# The images the lab inventory starts from: repository -> (tag, variant, arch list).
BASELINE_TAG = "20261101-a1b2c3d"
SEED = {
    "core": (BASELINE_TAG, "healthy", None),
    "torch-svc": (BASELINE_TAG, "healthy", GPU_ARCH),
    "vision-svc": (BASELINE_TAG, "healthy", GPU_ARCH),
    "cpu-svc": (BASELINE_TAG, "healthy", None),
}


def seed(state: LabState) -> dict[str, str]:
    for repo, (tag, variant, arch) in SEED.items():
        push(state, repo, tag, variant, arch)
    return {repo: tag for repo, (tag, _v, _a) in SEED.items()}


def digest(ref: str) -> str:
    """What the lab registry says `ref` names now."""
    from agent.registry import RegistryClient

    return RegistryClient(insecure=True).digest(ref)


def trivy_report(ref: str, image_digest: str, vulnerabilities: list[dict]) -> dict:
    """A report in Trivy's JSON shape (schema 2) for exactly this digest, as `trivy image --format json` writes it."""
    repo = ref.rsplit(":", 1)[0]
    return {"SchemaVersion": 2, "ArtifactName": ref, "ArtifactType": "container_image",
            "Metadata": {"RepoDigests": [f"{repo}@{image_digest}"], "RepoTags": [ref]},
            "Results": [{"Target": ref, "Class": "os-pkgs", "Type": "debian", "Vulnerabilities": vulnerabilities}]}


def push_proxy(state: LabState) -> str:
    """Build the fleetroll-proxy family image (HAProxy on the lab's Debian rootfs) and push it; return its tag.

    Built by the same pipeline as the families (mmdebstrap base, buildah, SBOM inside); the
    tag follows the inventory scheme even for an uncommitted tree (a -dirty tag is refused
    by the inventory, and the lab only needs the bytes).
    """
    from playbooks.images import build

    built = build.build_family("fleetroll-proxy", allow_dirty=True)
    tag = built.tag.removesuffix("-dirty")
    build.push_image(built.local_ref, f"{state.registry}/{ORG}/fleetroll-proxy:{tag}", insecure=True)
    return tag


def write_sbom(state: LabState, ref: str, dest: Path) -> dict:
    """The project's SBOM generator run over `ref`'s filesystem as pushed; written to `dest`, checked by spdx-tools.

    What a family build does inside its image (families/sbom_gen.py, then playbooks/images/sbom.py's
    validation), done from outside for a lab image: its root filesystem is exported from the lab
    daemon that built it, and the generator reads the Debian and Python package records there.
    Returns the SPDX document.
    """
    import json
    import sys
    import tarfile

    from playbooks.images.sbom import validate

    builder = state.hosts[0]
    work = Path(tempfile.mkdtemp(prefix="frl-sbom-"))
    cid = _docker(builder, "create", ref)
    try:
        _docker(builder, "export", "-o", str(work / "rootfs.tar"), cid)
        with tarfile.open(work / "rootfs.tar") as tar:
            # Docker adds etc/mtab -> /proc/mounts; a link out of the tree is no package record: skip, not follow, it.
            tar.extractall(work / "root", filter=lambda m, dest: None if m.issym() and m.linkname.startswith("/")
                           else tarfile.data_filter(m, dest))
        name, version = ref.rsplit("/", 1)[-1].split(":", 1)
        gen = Path(__file__).resolve().parent.parent / "families" / "sbom_gen.py"
        r = subprocess.run([sys.executable, str(gen), str(work / "root"), name, version, str(dest)], capture_output=True, text=True)
        if r.returncode != 0:
            raise LabError(f"sbom_gen.py on {ref}: {r.stderr.strip()[-300:]}")
    finally:
        _docker(builder, "rm", cid)
        shutil.rmtree(work, ignore_errors=True)
    validate(dest)
    return json.loads(dest.read_text())
