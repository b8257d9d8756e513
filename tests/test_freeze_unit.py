"""Phase freezes: the host writes one after an automatic revert; the controller's decision is pure (no hosts)."""

from __future__ import annotations

import pytest

from agent import freeze
from playbooks.freezes import blocking
from playbooks.plan import Plan, Step

from .test_transaction_unit import NEW_D, REPO, run, running_old, spec, step

pytestmark = pytest.mark.usefixtures("host_state")


def plan(**tags: str) -> Plan:
    return Plan("r-next", "gpu", "op", [Step("mainpc", s, "replace", new_tag=t) for s, t in tags.items()])


def test_a_reverted_release_freezes_its_phase_against_that_tag_on_the_host(daemon):
    running_old(daemon)
    daemon.image(REPO, NEW_D, behaviour="bad")
    out = run(daemon, [step(spec())])
    assert out["services"][0]["outcome"] == "reverted"
    f = freeze.read("gpu")
    assert f["auto"] and f["releases"] == {"svc": "20261126-bbbbbbb"} and f["rollout_id"] == "r-new"
    # the same tag again is stopped; a new tag goes ahead
    facts = {"mainpc": {"freezes": freeze.all_freezes()}}
    msgs = blocking(plan(svc="20261126-bbbbbbb"), facts, "inv/fleet.yml")
    assert len(msgs) == 1 and "svc:20261126-bbbbbbb" in msgs[0] and "fab thaw --phase gpu" in msgs[0] and "r-new" in msgs[0]
    assert blocking(plan(svc="20261127-ccccccc"), facts, "inv/fleet.yml") == []


def test_a_clean_commit_lifts_an_automatic_freeze_but_never_a_manual_one(daemon):
    running_old(daemon)
    freeze.write("gpu", "reverted earlier", "op", auto=True, releases={"svc": "20261120-eeeeeee"}, rollout_id="r-0")
    daemon.image(REPO, NEW_D)
    assert run(daemon, [step(spec())])["ok"]
    assert freeze.read("gpu") is None
    freeze.write("gpu", "GPU driver upgrade tonight", "alice@laptop")
    daemon.image(REPO, "sha256:" + "c" * 64)
    assert run(daemon, [step(spec(tag="20261127-ccccccc", digest="sha256:" + "c" * 64))], rid="r-2")["ok"]
    assert freeze.read("gpu")["reason"] == "GPU driver upgrade tonight"
    # nor does a later automatic revert overwrite the manual freeze's reason
    freeze.write("gpu", "auto", "op", auto=True, releases={"svc": "x"})
    assert not freeze.read("gpu")["auto"]


def test_manual_freeze_blocks_every_rollout_of_its_phase_only():
    facts = {"mainpc": {"freezes": [{"phase": "gpu", "reason": "driver upgrade", "by": "alice@laptop", "ts": 0, "auto": False}]},
             "pc2": {"freezes": [{"phase": "cpu", "reason": "x", "by": "b", "ts": 0, "auto": False}]}}
    msgs = blocking(plan(svc="20261127-ccccccc"), facts, "inv/fleet.yml")
    assert len(msgs) == 1 and "frozen on mainpc by alice@laptop" in msgs[0] and "'driver upgrade'" in msgs[0]


def test_thaw_records_what_it_removed():
    freeze.write("gpu", "why", "alice")
    removed = freeze.thaw("gpu", "bob", "done")
    assert removed["reason"] == "why" and freeze.read("gpu") is None
    assert freeze.thaw("gpu", "bob", "again") is None
    with pytest.raises(ValueError):
        freeze.write("../etc", "x", "y")
