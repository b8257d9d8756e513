"""fleetroll installed from its wheel into a fresh virtual environment, used from an empty directory against the lab."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The `fleetroll` command of a venv that holds the built wheel and its dependencies, nothing of this checkout."""
    d = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the sources: setuptools packs whatever an old build left in ./build/lib
    # (a playbooks/lab/ from before the lab moved out), so building in the checkout would test that.
    src = d / "src"
    src.mkdir()
    for part in ("pyproject.toml", "README.md", "playbooks", "agent", "lab"):
        if (ROOT / part).is_dir():
            shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / part, src / part)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(d / "dist"), str(src)],
                   check=True, capture_output=True, text=True, timeout=300)
    wheel = next((d / "dist").glob("fleetroll-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    # the lab is the repository's test fleet: the wheel neither ships nor needs it (fleetroll runs without it below)
    assert not [n for n in names if n.startswith("lab/") or "/lab/" in n], names
    subprocess.run([sys.executable, "-m", "venv", str(d / "venv")], check=True, timeout=120)
    r = subprocess.run([str(d / "venv/bin/pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return d / "venv/bin/fleetroll"


def run(cmd: Path, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    e = {k: v for k, v in os.environ.items() if k != "FLEETROLL_INVENTORY"}
    e.update(env or {})
    return subprocess.run([str(cmd), *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=180)


def test_installed_command_lists_its_tasks_from_an_empty_directory(installed, tmp_path):
    r = run(installed, "--list", cwd=tmp_path)
    assert r.returncode == 0 and "rollout" in r.stdout and "preflight" in r.stdout, r.stdout + r.stderr
    assert "lab." not in r.stdout  # the lab's tasks belong to `fab` in the repository (fabfile.py)
    # without an inventory it says where it looked and how to give one
    r = run(installed, "status", cwd=tmp_path)
    assert r.returncode == 1 and f"no inventory at {tmp_path}/inventory/fleet.yml" in r.stderr and "Traceback" not in r.stderr


def test_installed_command_runs_preflight_three_ways(installed, lab, tmp_path):
    inv = Path(lab.inventory)
    r = run(installed, "preflight", "-H", "mainpc,pc2", "-j", "-i", str(inv), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["hosts"] == ["mainpc", "pc2"]
    r = run(installed, "preflight", "-H", "mainpc,pc2", cwd=tmp_path, env={"FLEETROLL_INVENTORY": str(inv)})
    assert r.returncode == 0 and "preflight passed" in r.stdout, r.stdout + r.stderr
    # an operator's own repository: ./inventory/fleet.yml of the directory it runs in
    (tmp_path / "repo" / "inventory").mkdir(parents=True)
    for name in ("fleet.yml", "phases.yml"):
        shutil.copy(inv.parent / name, tmp_path / "repo" / "inventory" / name)
    r = run(installed, "preflight", "-H", "mainpc,pc2", cwd=tmp_path / "repo")
    assert r.returncode == 0 and "preflight passed" in r.stdout, r.stdout + r.stderr  # the agent built from the wheel's files ran
