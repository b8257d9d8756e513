"""`fab prune` on one host (agent/prune.py) against the fake daemon: what stays and why.

A week of releases leaves one `-prev` pin per release; prune used to keep every one of them,
so a host kept every image it ever ran. Now the pins go with the versions nothing needs,
and what `fab rollback` would go back to stays whatever `--keep` says.
"""

from __future__ import annotations

import pytest

from agent import facts, lock, prune

from .fakedocker import FakeDaemon
from .test_transaction_unit import REPO, by_service, run, running_old, spec, step

pytestmark = pytest.mark.usefixtures("host_state")
DIGESTS = {n: "sha256:" + c * 64 for n, c in ((2, "b"), (3, "c"), (4, "d"))}


def release(d: FakeDaemon, n: int) -> dict:
    """Release number n (2, 3, ...) of svc, committed; the one before it pinned as <its tag>-prev."""
    d.image(REPO, DIGESTS[n])
    out = run(d, [step(spec(tag=f"2026110{n}-{n}{n}{n}{n}{n}{n}{n}", digest=DIGESTS[n]))], rid=f"r-{n}")
    assert by_service(out)["svc"]["outcome"] == "committed", out
    return out


def week(d: FakeDaemon) -> None:
    running_old(d)  # 20261101-aaaaaaa, rollout r-old
    for n in (2, 3, 4):
        release(d, n)


def names(d: FakeDaemon) -> set[str]:
    return {n for i in d.images.list() for n in i.tags + (i.attrs.get("RepoDigests") or [])}


def test_old_prev_pins_go_and_what_rollback_goes_back_to_stays(daemon, monkeypatch):
    monkeypatch.setattr(facts, "docker_client", lambda timeout=None: daemon)
    week(daemon)
    pins = {n for n in names(daemon) if n.endswith("-prev")}
    assert len(pins) == 3, "one pin per release"
    out = prune.prune_op({"repos": [REPO], "services": ["svc"], "keep": 1, "rollout_id": "prune-1", "operator": "op"})
    assert out["ok"], out
    left = names(daemon)
    assert f"{REPO}@{DIGESTS[4]}" in left, "what runs"
    assert f"{REPO}:20261103-3333333-prev" in left, "release 3: what fab rollback goes back to"
    assert not {f"{REPO}:20261101-aaaaaaa-prev", f"{REPO}:20261102-2222222-prev"} & left, "older pins go"
    why = {x["why"] for x in out["data"]["kept"]}
    assert "svc 20261103-3333333: what fab rollback -s svc goes back to" in why
    gone = {n for x in out["data"]["removed"] for n in x["names"]}
    assert f"{REPO}:20261102-2222222-prev" in gone and out["data"]["failed"] == []
    # and the rollback still finds its image on this host
    back = run(daemon, [{"action": "revert", "spec": spec(tag="20261104-4444444", digest=DIGESTS[4]),
                         "expect_rollout_id": "r-4"}], rid="r-back")
    r = by_service(back)["svc"]
    assert r["outcome"] == "reverted" and r["after_tag"] == "20261103-3333333", r


def test_keep_counts_good_versions_and_a_dry_run_removes_nothing(daemon, monkeypatch):
    monkeypatch.setattr(facts, "docker_client", lambda timeout=None: daemon)
    week(daemon)
    before = names(daemon)
    dry = prune.prune_op({"repos": [REPO], "services": ["svc"], "keep": 3, "dry_run": True})
    assert names(daemon) == before
    assert {n for x in dry["data"]["removed"] for n in x["names"]} == {f"{REPO}:20261101-aaaaaaa-prev"}, dry
    out = prune.prune_op({"repos": [REPO], "services": ["svc"], "keep": 3, "rollout_id": "prune-2"})
    assert {n for x in out["data"]["removed"] for n in x["names"]} == {f"{REPO}:20261101-aaaaaaa-prev"}
    assert f"{REPO}:20261102-2222222-prev" in names(daemon), "release 2 is one of the last 3 good versions"


def test_a_prune_waits_for_no_transaction_it_refuses_while_one_holds_the_lock(daemon, monkeypatch):
    """A rollout's pulled image must not go between its pull and its start."""
    monkeypatch.setattr(facts, "docker_client", lambda timeout=None: daemon)
    week(daemon)
    before = names(daemon)
    held = lock.acquire("someone", "r-5")
    try:
        out = prune.prune_op({"repos": [REPO], "services": ["svc"], "keep": 1, "rollout_id": "prune-3"})
    finally:
        held.release()
    assert not out["ok"] and "nothing was removed" in out["msg"] and names(daemon) == before
    assert prune.prune_op({"repos": [REPO], "services": ["svc"], "keep": 1, "rollout_id": "prune-4"})["ok"]


def test_restarts_do_not_count_as_versions(daemon, monkeypatch):
    """Found by an exploratory run: three restarts of what runs made --keep 3 keep nothing older."""
    monkeypatch.setattr(facts, "docker_client", lambda timeout=None: daemon)
    week(daemon)
    for i in range(3):
        out = run(daemon, [{"action": "restart", "spec": spec(tag="20261104-4444444", digest=DIGESTS[4])}], rid=f"r-restart-{i}")
        assert by_service(out)["svc"]["outcome"] == "committed", out
    dry = prune.prune_op({"repos": [REPO], "services": ["svc"], "keep": 3, "dry_run": True})
    assert {n for x in dry["data"]["removed"] for n in x["names"]} == {f"{REPO}:20261101-aaaaaaa-prev"}, dry
