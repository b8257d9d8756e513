"""families/families.yml: the machine-readable list of family images and their bases."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

ROOT = Path(__file__).resolve().parent.parent.parent
FAMILIES_DIR = ROOT / "families"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Base(_Strict):
    suite: str = "bookworm"
    include: list[str]
    prune: bool = False


class Family(_Strict):
    # python: a Python family (wheelhouse, emitter); proxy: the HAProxy image (no Python dependencies of its own)
    kind: Literal["python", "proxy"] = "python"
    base: str
    python: str = Field(pattern=r"^3\.\d+$")
    gpu: bool = False
    size_budget_mb: int = Field(gt=0)
    # What the budget measures: the image's files (uncompressed), or the bytes a host pulls (compressed, as pushed).
    size_measure: Literal["uncompressed", "compressed"] = "uncompressed"
    # Over the budget but within the ceiling: built, with a warning. Over the ceiling: refused.
    size_ceiling_mb: int | None = Field(default=None, gt=0)
    # Built FROM this family's exact digest (its layers shared, pulled once per host); only its own wheels added.
    base_family: str | None = None
    # Build variants (`fab build --family F --variant V`): e.g. triton, which only torch.compile needs.
    variants: list[Literal["triton"]] = []
    cuda_arch_list: str = ""
    allowed_system_packages: list[str] = []
    build: Literal["ci", "slow", "static"] = "ci"
    why_static: str = ""


class Families(_Strict):
    bases: dict[str, Base]
    families: dict[str, Family]

    def family(self, name: str) -> Family:
        if name not in self.families:
            raise SystemExit(f"unknown family {name!r}; families.yml lists: {', '.join(self.families)}")
        return self.families[name]


def load(path: Path | None = None) -> Families:
    path = path or FAMILIES_DIR / "families.yml"
    try:
        fams = Families.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as exc:
        raise SystemExit(f"{path}: {exc}") from None
    for name, fam in fams.families.items():
        if fam.base_family and fam.base_family not in fams.families:
            raise SystemExit(f"{path}: families.{name}.base_family: unknown family {fam.base_family!r}")
        if fam.size_ceiling_mb is not None and fam.size_ceiling_mb < fam.size_budget_mb:
            raise SystemExit(f"{path}: families.{name}.size_ceiling_mb: {fam.size_ceiling_mb} is below its budget"
                             f" {fam.size_budget_mb}; fix: a ceiling at or above the budget")
        if fam.base not in fams.bases:
            raise SystemExit(f"{path}: families.{name}.base: unknown base {fam.base!r}; bases: {', '.join(fams.bases)}")
    return fams
