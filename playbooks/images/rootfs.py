"""The base rootfs a family builds on: mmdebstrap's minimal Debian, shed of what a runtime does not need.

Apart from build.py (the family and service builds) because it is a step of its own: made once
per base and reused, pruned member by member, turned into a `FROM scratch` image pinned by digest.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tarfile
from pathlib import Path

from .spec import Families

# What a runtime-only base sheds: no package manager, perl, docs or Python developer tools.
# Applied by filtering the rootfs tar (mmdebstrap's own clean-up still needs apt inside).
PRUNE = [
    "usr/bin/apt*", "usr/lib/apt", "usr/lib/x86_64-linux-gnu/libapt-*", "var/lib/apt", "var/cache/apt", "etc/apt",
    "usr/lib/x86_64-linux-gnu/libgnutls*", "usr/lib/x86_64-linux-gnu/libp11-kit*", "usr/lib/x86_64-linux-gnu/libtasn1*",
    "usr/lib/python3.11/test", "usr/lib/python3.11/unittest/test",
    "usr/share/perl", "usr/share/perl5", "usr/lib/x86_64-linux-gnu/perl", "usr/lib/x86_64-linux-gnu/perl-base",
    "usr/lib/x86_64-linux-gnu/perl5", "usr/bin/perl*", "usr/lib/x86_64-linux-gnu/libperl.so*",
    "usr/lib/x86_64-linux-gnu/gconv", "usr/share/info", "usr/share/common-licenses",
    "var/cache/debconf", "var/lib/dpkg/info", "usr/share/bash-completion",
    # Python's developer tools and leap-second zone duplicates: not needed to run services.
    "usr/lib/python3.11/pydoc_data", "usr/lib/python3.11/lib2to3", "usr/lib/python3.11/idlelib",
    "usr/lib/python3.11/turtledemo", "usr/lib/python3.11/ensurepip", "usr/lib/python3.11/config-3.11-*",
    "usr/share/zoneinfo/right", "usr/share/zoneinfo/posix",
]
DPKG_EXCLUDES = ["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*", "/usr/share/lintian/*"]


def base_image(fams: Families, name: str, epoch: int) -> str:
    """Make (or reuse) the base rootfs and image; return its reference pinned by digest.

    One at a time per base: two builds at once (two test workers, two operators) would both run
    mmdebstrap into the same rootfs.part.tar; the second waits, then reuses the first's rootfs.
    """
    from .build import _one_build_at_a_time

    with _one_build_at_a_time(f"base-{name}"):
        return _base_image(fams, name)


def _base_image(fams: Families, name: str) -> str:
    from .build import BUILD_DIR, LOCAL, BuildError, image_digest, run

    b = fams.bases[name]
    out = BUILD_DIR / "bases" / name
    out.mkdir(parents=True, exist_ok=True)
    tar = out / "rootfs.tar"
    if not tar.exists():
        if not shutil.which("mmdebstrap"):
            raise BuildError("mmdebstrap is missing: apt-get install mmdebstrap")
        hooks: list[str] = []
        argv = ["mmdebstrap", "--variant=minbase", f"--include={','.join(b.include)}",
                *[f"--dpkgopt=path-exclude={x}" for x in DPKG_EXCLUDES],
                '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/* "$1"/var/cache/ldconfig/aux-cache',
                *hooks, b.suite, str(out / "rootfs.part.tar")]
        run(*argv, env={"SOURCE_DATE_EPOCH": "0"})
        if b.prune:
            prune_tar(out / "rootfs.part.tar", out / "rootfs.pruned.tar")
            os.replace(out / "rootfs.pruned.tar", out / "rootfs.part.tar")
        os.replace(out / "rootfs.part.tar", tar)
    (out / "Dockerfile").write_text('FROM scratch\nADD rootfs.tar /\nCMD ["/usr/bin/python3"]\n')
    ref = f"{LOCAL}/{name}:base"
    run("buildah", "bud", "--quiet", "--isolation", "chroot", "--timestamp", "0", "-t", ref, str(out))
    return f"{ref}@{image_digest(ref)}"


def pruned(name: str) -> bool:
    name = name.removeprefix("./")
    return any(fnmatch.fnmatch(name, pat) or fnmatch.fnmatch(name, pat + "/*") for pat in PRUNE)


def prune_tar(src: Path, dst: Path) -> None:
    """Copy a rootfs tar without the PRUNE paths, member by member (metadata preserved)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        for m in tin:
            if pruned(m.name):
                continue
            tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
