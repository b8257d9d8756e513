"""Fabric tasks for what surrounds the fleet: family images (build, audit) and the runbook.

Thin like playbooks/tasks.py: each parses its options and calls library code. Kept apart so
the fleet's own tasks read in one module.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .taskkit import Exit, as_run, task
from .taskkit import load_inventory as _inventory
from .taskkit import required as _required


@task(help={"family": "family name from families/families.yml", "push": "push to <registry>/<org> from the inventory",
            "allow-dirty": "build from uncommitted families/ (tag -dirty, never pushed)", "json": "JSON output",
            "inventory": "inventory whose registry to push to, and whose security.artifacts the SBOM is written to",
            "variant": "a variant families.yml lists for the family (e.g. triton); built as <family>-<variant>"})
def build(c, family=None, push=False, allow_dirty=False, json=False, inventory=None, variant=""):
    """Build a family image reproducibly: tag from the commit, SBOM, size budget, optional push."""
    from . import render

    family = _required(family, "family", "fab build --family family-cpu-py311")
    from .images import build as images_build

    inv = _inventory(inventory, json) if push or inventory else None
    registry = f"{inv.fleet.registry.host}/{inv.fleet.registry.org}" if inv else ""
    if inv is not None:
        # The SBOM goes where this inventory's security gate reads (security.artifacts), not ./artifacts: the gate
        # then finds it, and the Trivy report is expected beside it.
        images_build.ARTIFACTS = inv.resolve(inv.fleet.security.artifacts)
    try:
        r = images_build.build_family(family, registry, push, allow_dirty, insecure=bool(inv and inv.fleet.registry.insecure),
                                      variant=variant)
    except images_build.BuildError as exc:
        raise Exit(f"build of {family} failed: {exc}", code=1) from None
    if json:
        render.dump_json(r.to_json())
    else:
        render.say(f"{r.family}:{r.tag}  {r.digest}\n  base {r.base}\n  size {r.size_mb} MB {r.measure} (budget {r.budget_mb} MB)"
                   f"\n  SBOM {r.sbom} (SPDX, validated)")
        if r.pushed:
            render.say(f"  pushed {r.pushed}")
            trivy = images_build.ARTIFACTS / r.family / r.tag / "trivy.json"
            render.say(f"  the security gate reads its Trivy report at {trivy}: trivy image --format json -o {trivy}"
                       f" {r.pushed}")
        for n in r.notes:
            render.say(f"  note: {n}")


@task(help={"family": "family to audit", "image": "image to audit (default: this commit's local build)", "json": "JSON output"})
def audit(c, family=None, image=None, json=False):
    """List what a family image holds and fail on GPU-only deps in CPU families, unpinned or unhashed locks."""
    from . import render

    family = _required(family, "family", "fab audit --family family-cpu-py311")
    from .images import audit as images_audit
    from .images import build as images_build
    from .images import spec

    fams = spec.load()
    fam = fams.family(family)
    ref = image or f"{images_build.LOCAL}/{family}:{images_build.revision().tag}"
    base = f"{images_build.LOCAL}/{fam.base}:base"
    try:
        rep = images_audit.audit_image(family, fam, ref, base)
    except images_build.BuildError as exc:
        raise Exit(f"cannot read {ref}: build it first (fab build --family {family}); {exc}", code=1) from None
    if json:
        render.dump_json(rep.to_json())
    else:
        render.say(render.table([[p["name"], p["version"]] for p in rep.python_packages], ["python package", "version"]))
        render.say(f"\n{len(rep.debian_packages)} Debian packages (see --json)")
        for p in rep.problems:
            render.say(f"FAIL {p}")
        render.say(f"audit of {family} ({ref}, variant {rep.variant}): {'passed' if rep.ok else 'FAILED'}")
    if not rep.ok:
        raise Exit(code=1)


RUNBOOK_HELP = {"path": "the runbook (Markdown), e.g. docs/runbook.md", "from": "start at this step id",
                "yes": "do not ask before each step", "json": "print the step results as JSON at the end"}


@task(help=RUNBOOK_HELP)
def runbook(c, path, from_=None, yes=False, json=False):
    """Run a runbook's steps in order, stop at the first failure, record each step in the ledger."""
    from . import render
    from . import runbook as rb

    if path in ("--help", "-h"):  # PATH is positional, so invoke hands --help to us as its value
        render.say(as_run("Usage: fab runbook PATH [--from STEP] [--yes] [--json]\n\n  ") + (runbook.__doc__ or "").strip() + "\n\nOptions:\n"
                   + "\n".join(f"  --{k:<6} {v}" for k, v in RUNBOOK_HELP.items() if k != "path"))
        return
    p = Path(path)
    if not p.exists():
        raise Exit(f"{path}: no such runbook", code=1)
    try:
        results = rb.run(p, from_, yes, out=sys.stderr if json else sys.stdout)
    except rb.RunbookError as exc:
        raise Exit(str(exc), code=1) from None
    if json:
        render.dump_json([r.to_json() for r in results])
    if not results or not all(r.ok for r in results):
        raise Exit(code=1)

