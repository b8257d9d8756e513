"""The security gate (risk R4): Trivy HIGH/CRITICAL findings block an image at rollout.

Trivy is not installable here, so fleetroll consumes Trivy's own JSON format
(`Results[].Vulnerabilities[].Severity`), stored next to the image's SBOM as
<artifacts>/<image>/<tag>/trivy.json. A finding becomes a WARN only when the
risk-acceptance file lists that CVE for that image with an owner, a reason and an
expiry date that has not passed; the ledger records every acceptance used.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

BLOCKING = ("HIGH", "CRITICAL")


class Acceptance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="image repository name, e.g. family-cpu-py311")
    cve: str = Field(pattern=r"^(CVE|GHSA)-[\w-]+$")
    owner: str = Field(min_length=1)
    reason: str = Field(min_length=1)
    expires: dt.date


class Acceptances(BaseModel):
    model_config = ConfigDict(extra="forbid")
    acceptances: list[Acceptance] = []


@dataclass
class Verdict:
    image: str
    status: str  # pass | warn | refuse
    reasons: list[str] = field(default_factory=list)
    accepted: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def findings(report: dict) -> list[dict]:
    out = []
    for res in report.get("Results") or []:
        for v in res.get("Vulnerabilities") or []:
            if str(v.get("Severity", "")).upper() in BLOCKING:
                out.append({"cve": v.get("VulnerabilityID", "?"), "severity": v["Severity"].upper(),
                            "package": v.get("PkgName", "?"), "installed": v.get("InstalledVersion", ""),
                            "target": res.get("Target", "")})
    return out


def load_acceptances(path: Path | None) -> list[Acceptance]:
    if path is None or not path.exists():
        return []
    try:
        return Acceptances.model_validate(yaml.safe_load(path.read_text()) or {}).acceptances
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: risk-acceptance file is not valid: {problems}; each entry needs image, cve, owner, reason, expires (YYYY-MM-DD)") from None


def evaluate(image: str, tag: str, report: dict | None, acceptances: list[Acceptance], missing_report: str,
             today: dt.date, report_path: str = "") -> Verdict:
    ref = f"{image}:{tag}"
    if report is None:
        msg = f"{ref}: no Trivy report at {report_path or '<artifacts>/<image>/<tag>/trivy.json'}"
        if missing_report == "warn":
            return Verdict(ref, "warn", [msg + " (policy: warn)"])
        return Verdict(ref, "refuse", [msg + "; scan the image (trivy image --format json) or set security.missing_report: warn"])
    v = Verdict(ref, "pass")
    for f in findings(report):
        acc = next((a for a in acceptances if a.image == image and a.cve == f["cve"]), None)
        what = f"{f['cve']} ({f['severity']}) in {f['package']} {f['installed']}"
        if acc is None:
            v.status = "refuse"
            v.reasons.append(f"{ref}: {what}; fix the image, or record a risk acceptance (R4) for it")
        elif acc.expires < today:
            v.status = "refuse"
            v.reasons.append(f"{ref}: {what}; its risk acceptance by {acc.owner} expired on {acc.expires}")
        else:
            if v.status == "pass":
                v.status = "warn"
            v.reasons.append(f"{ref}: {what} accepted by {acc.owner} until {acc.expires}: {acc.reason}")
            v.accepted.append({"image": image, "tag": tag, "cve": acc.cve, "owner": acc.owner, "reason": acc.reason,
                               "expires": str(acc.expires)})
    return v


def check(image: str, tag: str, artifacts: Path, acceptances_path: Path | None, missing_report: str,
          today: dt.date | None = None) -> Verdict:
    path = artifacts / image / tag / "trivy.json"
    report = json.loads(path.read_text()) if path.exists() else None
    return evaluate(image, tag, report, load_acceptances(acceptances_path), missing_report, today or dt.date.today(), str(path))
