"""A secret rotated on a host after its container was created: the container keeps the old value; status says so.

Secret values are never compared (they never leave the host): the file's modification time
against the container's own start is what the host can say without reading a value.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from agent import facts, secrets
from playbooks import status
from playbooks.inventory import load

from .conftest import ROOT


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".123456789Z"


@pytest.fixture
def sdir(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETROLL_SECRETS_DIR", str(tmp_path))
    return tmp_path


def _secret(d, name: str, mtime: float) -> None:
    (d / name).write_text("value\n")
    os.utime(d / name, (mtime, mtime))


def test_a_secret_rewritten_after_the_start_is_changed_one_before_is_not_and_a_missing_one_is_gone(sdir):
    now = time.time()
    started = int(now) - 600 + 0.9  # Created is read to the second: the create is known to lie within [int, int + 1)
    _secret(sdir, "hf_token", started + 300)  # rotated 5 minutes after the start
    _secret(sdir, "db_password", started - 3600)
    _secret(sdir, "same_second", started - 0.5)  # written before the start, in its second: never claimed as a rotation
    label = json.dumps({"HF_TOKEN": "hf_token", "DB": {"secret": "db_password", "as": "file"}, "X": "same_second",
                        "REPORT": {"report_key": "report_secret"}})
    assert secrets.since_created(label, _stamp(started), now) == {"changed": ["hf_token"], "gone": ["report_secret"]}
    assert secrets.since_created(json.dumps({"DB": {"secret": "db_password", "as": "file"}}), _stamp(started), now) == {}
    assert secrets.since_created("not json", _stamp(started), now) == {}
    assert secrets.since_created(label, "", now) == {}, "no start time: nothing claimed"


def test_facts_carry_it_only_for_containers_given_secrets(sdir):
    now = time.time()
    _secret(sdir, "hf_token", now - 10)
    given = {"Config": {"Labels": {"io.fleetroll.secret-env": json.dumps({"HF_TOKEN": "hf_token"})}},
             "Created": _stamp(now - 600), "State": {"StartedAt": _stamp(now - 5)}}
    assert facts._secrets_since_created(given) == {"secrets_since_created": {"changed": ["hf_token"]}}, \
        "restarted since the rotation (a reboot, its restart policy): still the value it was created with"
    assert facts._secrets_since_created({"Config": {"Labels": {}}, "Created": _stamp(now - 600)}) == {}


def test_status_names_the_rotated_secret_and_the_restart_that_takes_it():
    inv = load(ROOT / "inventory" / "fleet.yml")
    s, h = "rag-api", "pc2"
    c = {"name": s, "tag": inv.fleet.services[s].tag, "digest": "sha256:" + "ab" * 32, "status": "running", "running": True,
         "secrets_since_created": {"changed": ["hf_token"], "gone": ["db_password"]}}
    row = status._service_row(inv, h, s, c, {}, None)
    assert "secret hf_token changed on the host since the container was created" in row["drift"]
    assert f"fab restart -s {s} -H {h}" in row["drift"]
    assert f"secret db_password is no longer on the host; the next start of {s} will be refused" in row["drift"]
    assert "secret" not in status._service_row(inv, h, s, {**c, "secrets_since_created": {}}, {}, None)["drift"]
