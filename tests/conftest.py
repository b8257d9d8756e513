"""Shared fixtures. Lab tests run against real sshd, dockerd and a registry (see playbooks/lab)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from playbooks.lab import fleet

_current: dict = {}


def _lab_possible() -> str:
    if os.geteuid() != 0:
        return "lab tests need root"
    missing = [t for t in ("dockerd", "docker-registry", "nsenter", "gcc") if not shutil.which(t)]
    return f"lab tests need {', '.join(missing)}" if missing else ""


def ensure_lab(count: int = 2, extras: tuple[str, ...] = ("bad-driver",)) -> fleet.LabState:
    """Reuse the running lab if it has this shape, else bring up a fresh one (up() cleans first)."""
    why = _lab_possible()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)  # in CI a missing lab is a broken set-up, not a skip
        pytest.skip(why)
    key = (count, extras)
    if _current.get("key") != key:
        _current["state"] = fleet.up(count, list(extras))
        _current["key"] = key
    return _current["state"]


@pytest.fixture(scope="session")
def lab_session():
    yield ensure_lab
    if _current:
        fleet.down()


@pytest.fixture
def lab(lab_session) -> fleet.LabState:
    return lab_session()


def derive_inventory(state: fleet.LabState, tmp: Path, edit=None, edit_phases=None) -> Path:
    """Copy the lab's inventory into tmp, applying edits; the lab's own file stays as written."""
    src = Path(state.inventory)
    fleet_doc = yaml.safe_load(src.read_text())
    phases_doc = yaml.safe_load((src.parent / "phases.yml").read_text())
    if edit:
        edit(fleet_doc)
    if edit_phases:
        edit_phases(phases_doc)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "fleet.yml").write_text(yaml.safe_dump(fleet_doc, sort_keys=False))
    (tmp / "phases.yml").write_text(yaml.safe_dump(phases_doc, sort_keys=False))
    return tmp / "fleet.yml"
