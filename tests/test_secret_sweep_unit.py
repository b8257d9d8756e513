"""A secret directory whose container is gone (removed by hand, or a create killed before Docker made it) goes
once the next transaction's outcome is journalled, under its lock; a directory any container mounts stays, whatever
state that container is in and however the run directory is spelt.

Real tmpfs (/dev/shm), fake daemon, as tests/test_secret_files_unit.py. The agent calls
secret_sweep.after_transaction from ops._run_detached_transaction, after DONE; here it is called the same way
after the transaction (the lab test in test_lab_security.py goes through the real agent).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent import container_args, secret_files, secret_sweep

from .test_secret_files_unit import FILE_ENV, VALUE, everything_recorded, first_release, namespace, run_dir, secret_dirs  # noqa: F401
from .test_transaction_unit import OLD_D, REPO, by_service, only, run, spec, step

pytestmark = pytest.mark.usefixtures("host_state")


def journal_records(state: Path) -> list[dict]:
    return [json.loads(line) for p in state.rglob("*.jsonl") for line in p.read_text().splitlines() if line]


def sweep_after(daemon, rid: str) -> None:
    secret_sweep.after_transaction(rid, daemon)


def test_mounted_names_are_the_last_part_of_any_mount_in_either_form_and_only_names_materialize_makes():
    made, other, third = "svc.0123456789abcdef", "svc.fedcba9876543210", "web.00000000000000aa"
    assert secret_sweep.unused([made, other, "lost+found", "svc.123", "x"], {other}) == [made]
    listed = {"Mounts": [{"Type": "bind", "Source": f"/run/fleetroll/secrets/k/{made}", "Destination": "/run/secrets"}]}
    inspected = {"HostConfig": {"Mounts": [{"Type": "bind", "Source": f"/var/run/fleetroll/secrets/k/{other}/"}],
                                "Binds": [f"/elsewhere/{third}:/x:ro", "/srv/models:/models:ro"]}}
    assert secret_sweep.mounted_names([listed, inspected, {}]) == {made, other, third}


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
    sweep_after(daemon, "r-again")
    now = only(daemon, "svc")
    mine = [m["Source"] for m in now.attrs["HostConfig"]["Mounts"] if m["Target"] == "/run/secrets"]
    assert sorted(secret_dirs(run_dir)) == sorted([Path(mine[0]).name, "not-ours"]), "in use stays, a stranger stays"
    assert (Path(mine[0]) / "tok").read_text() == VALUE
    swept = [r for r in journal_records(tmp_path / "state") if r.get("step") == "secret-files-swept"]
    assert len(swept) == 1 and sorted(swept[0]["removed"]) == sorted([first_dir, Path(orphan["secret_dir"]).name])
    assert VALUE not in everything_recorded(tmp_path / "state")


def test_a_kept_aside_container_keeps_its_directory(run_dir, daemon):  # noqa: F811
    """Set aside as a transaction leaves it when its restore could not finish (renamed, stopped): it still owns its
    files, and listing only running containers would take them."""
    c = daemon.containers.get(first_release(daemon))
    (its_dir,) = secret_dirs(run_dir)
    c.rename("svc--kept-0123abcd")
    c.stop()
    sweep_after(daemon, "r-kept")
    assert secret_dirs(run_dir) == [its_dir] and (namespace(run_dir) / its_dir / "tok").read_text() == VALUE


def test_an_exited_container_keeps_its_directory(run_dir, daemon):  # noqa: F811
    c = daemon.containers.get(first_release(daemon))
    (its_dir,) = secret_dirs(run_dir)
    c.stop()
    sweep_after(daemon, "r-stopped")
    assert secret_dirs(run_dir) == [its_dir]


def test_a_run_directory_spelt_another_way_sweeps_nothing_a_container_mounts(run_dir, daemon, tmp_path, monkeypatch):  # noqa: F811
    """/var/run is /run: the agent that made the directory and the one sweeping may spell the path apart."""
    first_release(daemon)
    (its_dir,) = secret_dirs(run_dir)
    alias = tmp_path / "alias"
    alias.symlink_to(run_dir.parent)
    monkeypatch.setenv("FLEETROLL_RUN_DIR", str(alias / run_dir.name))
    sweep_after(daemon, "r-alias")
    assert secret_dirs(run_dir) == [its_dir]


def test_no_secret_directory_costs_no_docker_call(run_dir):  # noqa: F811
    class Unasked:
        engine = None

        @property
        def containers(self):
            raise AssertionError("the containers were listed with no directory to judge")

    assert secret_sweep.sweep(Unasked()) == ([], [])
    os.makedirs(namespace(run_dir))
    assert secret_sweep.sweep(Unasked()) == ([], [])


def test_the_engine_s_one_list_call_is_used_when_there_is_one(run_dir, daemon):  # noqa: F811
    """The real client lists every container with its mounts in one call (no inspect per container)."""
    first_release(daemon)
    (its_dir,) = secret_dirs(run_dir)
    orphan = Path(secret_files.materialize(container_args.from_spec(spec(env=FILE_ENV), "sha256:x", {}))["secret_dir"])
    calls = []

    class Engine:
        def call(self, method, path, query=None):
            calls.append((method, path, query))
            return [{"Id": "x", "Mounts": [{"Type": "bind", "Source": str(namespace(run_dir) / its_dir)}]}]

    class Client:
        engine = Engine()

    assert secret_sweep.sweep(Client()) == ([orphan.name], [])
    assert calls == [("GET", "/containers/json", {"all": True})] and secret_dirs(run_dir) == [its_dir]


def test_a_sweep_that_cannot_run_is_journalled_with_where_and_what_next(run_dir, daemon, monkeypatch, tmp_path):  # noqa: F811
    first_release(daemon)
    monkeypatch.setattr(secret_sweep, "sweep", lambda client: (_ for _ in ()).throw(OSError(5, "Input/output error")))
    sweep_after(daemon, "r-io")
    left = [r for r in journal_records(tmp_path / "state") if r.get("step") == "secret-files-left"]
    assert left and "not swept" in left[-1]["left"][0] and "the next transaction tries again" in left[-1]["left"][0], left
