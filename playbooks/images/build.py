"""Build family images reproducibly: base rootfs -> base image -> wheelhouse -> family image.

Reproducible means the same commit gives the same image digest. What makes it so:
the tag and every timestamp come from the commit (date in UTC + short sha; buildah's
--timestamp and SOURCE_DATE_EPOCH set to the commit time), wheels are fetched once and
checked against the lock's hashes, installed offline with --no-index, and bytecode is
compiled with unchecked-hash invalidation (no mtimes inside .pyc files).

Debian 12 has no buildx; buildah (a Debian package) builds Dockerfiles without a daemon,
supports RUN --mount, and has --timestamp for deterministic output. Registry cache
(--cache-to/--cache-from type=registry) is a buildx feature: where buildx is absent the
build says so and uses buildah's local layer cache instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .rootfs import DPKG_EXCLUDES, PRUNE, base_image, prune_tar, pruned  # noqa: F401 - where callers find them
from .spec import FAMILIES_DIR, ROOT, load

BUILD_DIR = Path(os.environ.get("FLEETROLL_BUILD_DIR", ROOT / "build"))
ARTIFACTS = Path(os.environ.get("FLEETROLL_ARTIFACTS", ROOT / "artifacts"))
LOCAL = "localhost/fleetroll"


class BuildError(Exception):
    pass


def run(*argv: str, cwd: Path | None = None, env: dict | None = None, quiet: bool = True) -> str:
    r = subprocess.run(list(argv), cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"{' '.join(argv[:4])}... failed ({r.returncode}):\n{(r.stderr or r.stdout).strip()[-1500:]}")
    return r.stdout


@dataclass
class Revision:
    sha: str
    short: str
    epoch: int
    date: str  # YYYYMMDD, UTC, of the commit
    dirty: bool

    @property
    def tag(self) -> str:
        return f"{self.date}-{self.short}" + ("-dirty" if self.dirty else "")


def revision(repo: Path = ROOT) -> Revision:
    """The tag comes from the commit (its UTC date and short sha), never from today's date."""
    sha = run("git", "-C", str(repo), "rev-parse", "HEAD").strip()
    epoch = int(run("git", "-C", str(repo), "log", "-1", "--format=%ct").strip())
    dirty = bool(run("git", "-C", str(repo), "status", "--porcelain", "--", "families").strip())
    return Revision(sha, sha[:7], epoch, time.strftime("%Y%m%d", time.gmtime(epoch)), dirty)


def image_digest(ref: str) -> str:
    info = json.loads(run("buildah", "inspect", "--type", "image", ref))
    return info["FromImageDigest"]


def size_verdict(name: str, size_mb: float, budget_mb: int, ceiling_mb: int | None, measure: str,
                 source: str) -> tuple[bool, str]:
    """(within the ceiling, what to say) for an image's measured size (pure).

    Within the budget: fine. Over the budget but within the ceiling (the blueprint's "about
    3 GB"): built, with a note. Over the ceiling (or over the budget when there is none): refused.
    """
    limit = ceiling_mb if ceiling_mb is not None else budget_mb
    what = f"{name} is {size_mb:,.1f} MB {measure}"
    if size_mb > limit:
        bound = f"its ceiling of {ceiling_mb:,} MB" if ceiling_mb is not None else f"its budget of {budget_mb:,} MB"
        return False, f"{what}, over {bound} ({source}); trim the requirements or the base"
    if size_mb > budget_mb:
        return True, f"{what}: over its budget of {budget_mb:,} MB, within its ceiling of {limit:,} MB ({source})"
    return True, f"{what}, within its budget of {budget_mb:,} MB"


def compressed_layers(ref: str, uncompressed: bool = False) -> list[dict]:
    """[{digest, diff_id, compressed_mb[, uncompressed_mb]}] of the image's layers as a push compresses them
    (gzip), in order.

    Pushed to a local OCI layout rather than a registry: the bytes are the same, and nothing
    leaves the machine. The size a host pulls is the sum; a layer it already has (same
    uncompressed content, `diff_id`) is not pulled.
    """
    import gzip
    import tempfile

    with tempfile.TemporaryDirectory(prefix="frl-oci-", dir=BUILD_DIR if BUILD_DIR.exists() else None) as d:
        run("buildah", "push", "--quiet", "--compression-format", "gzip", "--format", "oci", ref, f"oci:{d}:img")
        index = json.loads(Path(d, "index.json").read_text())
        mdig = index["manifests"][0]["digest"].split(":", 1)[1]
        manifest = json.loads(Path(d, "blobs", "sha256", mdig).read_text())
        config = json.loads(Path(d, "blobs", "sha256", manifest["config"]["digest"].split(":", 1)[1]).read_text())
        out = []
        for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
            row = {"digest": layer["digest"], "diff_id": diff_id, "compressed_mb": round(layer["size"] / 1e6, 1)}
            if uncompressed:
                n = 0
                with gzip.open(Path(d, "blobs", "sha256", layer["digest"].split(":", 1)[1])) as f:
                    while chunk := f.read(1 << 22):
                        n += len(chunk)
                row["uncompressed_mb"] = round(n / 1e6, 1)
            out.append(row)
        return out


def compressed_size_mb(ref: str) -> float:
    return round(sum(x["compressed_mb"] for x in compressed_layers(ref)), 1)


def image_size_mb(ref: str) -> float:
    """Uncompressed size of the image's filesystem (what the budget in families.yml means)."""
    with Mounted(ref) as root:
        return round(int(run("du", "-sb", "--apparent-size", str(root)).split()[0]) / 1e6, 1)


# --- wheelhouse ---------------------------------------------------------------------------


def locks_of(context: Path, variant: str = "") -> list[Path]:
    """Every lock a build of this context (and variant) installs from: each must be in the wheelhouse.

    A variant's own lock is `requirements-<variant>.txt` beside the main one. Fetching only
    requirements.txt once left the triton variant to a wheelhouse that happened to be there.
    """
    locks = [context / "requirements.txt", FAMILIES_DIR / "build-requirements.txt"]
    if variant and (context / f"requirements-{variant}.txt").is_file():
        locks.append(context / f"requirements-{variant}.txt")
    return locks


def wheelhouse(context: Path, python: str, variant: str = "") -> tuple[Path, str]:
    """Fetch the locked wheels (pip checks each hash) into the build context; return (dir, pip wheel)."""
    wheels = context / "wheels"
    wheels.mkdir(exist_ok=True)
    for lock in locks_of(context, variant):
        run("python3", "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--require-hashes",
            "--no-deps", "--only-binary=:all:", "--python-version", python, "--platform", "manylinux_2_28_x86_64",
            "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux1_x86_64",
            "--platform", "any",
            "-d", str(wheels), "-r", str(lock))
    pip_wheel = next(p.name for p in wheels.glob("pip-*.whl"))
    return wheels, pip_wheel


# --- family -----------------------------------------------------------------------------


@dataclass
class BuildResult:
    family: str
    tag: str
    local_ref: str
    digest: str
    base: str
    size_mb: float
    budget_mb: int
    sbom: str
    pushed: str = ""
    notes: list[str] = field(default_factory=list)
    measure: str = "uncompressed"

    def to_json(self) -> dict:
        return asdict(self)


def _checked_revision(allow_dirty: bool, push: bool, rev: Revision | None = None) -> Revision:
    rev = rev or revision()
    if rev.dirty and not allow_dirty:
        raise BuildError("families/ has uncommitted changes: the tag would not name what is built."
                         " Commit first, or pass --allow-dirty (tags -dirty, never pushed)")
    if rev.dirty and push:
        raise BuildError("refusing to push a -dirty build; commit first")
    return rev


def build_family(family: str, registry: str = "", push: bool = False, allow_dirty: bool = False,
                 insecure: bool = False, rev: Revision | None = None, variant: str = "") -> BuildResult:
    """Build a family (or a variant of it, named `<family>-<variant>`) and gate its size.

    A family with `base_family` is built FROM that family's exact digest (built first when this
    machine does not have it for this commit), so it shares all of its layers.
    """
    fams = load()
    fam = fams.family(family)
    if fam.build == "static":
        raise BuildError(f"{family} is checked statically only: {fam.why_static}")
    if variant and variant not in fam.variants:
        raise BuildError(f"{family} has no variant {variant!r}; families.yml lists: {', '.join(fam.variants) or 'none'}")
    rev = _checked_revision(allow_dirty, push, rev)
    notes = []
    if shutil.which("docker") and subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode == 0:
        notes.append("buildx present: CI uses --cache-to/--cache-from type=registry (.github/workflows/images.yml)")
    else:
        notes.append("no buildx here: no registry cache (type=registry); built every layer afresh with buildah"
                     " (the pip wheel cache mount and the fetched wheelhouse still make it fast)")
    name = f"{family}-{variant}" if variant else family
    if fam.base_family:
        base = family_pinned(fam.base_family, rev, allow_dirty)
        notes.append(f"FROM {base}: every layer of {fam.base_family} is shared")
    else:
        base = base_image(fams, fam.base, rev.epoch)
    ctx = FAMILIES_DIR / family
    size = {"measure": fam.size_measure, "ceiling_mb": fam.size_ceiling_mb}
    if fam.kind == "proxy":  # HAProxy from the base's Debian packages: nothing to fetch, built offline
        return _build(name, ctx, rev, {"BASE": base}, base, fam.size_budget_mb, "families.yml", network="none",
                      with_emitter=False, registry=registry, push=push, insecure=insecure, notes=notes, **size)
    _, pip_wheel = wheelhouse(ctx, fam.python, variant)
    args = {"BASE": base, "PIP_WHEEL": pip_wheel, **({"TRITON": "1" if variant == "triton" else "0"} if fam.variants else {})}
    # Offline unless the family installs Debian packages (apt needs the archive).
    return _build(name, ctx, rev, args, base, fam.size_budget_mb, "families.yml",
                  network="host" if fam.allowed_system_packages else "none", with_emitter=True,
                  registry=registry, push=push, insecure=insecure, notes=notes, **size)


def family_pinned(family: str, rev: Revision, allow_dirty: bool) -> str:
    """`<local ref>@<digest>` of `family` for this commit: this machine's build if it has one, else a new build."""
    local = f"{LOCAL}/{family}:{rev.tag}"
    if subprocess.run(["buildah", "inspect", "--type", "image", local], capture_output=True).returncode != 0:
        build_family(family, allow_dirty=allow_dirty, rev=rev)
    return f"{LOCAL}/{family}@{image_digest(local)}"


def inputs_key(name: str, ctx: Path, args: dict[str, str], with_emitter: bool) -> str:
    """Everything a build is made from, hashed: the build arguments (commit, base digest, ...), the context's
    files (its Dockerfile and locks; fetched wheels are named by the locks), and the shared SBOM/emitter code.

    Two builds with the same key give the same image (the builds are reproducible), so the second
    may reuse the first's. A -dirty tree changes the key through its files, not through its tag.
    """
    h = hashlib.sha256(json.dumps({"name": name, "args": args}, sort_keys=True).encode())
    files = [p for p in sorted(ctx.rglob("*")) if p.is_file() and "wheels" not in p.relative_to(ctx).parts
             and p.name not in ("sbom_gen.py",) and "emitter" not in p.relative_to(ctx).parts]
    files.append(FAMILIES_DIR / "sbom_gen.py")
    if with_emitter:
        files += sorted(p for p in (FAMILIES_DIR / "emitter").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def _cached(name: str, local: str, key: str) -> BuildResult | None:
    """This machine's earlier build with the same inputs, if its image is still here under that digest."""
    rec = BUILD_DIR / "cache" / f"{name}.json"
    try:
        saved = json.loads(rec.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if saved.get("key") != key or saved.get("result", {}).get("local_ref") != local:
        return None
    r = subprocess.run(["buildah", "inspect", "--type", "image", "--format", "{{.FromImageDigest}}", local], capture_output=True, text=True)
    if r.returncode != 0 or r.stdout.strip() != saved["result"]["digest"] or not Path(saved["result"]["sbom"]).is_file():
        return None
    res = BuildResult(**{k: v for k, v in saved["result"].items() if k != "pushed"})
    res.notes = [*res.notes, f"reused this machine's build of the same inputs ({key[:12]}): same commit, same locks, same digest"]
    return res


def _build(name: str, ctx: Path, rev: Revision, args: dict[str, str], base: str, budget_mb: int, budget_source: str,
           network: str, with_emitter: bool, registry: str, push: bool, insecure: bool, notes: list[str],
           measure: str = "uncompressed", ceiling_mb: int | None = None) -> BuildResult:
    """The part families and services share: bud with commit-derived labels, then digest, size, SBOM, push.

    A build whose inputs this machine already built is reused (FLEETROLL_BUILD_FRESH=1, or the
    tests that prove reproducibility, build again).
    """
    args = {**args, "REVISION": rev.sha, "CREATED": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rev.epoch)),
            "SOURCE": f"fleetroll/{ctx.parent.name}/{name}", "VERSION": rev.tag, "SOURCE_DATE_EPOCH": str(rev.epoch)}
    local = f"{LOCAL}/{name}:{rev.tag}"
    key = inputs_key(name, ctx, args, with_emitter)
    with _one_build_at_a_time(name):
        return _build_once(name, ctx, rev, args, base, budget_mb, budget_source, network, with_emitter, registry, push,
                           insecure, notes, measure, ceiling_mb, local, key)


@contextmanager
def _one_build_at_a_time(name: str) -> Iterator[None]:
    """Two builds of one family at once (two test workers, two operators) would share its build context:
    one's clean-up removes the sbom_gen.py the other is copying. The second waits, then reuses the first."""
    cache = BUILD_DIR / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"{name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _build_once(name: str, ctx: Path, rev: Revision, args: dict[str, str], base: str, budget_mb: int, budget_source: str,
                network: str, with_emitter: bool, registry: str, push: bool, insecure: bool, notes: list[str],
                measure: str, ceiling_mb: int | None, local: str, key: str) -> BuildResult:
    reused = None if os.environ.get("FLEETROLL_BUILD_FRESH") == "1" else _cached(name, local, key)
    if reused is not None:
        if push:
            reused.pushed = push_image(local, f"{registry}/{name}:{rev.tag}", insecure)
        return reused
    shutil.copy(FAMILIES_DIR / "sbom_gen.py", ctx / "sbom_gen.py")
    if with_emitter:
        shutil.copytree(FAMILIES_DIR / "emitter", ctx / "emitter", dirs_exist_ok=True)
    try:
        # No layer cache: buildah keys cached COPY layers by content, not by --timestamp, so a
        # cache warmed by another commit would hand back layers stamped with that commit's time.
        run("buildah", "bud", "--quiet", "--isolation", "oci", "--network", network, "--no-cache",
            "--timestamp", str(rev.epoch), *[x for k, v in args.items() for x in ("--build-arg", f"{k}={v}")],
            "-t", local, "-f", str(ctx / "Dockerfile"), str(ctx))
    finally:
        (ctx / "sbom_gen.py").unlink(missing_ok=True)
        shutil.rmtree(ctx / "emitter", ignore_errors=True)
    size = compressed_size_mb(local) if measure == "compressed" else image_size_mb(local)
    result = BuildResult(name, rev.tag, local, image_digest(local), base, size, budget_mb,
                         str(extract_sbom(local, name, rev.tag)), notes=notes, measure=measure)
    ok, said = size_verdict(f"{name}:{rev.tag}", size, budget_mb, ceiling_mb, measure, budget_source)
    if not ok:
        raise BuildError(said)
    result.notes.append(said)
    cache = BUILD_DIR / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{name}.{os.getpid()}"
    tmp.write_text(json.dumps({"key": key, "result": result.to_json()}))
    os.replace(tmp, cache / f"{name}.json")
    if push:
        result.pushed = push_image(local, f"{registry}/{name}:{rev.tag}", insecure)
    return result


def extract_sbom(ref: str, family: str, tag: str) -> Path:
    """Copy the SBOM baked into the image out next to where its Trivy report goes, and validate it."""
    from .sbom import validate

    ctr = run("buildah", "from", "--quiet", ref).strip()
    try:
        mnt = Path(run("buildah", "mount", ctr).strip())
        dest = ARTIFACTS / family / tag / "sbom.spdx.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(mnt / "usr/share/fleetroll/sbom.spdx.json", dest)
    finally:
        run("buildah", "rm", ctr)
    validate(dest)
    return dest


class Mounted:
    """`with Mounted(ref) as root:` — the image's filesystem, read-only use, cleaned up after."""

    def __init__(self, ref: str):
        self.ref = ref

    def __enter__(self) -> Path:
        self.ctr = run("buildah", "from", "--quiet", "--pull-never", self.ref).strip()
        return Path(run("buildah", "mount", self.ctr).strip())

    def __exit__(self, *exc) -> None:
        run("buildah", "rm", self.ctr)


SERVICES_DIR = ROOT / "services"


def build_service(name: str, family_ref: str | None = None, registry: str = "", push: bool = False,
                  allow_dirty: bool = False, insecure: bool = False) -> BuildResult:
    """Build a service image on its family (services/<name>/service.yml names it), same rules."""
    import yaml

    ctx = SERVICES_DIR / name
    meta = yaml.safe_load((ctx / "service.yml").read_text())
    fam = load().family(meta["family"])
    rev = _checked_revision(allow_dirty, push)
    family_ref = family_ref or f"{LOCAL}/{meta['family']}:{rev.tag}"
    family_pinned = f"{family_ref.split('@')[0]}@{image_digest(family_ref)}"
    _, pip_wheel = wheelhouse(ctx, fam.python)
    return _build(name, ctx, rev, {"FAMILY_IMAGE": family_pinned, "PIP_WHEEL": pip_wheel}, family_pinned,
                  int(meta["size_budget_mb"]), f"services/{name}/service.yml", network="none", with_emitter=False,
                  registry=registry, push=push, insecure=insecure, notes=[])


def push_image(local: str, dest: str, insecure: bool) -> str:
    digest_file = BUILD_DIR / f"pushed-{os.getpid()}.digest"
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    run("buildah", "push", "--quiet", *(["--tls-verify=false"] if insecure else []), "--digestfile", str(digest_file),
        local, f"docker://{dest}")
    return f"{dest}@{digest_file.read_text().strip()}"
