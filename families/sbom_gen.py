"""Write an SPDX 2.3 JSON SBOM of the filesystem it runs in (stdlib only).

Runs inside the family image at build time (so the SBOM describes exactly what was
installed and is baked in at /usr/share/fleetroll/sbom.spdx.json), and on the build
machine against a mounted image root. Deterministic: the creation time comes from
SOURCE_DATE_EPOCH and packages are sorted, so the same inputs give the same bytes.

    python3 sbom_gen.py ROOT NAME VERSION OUT
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path


def dpkg_packages(root: Path) -> list[dict]:
    status = root / "var/lib/dpkg/status"
    if not status.exists():
        return []
    out = []
    for block in status.read_text(errors="replace").split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", block, re.M))
        if fields.get("Package") and "installed" in fields.get("Status", ""):
            out.append({"name": fields["Package"], "version": fields.get("Version", ""), "type": "deb",
                        "arch": fields.get("Architecture", "")})
    return out


def python_packages(root: Path) -> list[dict]:
    out = []
    for meta in sorted(root.glob("opt/venv/lib/python3*/site-packages/*.dist-info/METADATA")) + sorted(
        root.glob("usr/lib/python3/dist-packages/*.dist-info/METADATA")
    ):
        msg = email.parser.Parser().parsestr(meta.read_text(errors="replace"), headersonly=True)
        out.append({"name": msg.get("Name", ""), "version": msg.get("Version", ""), "type": "pypi"})
    return out


def _spdx_id(kind: str, name: str, version: str) -> str:
    return "SPDXRef-" + re.sub(r"[^A-Za-z0-9.-]", "-", f"{kind}-{name}-{version}")


def sbom(root: Path, name: str, version: str) -> dict:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", "0"))))
    pkgs = sorted(dpkg_packages(root) + python_packages(root), key=lambda p: (p["type"], p["name"].lower(), p["version"]))
    packages, rels, seen = [], [], set()
    for p in pkgs:
        sid = _spdx_id(p["type"], p["name"], p["version"])
        if sid in seen:
            continue
        seen.add(sid)
        purl = (f"pkg:deb/debian/{p['name']}@{p['version']}?arch={p['arch']}" if p["type"] == "deb"
                else f"pkg:pypi/{p['name'].lower()}@{p['version']}")
        packages.append({
            "SPDXID": sid, "name": p["name"], "versionInfo": p["version"], "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False, "licenseConcluded": "NOASSERTION", "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION", "supplier": "NOASSERTION",
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl}],
        })
        rels.append({"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": sid})
    digest = hashlib.sha256(json.dumps(packages, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{name}-{version}",
        "documentNamespace": f"https://fleetroll.invalid/spdx/{name}/{version}/{digest}",
        "creationInfo": {"created": created, "creators": ["Tool: fleetroll-sbom_gen-1"]},
        "packages": packages,
        "relationships": rels,
    }


def main(argv: list[str]) -> int:
    root, name, version, out = argv[1:5]
    doc = sbom(Path(root), name, version)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
