"""The CLI under help, bad input and closed pipes: help for every task, one-line errors, no tracebacks (no hosts)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAB = str(Path(sys.executable).with_name("fab"))
from lab.tasks import lab as lab_tasks  # noqa: E402
from playbooks.tasks import ns  # noqa: E402

# every task `fab` has (the fleet's and the lab's, fabfile.py), so a new one cannot miss its help
TASKS = sorted({*ns.task_names, *(f"lab.{t}" for t in lab_tasks.task_names)})


def fab(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([FAB, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, input=stdin)


FLEETROLL = str(Path(sys.executable).with_name("fleetroll"))
INSTALLED_TASKS = sorted(ns.task_names)  # the installed command has no lab.* (fabfile.py adds those for `fab`)
FAB_COMMAND = re.compile(r"(?<![\w./-])fab ")  # `fab status`, not `prefab ` or a path


@pytest.mark.parametrize("argv", [[FAB, t] for t in TASKS] + [[FLEETROLL, t] for t in INSTALLED_TASKS],
                         ids=lambda a: " ".join([Path(a[0]).name, *a[1:]]))
def test_task_help_prints_help_and_runs_nothing(argv):
    r = subprocess.run([*argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    program = Path(argv[0]).name
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Usage: {program} " in r.stdout and "Traceback" not in r.stderr
    if program == "fleetroll":  # the installed tool names itself, and the phases where they live now (issue 23)
        assert not FAB_COMMAND.search(r.stdout + r.stderr), r.stdout
        assert "playbooks/phases.yml" not in r.stdout + r.stderr, r.stdout


def test_the_installed_commands_list_and_hints_name_it_and_fab_keeps_its_own():
    for args in (["--list"], ["--help"]):
        r = subprocess.run([FLEETROLL, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and not FAB_COMMAND.search(r.stdout), r.stdout
    r = subprocess.run([FLEETROLL, "build"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--family is required, e.g. fleetroll build --family" in r.stderr, r.stderr
    assert fab("build").stderr.strip() == "--family is required, e.g. fab build --family family-cpu-py311"
    r = subprocess.run([FLEETROLL, "runbook", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.stdout.startswith("Usage: fleetroll runbook PATH"), r.stdout


def test_a_hint_is_rewritten_only_where_it_names_the_fab_command(monkeypatch, capsys):
    from playbooks import program, render, taskkit

    text = "Stop rollouts until `fab thaw`; see fab versions, (fab status lists them); prefab x, ./fab y, fabric z"
    assert taskkit.as_run(text) == text  # run as `fab`: unchanged
    monkeypatch.setattr(program, "_PROGRAM", ["fleetroll"])
    assert taskkit.as_run(text) == ("Stop rollouts until `fleetroll thaw`; see fleetroll versions, (fleetroll status lists"
                                    " them); prefab x, ./fab y, fabric z")
    # and every report line a task prints (refusals, freezes, rollback hints) goes the same way
    render.say("phase gpu-mainpc is frozen; when it may go ahead: fab thaw --phase gpu-mainpc --reason '...'")
    assert capsys.readouterr().out == "phase gpu-mainpc is frozen; when it may go ahead: fleetroll thaw --phase gpu-mainpc --reason '...'\n"


@pytest.mark.parametrize("args,says", [
    (["rollout", "--phase", "gpu-mainpc", "--max-parallel", "abc"], "--max-parallel must be a whole number, not 'abc'"),
    (["preflight", "--max-parallel", "0"], "--max-parallel must be 1 or more"),
    (["history", "--limit", "x"], "--limit must be a whole number, not 'x'"),
    (["unlock", "--host", "nosuchhost", "--reason", "r"], "--host names nosuchhost, not in the inventory"),  # its own flag
    (["logs", "--agent", "-H", "nosuchhost"], "--host names nosuchhost, not in the inventory"),
    (["rollout", "--all", "-p", "gpu-mainpc"], "--phase and --all: give one, not both"),
    (["unlock", "--host", "mainpc"], "--reason is required"),
    (["rollback"], "--phase is required"),
    (["freeze", "--phase", "gpu-mainpc"], "--reason is required"),
    (["thaw", "--reason", "r"], "--phase is required"),
    (["freeze", "--phase", "no-such-phase", "--reason", "r"], "no-such-phase"),
    (["lab.release"], "--service is required"),
    (["build"], "--family is required"),
    (["runbook", "no/such.md"], "no such runbook"),
])
def test_bad_input_is_one_line_and_exit_1(args, says):
    r = fab(*args)
    assert r.returncode == 1, r.stdout + r.stderr
    assert says in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_closed_pipe_ends_quietly(tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text("".join(f'{{"kind":"started","rollout_id":"r{i}","time":"t","phase":"p"}}\n' for i in range(3000)))
    # fab history --json | head -c 10, as two processes joined by a real pipe (no shell)
    writer = subprocess.Popen([FAB, "history", "--json", "--limit", "3000"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**__import__("os").environ, "FLEETROLL_LEDGER": str(ledger)})
    reader = subprocess.run(["head", "-c", "10"], stdin=writer.stdout, capture_output=True, timeout=60)
    writer.stdout.close()
    err = writer.stderr.read().decode()
    writer.wait(timeout=60)
    assert len(reader.stdout) == 10
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_numeric_options_with_defaults_are_checked_by_us_not_the_parser():
    r = fab("lab.up", "--count", "many")
    assert r.returncode == 1 and "--count must be a whole number, not 'many'" in r.stderr and "Traceback" not in r.stderr


def test_short_flags_mean_one_thing_in_every_task():
    import re

    from playbooks.tasks import SHORT_FLAGS

    seen: dict[str, set[str]] = {}
    for name in TASKS:
        for short, long in re.findall(r"^\s+-(\w)(?: \w+)?, --([\w-]+)", fab(name, "--help").stdout, re.M):
            seen.setdefault(short, set()).add(long)
            assert SHORT_FLAGS.get(long.replace("-", "_")) == short, (name, short, long)
    assert all(len(longs) == 1 or longs == {"host", "hosts"} for longs in seen.values()), seen


def test_invalid_inventory_with_json_prints_a_json_error_object(tmp_path):
    import json

    (tmp_path / "fleet.yml").write_text("registry: {host: r, org: o}\nhosts: {a: {address: 10.0.0.1, prot: 22}}\n")
    (tmp_path / "phases.yml").write_text("phases: []\n")
    for task in (["status"], ["rollout", "-p", "x"], ["details"], ["preflight"]):
        r = fab(*task, "--json", "-i", str(tmp_path / "fleet.yml"))
        assert r.returncode == 1, (task, r.stdout, r.stderr)
        out = json.loads(r.stdout)
        assert out["error"] == "inventory is not valid" and any("hosts.a.prot" in p and "did you mean 'port'" in p for p in out["problems"])


def test_a_warning_shared_by_services_is_printed_once_and_a_real_rollout_shows_what_it_accepted():
    from playbooks import render
    from playbooks.preflight import PASS, WARN, Check

    checks = [Check("mainpc", "image:llm-api", WARN, "reg/torch@sha256:abc: no SBOM label", "rebuild"),
              Check("mainpc", "image:vision-api", WARN, "reg/torch@sha256:abc: no SBOM label", "rebuild"),
              Check("mainpc", "docker", PASS, "ok", "")]
    text = render.preflight_text(checks, ["mainpc"])
    assert text.count("no SBOM label") == 1 and "mainpc image:llm-api, mainpc image:vision-api" in text
    lines = render.accepted_warnings(checks)
    assert lines == ["preflight WARN (accepted): reg/torch@sha256:abc: no SBOM label; fix: rebuild [mainpc llm-api, mainpc vision-api]"]


def test_phase_wide_revert_lists_the_failing_service_first_marked_as_the_cause():
    from types import SimpleNamespace

    from playbooks import render

    hosts = {"pc2": {"services": [{"service": "embed", "outcome": "reverted", "check": "phase-revert"}]},
             "mainpc": {"services": [{"service": "llm", "outcome": "reverted", "check": "health-deadline"}]}}
    r = SimpleNamespace(preflight=None, hosts=hosts, messages=[], rollout_id="r1", phase="p", state="reverted", elapsed_s=1.0)
    rows = [x for x in render.rollout_text(r).splitlines() if x.startswith("  ")]
    assert "llm" in rows[0] and rows[0].endswith("<- cause") and "embed" in rows[1] and "cause" not in rows[1]


def test_status_table_has_a_state_and_restarts_column():
    from playbooks import render

    st = {"collector": None, "hosts": {"mainpc": {"reachable": True, "services": {
        "llm-api": {"tag": "t1", "digest": "sha256:" + "a" * 64, "status": "restarting", "restarts": 7, "healthy": False,
                    "health": "container restarting (restarts 7)", "drift": "", "rollout_id": "r"}}}}}
    text = render.status_text(st)
    assert text.splitlines()[0].split()[:6] == ["host", "service", "tag", "digest", "state", "reported"]
    assert "restarting, 7 restarts" in text


def test_status_prints_an_unreachable_host_s_reason_whole_and_a_freeze_kept_under_another():
    """Found on the lab: the table cut the reason at 60 characters ('... is the hos') and it was nowhere else."""
    from playbooks import render

    why = "mainpc: no answer within 3s; is the host up and on the network? (ssh: connect to host 10.0.0.1 port 22: timed out)"
    auto = {"phase": "gpu", "auto": True, "rollout_id": "r-1", "reason": "rollout r-1 failed: llm:T2 ... reverted", "ts": 0}
    st = {"collector": None, "hosts": {"mainpc": {"reachable": False, "error": why},
                                       "pc2": {"reachable": True, "services": {}, "freezes": [
                                           {"phase": "gpu", "auto": False, "by": "alice", "reason": "driver", "ts": 0,
                                            "kept_auto": auto}]}}}
    text = render.status_text(st)
    assert f"mainpc: UNREACHABLE: {why}" in text, text
    assert "pc2: phase gpu frozen by alice" in text and "under it, the automatic freeze after rollout r-1" in text, text


@pytest.mark.parametrize("args,says", [
    (["rollout", "-p", "gpu-mainpc", "-H", "nohost", "-y"], "--hosts nohost: no such host"),
    (["rollout", "-p", "gpu-mainpc", "-H", "pc2", "-y"], "--hosts pc2: phase gpu-mainpc has no service there; its hosts: mainpc"),
    (["rollback", "-p", "gpu-mainpc", "-H", "nohost", "-y"], "--hosts nohost: no such host"),
    (["rollback", "-p", "gpu-mainpc", "-H", "pc2", "-y"], "phase gpu-mainpc has no service there"),
    (["rollback", "-p", "gpu-mainpc", "-s", "rag-api", "-y"], "--service rag-api: not a service of phase gpu-mainpc; its services:"),
    (["rollback", "-p", "gpu-mainpc", "-s", "nosvc", "-y"], "--service nosvc: not a service of phase gpu-mainpc"),
    (["rollback", "-s", "rag-api", "-H", "mainpc", "-y"], "--hosts mainpc: phase cpu-pc2 has no service there"),  # -s names the phase
    (["rollback", "-s", "nosvc", "-y"], "--service 'nosvc' is not in the inventory"),
    (["restart", "-s", "nosvc", "-y"], "nosvc"),
    (["restart", "-s", "rag-api", "-H", "mainpc", "-y"], "rag-api has no replica on mainpc; it runs on pc2"),
    (["logs", "-s", "rag-api", "-H", "nohost"], "rag-api has no replica on 'nohost'"),
    (["exec", "-s", "rag-api", "-H", "mainpc", "--", "true"], "rag-api has no replica on 'mainpc'"),
    (["remove", "-s", "rag-api", "-H", "pc2", "-y"], "rag-api is in the inventory on pc2: remove it from"),
    (["remove", "-s", "old-api", "-H", "nohost", "-y"], "--host nohost: no such host"),
])
def test_a_filter_that_names_nothing_is_an_input_error_and_nothing_is_ledgered(args, says, tmp_path):
    import os

    led = tmp_path / "ledger.jsonl"
    r = subprocess.run([FAB, *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "FLEETROLL_LEDGER": str(led)})
    assert r.returncode == 1, r.stdout + r.stderr
    assert says in r.stderr and "Traceback" not in r.stderr and "REVERTED" not in r.stdout + r.stderr
    assert not led.exists() or led.read_text() == ""


READERS = ("head -1", "head -3", "true")  # `true` closes the pipe before the first write: EPIPE every time
# Every reader for the lists and one task's help of each program; each other task's help under one reader, the readers
# taken in turn, so every task and every reader is covered without three interpreters per task (one help printer
# serves them all; 180 starts were two minutes of a CI worker).
PIPE_COMMANDS = [([FAB, "--list"], READERS), ([FLEETROLL, "--list"], READERS), ([FLEETROLL, "--help"], READERS),
                 ([FAB, "rollout", "--help"], READERS), ([FLEETROLL, "rollout", "--help"], READERS)] + [
    ([prog, t, "--help"], (READERS[i % len(READERS)],))
    for i, (prog, t) in enumerate([(FAB, t) for t in TASKS] + [(FLEETROLL, t) for t in INSTALLED_TASKS]) if t != "rollout"]


@pytest.mark.parametrize("argv,readers", PIPE_COMMANDS, ids=lambda a: " ".join([Path(a[0]).name, *a[1:]])
                         if isinstance(a[0], str) and a[0].startswith("/") else "+".join(a))
def test_help_and_list_piped_into_a_reader_that_leaves_end_quietly(argv, readers):
    """`fab --list | head -1`, `fab TASK --help | head -3`: no traceback whether the reader leaves after a line or at once."""
    import shlex

    for reader in readers:
        r = subprocess.run(["bash", "-c", f"set -o pipefail; {shlex.join(argv)} | {reader} >/dev/null"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode in (0, 1), (reader, r.returncode, r.stderr)  # never killed by SIGPIPE (141)
        assert r.stderr == "", (reader, r.stderr)  # no traceback, no "Exception ignored ... BrokenPipeError"


@pytest.mark.parametrize("argv", [[FAB, "--list"], [FLEETROLL, "--list"], [FAB, "rollout", "--help"]])
def test_a_reader_gone_before_the_first_byte_gets_no_traceback(argv):
    writer = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    writer.stdout.close()  # the reader is gone before the command has written anything
    err = writer.stderr.read().decode()
    assert writer.wait(timeout=60) in (0, 1) and err == "", err


@pytest.mark.parametrize("argv", [[FAB, "status", "-H", "nohost"], [FLEETROLL, "status", "-H", "nohost"],
                                  [FAB, "details", "-H", "nohost"], [FAB, "prune", "-H", "nohost", "-n"]])
def test_an_unknown_host_is_one_line_naming_the_valid_hosts(argv):
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "nohost" in lines[0] and "known hosts: mainpc, pc2" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_before_asking_the_operator_sees_the_preflight_table_and_the_security_warnings(capsys):
    """In a terminal, rollout used to ask to confirm showing neither (issue 23)."""
    from playbooks.preflight import Check
    from playbooks.tasks import _confirm_or_yes

    class Pre:
        checks = [Check("mainpc", "ssh", "pass", "reachable")]
        hosts = ["mainpc"]

    class Rep:
        preflight = Pre()
        messages = ["security WARN: torch:1: no Trivy report (policy: warn)", "batch 1/1: mainpc"]

    _confirm_or_yes(False).show(Rep())
    err = capsys.readouterr().err
    assert "mainpc" in err and "ssh" in err and "security WARN: torch:1: no Trivy report" in err and "batch" not in err
    _confirm_or_yes(True).show(Rep())
    assert capsys.readouterr().err == "", "--yes asks nothing and shows nothing extra"


@pytest.mark.parametrize("args,says", [
    (["-i", "/tmp/other.yml", "status"], "fab: put -i after the task name: fab status -i … (before the task, -i is Fabric's own --identity)"),
    (["-H", "mainpc", "status"], "fab: put -H after the task name: fab status -H …"),
])
def test_a_fleetroll_flag_before_the_task_is_refused_not_read_as_fabrics(args, says):
    """`fab -i FILE status` read ./inventory/fleet.yml and `fab -H mainpc status` showed every host (issue 23)."""
    r = fab(*args)
    assert r.returncode == 1 and says in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_flags_after_the_task_are_untouched():
    import signal

    before = signal.getsignal(signal.SIGINT)
    import fabfile

    # imported by a test, fabfile leaves the worker's Ctrl-C alone (its fixtures' teardown must still run)
    assert signal.getsignal(signal.SIGINT) is before

    assert fabfile.flags_before_the_task(["fab", "status", "-H", "mainpc"], {"status"}) == ""
    assert fabfile.flags_before_the_task(["fab", "--list"], {"status"}) == ""
    assert fabfile.flags_before_the_task(["fab", "-j", "status"], {"status"}).startswith("fab: put -j after the task name")


def test_ctrl_c_while_the_command_starts_exits_130_saying_nothing_was_asked():
    """invoke made a Ctrl-C during start-up exit 1 (bad input, in the README's table) without a word. Found on the lab."""
    code = ("import os, signal, sys, time\n"
            "from playbooks.program import interrupted_while_starting\n"
            "sys.argv[0] = '/usr/local/bin/fleetroll'\n"  # only the command the operator ran takes SIGINT over
            "interrupted_while_starting()\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"  # as if the operator pressed Ctrl-C during the imports
            "time.sleep(10)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 130 and "interrupted while starting; nothing was asked of any host" in r.stderr, r


def test_once_a_task_runs_ctrl_c_is_a_keyboard_interrupt_again():
    """The task's own Ctrl-C handling (a rollout: exit 130, the hosts finish) needs Python's handler back, lab tasks too."""
    code = ("import signal, sys\n"
            "from playbooks.program import interrupted_while_starting\n"
            "sys.argv[0] = 'fab'\n"
            "interrupted_while_starting()\n"
            "assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler\n"
            "from playbooks.taskkit import invoke\n"
            "seen = []\n"
            "@invoke.task\n"
            "def probe(c):\n"
            "    seen.append(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
            "ns = invoke.Collection(probe)\n"
            "invoke.Program(namespace=ns).run(['prog', 'probe'], exit=False)\n"
            "print('default' if seen == [True] else f'not the default: {seen}')\n"
            "@invoke.task\n"
            "def slow(c):\n"  # a task with no Ctrl-C handling of its own (status, details, ...)
            "    raise KeyboardInterrupt\n"
            "invoke.Program(namespace=invoke.Collection(slow)).run(['prog', 'slow'])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "default", r
    assert r.returncode == 130 and "interrupted (Ctrl-C)" in r.stderr, r  # invoke's own answer was exit 1, silent


def test_ctrl_c_under_json_is_a_json_object_on_stdout_too():
    """A script reading --json got an empty stdout on Ctrl-C: a task's own handling (rollout, restart, status --follow)
    and a task without one (details, logs, …) now both leave {"error", "exit_code": 130} there as well."""
    import json

    code = ("import sys\n"
            "from playbooks.taskio import interrupted\n"
            "interrupted('interrupted: the host finishes the restart on its own (fab status --follow)', as_json=True)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 130 and "finishes the restart on its own" in r.stderr, r
    assert json.loads(r.stdout) == {"error": "interrupted: the host finishes the restart on its own (fab status --follow)",
                                    "exit_code": 130, "interrupted": True}
    code = ("from playbooks.taskkit import invoke, task\n"
            "@task\n"
            "def slow(c, json=False):\n"
            "    raise KeyboardInterrupt\n"
            "invoke.Program(namespace=invoke.Collection(slow)).run(['prog', 'slow', '--json'])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 130 and "interrupted (Ctrl-C)" in r.stderr, r
    assert json.loads(r.stdout) == {"error": "interrupted (Ctrl-C)", "exit_code": 130, "interrupted": True}


def test_an_error_of_a_json_task_is_a_json_object_on_stdout_too(tmp_path):
    """Found on the lab: status -j -H nosuch, rollout -j -H nosuch -n and explain -j put plain text on stderr, stdout empty."""
    import json

    inv = str(ROOT / "inventory" / "fleet.yml")
    for task in (["status", "-H", "nosuch"], ["rollout", "-p", "gpu-mainpc", "-H", "nosuch", "-n"], ["explain", "nosuch/llm-api"]):
        r = fab(*task, "--json", "-i", inv)
        assert r.returncode == 1 and r.stderr.strip(), (task, r.stdout, r.stderr)
        out = json.loads(r.stdout)
        assert out["exit_code"] == 1 and "nosuch" in out["error"] and out["error"] in r.stderr, (task, out, r.stderr)


def test_rollout_all_json_says_committed_when_one_phase_committed_beside_a_no_op(capsys):
    """Found on the lab: --all -j gave state 'noop' while phase pair had committed (the first state with exit 0 won)."""
    import json
    from types import SimpleNamespace

    from playbooks import taskio

    def rep(state):
        return SimpleNamespace(state=state, frozen=False, plan=None, to_json=lambda: {"state": state})

    taskio.print_reports([rep("noop"), rep("committed")], as_json=True)
    out = json.loads(capsys.readouterr().out)
    assert (out["state"], out["exit_code"]) == ("committed", 0), out
    taskio.print_reports([rep("committed"), rep("reverted")], as_json=True)
    assert json.loads(capsys.readouterr().out)["state"] == "reverted"



def test_rollback_and_restart_json_carry_their_exit_code(capsys):
    """Found on the lab: rollout -j had a top-level exit_code, rollback -j and restart -j did not."""
    import json
    from types import SimpleNamespace

    from playbooks import taskio

    def rep(state, ok):
        return SimpleNamespace(state=state, ok=ok, frozen=False, plan=None, to_json=lambda: {"state": state})

    for state, ok, code in (("reverted", True, 0), ("committed", True, 0), ("needs-operator", False, 5), ("reverted", False, 4)):
        taskio.print_reports([rep(state, ok)], as_json=True, one_object=True)
        assert json.loads(capsys.readouterr().out) == {"state": state, "exit_code": code}


def test_a_skipped_row_names_the_release_that_was_not_started():
    """Found on the lab: the canary's skipped host read 'T1 -> T1' instead of what it skipped."""
    from playbooks.plan import Step
    from playbooks.render import _row_refs
    from playbooks.rollout import _untouched

    st = Step("pc2", "multi", "replace", current_tag="T1", current_digest="sha256:" + "a" * 64, new_tag="T2",
              new_digest="sha256:" + "b" * 64)
    row = _untouched(st, "skipped", "batch", "not started: batch 1 failed")
    assert _row_refs(row) == "T2 (not started) -> T1@aaaaaaaaaaaa", _row_refs(row)


def test_a_blank_reason_is_no_reason():
    """Found by an exploratory run: fab freeze -p P --reason '  ' recorded a whitespace reason; an empty one was refused."""
    from playbooks.taskkit import Exit, required

    for blank in ("", "  ", "\t"):
        with pytest.raises(Exit, match="--reason is required"):
            required(blank, "reason", 'fab freeze --phase gpu-mainpc --reason "why"')
    assert required(" why ", "reason", "") == " why "


def test_ctrl_c_on_exec_says_the_command_may_go_on_in_the_container(monkeypatch):
    """Found by an exploratory run: Ctrl-C on `fab exec -s S -- sleep 45` exited 130 without a word while the command
    went on in the container (Docker has no call that stops an exec)."""
    from playbooks import operate, tasks
    from playbooks.taskkit import Exit, invoke

    monkeypatch.setattr(tasks, "_inventory", lambda i, *a: None)
    monkeypatch.setattr(tasks, "_remainder_argv", lambda: ["sleep", "45"])

    def cut(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(operate, "exec_in", cut)
    with pytest.raises(Exit) as ended:
        tasks.exec_(invoke.Context(), service="core-pc2")
    assert ended.value.code == 130 and "the command may still run in core-pc2's container" in str(ended.value)


def test_a_fleetroll_flag_after_a_task_that_lacks_it_is_refused_not_read_as_fabrics():
    """Found by an exploratory run: `fab freeze -p P -H mainpc` froze every host of P (-H: Fabric's --hosts, the task
    run once per host: `fab thaw ... -H mainpc,pc2` thawed twice, the second "on no host"), `fab status -p P` said
    "No idea what 'P' is!" and `fab history -f` asked for a config file."""
    import fabfile

    flags = fabfile._flags_of(fabfile.ns)
    lacks = fabfile.flags_the_task_lacks
    assert lacks(["fab", "freeze", "-p", "core-infra", "-H", "mainpc", "--reason", "x"], flags).startswith(
        "fab: freeze has no -H option (here Fabric would read it as its own --hosts)")
    assert "thaw has no --hosts option" in lacks(["fab", "thaw", "--hosts=pc2", "-p", "web"], flags)
    assert "status has no -p option" in lacks(["fab", "status", "-p", "web"], flags)
    assert "history has no -f option" in lacks(["fab", "history", "-f"], flags)
    for fine in (["fab", "status", "-H", "mainpc", "-j"], ["fab", "freeze", "-p", "web", "--reason", "-H"],
                 ["fab", "exec", "-s", "api", "--", "ls", "-H", "-p"], ["fab", "details", "-s", "x", "-H", "pc2"],
                 ["fab", "rollout", "-p", "web", "-H", "pc2", "-n", "status", "-f"], ["fab", "--list"]):
        assert lacks(fine, flags) == "", fine
    r = fab("freeze", "-p", "web", "-H", "mainpc", "--reason", "x")
    assert r.returncode == 1 and "fab: freeze has no -H option" in r.stderr and "froze" not in r.stdout + r.stderr, r


def test_task_help_keeps_each_option_s_help_text():
    """Found by review: the check for misplaced flags read every task's arguments at start-up, and invoke pops each
    option's help as it reads it: `fab rollout --help` listed its options with no help text at all."""
    for argv in ([FAB, "rollout", "--help"], [FLEETROLL, "rollout", "--help"]):
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
        assert "hosts changed at once" in out and "every phase in order" in out, out
