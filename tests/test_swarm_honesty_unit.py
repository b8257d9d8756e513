"""The Swarm engine reports only what it observed: a lost manager, a cut answer, an unproven task or a removed
service are never reported committed (pure functions, a fake SSH channel; no host, no daemon)."""

from __future__ import annotations

import io
import shlex
import threading
from types import SimpleNamespace

import paramiko
import pytest

from playbooks.inventory import load
from playbooks.swarm import deploy, judge, observe, remote, render
from playbooks.swarm.remote import Host, SwarmCommandError
from tests.test_swarm_follow_unit import NEW, task, view
from tests.test_swarm_render_unit import FLEET, PHASES

# --- a fake paramiko connection: argv -> (rc, stdout) or an exception ------------------------------


class _Chan:
    def __init__(self, answer, exit_in_time: bool = True):
        self.answer, self.argv, self.out, self.rc = answer, None, b"", 0
        self.status_event = threading.Event()
        if exit_in_time:
            self.status_event.set()

    def settimeout(self, t):
        pass

    def exec_command(self, cmd):
        self.argv = shlex.split(cmd)
        got = self.answer(self.argv)
        if isinstance(got, BaseException):
            raise got
        self.rc, out = got
        self.out = out.encode() if isinstance(out, str) else out

    def sendall(self, data):
        pass

    def shutdown_write(self):
        pass

    def makefile(self, mode):
        return io.BytesIO(self.out)

    def makefile_stderr(self, mode):
        return io.BytesIO(b"")

    def recv_exit_status(self):
        if not self.status_event.is_set():
            raise AssertionError("recv_exit_status() would wait forever here")
        return self.rc

    def close(self):
        pass


def _host(answer, exit_in_time: bool = True, session_error: Exception | None = None) -> tuple[Host, list[list[str]]]:
    ran: list[list[str]] = []

    def answer_logged(argv):
        ran.append(argv)
        return answer(argv)

    class Transport:
        def open_session(self, timeout=None):
            if session_error:
                raise session_error
            return _Chan(answer_logged, exit_in_time)

    conn = SimpleNamespace(client=SimpleNamespace(get_transport=lambda: Transport()), close=lambda: None)
    return Host("mgr", "10.0.0.1", conn), ran


# --- 1. a lost manager is a SwarmCommandError, then needs-operator ---------------------------------


def test_a_dead_ssh_transport_is_a_swarm_command_error_naming_the_host():
    h, _ = _host(lambda a: (0, ""), session_error=paramiko.SSHException("SSH session not active"))
    with pytest.raises(SwarmCommandError, match=r"mgr: .*no SSH session to 10\.0\.0\.1: SSH session not active"):
        h.run(["docker", "service", "ls"])


def test_output_over_the_bound_is_refused_without_waiting_for_an_exit_status(monkeypatch):
    monkeypatch.setattr(remote, "MAX_OUT", 10)
    h, _ = _host(lambda a: (0, "x" * 11), exit_in_time=False)
    with pytest.raises(SwarmCommandError, match="more than 10 bytes of output"):
        h.run(["docker", "inspect", "a"])


def test_no_exit_status_in_time_is_a_timeout_not_a_hang():
    h, _ = _host(lambda a: (0, "[]"), exit_in_time=False)
    with pytest.raises(SwarmCommandError, match=r"no exit status within 0\.01s"):
        h.run(["docker", "inspect", "a"], timeout=0.01)


def test_a_cut_json_answer_is_a_swarm_command_error():
    h, _ = _host(lambda a: (0, '[{"ID": "n1"'))
    with pytest.raises(SwarmCommandError, match="the answer is not JSON"):
        h.json(["docker", "node", "inspect", "n1"])


def _follow(mode: str = "update") -> judge.Follow:
    return judge.Follow("web", mode, ["mainpc", "pc2"], "t-new", NEW, "t-old", "sha256:" + "0" * 64, "", 1e12, "want")


def _run_deploy(monkeypatch, manager: Host, follows: list[judge.Follow]) -> tuple[dict, list[str]]:
    """_deploy_and_follow with its ledger, secrets and plan taken out: only the manager's answers matter."""
    rendered = render.Rendered("fr-p", {}, secret_names={})
    monkeypatch.setattr(deploy.secrets, "on_manager", lambda *a, **k: ({}, []))
    monkeypatch.setattr(deploy.ledger, "append", lambda *a, **k: {})
    monkeypatch.setattr(deploy.ledger, "redaction_key", lambda: b"k")
    monkeypatch.setattr(deploy.render, "to_yaml", lambda r: "")
    monkeypatch.setattr(deploy, "_follows", lambda *a: follows)
    ro = SimpleNamespace(inv=None, pool=None, common={}, plan=SimpleNamespace(to_json=lambda key: {}),
                         report=SimpleNamespace(messages=[]))
    return deploy._deploy_and_follow(ro, manager, rendered, observe.View()), ro.report.messages


def test_a_cut_answer_while_following_ends_needs_operator_not_a_crash(monkeypatch):
    def answer(argv):
        return (0, "n1\n") if argv[:3] == ["docker", "node", "ls"] else (0, '[{"ID": "n1"')  # cut mid-JSON
    manager, ran = _host(answer)
    results, _ = _run_deploy(monkeypatch, manager, [_follow()])
    assert {h: r.ok for h, r in results.items()} == {"mainpc": False, "pc2": False}
    row = results["pc2"].answer["data"]["services"][0]
    assert row["outcome"] == "needs-operator" and "lost the manager mgr while following" in row["message"]


def test_a_failed_deploy_whose_stack_cannot_be_read_claims_nothing(monkeypatch):
    def answer(argv):
        if argv[:3] == ["docker", "stack", "deploy"]:
            return 1, ""
        return paramiko.SSHException("SSH session not active")
    manager, _ = _host(answer)
    results, messages = _run_deploy(monkeypatch, manager, [_follow()])
    row = results["mainpc"].answer["data"]["services"][0]
    assert row["outcome"] == "needs-operator" and "could not be read after it" in row["message"]
    assert any(m.startswith("FAILED deploying stack fr-p") for m in messages)
    assert not any("deployed through" in m for m in messages)


# --- 2. a removed service is removed on every host; nothing removed on what was not seen ------------


class _Manager:
    name = "mgr"

    def __init__(self, fails: bool = False):
        self.ran, self.fails = [], fails

    def run(self, argv, **kw):
        self.ran.append(argv)
        if self.fails:
            raise SwarmCommandError("mgr", argv, 1, "Error response from daemon: rpc error")
        return 0, "", ""


def _created_half_failed() -> judge.Follow:
    f = _follow("create")
    v = view(None, [task("a", "n1", NEW)] + [task(f"b{i}", "n2", NEW, "failed", "shutdown", "boom") for i in range(3)])
    assert judge.judge(f, v, now=10.0, min_healthy_time=0)
    assert f.done["mainpc"]["outcome"] == "committed" and f.done["pc2"]["outcome"] == "needs-operator"
    return f


def test_a_removed_new_service_is_removed_on_its_healthy_hosts_too(monkeypatch):
    f = _created_half_failed()
    monkeypatch.setattr(deploy.observe, "read", lambda m, s: observe.View())  # seen gone
    deploy._remove_failed_creations(_Manager(), "fr-p", [f])
    assert {h: d["outcome"] for h, d in f.done.items()} == {"mainpc": "removed", "pc2": "removed"}
    assert "failed on pc2" in f.done["mainpc"]["message"] and "gate" not in f.done["mainpc"]


def test_a_removal_not_seen_through_leaves_the_healthy_host_needs_operator():
    f = _created_half_failed()
    deploy._remove_failed_creations(_Manager(fails=True), "fr-p", [f])
    assert f.done["mainpc"]["outcome"] == "needs-operator" and "not seen through" in f.done["mainpc"]["message"]
    assert f.done["pc2"]["outcome"] == "needs-operator" and "removing it failed" in f.done["pc2"]["message"]


def test_a_lost_manager_removes_nothing(monkeypatch):
    def answer(argv):
        return (0, "") if argv[:3] == ["docker", "stack", "deploy"] else paramiko.SSHException("SSH session not active")
    manager, ran = _host(answer)
    f = _follow("create")
    results, _ = _run_deploy(monkeypatch, manager, [f])
    assert not any(argv[:3] == ["docker", "service", "rm"] for argv in ran)
    assert all(d["outcome"] == "needs-operator" for d in f.done.values()) and not any(r.ok for r in results.values())
    assert "left in place" in f.done["pc2"]["message"]


# --- 3. committed only after min_healthy_time of the same task ----------------------------------


def test_a_task_that_just_started_is_not_committed_when_another_host_fails():
    f = _follow("create")
    v = view(None, [task("a", "n1", NEW)] + [task(f"b{i}", "n2", NEW, "failed", "shutdown", "boom") for i in range(3)])
    assert judge.judge(f, v, now=10.0, min_healthy_time=15)
    assert f.done["mainpc"]["outcome"] == "needs-operator" and "less than min_healthy_time 15s" in f.done["mainpc"]["message"]


def test_at_the_deadline_only_a_task_running_through_the_window_is_committed():
    f = judge.Follow("web", "reconcile", ["mainpc", "pc2"], "t-new", NEW, "t-old", NEW, "", 100.0, "want")
    assert not judge.judge(f, view(None, [task("a", "n1", NEW), task("b1", "n2", NEW)]), now=0.0, min_healthy_time=30)
    assert not judge.judge(f, view(None, [task("a", "n1", NEW), task("b2", "n2", NEW)]), now=95.0, min_healthy_time=30)
    assert judge.judge(f, view(None, [task("a", "n1", NEW), task("b2", "n2", NEW)]), now=100.0, min_healthy_time=30)
    assert f.done["mainpc"]["outcome"] == "committed"
    assert f.done["pc2"]["outcome"] == "needs-operator" and "5.0s only" in f.done["pc2"]["message"]  # b1 restarted as b2


# --- 4. a bind mount never shows a Swarm task the agent's own directories -----------------------


@pytest.mark.parametrize("src", ["/var/lib/fleetroll", "/var/lib/fleetroll/journal", "/home/alice/.fleetroll",
                                 "/home/alice/.docker/config.json", "/home/alice/.local/state/fleetroll", "/home/alice",
                                 "/home", "/var/lock"])
def test_a_swarm_bind_of_the_agents_own_directories_is_refused(tmp_path, src):
    text = FLEET.replace("host_paths: [/srv/models]", "host_paths: [/var, /home, /srv/models]")
    (tmp_path / "fleet.yml").write_text(text.replace("/srv/models/llm:/models:ro", f"{src}:/models:ro"))
    (tmp_path / "phases.yml").write_text(PHASES)
    with pytest.raises(render.RenderError, match=r"services\.llm\.volumes: host path .*(agent|home directory)"):
        render.render(load(tmp_path / "fleet.yml"), "one")


def test_a_directory_below_a_home_may_still_be_mounted(tmp_path):
    text = FLEET.replace("host_paths: [/srv/models]", "host_paths: [/home]")
    (tmp_path / "fleet.yml").write_text(text.replace("/srv/models/llm:/models:ro", "/home/alice/models:/models:ro"))
    (tmp_path / "phases.yml").write_text(PHASES)
    llm = render.render(load(tmp_path / "fleet.yml"), "one").doc["services"]["llm"]
    assert llm["volumes"][0]["source"] == "/home/alice/models"
