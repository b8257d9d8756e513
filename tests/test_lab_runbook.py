"""CI proves the runbook true: the whole of docs/runbook.md against the lab, with --yes.

It brings up its own lab (step `setup`), includes a deliberate bad release that must be
rolled back, and needs a committed tree (the family build refuses a dirty one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab import fleet
from playbooks import ledger
from playbooks.images.build import revision

from . import conftest

pytestmark = [pytest.mark.lab, pytest.mark.images, pytest.mark.stage(1)]  # it replaces the lab
ROOT = Path(__file__).resolve().parent.parent


def test_runbook_runs_end_to_end_against_the_lab(lab_session, tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if revision().dirty:
        if os.environ.get("CI"):
            pytest.fail("CI checkout is dirty")
        pytest.skip("uncommitted changes in families/: the runbook builds from the commit")
    conftest._current.clear()  # the runbook's setup step replaces the lab
    led = tmp_path / "ledger.jsonl"
    env = {**os.environ, "FLEETROLL_LAB": "1", "FLEETROLL_INVENTORY": str(fleet.LAB_DIR / "inventory" / "fleet.yml"),
           "FLEETROLL_ACCEPTANCES": str(fleet.LAB_DIR / "risk-acceptances.yml"), "FLEETROLL_LEDGER": str(led)}
    fab = str(Path(sys.executable).with_name("fab"))
    r = subprocess.run([fab, "runbook", "docs/runbook.md", "--yes", "--json"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1200)
    conftest._current["key"] = ("runbook",)  # a lab is up; the next ensure_lab() replaces it
    assert r.returncode == 0, r.stderr[-4000:]
    results = json.loads(r.stdout)
    assert [x["id"] for x in results][-1] == "risk-accepted"
    assert all(x["ok"] for x in results)
    bad = next(x for x in results if x["id"] == "bad-release")
    assert bad["exit_code"] == 4 and any("the old container itself (pinned as" in line for line in bad["output_tail"])
    monkeypatch.setenv("FLEETROLL_LEDGER", str(led))
    steps = [x for x in ledger.read() if x["kind"] == "runbook-step"]
    assert len(steps) == len(results) and all(s["ok"] for s in steps)
