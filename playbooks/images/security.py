"""The security gate (risk R4): Trivy HIGH/CRITICAL findings block an image at rollout.

Trivy is not installable here, so fleetroll consumes Trivy's own JSON format
(`Results[].Vulnerabilities[].Severity`), stored next to the image's SBOM as
<artifacts>/<image>/<tag>/trivy.json. A report counts only for the image it scanned: a
Trivy report (SchemaVersion 2, Results a list) whose Metadata.RepoDigests names the
digest the plan is about to run. A report of another digest counts as missing (and
follows `missing_report`); one that is not a Trivy report refuses, with the reason.
A finding (HIGH, CRITICAL, or a severity Trivy could not rate) becomes a WARN only when
the risk-acceptance file lists that CVE for that image with an owner, a reason and an
expiry date that has not passed; the ledger records every acceptance used.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

BLOCKING = ("HIGH", "CRITICAL", "UNKNOWN")  # unrated is not "fine"


class Acceptance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="image repository name, e.g. family-cpu-py311")
    cve: str = Field(pattern=r"^(CVE|GHSA)-[\w-]+$")
    owner: str = Field(min_length=1)
    reason: str = Field(min_length=1)
    expires: dt.date
    # The digest the acceptance was decided for (the image the report scanned). Without one it covers every
    # digest of the image, and the verdict says so; with one, only that image.
    digest: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")


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


class BadReport(ValueError):
    pass


def report_problem(report: object, digest: str) -> tuple[str, str] | None:
    """("malformed" | "other-digest", why) if this report cannot vouch for `digest`; None if it can. Pure."""
    if not isinstance(report, dict):
        return "malformed", f"not a Trivy JSON report (a {type(report).__name__}, not an object)"
    if report.get("SchemaVersion") != 2:
        return "malformed", f"not a Trivy JSON report (SchemaVersion {report.get('SchemaVersion')!r}, expected 2)"
    if not isinstance(report.get("Results", []), list):
        return "malformed", "Results is not a list"
    for res in report.get("Results") or []:
        if not isinstance(res, dict) or not isinstance(res.get("Vulnerabilities") or [], list):
            return "malformed", "a Results entry is not an object with a Vulnerabilities list"
    digests = [d.rsplit("@", 1)[-1] for d in ((report.get("Metadata") or {}).get("RepoDigests") or []) if isinstance(d, str)]
    if not digests:
        return "other-digest", "the report names no image digest (Metadata.RepoDigests), so it vouches for nothing"
    if digest not in digests:
        return "other-digest", f"the report is for {', '.join(d[:19] for d in digests)}, not the planned {digest[:19]}"
    return None


def findings(report: dict) -> list[dict]:
    out = []
    for res in report.get("Results") or []:
        for v in res.get("Vulnerabilities") or []:
            severity = str(v.get("Severity") or "UNKNOWN").upper()
            if severity in BLOCKING or severity not in ("LOW", "MEDIUM"):
                out.append({"cve": v.get("VulnerabilityID", "?"), "severity": severity,
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


def evaluate(image: str, tag: str, report: object | None, acceptances: list[Acceptance], missing_report: str,
             today: dt.date, report_path: str = "", digest: str = "", max_days: int = 90) -> Verdict:
    ref = f"{image}:{tag}"
    where = report_path or "<artifacts>/<image>/<tag>/trivy.json"
    missing = f"{ref}: no Trivy report at {where}"
    if report is not None:
        problem = report_problem(report, digest)
        if problem and problem[0] == "malformed":
            return Verdict(ref, "refuse", [f"{ref}: {where} is {problem[1]}; replace it with trivy image --format json output"])
        if problem:
            missing = f"{ref}: the Trivy report at {where} does not count: {problem[1]}"
            report = None
    if report is None:
        if missing_report == "warn":
            return Verdict(ref, "warn", [missing + " (policy: warn)"])
        return Verdict(ref, "refuse", [missing + "; scan this digest (trivy image --format json) or set security.missing_report: warn"])
    v = Verdict(ref, "pass")
    for f in findings(report):
        mine = [a for a in acceptances if a.image == image and a.cve == f["cve"]]
        acc = next((a for a in mine if a.digest == digest), None) or next((a for a in mine if a.digest is None), None)
        what = f"{f['cve']} ({f['severity']}) in {f['package']} {f['installed']}"
        if acc is None and mine:
            v.status = "refuse"
            v.reasons.append(f"{ref}: {what}; its risk acceptance is for {mine[0].digest[:19]}…, not this digest {digest[:19]}…:"
                             " an acceptance covers the image it was decided for; record one for this digest")
        elif acc is None:
            v.status = "refuse"
            v.reasons.append(f"{ref}: {what}; fix the image, or record a risk acceptance (R4) for it")
        elif acc.expires < today:
            v.status = "refuse"
            v.reasons.append(f"{ref}: {what}; its risk acceptance by {acc.owner} expired on {acc.expires}")
        elif (acc.expires - today).days > max_days:
            v.status = "refuse"
            v.reasons.append(f"{ref}: {what}; its risk acceptance by {acc.owner} runs to {acc.expires}, more than {max_days}"
                             f" days ahead (security.max_acceptance_days): give it an expiry by {today + dt.timedelta(days=max_days)}")
        else:
            if v.status == "pass":
                v.status = "warn"
            bound = "" if acc.digest else " (for any digest of the image: add digest: to bind it to this one)"
            v.reasons.append(f"{ref}: {what} accepted by {acc.owner} until {acc.expires}{bound}: {acc.reason}")
            v.accepted.append({"image": image, "tag": tag, "cve": acc.cve, "owner": acc.owner, "reason": acc.reason,
                               "expires": str(acc.expires), **({"digest": acc.digest} if acc.digest else {})})
    return v


def check(image: str, tag: str, digest: str, artifacts: Path, acceptances_path: Path | None, missing_report: str,
          today: dt.date | None = None, max_days: int = 90) -> Verdict:
    path = artifacts / image / tag / "trivy.json"
    report: object | None = None
    if path.exists():
        try:
            report = json.loads(path.read_text())
        except ValueError as exc:
            return Verdict(f"{image}:{tag}", "refuse", [f"{image}:{tag}: {path} is not JSON ({exc}); replace it with trivy output"])
    return evaluate(image, tag, report, load_acceptances(acceptances_path), missing_report, today or dt.date.today(), str(path), digest,
                    max_days)
