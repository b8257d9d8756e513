"""Start-up cost: what a command imports before it does anything (issue 24). Not timed: the import graph is checked.

Every `fab`/`fleetroll` command, `--help` included, imports the task module first. The SSH stack,
the inventory's schema (pydantic), the docker SDK, rich and test helpers are imported by a task
when it runs, never at start-up. bench/startup.py times the commands themselves.

On a host, the agent's transaction speaks to Docker with http.client (agent/engine.py): neither
importing it nor running it as far as a Docker call imports the docker SDK, requests or urllib3.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLEETROLL = str(Path(sys.executable).with_name("fleetroll"))

# Heavy at import, and needed only once a task runs (or never by a command).
HEAVY = ["paramiko", "fabric", "fabric.connection", "pydantic", "pydantic_core", "docker", "requests", "rich",
         "unittest.mock", "asyncio", "playbooks.inventory", "playbooks.transport", "playbooks.render"]
# What the agent's transaction must run without (issue 24): the docker SDK and the HTTP stack under it.
AGENT_HEAVY = ["docker", "requests", "urllib3"]
# Not listed: `yaml`. invoke's own vendored YAML module imports PyYAML's C loader when invoke is
# imported, so no module of ours can keep it out (about 3 ms).


def imported(argv: list[str], expect: tuple[str, ...] = ("invoke", "playbooks.tasks"), env: dict | None = None) -> set[str]:
    """The modules a process imports, from CPython's own -X importtime report (PYTHONPROFILEIMPORTTIME)."""
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, **(env or {}), "PYTHONPROFILEIMPORTTIME": "1"})
    names = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:") and "|" in line}
    assert any(e in names for e in expect), r.stderr[-2000:]
    return names


def test_importing_the_tasks_loads_nothing_heavy():
    names = imported([sys.executable, "-c", "import playbooks.tasks"])
    assert "playbooks.tasks" in names
    assert sorted(set(HEAVY) & names) == []


@pytest.mark.parametrize("args", [["--help"], ["--list"], ["status", "--help"], ["rollout", "--help"]])
def test_the_installed_command_starts_without_the_ssh_stack(args):
    names = imported([FLEETROLL, *args])
    assert "playbooks.tasks" in names
    assert sorted(set(HEAVY) & names) == []


def test_unittest_mock_is_the_real_module_after_the_tasks_are_imported():
    """The stand-in that keeps unittest.mock out of invoke's import must not leak into later imports."""
    code = ("import playbooks.tasks, sys\n"
            "assert 'unittest.mock' not in sys.modules\n"
            "import invoke.context, unittest.mock\n"
            "m = invoke.context.Mock(wraps=len)\n"
            "assert isinstance(m, unittest.mock.Mock) and m([1, 2]) == 2 and m.call_count == 1\n"
            "assert unittest.mock.patch and sys.modules['unittest.mock'] is unittest.mock\n"
            "from invoke import MockContext, Result\n"
            "assert MockContext(run={'x': Result('ok')}).run('x').stdout == 'ok'\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_a_task_body_still_gets_what_it_imports_lazily():
    """Lazy imports only move the cost: the commands work (fleetroll, not fab, runs on invoke alone)."""
    r = subprocess.run([FLEETROLL, "history", "--limit", "1"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "FLEETROLL_LEDGER": "/nonexistent/ledger.jsonl"})
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    r = subprocess.run([FLEETROLL, "--version"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("fleetroll "), r.stdout + r.stderr


@pytest.mark.parametrize("program", [FLEETROLL, str(Path(sys.executable).with_name("fab"))])
def test_the_modules_a_task_imports_as_it_runs_are_cached_as_bytecode(program, tmp_path):
    """invoke turns bytecode caching off while it parses the command line (no --write-pyc), before a task imports the
    inventory, render and the rest: each command compiled them from source again. The interpreter's own setting wins:
    cached without -B / PYTHONDONTWRITEBYTECODE, not with it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for dont, prefix in (("", tmp_path / "on"), ("1", tmp_path / "off")):
        run_env = {**env, "PYTHONPYCACHEPREFIX": str(prefix), **({"PYTHONDONTWRITEBYTECODE": dont} if dont else {})}
        r = subprocess.run([program, "status", "-i", str(tmp_path / "none.yml")], cwd=ROOT, capture_output=True,
                           text=True, timeout=60, env=run_env)
        assert r.returncode == 1 and "no inventory at" in r.stderr, r.stderr
        cached = {p.name.split(".")[0] for p in prefix.rglob("*.pyc") if p.parent.name == "playbooks"}
        if dont:
            assert cached == set(), cached
        else:  # imported by the task's body (load_inventory), after invoke parsed the command line
            assert {"inventory", "inventory_checks", "schema", "render"} <= cached, cached


def test_importing_the_transaction_loads_no_docker_sdk():
    names = imported([sys.executable, "-c", "import agent.transaction"], expect=("agent.transaction",))
    assert sorted(set(AGENT_HEAVY) & names) == []


# The agent's rollout entry point as the detached worker runs it: the operations imported, a Transaction made
# (its Docker client built) and one Docker call made, which fails here on a socket that is not there.
AGENT_RUN = """
import agent.__main__, agent.ops, agent.container_ops, agent.recovery
from agent.docker_errors import DaemonUnreachable
from agent.transaction import Transaction
tx = Transaction({"rollout_id": "r-import-graph"})
try:
    tx._get("svc")
except DaemonUnreachable as exc:
    print("unreachable:", exc)
"""


def test_the_agents_rollout_path_talks_to_docker_without_the_sdk(tmp_path):
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    r = subprocess.run([sys.executable, "-c", AGENT_RUN], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, **env})
    assert r.returncode == 0 and "unreachable: cannot reach the Docker daemon" in r.stdout, r.stdout + r.stderr
    names = imported([sys.executable, "-c", AGENT_RUN], expect=("agent.dockerapi",), env=env)
    assert {"agent.ops", "agent.transaction", "agent.dockerapi", "agent.engine"} <= names
    assert sorted(set(AGENT_HEAVY) & names) == []


# What a preflight's facts call must start without (issue 24): each agent call is a fresh process on every host, and
# on a 20-host lab sharing two cores these modules were ~30 % of the call's CPU. `dataclasses` brings `inspect`, `ast`
# and `dis`; the recovery check needs `lock` and `decisions` only when a transaction was interrupted.
FACTS_LEAN = ["dataclasses", "inspect", "traceback", "shutil", "agent.lock", "agent.decisions", "agent.proxy",
              "agent.transaction", "agent.secret_files", "http.client", "email", "ssl", "urllib.request", *AGENT_HEAVY,
              "hashlib", "_hashlib", "hmac",  # OpenSSL's load: ~2.5 ms of every call (agent/digests.py)
              "typing"]  # ~2.5 ms of every call: the agent's annotations only name it (TYPE_CHECKING = False)
FACTS = ('{"protocol": 1, "op": "facts", "args": {"gpu": false, "images": ["127.0.0.1:9/lab/svc:1"], "insecure_registry": true,'
         ' "registry_timeout": 1, "diff_specs": {"svc": {"name": "svc", "repo": "127.0.0.1:9/lab/svc", "tag": "1"}}}}\n')


def test_a_facts_call_imports_only_what_it_reads_with(tmp_path):
    """No daemon and no registry answer here (a missing socket, a closed port): the call still reads the ports, the disk,
    the journal and the registry (the lab tests run it against real dockerd, diffs included)."""
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", "FLEETROLL_STATE_DIR": str(tmp_path / "state"),
           "PYTHONPROFILEIMPORTTIME": "1"}
    r = subprocess.run([sys.executable, "-m", "agent"], cwd=ROOT, input=FACTS, capture_output=True, text=True, timeout=60, env=env)
    answer = __import__("json").loads(r.stdout.splitlines()[-1])
    assert answer["ok"] and answer["data"]["docker"]["ok"] is False, r.stdout
    assert answer["data"]["images"]["127.0.0.1:9/lab/svc:1"]["kind"] == "unreachable"
    names = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:") and "|" in line}
    assert {"agent.facts", "agent.registry", "agent.listening", "agent.recovery", "agent.http1"} <= names
    assert sorted(set(FACTS_LEAN) & names) == []


def test_the_modules_a_no_op_facts_call_reads_its_diffs_with_import_no_typing_or_openssl():
    """The facts call above has no daemon, so it never reaches the per-container diffs a no-op's facts call makes on
    every host (container_diffs, container_args, host_checks): imported here, untimed."""
    out = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                          " import agent.__main__, agent.facts, agent.container_diffs, agent.freeze, agent.secrets;"
                          " print(sorted(m for m in ('typing', 'hashlib', '_hashlib', 'hmac', 'dataclasses') if m in sys.modules))",
                          str(ROOT)], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr

