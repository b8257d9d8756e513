"""The ledger's `inventory_git_sha`: the inventory's commit, `-dirty` when the file differs, "" outside git.

Started before a rollout's preflight and read after it (ledger.inventory_git_sha_later), so the two git processes
run beside the hosts' facts instead of between the facts and the pull.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from playbooks import ledger

pytestmark = pytest.mark.skipif(not shutil.which("git"), reason="needs git")


def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_the_commit_then_dirty_then_nothing_outside_git(tmp_path):
    repo = tmp_path / "infra"
    (repo / "inventory").mkdir(parents=True)
    inv = repo / "inventory" / "fleet.yml"
    inv.write_text("hosts: {}\n")
    git(repo, "init", "-q")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "fleet")
    head = git(repo, "rev-parse", "HEAD")
    later = ledger.inventory_git_sha_later(inv)  # started first, answered later: the rollout's order
    assert later() == head == ledger.inventory_git_sha(inv)
    (repo / "inventory" / "other.yml").write_text("x: 1\n")  # another file's change is not the inventory's
    assert ledger.inventory_git_sha(inv) == head
    inv.write_text("hosts: {a: {}}\n")
    assert ledger.inventory_git_sha(inv) == f"{head}-dirty"
    outside = tmp_path / "plain" / "fleet.yml"
    outside.parent.mkdir()
    outside.write_text("hosts: {}\n")
    assert ledger.inventory_git_sha(outside) == ""


def test_no_git_on_path_is_no_sha(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert ledger.inventory_git_sha(tmp_path / "fleet.yml") == ""
