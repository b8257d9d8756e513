"""A secret directory whose container is gone (removed by hand, or a create killed before Docker made it) goes
at the end of the next transaction, under its lock; a directory any container still mounts stays.

Real tmpfs (/dev/shm), fake daemon, as tests/test_secret_files_unit.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent import container_args, secret_files, secret_sweep

from .test_secret_files_unit import FILE_ENV, VALUE, everything_recorded, first_release, namespace, run_dir, secret_dirs  # noqa: F401
from .test_transaction_unit import NEW_D, OLD_D, REPO, by_service, only, run, spec, step

pytestmark = pytest.mark.usefixtures("host_state")


def journal_records(state: Path) -> list[dict]:
    return [json.loads(line) for p in state.rglob("*.jsonl") for line in p.read_text().splitlines() if line]


def test_unused_takes_only_names_materialize_makes_and_no_mounted_one():
    made, other = "svc.0123456789abcdef", "svc.fedcba9876543210"
    assert secret_sweep.unused([made, other, "lost+found", "svc.123", "x"], {other}) == [made]
    attrs = {"HostConfig": {"Mounts": [{"Type": "bind", "Source": f"/run/fleetroll/secrets/k/{made}", "Target": "/run/secrets",
                                        "ReadOnly": True}]}}
    assert secret_sweep.mounted_names([attrs, {"HostConfig": {}}], Path("/run/fleetroll/secrets/k")) == {made}
    assert secret_sweep.mounted_names([attrs], Path("/run/fleetroll/secrets/other")) == set()


def test_a_container_removed_by_hand_leaves_its_directory_only_until_the_next_transaction(run_dir, daemon, tmp_path):  # noqa: F811
    first = first_release(daemon)
    (first_dir,) = secret_dirs(run_dir)
    daemon.containers.get(first).remove(force=True)  # `docker rm -f` by an operator: fleetroll never saw it go
    orphan = secret_files.materialize(container_args.from_spec(spec(env=FILE_ENV), "sha256:x", {}))  # a create killed here
    stranger = namespace(run_dir) / "not-ours"
    stranger.mkdir()
    assert sorted(secret_dirs(run_dir)) == sorted([first_dir, Path(orphan["secret_dir"]).name, "not-ours"])
    daemon.image(REPO, OLD_D)
    out = run(daemon, [step(spec(tag="20261101-aaaaaaa", digest=OLD_D, env=FILE_ENV), "create")], rid="r-again")
    assert by_service(out)["svc"]["outcome"] == "committed", out
    now = only(daemon, "svc")
    mine = [m["Source"] for m in now.attrs["HostConfig"]["Mounts"] if m["Target"] == "/run/secrets"]
    assert sorted(secret_dirs(run_dir)) == sorted([Path(mine[0]).name, "not-ours"]), "in use stays, a stranger stays"
    assert (Path(mine[0]) / "tok").read_text() == VALUE
    swept = [r for r in journal_records(tmp_path / "state") if r.get("step") == "secret-files-swept"]
    assert len(swept) == 1 and sorted(swept[0]["removed"]) == sorted([first_dir, Path(orphan["secret_dir"]).name])
    assert VALUE not in everything_recorded(tmp_path / "state")


def test_a_kept_aside_container_keeps_its_directory_through_a_failed_release(run_dir, daemon):  # noqa: F811
    old = first_release(daemon)
    (old_dir,) = secret_dirs(run_dir)
    daemon.image(REPO, NEW_D, behaviour="bad")
    out = run(daemon, [step(spec(env=FILE_ENV))])
    assert by_service(out)["svc"]["outcome"] == "reverted" and only(daemon, "svc").id == old
    assert secret_dirs(run_dir) == [old_dir] and (namespace(run_dir) / old_dir / "tok").read_text() == VALUE


def test_no_secret_directory_costs_no_docker_call(run_dir, monkeypatch):  # noqa: F811
    class Unasked:
        @property
        def containers(self):
            raise AssertionError("the containers were listed with no directory to judge")

    assert secret_sweep.sweep(Unasked()) == ([], [])
    os.makedirs(namespace(run_dir))
    assert secret_sweep.sweep(Unasked()) == ([], [])


def test_a_sweep_that_cannot_run_is_journalled_and_the_transaction_still_ends(run_dir, daemon, monkeypatch, tmp_path):  # noqa: F811
    first_release(daemon)
    monkeypatch.setattr(secret_sweep, "sweep", lambda client: (_ for _ in ()).throw(OSError(5, "Input/output error")))
    daemon.image(REPO, NEW_D)
    out = run(daemon, [step(spec(env=FILE_ENV))])
    assert by_service(out)["svc"]["outcome"] == "committed", out
    left = [r for r in journal_records(tmp_path / "state") if r.get("step") == "secret-files-left"]
    assert left and "not swept" in left[-1]["left"][0], left
