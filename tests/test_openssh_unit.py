"""The OpenSSH client path and prewarm, without hosts: the ssh command line, OpenSSH's words as error kinds, and a
session driven through a stand-in `ssh` program on PATH (the real one is exercised by every lab test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent import PROTOCOL
from playbooks import agentpack, openssh, prewarm, remote, ssh_connection, transport
from playbooks.inventory import load
from playbooks.ssh_connection import Target

REPO = Path(__file__).resolve().parent.parent


def _target(tmp_path: Path, **kw) -> Target:
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    base = dict(name="h1", address="192.0.2.7", port=2222, user="ops", known_hosts=kh, key_filename=None, connect_timeout=2.5)
    return Target(**{**base, **kw})


def _opts(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv[: argv.index("--")]) if a == "-o")


def test_the_command_line_refuses_unknown_keys_forwards_nothing_and_ends_options_before_the_host(tmp_path):
    t = _target(tmp_path, key_filename="/keys/id_ed25519")
    argv = openssh.argv(t, "python3 -I -c x")
    o = _opts(argv)
    assert argv[0] == "ssh" and argv[-3:] == ["--", "192.0.2.7", "python3 -I -c x"], "the host cannot be read as an option"
    assert o["StrictHostKeyChecking"] == "yes" and o["UserKnownHostsFile"] == str(t.known_hosts)
    assert o["GlobalKnownHostsFile"] == "/dev/null" and o["UpdateHostKeys"] == "no", "only the pinned file, never written"
    assert o["BatchMode"] == "yes", "no password or passphrase prompt"
    assert (o["ForwardAgent"], o["ForwardX11"], o["ClearAllForwardings"], o["PermitLocalCommand"]) == ("no", "no", "yes", "no")
    assert (o["ControlMaster"], o["ControlPath"]) == ("no", "none"), "each session its own login, as paramiko's"
    assert (o["Port"], o["User"], o["ConnectTimeout"]) == ("2222", "ops", "3")
    assert (o["KnownHostsCommand"], o["VerifyHostKeyDNS"]) == ("none", "no"), "no keys from outside the pinned file"
    assert (o["RemoteCommand"], o["SessionType"], o["StdinNull"], o["SendEnv"]) == ("none", "default", "no", "-*")
    assert (o["IdentityFile"], o["IdentitiesOnly"], o["IdentityAgent"]) == ("/keys/id_ed25519", "yes", "none")
    assert "IdentityFile" not in _opts(openssh.argv(_target(tmp_path), "true")), "no key named: OpenSSH's own defaults"


def test_a_path_with_a_percent_or_a_blank_reaches_ssh_as_itself(tmp_path):
    odd = tmp_path / "my hosts%h"
    t = _target(tmp_path, known_hosts=odd, key_filename="/k/my key")
    o = _opts(openssh.argv(t, "true"))
    assert o["UserKnownHostsFile"] == f'"{tmp_path}/my hosts%%h"' and o["IdentityFile"] == '"/k/my key"'


# What OpenSSH 9.2 prints (stderr), trimmed to the lines that decide.
UNKNOWN = "No ED25519 host key is known for [10.0.0.5]:22 and you have requested strict checking.\r\nHost key verification failed.\r\n"
CHANGED = textwrap.dedent("""\
    @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
    @    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
    @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
    IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
    The fingerprint for the ED25519 key sent by the remote host is
    SHA256:abcDEF0123456789abcDEF0123456789abcDEF01234.
    Host key verification failed.
    """)


@pytest.mark.parametrize("err, kind, words", [
    (UNKNOWN, "host-key-unknown", ["host key not in", "never trusts on first use", "fab hostkeys --hosts h1"]),
    (CHANGED, "host-key-changed", ["HOST KEY CHANGED", "ED25519 SHA256:abcDEF0123456789abcDEF0123456789abcDEF01234,",
                                   "Refusing to connect"]),
    ("@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n@       WARNING: REVOKED HOST KEY DETECTED!               @\n"
     "The ED25519 host key for 192.0.2.7 is marked as revoked.\nHost key verification failed.\n", "host-key-revoked",
     ["marks @revoked", "Refusing to connect"]),
    ("ops@192.0.2.7: Permission denied (publickey).\n", "auth", ["authentication failed", "check user and key_filename"]),
    ("@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n@         WARNING: UNPROTECTED PRIVATE KEY FILE!          @\n"
     "Permissions 0644 for '/k/id' are too open.\nops@192.0.2.7: Permission denied (publickey).\n", "auth",
     ["OpenSSH will not use", "chmod 600"]),
    ("ssh: connect to host 192.0.2.7 port 2222: Connection refused\n", "unreachable", ["SSH failed", "Connection refused"]),
    ("ssh: connect to host 192.0.2.7 port 2222: Connection timed out\n", "unreachable", ["no answer within 2.5s"]),
])
def test_openssh_words_become_the_same_error_kinds_and_texts_as_paramiko(tmp_path, err, kind, words):
    exc = openssh.failure(_target(tmp_path), err)
    assert exc.kind == kind
    assert str(exc).startswith("h1 (ops@192.0.2.7:2222): ")
    for w in words:
        assert w in str(exc)


FAKE_SSH = """\
#!{python}
import json, os, sys, time
mode = os.environ.get("FAKE_SSH", "ok")
with open(os.environ["FAKE_SSH_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if mode == "unknown":
    sys.stderr.write({unknown!r}); sys.exit(255)
if mode == "hang":
    time.sleep(30); sys.exit(255)
if mode == "jump":  # a jump host's login, then the target's key refused
    sys.stderr.write('Authenticated to jumphost ([192.0.2.1]:22) using "publickey".\\n' + {unknown!r}); sys.exit(255)
if sys.argv[1:] == ["-V"]:
    sys.stderr.write(os.environ.get("FAKE_SSH_VERSION", "OpenSSH_9.2p1 Debian-2+deb12u10, OpenSSL 3.0.19\\n")); sys.exit(0)
sys.stderr.write('Authenticated to 192.0.2.7 ([192.0.2.7]:2222) using "publickey".\\n'); sys.stderr.flush()
if mode == "flood":
    sys.stderr.write("x" * (3 << 20)); sys.stderr.flush()
if mode == "missing":
    sys.stderr.write("python3: can't open file '.fleetroll/agent-x.pyz'\\n"); sys.exit(2)
t0 = time.monotonic()
for line in sys.stdin:
    req = json.loads(line)
    if mode == "silent":
        time.sleep(30)
    sys.stdout.write(json.dumps({{"event": "step", "op": req["op"]}}) + "\\n")
    sys.stdout.write(json.dumps({{"protocol": {protocol}, "ok": True, "data": {{"op": req["op"]}},
                                 "uptime_s": time.monotonic() - t0}}) + "\\n")
    sys.stdout.flush()
"""


@pytest.fixture
def fake_ssh(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    prog = bindir / "ssh"
    prog.write_text(FAKE_SSH.format(python=sys.executable, unknown=UNKNOWN, protocol=PROTOCOL))
    prog.chmod(0o755)
    log = tmp_path / "ssh.log"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))
    return log


def test_a_session_answers_each_request_on_one_process_and_splits_its_times(tmp_path, fake_ssh):
    sess = transport.OpenSSHSession(_target(tmp_path), "h1").login()
    assert sess.connect_times.connect_s is not None and sess.connect_times.connect_s >= 0
    events = []
    first = sess.call("facts", {}, timeout=10, on_event=events.append)
    second = sess.call("rollout", {}, timeout=10)
    sess.shut()
    assert first.ok and first.answer["data"] == {"op": "facts"} and second.answer["data"] == {"op": "rollout"}
    assert events == [{"event": "step", "op": "facts"}] and [e["op"] for e in second.events] == ["rollout"]
    assert first.times.start_s is not None and first.times.agent_s is not None and second.times.start_s is None
    assert len(fake_ssh.read_text().splitlines()) == 1, "one ssh process carried both requests"
    assert ssh_connection.HANDSHAKES._value == ssh_connection.handshake_slots(ssh_connection.usable_cpus()), "slot given back"


def test_a_host_that_goes_silent_is_a_timeout_not_a_hang(tmp_path, fake_ssh, monkeypatch):
    monkeypatch.setenv("FAKE_SSH", "silent")
    sess = transport.OpenSSHSession(_target(tmp_path), "h1").login()
    began = time.monotonic()
    with pytest.raises(transport.TransportError) as err:
        sess.call("facts", {}, timeout=0.5)
    sess.shut()
    assert err.value.kind == "timeout" and time.monotonic() - began < 5


def test_a_refused_login_is_an_error_kind_with_its_times(tmp_path, fake_ssh, monkeypatch):
    monkeypatch.setenv("FAKE_SSH", "unknown")
    with pytest.raises(transport.TransportError) as err:
        transport.OpenSSHSession(_target(tmp_path), "h1").login()
    assert err.value.kind == "host-key-unknown" and err.value.times.connect_s is not None


def test_a_login_that_never_completes_is_killed_within_its_budget(tmp_path, fake_ssh, monkeypatch):
    monkeypatch.setenv("FAKE_SSH", "hang")
    began = time.monotonic()
    with pytest.raises(transport.TransportError) as err:
        transport.OpenSSHSession(_target(tmp_path, connect_timeout=0.2), "h1").login()
    assert err.value.kind == "unreachable" and "within 0.6s" in str(err.value)
    assert time.monotonic() - began < 5


def test_a_host_without_the_agent_gets_it_uploaded_then_answers(tmp_path, fake_ssh, monkeypatch):
    """The first process says the archive is missing; the upload runs as its own ssh (the archive on its stdin, written
    to a temporary name and renamed), then a new login answers."""
    monkeypatch.setenv("FAKE_SSH", "missing")
    sess = transport.OpenSSHSession(_target(tmp_path), "h1").login()
    uploads = []

    def upload(t, name, data, timeout=120.0):
        uploads.append(name)
        monkeypatch.setenv("FAKE_SSH", "ok")

    monkeypatch.setattr(openssh, "upload", upload)
    res = sess.call("facts", {}, timeout=10)
    sess.shut()
    assert res.times.connect_s is not None, "the new login after the upload is in the host's connect time"
    assert res.ok and res.uploaded and res.round_trips == 3 and uploads == [agentpack.remote_name(agentpack.build()[1])]


def test_prewarm_reads_the_hosts_a_command_line_will_call():
    assert prewarm.wanted(["rollout", "-p", "gpu-mainpc", "-y", "--json"])["phase"] == "gpu-mainpc"
    assert prewarm.wanted(["preflight", "--hosts=pc2", "-i", "x.yml", "--max-parallel", "3"]) == {
        "task": "preflight", "phase": None, "hosts": "pc2", "inventory": "x.yml", "max_parallel": "3"}
    assert prewarm.wanted(["status", "-istaging/fleet.yml", "-Hpc2"]) == {
        "task": "status", "phase": None, "hosts": "pc2", "inventory": "staging/fleet.yml", "max_parallel": None}, "as invoke"
    assert prewarm.wanted(["rollout", "-pgpu", "-yj", "--on-failure", "stop"]) is None, "combined flags: not read, no guess"
    assert prewarm.wanted(["rollout", "-pgpu", "-y", "--on-failure=stop", "--timings"])["phase"] == "gpu"
    for line in (["rollout", "--all", "-y"], ["rollout", "-y"], ["rollout", "-p", "x", "-n"], ["status", "-f"],
                 ["rollout", "-p", "x", "--help"], ["hostkeys"], ["preflight", "status"], ["rollout", "-p"], [],
                 ["status", "--unknown"], ["-H", "x", "rollout", "-p", "y"]):
        assert prewarm.wanted(line) is None, line


def test_prewarm_targets_are_exactly_the_validated_inventorys(tmp_path, monkeypatch):
    """A prewarmed login is claimed only if its command line is the one the validated inventory gives: same defaults,
    same relative known_hosts, the same per-host overrides."""
    inv_dir = tmp_path / "inv"
    inv_dir.mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "k").write_text("a key")
    fleet = (REPO / "inventory" / "fleet.yml").read_text().replace(
        "  pc2:\n    address: 192.168.1.11\n", "  pc2:\n    address: pc2.lan\n    port: 2200\n    key_filename: ~/k\n"
        "    known_hosts: /etc/fr_known\n    python: /opt/py/bin/python3\n")
    (inv_dir / "fleet.yml").write_text(fleet)
    (inv_dir / "phases.yml").write_text((REPO / "inventory" / "phases.yml").read_text())
    path = inv_dir / "fleet.yml"
    inv = load(path)
    raw, phases = prewarm._raw(path), prewarm._raw(inv_dir / "phases.yml")
    for host in inv.fleet.hosts:
        assert prewarm.target(path, raw, host) == Target.from_inventory(inv, host)
    assert prewarm.hosts_for(raw, phases, "gpu-mainpc", None) == ["mainpc"]
    assert prewarm.hosts_for(raw, phases, None, "pc2") == ["pc2"]
    assert prewarm.hosts_for(raw, phases, "no-such-phase", None) == []


def test_prewarm_starts_no_more_logins_than_the_command_runs_at_once():
    assert prewarm._parallel(None, {}) == 10 and prewarm._parallel(None, {"ssh": {"max_parallel": 4}}) == 4
    assert prewarm._parallel("2", {"ssh": {"max_parallel": 4}}) == 2, "--max-parallel wins, as in the command"
    assert prewarm._parallel("x", {}) == 0 and prewarm._parallel(None, {"ssh": {"max_parallel": "many"}}) == 0


def test_prewarm_never_puts_an_unvalidated_value_on_an_ssh_command_line(tmp_path):
    path = tmp_path / "fleet.yml"
    for bad in ({"address": "-oProxyCommand=x"}, {"address": "h", "user": "-F/tmp/x"}, {"address": "h", "port": "22"},
                {"address": "h", "python": "python3; rm"}, {"address": "a b"}):
        assert prewarm.target(path, {"hosts": {"h": bad}}, "h") is None, bad


def test_the_prewarm_defaults_are_the_schemas():
    from playbooks.schema import Host, Ssh

    h, s = Host.model_fields, Ssh.model_fields
    assert prewarm.DEFAULTS == {"port": h["port"].default, "user": h["user"].default, "python": h["python"].default,
                                "known_hosts": s["known_hosts"].default, "connect_timeout": s["connect_timeout"].default,
                                "client": s["client"].default, "max_parallel": s["max_parallel"].default}


def test_a_prewarmed_login_is_handed_out_once_and_only_for_its_own_command_line(tmp_path, fake_ssh):
    t = _target(tmp_path)
    command = openssh.agent_command(t.python)
    assert prewarm._try(prewarm._register(t), blocking=True)
    assert prewarm.claim(t, "another-command") is None
    got = prewarm.claim(t, command)
    assert got is not None and got.proc is not None and prewarm.claim(t, command) is None
    got.close()
    prewarm._try(prewarm._register(t), blocking=True)
    left = prewarm._warm[(t.name, *openssh.argv(t, command))]
    left.connect()  # logged in: discard ends it by the end of its input, not a kill
    prewarm.discard()
    assert not prewarm._warm and left.proc.wait(5) == 0, "an unclaimed login ends at the end of its input"


def test_the_openssh_path_loads_neither_paramiko_nor_fabric():
    code = ("import sys; import playbooks.transport, playbooks.prewarm, playbooks.openssh; "
            "print(sorted(m for m in ('paramiko', 'fabric', 'invoke') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert json.loads(out.replace("'", '"')) == []


def test_a_jump_hosts_login_is_not_the_targets_and_a_refused_key_behind_it_is_said_as_one(tmp_path, fake_ssh, monkeypatch):
    monkeypatch.setenv("FAKE_SSH", "jump")
    with pytest.raises(transport.TransportError) as err:
        transport.OpenSSHSession(_target(tmp_path), "h1").login()
    assert err.value.kind == "host-key-unknown", "not link-lost: the target's key was refused"


def test_a_host_that_floods_stderr_costs_at_most_max_stderr(tmp_path, fake_ssh, monkeypatch):
    monkeypatch.setenv("FAKE_SSH", "flood")
    sess = transport.OpenSSHSession(_target(tmp_path), "h1").login()
    assert sess.call("facts", {}, timeout=10).ok
    kept = len(sess.ssh._err)
    sess.shut()
    assert kept <= remote.MAX_STDERR


def test_an_interrupted_command_kills_its_ssh_processes_so_no_worker_waits_on_them(tmp_path, fake_ssh, monkeypatch):
    monkeypatch.setenv("FAKE_SSH", "silent")
    sess = transport.OpenSSHSession(_target(tmp_path), "h1").login()
    assert sess.ssh.send(b"{}\n")
    openssh.kill_all()
    began = time.monotonic()
    assert sess.ssh.readline(30) == b"" and time.monotonic() - began < 5, "the blocked read ends at once"
    assert sess.ssh.proc.poll() is not None


def test_paths_that_openssh_would_expand_are_refused_not_passed(tmp_path):
    for bad in ("/k/${HOME}", '/k/a"b', "/k/a\\b", "/k/a\nb"):
        with pytest.raises(openssh.PathError):
            openssh.argv(_target(tmp_path, key_filename=bad), "true")


def test_auto_means_openssh_only_from_8_7(tmp_path, fake_ssh, monkeypatch):
    for said, ok in (("OpenSSH_9.2p1 Debian", True), ("OpenSSH_8.7p1", True), ("OpenSSH_8.4p1 Debian-5", False),
                     ("Sun_SSH_1.1", False)):
        monkeypatch.setenv("FAKE_SSH_VERSION", said)
        openssh.version.cache_clear()
        assert openssh.usable() is ok, said
    openssh.version.cache_clear()


def test_an_ipv6_zone_is_an_interface_name_never_shell_text():
    from playbooks.schema_base import _address

    assert _address("fe80::1%eth0") == "fe80::1%eth0" and prewarm._address_ok("fe80::1%eth0")
    for bad in ("fe80::1%`touch x`", "fe80::1%$(id)", "fe80::1%a b"):
        with pytest.raises(ValueError):
            _address(bad)
        assert not prewarm._address_ok(bad)


def test_a_prewarmed_login_is_its_own_hosts_even_at_a_shared_address(tmp_path, fake_ssh):
    a, b = _target(tmp_path, name="pc-a"), _target(tmp_path, name="pc-b")
    command = openssh.agent_command(a.python)
    assert prewarm._try(prewarm._register(a), blocking=True)
    assert prewarm.claim(b, command) is None, "pc-b's errors must name pc-b: it logs in itself"
    got = prewarm.claim(a, command)
    assert got is not None
    got.close()


def test_a_login_prewarm_registered_but_never_started_is_not_counted_ahead(tmp_path, fake_ssh):
    t = _target(tmp_path)
    prewarm._register(t)  # no handshake slot was free: registered, never spawned
    sess = transport.OpenSSHSession(t, "h1").login()
    assert sess.connect_times.ahead == 0
    sess.shut()
    assert prewarm._try(prewarm._register(t), blocking=True)
    sess = transport.OpenSSHSession(t, "h1").login()
    assert sess.connect_times.ahead == 1
    sess.shut()


def test_a_pool_finished_early_lets_its_agents_end_while_the_command_still_works(tmp_path, fake_ssh):
    sess = transport.OpenSSHSession(_target(tmp_path), "h1").login()
    pool = transport.Pool()
    pool.sessions["h1"] = sess
    proc = sess.ssh.proc
    pool.finish()
    assert not pool.sessions and pool.closing == [sess], "no host is called again; nothing waited for yet"
    assert proc.stdin.closed
    proc.wait(5)  # the agent read the end of its input and exited on its own, with no wait in the pool
    pool.__exit__(None, None, None)
    assert pool.closing == [] and proc.returncode == 0
