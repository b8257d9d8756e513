"""Issue 21, items 3 and 4 on the lab: mounts judged where they resolve, the agent verified before it runs.

Written to sit beside tests/test_lab_security.py (same fixtures); run with the lab:
    .venv/bin/pytest -q -m lab -p no:cacheprovider tests/test_lab_security_resolve.py
"""

from __future__ import annotations

import io
import os
import secrets
import shlex
import zipfile

import pytest

from lab import images
from playbooks import agentpack, executor, transport
from playbooks.inventory import load
from playbooks.plan import build_plan
from playbooks.runner import run_preflight

from .conftest import baseline, dclient, derive_inventory, new_tag, snapshot

pytestmark = pytest.mark.lab


def _rollout_with(lab, tmp_path, edit_service=None, defaults=None, inventory=None):
    """A gpu-mainpc rollout of llm-api with a new healthy tag, `inventory` changes to its service entry (they pass
    the inventory's checks) and `edit_service` applied to the planned spec (a forged plan); the host's answer for it."""
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")

    def edit(doc):
        doc["services"]["llm-api"].update(tag=tag, **(inventory or {}))
        doc.setdefault("defaults", {}).update(defaults or {})

    inv = load(derive_inventory(lab, tmp_path / secrets.token_hex(3), edit))
    plan = build_plan(inv, "gpu-mainpc", run_preflight(inv, "gpu-mainpc").facts)
    args = executor.step_args(plan, "mainpc", "revert-phase", inv)
    for s in args["steps"]:
        if s["spec"]["name"] == "llm-api" and edit_service:
            edit_service(s["spec"])
    res = transport.on_hosts(inv, ["mainpc"], "rollout", lambda h: args)["mainpc"]
    return next(x for x in res.answer["data"]["services"] if x["service"] == "llm-api")


@pytest.fixture
def request_cleanup():
    made: list = []
    yield made
    import shutil

    for d in made:  # only what this test made, under the lab host's directory
        shutil.rmtree(d, ignore_errors=True)


def test_symlink_bind_escape_is_refused_on_the_host_before_anything_stops(lab, tmp_path, request_cleanup):
    """Another container with a read-write mount of shared/ turned shared/models into `-> /`: the next
    container that mounts shared/models would see the host's root. The inventory's text check passes it."""
    baseline(lab)
    before = snapshot(lab, "llm-api")
    # Somewhere the host's login user can walk (pytest's own tmp directories are root's, 0700): the lab host's directory.
    shared = lab.host("mainpc").dir / f"shared-{tmp_path.name}"
    shared.mkdir()
    request_cleanup.append(shared)
    os.chown(shared, 10001, 10001)
    image = dclient(lab).containers.get("llm-api").image.id
    dclient(lab).containers.run(image, ["ln", "-s", "/", "/shared/models"], entrypoint=["/bin/busybox"], user="10001:10001",
                                volumes={str(shared): {"bind": "/shared", "mode": "rw"}}, network_mode="none", remove=True)
    assert os.readlink(shared / "models") == "/"
    s = _rollout_with(lab, tmp_path, inventory={"volumes": [f"{shared}/models:/models:ro"]},
                      defaults={"host_paths": [str(shared)]})
    assert s["outcome"] == "refused" and s["check"] == "container-config", s
    assert f"symlink at {shared}/models" in s["message"] and "nothing was stopped" in s["message"], s
    assert snapshot(lab, "llm-api") == before


@pytest.mark.parametrize("what", ["state", "lock", "gid"])
def test_a_forged_plan_cannot_mount_the_agents_state_or_lock_nor_run_in_the_docker_group(lab, tmp_path, what):
    baseline(lab)
    before = snapshot(lab, "llm-api")
    host = lab.host("mainpc")
    if what == "gid":
        gid = os.stat(host.docker_sock).st_gid
        if gid == 0:
            pytest.skip("the lab's Docker socket belongs to root's group: gid 0 is refused by the text rule already")
        change, why = {"user": f"10001:{gid}"}, "the Docker socket's group"
    else:
        change, why = {"volumes": [f"{host.dir / what}:/x:rw"]}, "the agent's own state, lock or code directory"
    s = _rollout_with(lab, tmp_path, lambda spec: spec.update(change))
    assert s["outcome"] == "refused" and s["check"] == "container-config" and why in s["message"], s
    assert snapshot(lab, "llm-api") == before


def _zipapp(main: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("__main__.py", main)
    return buf.getvalue()


def _gone(conn, path: str) -> bool:
    return conn.run(f"test -e {shlex.quote(path)}", hide=True, warn=True, in_stream=False).exited != 0


def test_a_swapped_agent_archive_is_refused_before_any_of_its_code_runs(lab):
    """The right name, other bytes, the login user's own file: the verifier refuses it, the controller uploads
    the real archive again, and the swapped code never runs."""
    inv = load(lab.inventory)
    t = transport.Target.from_inventory(inv, "pc2")
    conn = transport.connect(t)
    marker = f".fleetroll-swapped-ran-{secrets.token_hex(4)}"
    try:
        assert transport.call_agent(conn, "pc2", "facts", {"gpu": False}).ok  # shipped and unpacked
        _, digest = agentpack.build()
        name = agentpack.remote_name(digest)
        swapped = _zipapp(f"import os\nopen(os.path.expanduser('~/{marker}'), 'w').write('ran')\n")

        def swap():
            sftp = conn.client.open_sftp()
            try:
                with sftp.open(name + ".swap", "wb") as f:
                    f.write(swapped)
                sftp.chmod(name + ".swap", 0o644)
                sftp.posix_rename(name + ".swap", name)
            finally:
                sftp.close()

        swap()
        r = conn.run(shlex.join(agentpack.command(digest, t.python)), hide=True, warn=True,
                     in_stream=False)  # refused before it reads: no stdin writer to race its exit
        assert r.exited == 97 and "archive damaged" in r.stderr, (r.exited, r.stderr)
        assert _gone(conn, marker), "the swapped archive's code ran"
        swap()
        res = transport.call_agent(conn, "pc2", "facts", {"gpu": False})
        assert res.ok and res.uploaded, res.error
        assert _gone(conn, marker), "the swapped archive's code ran"
    finally:
        conn.run(f"rm -f ~/{marker}", hide=True, warn=True, in_stream=False)
        conn.close()


def test_a_symlinked_directory_in_the_unpacked_agent_tree_is_never_imported(lab):
    inv = load(lab.inventory)
    conn = transport.connect(transport.Target.from_inventory(inv, "pc2"))
    marker = f".fleetroll-tree-ran-{secrets.token_hex(4)}"
    evil = f".fleetroll-evil-{secrets.token_hex(4)}"
    try:
        assert transport.call_agent(conn, "pc2", "facts", {"gpu": False}).ok
        tree = agentpack.remote_name(agentpack.build()[1])[: -len(".pyz")]
        sftp = conn.client.open_sftp()
        try:
            sftp.mkdir(evil, 0o755)
            sftp.mkdir(f"{evil}/agent", 0o755)
            with sftp.open(f"{evil}/agent/__main__.py", "w") as f:
                f.write(f"import os\nopen(os.path.expanduser('~/{marker}'), 'w').write('ran')\ndef main():\n    return 0\n")
        finally:
            sftp.close()
        q = shlex.quote
        # The manifest's own directory, now a link to other code with the same module names.
        conn.run(f"mv {q(tree + '/agent')} {q(evil + '/moved')} && ln -s \"$HOME\"/{q(evil + '/agent')} {q(tree + '/agent')}",
                 hide=True, in_stream=False)
        res = transport.call_agent(conn, "pc2", "facts", {"gpu": False})
        assert res.ok, res.error
        assert _gone(conn, marker), "code behind the symlinked directory ran"
        assert conn.run(f"test -L {tree}/agent", hide=True, warn=True, in_stream=False).exited != 0  # unpacked again
    finally:
        conn.run(f"rm -rf ~/{marker} ~/{evil}", hide=True, warn=True, in_stream=False)
        conn.close()
