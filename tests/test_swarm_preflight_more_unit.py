"""Swarm preflight and rollback: what an exploratory run found them missing or saying wrong (no swarm needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from playbooks import transport
from playbooks.errors import RolloutError
from playbooks.swarm import checks, observe, rollback
from playbooks.swarm import secrets as swarm_secrets


@pytest.mark.parametrize("order", [("old", "new"), ("new", "old")])
def test_a_host_that_left_and_joined_again_is_its_ready_node_whatever_the_ids_order(order):
    """Two nodes labelled pc2 (the old one down): whichever id came last used to win, and a down one refused every rollout."""
    status = {"old": ("down", "active"), "new": ("ready", "active")}
    view = observe.View(nodes={"m1": "mainpc", **{n: "pc2" for n in order}},
                        node_status={"m1": ("ready", "active"), **status})
    got = {c.host: c for c in checks.node_checks("mainpc", view, ["mainpc", "pc2"])}
    assert got["pc2"].status == "pass" and "node new" in got["pc2"].detail, got["pc2"]


def test_swarm_keeps_no_previous_spec_after_a_rollback_and_the_refusal_says_so():
    """Docker clears PreviousSpec after a rollback: 'it was deployed once' was false after three deploys."""
    why = rollback.refusal("multi", {"PreviousSpec": None, "Spec": {}})
    assert "or a rollback, Swarm's own or fab's, has used it up" in why and "fab rollback --to TAG" in why


def test_a_secret_missing_on_the_manager_fails_the_swarm_preflight(monkeypatch):
    """Preflight passed and the rollout then refused: the Swarm secrets are made from the manager's own files."""
    from playbooks.schema import SecretRef

    svc = SimpleNamespace(env={"TOKEN": SecretRef(secret="nokey", **{"as": "file"}), "MODE": "x"})
    inv = SimpleNamespace(phase=lambda p: SimpleNamespace(services=["api"]), fleet=SimpleNamespace(services={"api": svc}))
    asked = {}

    def on_manager(inv, pool, manager, names, create):
        asked.update(manager=manager, names=names, create=create)
        raise RolloutError(f"{manager}: Swarm secrets nokey: secret 'nokey' is not on this host; fix: place each as"
                           " <FLEETROLL_SECRETS_DIR>/NAME on the manager")

    class NoPool:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(swarm_secrets, "on_manager", on_manager)
    monkeypatch.setattr(transport, "Pool", NoPool)
    [c] = checks.secret_checks(inv, "cpu", "mainpc")
    assert asked == {"manager": "mainpc", "names": ["nokey"], "create": False}, "read only: nothing is made"
    assert c.host == "mainpc" and c.check == "secrets" and c.status == "fail" and "'nokey' is not on this host" in c.detail
    assert c.fix.startswith("place each as")
