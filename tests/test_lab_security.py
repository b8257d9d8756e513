"""Security boundaries against the lab: what the inventory or a forged plan asks for cannot reach the host."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from lab import fleet, images
from playbooks import executor, transport
from playbooks.inventory import load
from playbooks.plan import build_plan
from playbooks.runner import run_preflight

from .conftest import FAB, ROOT, baseline, derive_inventory, new_tag, snapshot, with_tags

pytestmark = pytest.mark.lab


def _recording_fab(outputs: list[str]):
    """Run `fab …` as the operator would, keeping every output (the tests then look for secrets in them)."""
    def fab(*args, ok=(0,)):
        r = subprocess.run([FAB, *args], cwd=ROOT, capture_output=True, text=True, timeout=180)
        outputs.append(r.stdout + r.stderr)
        assert r.returncode in ok, r.stdout + r.stderr
        return r

    return fab


def _llm_release(lab, where, variant: str, env: dict):
    """A new llm-api release of `variant`, with MACHINE and `env`, in an inventory derived from the lab's."""
    tag = new_tag()
    images.push(lab, "torch-svc", tag, variant, arch="89;86")

    def edit(doc):
        doc["services"]["llm-api"].update(tag=tag, env={"MACHINE": "mainpc", **env})

    return derive_inventory(lab, where, edit)


@pytest.mark.parametrize("change,why", [({"user": "0:0"}, "numeric non-root"), ({"volumes": ["/etc:/hostetc"]}, "/etc"),
                                        ({"volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}, "docker.sock")])
def test_forged_plan_is_refused_on_the_host_and_nothing_changes(lab, tmp_path, change, why):
    baseline(lab)
    before = snapshot(lab, "llm-api")
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")
    inv = with_tags(lab, tmp_path, {"llm-api": tag})
    plan = build_plan(inv, "gpu-mainpc", run_preflight(inv, "gpu-mainpc").facts)
    args = executor.step_args(plan, "mainpc", "revert-phase", inv)
    for s in args["steps"]:
        s["spec"].update(change)  # what no valid inventory can say
    res = transport.on_hosts(inv, ["mainpc"], "rollout", lambda h: args)["mainpc"]
    s = next(x for x in res.answer["data"]["services"] if x["service"] == "llm-api")
    assert s["outcome"] == "refused" and s["check"] == "container-config" and why in s["message"]
    assert snapshot(lab, "llm-api") == before


def test_inventory_asking_for_root_exits_1_naming_the_field_and_nothing_changes(lab, tmp_path):
    baseline(lab)
    before = snapshot(lab, "llm-api")
    tag = new_tag()
    images.push(lab, "torch-svc", tag, "healthy", arch="89;86")

    def edit(doc):
        doc["services"]["llm-api"].update(tag=tag, user="0:0", volumes=["/etc:/hostetc"])

    path = derive_inventory(lab, tmp_path / "root", edit)
    r = subprocess.run([FAB, "rollout", "--phase", "gpu-mainpc", "--yes", "--inventory", str(path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert f"{path}:" in out and "services.llm-api.user" in out and "services.llm-api.volumes" in out and "fix:" in out
    assert "Traceback" not in out
    assert snapshot(lab, "llm-api") == before
    assert load(lab.inventory).fleet.services["llm-api"].user == "10001:10001"


def test_env_values_and_secrets_appear_in_no_record_or_output(lab, tmp_path):
    """A token given as a host-side secret reaches the container and nothing else; plain env values reach no record."""
    import json
    import secrets as pysecrets

    from lab import fleet
    from playbooks import ledger

    from .conftest import dclient, kept_leftovers

    baseline(lab)
    token, plain = f"tok-{pysecrets.token_hex(8)}", f"plain-{pysecrets.token_hex(8)}"
    host = lab.host("mainpc")
    fleet.put_secret(host, "hf_token", token)
    outputs = []

    fab = _recording_fab(outputs)

    def release(name, variant="healthy"):
        return _llm_release(lab, tmp_path / name, variant, {"HF_TOKEN": {"secret": "hf_token"}, "PLAIN": plain})

    first = release("one")
    fab("rollout", "--phase", "gpu-mainpc", "--yes", "--json", "--inventory", str(first))
    env = dclient(lab).containers.get("llm-api").attrs["Config"]["Env"]
    assert f"HF_TOKEN={token}" in env and f"PLAIN={plain}" in env  # resolved on the host, for the container only
    # A second release replaces it (the journal records the old config) and fails: restored from the kept container.
    fab("rollout", "--phase", "gpu-mainpc", "--yes", "--inventory", str(release("two", "degraded")), ok=(4,))
    assert f"HF_TOKEN={token}" in dclient(lab).containers.get("llm-api").attrs["Config"]["Env"]
    # A third one commits; fab rollback then recreates the recorded config, resolving the secret again.
    third = release("three")
    fab("rollout", "--phase", "gpu-mainpc", "--yes", "--json", "--inventory", str(third))
    fab("rollback", "--phase", "gpu-mainpc", "--service", "llm-api", "--yes", "--json", "--inventory", str(third))
    assert f"HF_TOKEN={token}" in dclient(lab).containers.get("llm-api").attrs["Config"]["Env"] and kept_leftovers(lab) == []
    fab("status", "--inventory", str(third), ok=(0, 1))  # 1 if another phase's services are not deployed in this lab
    fab("status", "--json", "--inventory", str(third), ok=(0, 1))
    fab("history", "--json")
    records = [ledger.path().read_text()] + [p.read_text() for p in (ledger.path().parent / "pins").glob("*.json")]
    journals = [p.read_text(errors="replace") for p in (host.dir / "state").rglob("*") if p.is_file() and p.name != "redaction.key"]
    for marker in (token, plain):
        assert not any(marker in x for x in outputs), f"{marker} printed"
        assert not any(marker in x for x in records), f"{marker} in the ledger or pins"
    assert not any(token in x for x in journals), "the secret's value is in the host journal"
    # What records keep instead: the name, and for plain values a keyed hash (a change stays visible).
    started = [r for r in ledger.read() if r["kind"] == "started"][-1]
    env_rec = next(s for s in started["plan"]["steps"] if s["service"] == "llm-api")["spec"]["env"]
    assert env_rec["HF_TOKEN"] == {"secret": "hf_token"} and env_rec["PLAIN"].startswith("hmac:")
    assert json.dumps(env_rec).count("hmac:") >= 2
    # Rotated on the host: the container keeps the value it started with, and status says so until a restart.
    time.sleep(1.1)  # the create is read to the second: a rotation in its own second is not claimed
    rotated = f"tok-{pysecrets.token_hex(8)}"
    fleet.put_secret(host, "hf_token", rotated)
    row = json.loads(fab("status", "--json", "--inventory", str(third), ok=(0, 1)).stdout)["hosts"]["mainpc"]["services"]["llm-api"]
    assert "secret hf_token changed on the host since the container was created" in row["drift"], row
    fab("restart", "--service", "llm-api", "--yes", "--inventory", str(third))
    assert f"HF_TOKEN={rotated}" in dclient(lab).containers.get("llm-api").attrs["Config"]["Env"]
    row = json.loads(fab("status", "--json", "--inventory", str(third), ok=(0, 1)).stdout)["hosts"]["mainpc"]["services"]["llm-api"]
    assert "secret" not in row["drift"] and not any(rotated in x for x in outputs)


def test_a_secret_given_as_a_file_is_in_the_container_and_in_no_inspect_record_or_output(lab, tmp_path):
    """`{secret: NAME, as: file}` on a real dockerd, through the CLI: the container's uid reads /run/secrets/NAME
    (another uid cannot, nobody can write it); `docker inspect` of every container, the host's journals and
    dockerd's log, the ledger, pins and every command's output hold the path at most, never the value."""
    import json
    import os
    import secrets as pysecrets

    from agent import secret_files
    from lab import fleet
    from playbooks import ledger

    from .conftest import dclient, kept_leftovers

    baseline(lab)
    token = f"tok-{pysecrets.token_hex(8)}"
    host = lab.host("mainpc")
    fleet.put_secret(host, "hf_file", token)
    outputs = []

    fab = _recording_fab(outputs)

    def release(name, variant="healthy"):
        return _llm_release(lab, tmp_path / name, variant, {"HF_TOKEN": {"secret": "hf_file", "as": "file"}})

    def cat(c, user):
        return c.exec_run(["cat", "/run/secrets/hf_file"], user=user)

    def secret_dir(c) -> str:
        m = [m for m in c.attrs["Mounts"] if m["Destination"] == "/run/secrets"]
        assert len(m) == 1 and m[0]["RW"] is False, c.attrs["Mounts"]
        return m[0]["Source"]

    namespace = host.dir / "run" / "secrets" / secret_files.daemon_key("unix://" + os.path.realpath(host.docker_host[len("unix://"):]))
    fab("rollout", "--phase", "gpu-mainpc", "--yes", "--json", "--inventory", str(release("one")))
    first = dclient(lab).containers.get("llm-api")
    assert "HF_TOKEN=/run/secrets/hf_file" in first.attrs["Config"]["Env"]
    got = cat(first, "10001:10001")
    assert got.exit_code == 0 and got.output.decode() == token, got
    assert cat(first, "10002:10002").exit_code != 0, "another uid read the secret file"
    assert first.exec_run(["sh", "-c", "echo x > /run/secrets/hf_file"], user="10001:10001").exit_code != 0, "it is writable"
    first_dir = secret_dir(first)
    assert first_dir.startswith(f"{namespace}/llm-api.")
    # A failing release is reverted: the old container keeps its file; the failed one's directory goes with it.
    fab("rollout", "--phase", "gpu-mainpc", "--yes", "--inventory", str(release("two", "degraded")), ok=(4,))
    back = dclient(lab).containers.get("llm-api")
    assert back.id == first.id and cat(back, "10001:10001").output.decode() == token
    assert sorted(p.name for p in namespace.iterdir()) == [Path(first_dir).name]
    # A release that commits: its own directory; the old container's is removed with it.
    third_inv = release("three")
    fab("rollout", "--phase", "gpu-mainpc", "--yes", "--json", "--inventory", str(third_inv))
    third = dclient(lab).containers.get("llm-api")
    assert cat(third, "10001:10001").output.decode() == token and kept_leftovers(lab) == []
    assert sorted(p.name for p in namespace.iterdir()) == [Path(secret_dir(third)).name] != [Path(first_dir).name]
    # Removed by hand (`docker rm -f`), a container leaves its directory; the next transaction sweeps it, under its lock.
    third_dir = secret_dir(third)
    third.remove(force=True)
    fab("rollout", "--phase", "gpu-mainpc", "--yes", "--json", "--inventory", str(third_inv))
    again = dclient(lab).containers.get("llm-api")
    assert sorted(p.name for p in namespace.iterdir()) == [Path(secret_dir(again)).name] != [Path(third_dir).name]
    assert cat(again, "10001:10001").output.decode() == token
    fab("status", "--inventory", str(third_inv), ok=(0, 1))
    fab("status", "--json", "--inventory", str(third_inv), ok=(0, 1))
    fab("history", "--json")
    inspected = [json.dumps(c.attrs) for c in dclient(lab).containers.list(all=True)]
    records = [ledger.path().read_text()] + [p.read_text() for p in (ledger.path().parent / "pins").glob("*.json")]
    host_files = [p.read_text(errors="replace") for p in (host.dir / "state").rglob("*") if p.is_file()]
    host_files.append((host.dir / "dockerd.log").read_text(errors="replace"))
    for where, texts in (("docker inspect", inspected), ("an output", outputs), ("the ledger or pins", records),
                         ("the host's journal or dockerd's log", host_files)):
        assert not any(token in x for x in texts), f"the secret's value is in {where}"
    started = [r for r in ledger.read() if r["kind"] == "started"][-1]
    env_rec = next(s for s in started["plan"]["steps"] if s["service"] == "llm-api")["spec"]["env"]
    assert env_rec["HF_TOKEN"] == {"secret": "hf_file", "as": "file"}


def test_escape_sequences_from_a_container_reach_neither_terminal_nor_ledger(lab, tmp_path):
    from playbooks import ledger

    baseline(lab)
    tag = new_tag()
    images.push(lab, "vision-svc", tag, "ansi", arch="89;86")
    inv = with_tags(lab, tmp_path, {"vision-api": tag}, healthy_deadline=3)
    r = subprocess.run([FAB, "rollout", "--phase", "gpu-mainpc", "--yes", "--inventory", str(inv.path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 4, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert "ansi crash" in out, out  # the log line is shown ...
    assert not [c for c in out if c in "\x1b\x07\r\x9b"], "a control character reached the terminal"  # ... defanged
    assert "\\u001b" not in ledger.path().read_text() and "\x1b" not in ledger.path().read_text()


def test_hostkeys_pins_only_what_the_operator_confirms(lab, tmp_path):
    pinned = tmp_path / "pinned" / "known_hosts"

    def edit(doc):
        doc["ssh"]["known_hosts"] = str(pinned)

    inv = derive_inventory(lab, tmp_path / "inv", edit)

    def fab(*args):
        r = subprocess.run([FAB, *args, "--inventory", str(inv)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        assert "Traceback" not in r.stderr, r.stderr
        return r.returncode, r.stdout + r.stderr

    rc, out = fab("preflight", "--hosts", "mainpc")
    assert rc == 1 and "fab hostkeys --hosts mainpc" in out
    real = {h: subprocess.run(["ssh-keygen", "-lf", str(lab.host(h).dir / "ssh_host_ed25519_key.pub")], capture_output=True,
                              text=True).stdout.split()[1] for h in ("mainpc", "pc2")}
    rc, out = fab("hostkeys", "--hosts", "mainpc,pc2")  # no terminal, nothing named: shows, pins nothing
    assert rc == 1 and real["mainpc"] in out and real["pc2"] in out and "new" in out and not pinned.exists()
    rc, out = fab("hostkeys", "--hosts", "mainpc,pc2", "--accept", f"mainpc={real['mainpc']}", "--accept", "pc2=SHA256:notit")
    assert rc == 1 and "not the SHA256:notit you named; NOT pinned" in out and "not pinned: pc2" in out
    text = pinned.read_text()
    assert lab.host("mainpc").address in text and lab.host("pc2").address not in text
    rc, out = fab("preflight", "--hosts", "mainpc")
    assert rc == 0, out
    rc, out = fab("hostkeys", "--hosts", "mainpc")
    assert rc == 0 and "same" in out
    # A revocation is never ignored: OpenSSH (the default client) honours it, paramiko's client refuses the file.
    other = "@revoked * ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
    pinned.write_text(other + text)
    rc, out = fab("preflight", "--hosts", "mainpc")
    assert rc == 0, "another host's key revoked: mainpc's own still connects\n" + out
    own = " ".join(fleet.host_key_line(lab.host("mainpc")).split()[1:3])
    pinned.write_text(f"@revoked * {own}\n" + text)
    rc, out = fab("preflight", "--hosts", "mainpc")
    assert rc == 1 and "marks @revoked" in out and "Refusing to connect" in out, out
    on_paramiko = derive_inventory(lab, tmp_path / "inv-paramiko", lambda d: (edit(d), d["ssh"].update(client="paramiko")))
    r = subprocess.run([FAB, "preflight", "--hosts", "mainpc", "--inventory", str(on_paramiko)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and "'@revoked' lines are not supported" in r.stdout + r.stderr
