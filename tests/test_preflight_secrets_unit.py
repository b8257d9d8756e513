"""Preflight's `secrets` check: a secret a service's env references must be readable on its host before any host swaps.

Found by an exploratory run: a secret present on mainpc and missing on pc2 passed preflight and the fleet-wide
prepare; mainpc swapped and committed, pc2 refused, and the phase reverted mainpc (exit 4 where 3 was due).
"""

from __future__ import annotations

import json

from agent import secrets
from playbooks import preflight
from playbooks.inventory import load

from .test_inventory import BASE, write


def test_the_host_says_which_secrets_it_could_not_hand_to_a_container_and_never_a_value(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETROLL_SECRETS_DIR", str(tmp_path))
    (tmp_path / "tok").write_text("supersecret-token")
    (tmp_path / "tok").chmod(0o600)
    (tmp_path / "open").write_text("world-readable-value")
    (tmp_path / "open").chmod(0o644)
    out = secrets.problems(["tok", "gone", "open"])
    assert sorted(out) == ["gone", "open"] and "is not on this host" in out["gone"] and "mode 0640 or 0600" in out["open"]
    assert "supersecret-token" not in json.dumps(out) and "world-readable-value" not in json.dumps(out)


def test_preflight_asks_for_every_referenced_secret_and_fails_on_each_one_missing(tmp_path):
    fleet = BASE.replace("    health: {port: 8080}\n", "    health: {port: 8080}\n    env: {TOKEN: {secret: api_token}, PLAIN: x}\n")
    inv = load(write(tmp_path, fleet))
    assert preflight.request_args(inv, "mainpc", "one")["secrets"] == ["api_token"]
    assert preflight.request_args(inv, "mainpc", None)["secrets"] == ["api_token"]
    facts = {"docker": {"ok": True, "containers": []}, "disk": {"free_gb": 100, "path": "/"},
             "secrets": {"api_token": "secret 'api_token' is not on this host (expected /etc/fleetroll/secrets/api_token, …)"}}
    [c] = [c for c in preflight.evaluate(inv, "mainpc", "one", facts) if c.check == "secrets"]
    assert c.status == preflight.FAIL and "(used by api)" in c.detail and c.fix.startswith("place it on mainpc where the line above says, as root")
    assert not [c for c in preflight.evaluate(inv, "mainpc", "one", {**facts, "secrets": {}}) if c.check == "secrets"]
