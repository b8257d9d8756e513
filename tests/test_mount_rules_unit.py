"""Bind mounts and the container's gid, judged on the host by what they are there (issue 21, item 3).

The inventory checks the text of a bind source; the host resolves it: no symlink on the
way (a container with a read-write mount could turn a subdirectory into `-> /` for the next
container that mounts it), never the agent's own state, lock or code directories, and under
the prefixes in force after resolution: the intersection of the plan's (the inventory's
defaults.host_paths) and the host's own (FLEETROLL_HOST_PATHS). A gid is never a group that
controls the host: root's, sudo/adm/disk/shadow, or the Docker socket's.
"""

from __future__ import annotations

import os

import pytest

from agent import container_args, contract, paths, proxy

from .test_inventory import BASE
from .test_inventory import problems as inventory_problems


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A host whose state and lock directories and allowed bind prefix all live in tmp_path."""
    (tmp_path / "allowed").mkdir()
    (tmp_path / "state").mkdir()
    monkeypatch.setenv("FLEETROLL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("FLEETROLL_LOCK_DIR", str(tmp_path / "lock"))
    monkeypatch.setenv("FLEETROLL_HOST_PATHS", str(tmp_path / "allowed"))
    return tmp_path


def args(*binds: str, user: str = contract.IMAGE_USER, env: dict | None = None) -> dict:
    return {"image": "sha256:x", "name": "web", "user": user, "env": env or {}, "labels": {}, "ports": {},
            "binds": list(binds), "restart": "unless-stopped", "gpus": 0, "stop_timeout": 10, "network": ""}


# --- bind sources -------------------------------------------------------------------------


def test_a_symlinked_subdirectory_under_an_allowed_prefix_pointing_to_root_is_refused(host):
    (host / "allowed" / "models").symlink_to("/")  # what a container with a rw mount of allowed/ can do
    for src in (f"{host}/allowed/models", f"{host}/allowed/models/etc"):
        out = container_args.problems(args(f"{src}:/models:ro"))
        assert len(out) == 1 and "symlink at" in out[0] and f"{host}/allowed/models" in out[0] and "-> '/'" in out[0], out


def test_a_symlink_to_another_allowed_directory_is_refused_too(host):
    """No symlink at all, even a harmless-looking one: what it points to can change after the check."""
    (host / "allowed" / "real").mkdir()
    (host / "allowed" / "link").symlink_to(host / "allowed" / "real")
    assert "symlink at" in container_args.problems(args(f"{host}/allowed/link:/d"))[0]


def test_real_directories_and_missing_ones_under_an_allowed_prefix_pass(host):
    (host / "allowed" / "models" / "llama").mkdir(parents=True)
    assert container_args.problems(args(f"{host}/allowed/models/llama:/m:ro", f"{host}/allowed/not-yet:/n", "named:/v")) == []


def test_outside_the_hosts_prefixes_is_refused_after_resolution(host):
    (host / "elsewhere").mkdir()
    out = container_args.problems(args(f"{host}/elsewhere:/e"))
    assert len(out) == 1 and "not under a prefix this host allows" in out[0] and str(host / "allowed") in out[0], out


def test_without_host_prefixes_the_host_still_resolves(host, monkeypatch):
    monkeypatch.delenv("FLEETROLL_HOST_PATHS")
    (host / "elsewhere").mkdir()
    assert container_args.problems(args(f"{host}/elsewhere:/e")) == []
    (host / "escape").symlink_to("/")
    assert "symlink at" in container_args.problems(args(f"{host}/escape:/e"))[0]


@pytest.mark.parametrize("where", ["state", "state/journal", "lock", "."])
def test_the_agents_state_and_lock_directories_are_refused(host, monkeypatch, where):
    monkeypatch.setenv("FLEETROLL_HOST_PATHS", str(host))  # the prefix would allow them: the rule must not
    (host / "state" / "journal").mkdir()
    (host / "lock").mkdir()
    src = os.path.normpath(host / where)
    out = container_args.problems(args(f"{src}:/x"))
    assert len(out) == 1 and "the agent's own state, lock or code directory" in out[0], out
    assert ("contains" if where == "." else "is") in out[0]


@pytest.mark.parametrize("src", ["/var/lib/fleetroll", "/var/lib/fleetroll/journal", "/var/lock", "/run/lock"])
def test_the_system_state_and_lock_directories_are_refused(monkeypatch, src):
    monkeypatch.delenv("FLEETROLL_HOST_PATHS", raising=False)
    out = container_args.problems(args(f"{src}:/x"))
    assert len(out) == 1, out  # /run/lock by its text, /var/lock as a symlink or an own directory, the rest as own


def test_the_agents_code_directory_is_refused(host, monkeypatch):
    monkeypatch.setenv("HOME", str(host / "allowed"))
    (host / "allowed" / ".fleetroll").mkdir()
    out = container_args.problems(args(f"{host}/allowed/.fleetroll:/a"))
    assert "the agent's own state, lock or code directory" in out[0], out


def test_only_the_proxy_sees_its_socket_directory_and_only_at_its_place(host):
    run = host / "state" / "proxy-run"
    run.mkdir()
    config = proxy.render([proxy.Route("web", "80", 8080)], 8404)
    as_proxy = container_args.problems(args(f"{run}:{proxy.SOCKET_IN_CONTAINER}:rw", env={proxy.CONFIG_ENV: config}))
    assert as_proxy == [], as_proxy
    elsewhere = container_args.problems(args(f"{run}:/other:rw", env={proxy.CONFIG_ENV: config}))
    not_proxy = container_args.problems(args(f"{run}:{proxy.SOCKET_IN_CONTAINER}:rw"))
    for out in (elsewhere, not_proxy):
        assert len(out) == 1 and "the agent's own state" in out[0], out


def test_a_socket_under_an_allowed_prefix_is_refused(host):
    import socket

    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(host / "allowed" / "d.sock"))  # a hard link to docker.sock would look like this
        out = container_args.problems(args(f"{host}/allowed/d.sock:/var/run/docker.sock"))
    finally:
        s.close()
    assert "a device or a socket" in out[0], out


# --- the prefixes in force: the plan's (the inventory's defaults.host_paths) and the host's own --


@pytest.mark.parametrize("plan,host,allowed", [
    (None, None, None),                                      # neither side bounds: the hard rules alone
    (["/srv"], None, ["/srv"]), (None, ["/srv"], ["/srv"]),  # one side: that side
    (["/srv"], ["/srv/models"], ["/srv/models"]),            # each pair gives its deeper prefix, whichever side says it
    (["/srv/models"], ["/srv"], ["/srv/models"]),
    (["/srv", "/data"], ["/data/x", "/opt"], ["/data/x"]),
    (["/"], ["/srv"], ["/srv"]),                             # a plan cannot widen the host's list
    (["/srv"], ["/srvx"], []), ([], ["/srv"], []), (["/srv"], [], []),
])
def test_the_prefixes_in_force_are_the_intersection_of_the_plans_and_the_hosts(plan, host, allowed):
    assert paths.allowed_prefixes(plan, host) == allowed


@pytest.mark.parametrize("plan", [["srv"], ["/srv/../etc"], ["/srv/"], ["//srv"], [7], "/srv"])
def test_a_malformed_plan_list_is_refused_and_opens_nothing(host, plan):
    (host / "allowed" / "m").mkdir()
    out = container_args.problems(args(f"{host}/allowed/m:/m"), plan)
    assert any("the plan's host_paths" in x and "refused" in x for x in out), out
    assert any("not under a prefix this host allows" in x for x in out), out


def test_a_forged_plan_cannot_widen_what_the_host_allows(host):
    (host / "elsewhere").mkdir()
    out = container_args.problems(args(f"{host}/elsewhere:/e"), [str(host)])
    assert len(out) == 1 and "not under a prefix this host allows" in out[0], out
    assert f"defaults.host_paths: {host}" in out[0] and f"FLEETROLL_HOST_PATHS: {host / 'allowed'}" in out[0], out
    assert container_args.problems(args(f"{host}/allowed:/a"), [str(host)]) == []


def test_the_plans_prefixes_bound_a_host_that_names_none(host, monkeypatch):
    monkeypatch.delenv("FLEETROLL_HOST_PATHS")
    (host / "elsewhere").mkdir()
    out = container_args.problems(args(f"{host}/elsewhere:/e"), [str(host / "allowed")])
    assert len(out) == 1 and f"defaults.host_paths: {host / 'allowed'}" in out[0], out
    assert container_args.problems(args(f"{host}/allowed:/a"), [str(host / "allowed")]) == []


def test_the_plans_prefixes_narrow_the_hosts(host):
    (host / "allowed" / "models").mkdir()
    (host / "allowed" / "scratch").mkdir()
    plan = [str(host / "allowed" / "models")]
    assert container_args.problems(args(f"{host}/allowed/models:/m"), plan) == []
    out = container_args.problems(args(f"{host}/allowed/scratch:/s"), plan)
    assert len(out) == 1 and f"meet in {host / 'allowed' / 'models'}" in out[0], out


def test_the_hard_rules_hold_whatever_the_plan_opens(host, monkeypatch):
    monkeypatch.delenv("FLEETROLL_HOST_PATHS")
    (host / "state" / "journal").mkdir()
    out = container_args.problems(args(f"{host}/state/journal:/j"), [str(host)])
    assert len(out) == 1 and "the agent's own state, lock or code directory" in out[0], out
    for src in ("/var/lib/fleetroll", "/run/lock", "/var/run/docker.sock"):
        assert container_args.problems(args(f"{src}:/x"), ["/"]), src


def test_the_controller_sends_the_inventorys_prefixes_and_the_host_enforces_them(host, monkeypatch, daemon, tmp_path):
    """End to end without hosts: step_args carries defaults.host_paths; the transaction refuses a bind outside them."""
    from playbooks.hostcalls import step_args
    from playbooks.inventory import load
    from playbooks.plan import Plan

    from .test_inventory import BASE, write
    from .test_transaction_unit import REPO, by_service, run, spec, step

    monkeypatch.delenv("FLEETROLL_HOST_PATHS")
    inv = load(write(tmp_path, BASE.replace("hosts:\n", f"defaults:\n  host_paths: [{host / 'allowed'}]\nhosts:\n", 1)))
    sent = step_args(Plan("r1", "one", "op", []), "mainpc", "revert-phase", inv)
    assert sent["host_paths"] == [str(host / "allowed")]
    from agent.transaction import Transaction

    monkeypatch.setattr(Transaction, "_tag_still_names", lambda self, ref, digest: None)
    (host / "elsewhere").mkdir()
    daemon.image(REPO, "sha256:" + "b" * 64)
    out = run(daemon, [step(spec(volumes=[f"{host}/elsewhere:/e"]), "create")], host_paths=sent["host_paths"])
    s = by_service(out)["svc"]
    assert s["outcome"] == "refused" and "defaults.host_paths" in s["message"] and not daemon.containers.by_id, s


# --- the container's uid and gid ----------------------------------------------------------


def test_the_docker_sockets_group_is_refused_as_a_gid(host, monkeypatch):
    sock = host / "docker.sock"
    sock.touch()
    os.chown(sock, -1, 4242) if os.geteuid() == 0 else pytest.skip("needs root to give the socket a group")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    out = container_args.problems(args(user="10001:4242"))
    assert len(out) == 1 and "the Docker socket's group" in out[0] and "gid 4242" in out[0], out
    assert container_args.problems(args(user="10001:10001")) == []


@pytest.mark.parametrize("user,why", [("10001:0", "numeric non-root"), ("10001:27", "'sudo'"), ("10001:4", "'adm'"),
                                      ("10001:6", "'disk'"), ("10001:42", "'shadow'"), ("999:10001", "system account"),
                                      ("1:1", "system account")])
def test_privileged_gids_and_system_uids_are_refused_on_the_host(host, user, why):
    out = container_args.problems(args(user=user))
    assert len(out) == 1 and why in out[0], out


def test_the_host_resolves_group_names_it_has(monkeypatch):
    import grp

    real = grp.getgrnam
    monkeypatch.setattr(grp, "getgrnam", lambda n: grp.struct_group(("wheel", "x", 5010, [])) if n == "wheel" else real(n))
    assert "group 'wheel'" in contract.user_problem("10001:5010", paths.privileged_gids())


@pytest.mark.parametrize("user,why", [("10001:27", "gid 27 is group 'sudo'"), ("10001:42", "gid 42 is group 'shadow'"),
                                      ("10001:4", "'adm'"), ("10001:6", "'disk'"), ("500:10001", "uid 500 is a system account's"),
                                      ("10001:0", "numeric non-root")])
def test_the_inventory_refuses_what_it_can_know_without_the_host(tmp_path, user, why):
    out = inventory_problems(tmp_path, BASE.replace("    host: mainpc\n", f"    host: mainpc\n    user: {user!r}\n"))
    line = next(p for p in out if "services.api.user" in p)
    assert line.startswith(f"{tmp_path / 'fleet.yml'}:") and why in line and "fix: leave it out" in line, line


def test_a_symlink_escape_in_a_plan_is_refused_on_the_host_before_anything_stops(host_state, daemon, tmp_path, monkeypatch):
    """The whole path: a swap whose new container would mount `allowed/models -> /` stops nothing."""
    from .test_transaction_unit import NEW_D, REPO, by_service, only, run, running_old, spec, step

    monkeypatch.setenv("FLEETROLL_LOCK_DIR", str(tmp_path / "lock"))
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "models").symlink_to("/")
    monkeypatch.setenv("FLEETROLL_HOST_PATHS", str(tmp_path / "allowed"))
    old = running_old(daemon)
    daemon.image(REPO, NEW_D)
    daemon.calls.clear()
    r = by_service(run(daemon, [step(spec(volumes=[f"{tmp_path}/allowed/models:/models:ro"]))]))["svc"]
    assert r["outcome"] == "refused" and r["check"] == "container-config" and "symlink at" in r["message"], r
    assert "nothing was stopped" in r["message"]
    assert only(daemon, "svc").id == old and only(daemon, "svc").running
    assert not any(n in daemon.calls for n in ("container.stop", "container.rename", "api.create_container"))
