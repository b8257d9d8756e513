"""Secrets as files (`env: {KEY: {secret: NAME, as: file}}`): on a tmpfs, readable by the container's uid alone,
mounted read-only at /run/secrets, the env key holding the path; the value in no inspect, record or answer.

The tmpfs is real (/dev/shm here); Docker is the fake daemon (tests/fakedocker.py), whose
`attrs` are what `docker inspect` would show. The lab test beside test_lab_security.py's
secrets test proves the same on a real dockerd.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from agent import container_args, contract, paths, secret_files, secrets
from agent.freeze import config_fingerprint

from .test_transaction_unit import NEW_D, OLD_D, REPO, by_service, only, run, spec, step

pytestmark = pytest.mark.usefixtures("host_state")

VALUE = "tok-" + "5ecret" * 4
FILE_ENV = {"MACHINE": "mainpc", "TOKEN": {"secret": "tok", "as": "file"}}


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """The agent's run directory on a real tmpfs, root's; the host-side secret `tok` in tmp_path."""
    if os.geteuid() != 0:
        pytest.skip("giving a file to uid 10001 needs root")
    top = Path(tempfile.mkdtemp(prefix="frtest-run-", dir="/dev/shm"))
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "tok").write_text(VALUE + "\n")
    (tmp_path / "secrets" / "tok").chmod(0o600)
    monkeypatch.setenv("FLEETROLL_RUN_DIR", str(top))
    monkeypatch.setenv("FLEETROLL_SECRETS_DIR", str(tmp_path / "secrets"))
    yield top
    shutil.rmtree(top)  # made by this fixture, above


def namespace(top: Path) -> Path:
    return top / "secrets" / secret_files.daemon_key(paths.docker_endpoint())


def secret_dirs(top: Path) -> list[str]:
    ns = namespace(top)
    return sorted(os.listdir(ns)) if ns.exists() else []


def secret_mount(c) -> str:
    """The host directory a (fake) container mounts at /run/secrets: a read-only Mounts bind, never a Binds string."""
    hc = c.attrs["HostConfig"]
    found = [m for m in hc["Mounts"] if m["Target"] == secrets.MOUNT_DIR]
    assert len(found) == 1 and found[0]["Type"] == "bind" and found[0]["ReadOnly"] is True, hc["Mounts"]
    assert not any(secrets.MOUNT_DIR in b for b in hc["Binds"] or []), hc["Binds"]
    return found[0]["Source"]


def everything_recorded(host_state_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in host_state_dir.rglob("*") if p.is_file())


def first_release(daemon) -> str:
    """A release given the secret as a file, committed by a transaction; its container id."""
    daemon.image(REPO, OLD_D)
    s = spec(tag="20261101-aaaaaaa", digest=OLD_D, env=FILE_ENV)
    out = run(daemon, [step(s, "create")], rid="r-first")
    assert by_service(out)["svc"]["outcome"] == "committed", out
    return only(daemon, "svc").id


# --- pure ----------------------------------------------------------------------------------

@pytest.mark.parametrize("magic,name", [(0x01021994, "tmpfs"), (0x858458F6, "ramfs"), (0xEF53, "ext2/3/4"),
                                        (0x12345678, "a filesystem of type 0x12345678")])
def test_a_filesystem_is_named_from_its_statfs_magic(magic, name):
    assert secret_files.fs_name(magic) == name


def test_fstatfs_asks_the_open_directory_itself(tmp_path):
    fd = os.open("/dev/shm", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert secret_files.fs_magic(fd) == secret_files.TMPFS_MAGIC
    finally:
        os.close(fd)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        told = subprocess.run(["stat", "-f", "-c", "%t", str(tmp_path)], capture_output=True, text=True, check=True).stdout
        assert secret_files.fs_magic(fd) == int(told, 16), "the f_type coreutils' stat -f reports"
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        secret_files.fs_magic(-1)


def test_an_acl_grants_the_uid_alone_in_the_kernels_format():
    blob = secret_files.acl_granting(10001, 0o4, 0o4)
    assert blob[:4] == (2).to_bytes(4, "little") and len(blob) == 4 + 5 * 8
    entries = [(int.from_bytes(blob[i:i + 2], "little"), int.from_bytes(blob[i + 2:i + 4], "little"),
                int.from_bytes(blob[i + 4:i + 8], "little")) for i in range(4, len(blob), 8)]
    assert entries == [(0x01, 4, 0xFFFFFFFF), (0x02, 4, 10001), (0x04, 0, 0xFFFFFFFF), (0x10, 4, 0xFFFFFFFF), (0x20, 0, 0xFFFFFFFF)]


def test_a_file_reference_is_a_reference_and_the_label_keeps_all_of_it():
    ref = {"secret": "tok", "as": "file"}
    assert secrets.is_ref(ref) and secrets.is_file_ref(ref) and not secrets.is_file_ref({"secret": "tok"})
    assert not secrets.is_ref({"secret": "tok", "as": "disk"}) and not secrets.is_ref({"secret": "tok", "as": "env"})
    assert secrets.refs({"A": ref, "B": {"secret": "b"}}) == {"A": ref, "B": "b"}
    assert secrets.ref_from_label(ref) == ref and secrets.file_path("tok") == "/run/secrets/tok"


def test_the_freeze_fingerprint_and_the_diff_change_with_as_file_never_with_the_value():
    env_spec, file_spec = spec(env={"TOKEN": {"secret": "tok"}}), spec(env={"TOKEN": {"secret": "tok", "as": "file"}})
    assert config_fingerprint(env_spec) != config_fingerprint(file_spec)
    assert VALUE not in json.dumps(file_spec)  # the spec holds the reference: the fingerprint cannot hold the value
    running = container_args.from_spec(env_spec, "sha256:x", {contract.HEALTH: json.dumps(env_spec["health"])})
    assert container_args.diff(running, file_spec) == ['env TOKEN: another secret ({"as": "file", "secret": "tok"})']


def test_the_inventory_says_as_file_and_the_plan_carries_it_while_env_secrets_keep_their_spec_hash(tmp_path):
    from playbooks.inventory import load
    from playbooks.plan import container_spec, spec_hash

    from .test_inventory import BASE, write

    def env_of(extra: str) -> dict:
        inv = load(write(tmp_path, BASE.replace("    health: {port: 8080}\n", f"    health: {{port: 8080}}\n    env: {extra}\n")))
        return container_spec(inv, "api", "mainpc")

    plain, as_env, as_file = env_of("{T: {secret: tok}}"), env_of("{T: {secret: tok, as: env}}"), env_of("{T: {secret: tok, as: file}}")
    assert plain["env"]["T"] == as_env["env"]["T"] == {"secret": "tok"}, "an env secret is sent as it always was"
    assert as_file["env"]["T"] == {"secret": "tok", "as": "file"}
    assert spec_hash(plain, "d") == spec_hash(as_env, "d") != spec_hash(as_file, "d")


def test_the_inventory_refuses_another_way_naming_the_field(tmp_path):
    from .test_inventory import BASE
    from .test_inventory import problems as inventory_problems

    out = inventory_problems(tmp_path, BASE.replace("    health: {port: 8080}\n", "    health: {port: 8080}\n    env: {T: {secret: tok, as: disk}}\n"))
    line = next(x for x in out if ".as:" in x)  # pydantic also says the value is not a plain string (the union's other half)
    assert line.startswith(f"{tmp_path / 'fleet.yml'}:17: services.api.env.") and "'env' or 'file' (got 'disk')" in line, out


def test_the_last_guard_refuses_a_file_secrets_value_in_the_environment():
    s = spec(env=FILE_ENV)
    args = container_args.from_spec(s, "sha256:x", container_args.labels_for(s, "t", "d", "r", "p", "o", "g"))
    for leaked in ({**args, "env": {**args["env"], "TOKEN": VALUE}},  # materialize skipped: resolve put the value there
                   {**args, "env": {**args["env"], "TOKEN": VALUE}, "secret_dir": "/run/fleetroll/secrets/k/svc.0"}):
        with pytest.raises(ValueError, match="must be made a file"):
            container_args.api_kwargs(leaked)
    with pytest.raises(ValueError, match="must be made a file"):  # the path without the mount is refused too
        container_args.api_kwargs({**args, "env": {**args["env"], "TOKEN": "/run/secrets/tok"}})


def test_a_volume_at_the_secrets_mount_point_is_refused_on_the_host():
    args = container_args.from_spec({**spec(), "volumes": ["models:/run/secrets/x:ro"]}, "sha256:x", {})
    out = container_args.problems(args)
    assert len(out) == 1 and "where fleetroll mounts secret files" in out[0], out


# --- on the tmpfs ----------------------------------------------------------------------------


def test_materialize_writes_the_file_for_the_containers_uid_alone_and_release_removes_it(run_dir):
    args = container_args.from_spec(spec(env=FILE_ENV), "sha256:x", {contract.SERVICE: "svc"})
    made = secret_files.materialize(args)
    assert made["env"]["TOKEN"] == "/run/secrets/tok" and made["env"]["MACHINE"] == "mainpc"
    d = Path(made["secret_dir"])
    assert d.parent == namespace(run_dir) and d.name.startswith("svc.")
    st, dst = os.stat(d / "tok"), os.stat(d)
    assert (d / "tok").read_text() == VALUE
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (10001, 10001, 0o400)
    assert (dst.st_uid, stat.S_IMODE(dst.st_mode)) == (10001, 0o500)
    top = os.stat(run_dir)
    assert top.st_uid == 0 and not stat.S_IMODE(top.st_mode) & 0o002
    ckw, hkw = container_args.api_kwargs(made)
    assert hkw["mounts"] == [{"Type": "bind", "Source": str(d), "Target": "/run/secrets", "ReadOnly": True}]
    assert not hkw["binds"] and VALUE not in json.dumps([ckw, hkw])
    again = secret_files.materialize(args)
    assert again["secret_dir"] != made["secret_dir"], "each container its own directory"
    assert secret_files.release({"HostConfig": {"Binds": [f"{d}:/run/secrets:ro", "/srv/x:/x"]}}) == []
    assert not d.exists() and Path(again["secret_dir"]).exists()


def test_release_removes_only_what_materialize_made(run_dir):
    made = secret_files.materialize(container_args.from_spec(spec(env=FILE_ENV), "sha256:x", {}))
    d = Path(made["secret_dir"])
    (d / "sub").mkdir()
    out = secret_files.release({"HostConfig": {"Binds": [f"{d}:/run/secrets:ro"]}})
    assert len(out) == 1 and "sub" in out[0] and "left in place" in out[0] and (d / "sub").is_dir()
    assert not (d / "tok").exists(), "its own files go"
    elsewhere = run_dir / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("x")
    assert secret_files.release({"HostConfig": {"Binds": [f"{elsewhere}:/run/secrets:ro"]}}) == []
    assert (elsewhere / "keep").exists(), "a directory outside this daemon's namespace is never touched"


def test_another_account_gets_an_acl_for_the_containers_uid_and_nobody_else_reads(run_dir):
    """The path of an agent that is not root (it cannot give a file away): checked by reading as two other uids."""
    path = run_dir / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    os.write(fd, VALUE.encode())
    secret_files.give_away(fd, 10001, 10001, 0o400, as_root=False)
    os.close(fd)
    run_dir.chmod(0o711)

    def can_read(uid: int) -> bool:
        pid = os.fork()
        if pid == 0:  # the child becomes uid and tries; its exit status is the answer
            try:
                os.setgid(uid)
                os.setuid(uid)
                with open(path) as f:
                    os._exit(0 if f.read() == VALUE else 2)
            except OSError:
                os._exit(1)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0

    assert can_read(10001) and not can_read(10002)
    assert not stat.S_IMODE(os.stat(path).st_mode) & 0o004


@pytest.mark.parametrize("how,why", [("ext4", "not a tmpfs"), ("symlink", "is a symlink"), ("owner", "not root"),
                                     ("writable", "writable by every account"), ("missing", "does not exist")])
def test_a_run_directory_that_is_not_the_agents_own_tmpfs_is_refused_before_anything_stops(run_dir, tmp_path, monkeypatch,
                                                                                           daemon, how, why):
    from .test_transaction_unit import running_old

    target = {"ext4": tmp_path / "run", "symlink": tmp_path / "link", "owner": run_dir / "other", "writable": run_dir / "open",
              "missing": tmp_path / "nowhere" / "run"}[how]
    if how == "ext4":
        target.mkdir()
    elif how == "symlink":
        target.symlink_to(run_dir)
    elif how in ("owner", "writable"):
        target.mkdir()
        os.chown(target, 4242, -1) if how == "owner" else target.chmod(0o777)
    monkeypatch.setenv("FLEETROLL_RUN_DIR", str(target))
    monkeypatch.setattr(os, "geteuid", lambda: 4242) if how == "missing" else None  # as root it would be made
    old = running_old(daemon)
    daemon.image(REPO, NEW_D)
    out = run(daemon, [step(spec(env=FILE_ENV))])
    s = by_service(out)["svc"]
    assert s["outcome"] == "refused" and s["check"] == "container-config" and why in s["message"], s
    assert "nothing was stopped" in s["message"] and only(daemon, "svc").id == old and only(daemon, "svc").running


# --- through the transaction (fake daemon) -------------------------------------------------


def test_a_release_gets_its_secret_as_a_file_and_the_value_is_in_no_inspect_record_or_answer(run_dir, daemon, tmp_path):
    first_release(daemon)
    c = only(daemon, "svc")
    attrs = c.attrs
    assert "TOKEN=/run/secrets/tok" in attrs["Config"]["Env"]
    assert (Path(secret_mount(c)) / "tok").read_text() == VALUE
    assert VALUE not in json.dumps(attrs), "the value is in docker inspect"
    recorded = container_args.from_inspect(attrs)
    assert recorded["env"]["TOKEN"] == {"secret": "tok", "as": "file"}
    assert not any(secrets.MOUNT_DIR in b for b in recorded["binds"]), "the mount is made afresh, never recorded"
    assert VALUE not in everything_recorded(tmp_path / "state"), "the value is in the host's journal"


def test_a_failed_release_is_reverted_and_the_old_container_keeps_its_file_while_the_new_ones_goes(run_dir, daemon, tmp_path):
    old = first_release(daemon)
    old_dir = secret_mount(daemon.containers.get(old))
    daemon.image(REPO, NEW_D, behaviour="bad")
    out = run(daemon, [step(spec(env=FILE_ENV))])
    s = by_service(out)["svc"]
    assert s["outcome"] == "reverted" and only(daemon, "svc").id == old
    assert (Path(old_dir) / "tok").read_text() == VALUE, "the old container's file was touched"
    assert secret_dirs(run_dir) == [Path(old_dir).name], "the failed container's directory is left"
    assert VALUE not in json.dumps(out) and VALUE not in everything_recorded(tmp_path / "state")


def test_a_commit_removes_the_old_containers_directory_and_keeps_the_new_ones(run_dir, daemon):
    old = first_release(daemon)
    old_dir = secret_mount(daemon.containers.get(old))
    daemon.image(REPO, NEW_D)
    out = run(daemon, [step(spec(env=FILE_ENV))])
    assert by_service(out)["svc"]["outcome"] == "committed"
    new_dir = secret_mount(only(daemon, "svc"))
    assert new_dir != old_dir and secret_dirs(run_dir) == [Path(new_dir).name]
    assert (Path(new_dir) / "tok").read_text() == VALUE


def test_a_restart_recreates_the_file_for_the_new_container(run_dir, daemon):
    old = first_release(daemon)
    old_dir = secret_mount(daemon.containers.get(old))
    out = run(daemon, [{"action": "restart", "spec": spec(tag="20261101-aaaaaaa", digest=OLD_D, env=FILE_ENV)}], rid="r-restart")
    assert by_service(out)["svc"]["outcome"] == "committed", out
    new_dir = secret_mount(only(daemon, "svc"))
    assert new_dir != old_dir and secret_dirs(run_dir) == [Path(new_dir).name]
    assert (Path(new_dir) / "tok").read_text() == VALUE


def test_a_create_that_fails_leaves_no_secret_directory(run_dir, daemon):
    first_release(daemon)
    before = secret_dirs(run_dir)
    daemon.image(REPO, NEW_D)
    daemon.fail["api.create_container"] = RuntimeError("no space left on device")
    out = run(daemon, [step(spec(env=FILE_ENV))])
    assert by_service(out)["svc"]["outcome"] == "reverted"
    assert secret_dirs(run_dir) == before



# --- after a reboot, on error paths, and what the tmpfs check asks (review fixes) -----------


def test_after_a_reboot_a_container_whose_secret_directory_is_gone_is_refused_a_start_and_status_says_so(run_dir, daemon):
    """/run is cleared at boot: with a Mounts bind Docker refuses the start (a Binds string would start it empty)."""
    from agent import docker_errors, facts
    from playbooks import status

    c = daemon.containers.get(first_release(daemon))
    d = Path(secret_mount(c))
    assert secret_files.missing(c.attrs) == ""
    shutil.rmtree(d)  # the boot's empty /run (a directory this test's release made)
    c.running = False  # the reboot stopped it; `unless-stopped` has Docker start it again
    with pytest.raises(docker_errors.APIError, match="bind source path does not exist"):
        c.start()
    why = secret_files.missing(c.attrs)
    assert str(d) in why and "fab rollout" in why and VALUE not in why
    healthy, said = status.service_health({**facts.summarize_container(c.attrs), "secret_files_missing": why}, {"ok": True})
    assert not healthy and "secret files are gone" in said


def test_a_container_made_with_a_binds_string_is_still_checked_and_released(run_dir):
    """Containers made before the Mounts form: after a reboot Docker gave them an empty directory, and they run."""
    from playbooks import status

    made = secret_files.materialize(container_args.from_spec(spec(env=FILE_ENV), "sha256:x", {contract.SERVICE: "svc"}))
    d = Path(made["secret_dir"])
    attrs = {"Id": "c" * 64, "Config": {"Labels": made["labels"]}, "HostConfig": {"Binds": [f"{d}:/run/secrets:ro"]}}
    assert secret_files.missing(attrs) == ""
    (d / "tok").unlink()  # what a Binds container finds after a reboot: a directory Docker made, empty
    why = secret_files.missing(attrs)
    assert str(d / "tok") in why
    healthy, said = status.service_health({"status": "running", "running": True, "secret_files_missing": why}, {"ok": True})
    assert not healthy and said.startswith("container running; its secret files are gone")
    assert secret_files.release(attrs) == [] and not d.exists()


def test_a_raise_between_materialize_and_create_leaves_no_secret_directory(run_dir, daemon, monkeypatch):
    first_release(daemon)
    before = secret_dirs(run_dir)
    daemon.image(REPO, NEW_D)

    def boom(args):
        raise ValueError("api_kwargs refused")

    monkeypatch.setattr(container_args, "api_kwargs", boom)
    out = run(daemon, [step(spec(env=FILE_ENV))])
    assert by_service(out)["svc"]["outcome"] == "reverted", out
    assert secret_dirs(run_dir) == before, "a directory holding the secret value was left until the next reboot"


def test_a_directory_that_cannot_be_emptied_is_named_and_the_others_still_go(run_dir, monkeypatch):
    """A root agent's directory (the container uid's, 0500) that an agent that is not root may not empty: EACCES."""
    args = container_args.from_spec(spec(env=FILE_ENV), "sha256:x", {contract.SERVICE: "svc"})
    first, second = (Path(secret_files.materialize(args)["secret_dir"]) for _ in range(2))
    real_empty = secret_files._empty

    def empty(d: int) -> list[str]:
        if os.path.realpath(f"/proc/self/fd/{d}") == str(first):
            raise PermissionError(13, "Permission denied")
        return real_empty(d)

    monkeypatch.setattr(secret_files, "_empty", empty)
    out = secret_files.release({"HostConfig": {"Binds": [f"{first}:/run/secrets:ro", f"{second}:/run/secrets:ro"]}})
    assert len(out) == 1 and str(first) in out[0] and "Permission denied" in out[0] and VALUE not in out[0], out
    assert first.is_dir() and not second.exists()


def test_a_secret_directory_left_behind_is_journalled_names_only(run_dir, daemon, monkeypatch, tmp_path):
    old = first_release(daemon)
    (old_dir,) = (str(namespace(run_dir) / n) for n in secret_dirs(run_dir))
    daemon.image(REPO, NEW_D)
    monkeypatch.setattr(secret_files, "_empty", lambda d: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    out = run(daemon, [step(spec(env=FILE_ENV))])
    assert by_service(out)["svc"]["outcome"] == "committed", out
    records = [json.loads(line) for p in (tmp_path / "state").rglob("*.jsonl") for line in p.read_text().splitlines() if line]
    left = [r for r in records if r.get("step") == "secret-files-left"]
    assert left and old_dir in left[0]["left"][0] and left[0]["container"] == old, records
    assert VALUE not in everything_recorded(tmp_path / "state")


def test_the_tmpfs_check_asks_the_opened_directory_not_a_lookup_by_path(run_dir, tmp_path, monkeypatch):
    """Under an over-mount a path's longest mount prefix can name a tmpfs the directory is not on."""
    disk = tmp_path / "run"
    disk.mkdir()
    told = subprocess.run(["stat", "-f", "-c", "%T", str(disk)], capture_output=True, text=True, check=True).stdout.strip()
    if told in ("tmpfs", "ramfs"):
        pytest.skip("tmp_path is on a tmpfs here")
    monkeypatch.setenv("FLEETROLL_RUN_DIR", str(disk))
    monkeypatch.setattr(secret_files, "fs_type", lambda mountinfo, path: "tmpfs", raising=False)  # a lookup fooled
    out = secret_files.problems({"env": FILE_ENV, "user": "10001:10001"})
    assert len(out) == 1 and "not a tmpfs" in out[0], out
