"""Bringing up lab hosts: the bridge and namespaces, the login accounts, sshd and dockerd per host, the fake NVML.

Also the knobs tests turn on a running host: its secrets, the memory and processes its fake
GPUs report, its network link, a dockerd restart.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from .model import (
    BRIDGE,
    GATEWAY,
    INSTANCE,
    LAB_DIR,
    LAB_PYENV_USER,
    LAB_USER,
    LAB_USERS,
    PYENV_BASHRC,
    PYENV_SHIM,
    REGISTRY_ADDR,
    REGISTRY_NS,
    SRC,
    SUBNET,
    VETH_PREFIX,
    LabHost,
)
from .procs import created_users, nsenter, pid_in, record_process, recorded, sh, tcp_open, wait_for


def make_network(hosts: list[LabHost]) -> None:
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    pairs = [(REGISTRY_NS, f"{SUBNET}.2", f"{VETH_PREFIX}r")] + [(h.netns, h.address, h.veth) for h in hosts]
    for ns, addr, veth in pairs:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", veth, "master", BRIDGE, "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", GATEWAY)


def fake_nvml() -> Path:
    out = LAB_DIR / "nvml"
    out.mkdir(parents=True, exist_ok=True)
    lib = out / "libnvidia-ml.so.1"
    sh("gcc", "-shared", "-fPIC", "-O2", "-Wall", "-o", str(lib), str(SRC / "fakenvml.c"))
    hook = LAB_DIR / "hookbin" / "nvidia-container-runtime-hook"
    hook.parent.mkdir(parents=True, exist_ok=True)
    # Docker's --gpus runs this as an OCI prestart hook; the stub accepts and does nothing.
    hook.write_text("#!/bin/sh\ncat >/dev/null 2>&1\nexit 0\n")
    hook.chmod(0o755)
    return lib


def lab_home(user: str) -> Path:
    return LAB_DIR / ("home" if user == LAB_USER else f"home-{user}")


def make_users() -> None:
    created = []
    for user in LAB_USERS:
        home = lab_home(user)
        # "*" rather than useradd's locked "!": sshd without PAM refuses locked accounts.
        shell = "/bin/bash" if user == LAB_PYENV_USER else "/bin/sh"
        if sh("id", "-u", user, check=False).returncode != 0:
            sh("useradd", "--system", "--no-create-home", "--home-dir", str(home), "--shell", shell,
               "--groups", "docker", "--user-group", "--password", "*", user)
            created.append(user)  # only these are ever deleted
        home.mkdir(parents=True, exist_ok=True)
        shutil.chown(home, user, user)
        if user == LAB_PYENV_USER:
            shims = home / ".pyenv" / "shims"
            shims.mkdir(parents=True, exist_ok=True)
            (home / ".bashrc").write_text(PYENV_BASHRC)
            (shims / "python3").write_text(PYENV_SHIM)
            (shims / "python3").chmod(0o755)
            for p in (home / ".bashrc", home / ".pyenv", shims, shims / "python3"):
                shutil.chown(p, user, user)
    (LAB_DIR / "users.json").write_text(json.dumps(sorted(set(created_users()) | set(created))))


def client_key() -> Path:
    key = LAB_DIR / "id_ed25519"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleetroll-lab", "-f", str(key))
    (LAB_DIR / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    return key


def host_env(h: LabHost) -> dict[str, str]:
    env = {
        "DOCKER_HOST": h.docker_host,
        "FLEETROLL_STATE_DIR": str(h.dir / "state"),
        "FLEETROLL_LOCK_DIR": str(h.dir / "lock"),
        "FLEETROLL_SECRETS_DIR": str(h.dir / "secrets"),
        "FLEETROLL_RUN_DIR": str(h.dir / "run"),  # a tmpfs, as /run/fleetroll is on a real host (secret files)
        "PATH": f"{LAB_DIR / 'hookbin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        if h.hook
        else "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    }
    if h.driver:
        env.update(
            LD_LIBRARY_PATH=str(LAB_DIR / "nvml"),
            FAKE_NVML_DRIVER=h.driver,
            FAKE_NVML_CUDA="12040",
            FAKE_NVML_GPUS=f"{h.gpu_name}|{h.compute_capability}|{h.gpu_memory_mib}",
            FAKE_NVML_USED_FILE=str(h.dir / "nvml-used-mib"),
            FAKE_NVML_PROCS_FILE=str(h.dir / "nvml-procs"),
        )
    return env


def start_host(h: LabHost) -> None:
    d = h.dir
    for sub in ("state", "lock", "secrets", "docker", "exec"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    # Host-side secrets: root's, readable by the Docker group (the operator accounts), as on a real host.
    shutil.chown(d / "secrets", "root", "docker")
    (d / "secrets").chmod(0o750)
    # Shared by every operator account of the host, as /var/lib/fleetroll is. The lock directory is
    # root's (group docker, 2770), as the agent's checks require: no account could forge the lock.
    shutil.chown(d / "state", LAB_USER, "docker")
    shutil.chown(d / "lock", "root", "docker")
    for sub in ("state", "lock"):
        (d / sub).chmod(0o2770)
    # The agent's run directory (secret files): a tmpfs of its own, root's, group docker, 2770, as root makes
    # /run/fleetroll on a real host for operator accounts. teardown unmounts it with the lab's other mounts.
    (d / "run").mkdir(exist_ok=True)
    if not os.path.ismount(d / "run"):
        sh("mount", "-t", "tmpfs", "-o", "size=16m,mode=2770,nosuid,nodev,noexec", f"frlab{INSTANCE}-run-{h.name}", str(d / "run"))
    shutil.chown(d / "run", "root", "docker")
    (d / "run").chmod(0o2770)
    env = host_env(h)
    _spawn_dockerd(h)
    # sshd: fresh host key, SetEnv points sessions at this host's dockerd and fake GPU.
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "ssh_host_ed25519_key"))
    setenv = " ".join(f'"{k}={v}"' for k, v in env.items())
    (d / "sshd_config").write_text(
        f"Port 22\nListenAddress {h.address}\nHostKey {d / 'ssh_host_ed25519_key'}\n"
        f"PidFile {d / 'sshd.pid'}\nAuthorizedKeysFile {LAB_DIR / 'authorized_keys'}\n"
        f"AllowUsers {' '.join(LAB_USERS)}\nPermitRootLogin no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "StrictModes no\nUsePAM no\nUseDNS no\nSubsystem sftp internal-sftp\n"
        "MaxStartups 200:30:400\nMaxSessions 100\nClientAliveInterval 5\nClientAliveCountMax 2\n"
        f"SetEnv {setenv}\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    sh(*nsenter(h.netns), "/usr/sbin/sshd", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log"))
    wait_for(f"sshd pid file on {h.name}", lambda: pid_in(d / "sshd.pid") is not None, 10)
    record_process(pid_in(d / "sshd.pid"), f"sshd:{h.name}")


def _spawn_dockerd(h: LabHost) -> None:
    """dockerd: its own data root, socket, and the lab registry as insecure."""
    d = h.dir
    with open(d / "dockerd.log", "a") as log:
        p = subprocess.Popen(
            nsenter(h.netns)
            + [
                "setsid", "dockerd",
                "--data-root", str(d / "docker"),
                "--exec-root", str(d / "exec"),
                "--pidfile", str(d / "dockerd.pid"),
                "-H", h.docker_host,
                "--insecure-registry", REGISTRY_ADDR,
                "--shutdown-timeout", "3",
            ],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env={"PATH": host_env(h)["PATH"], "HOME": "/root"},
        )
    record_process(p.pid, f"dockerd:{h.name}")


def restart_dockerd(h: LabHost) -> None:
    """Fault injection: stop this host's dockerd (the pid it recorded) and start it again."""
    for pid in recorded(f"dockerd:{h.name}"):
        os.kill(pid, signal.SIGTERM)
    wait_for(f"dockerd on {h.name} to stop", lambda: not recorded(f"dockerd:{h.name}"), 30)
    _spawn_dockerd(h)
    wait_for(f"dockerd on {h.name}", lambda: h.docker_sock.exists() and _docker_ping(h), 45)


def ssh_config(hosts: list[LabHost], key: Path) -> None:
    """An OpenSSH client config for the lab (strict keys): `ssh -F /tmp/frlab/ssh_config mainpc`."""
    blocks = [
        f"Host {h.name} {h.address}\n  HostName {h.address}\n  User {LAB_USER}\n  IdentityFile {key}\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {LAB_DIR / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
        for h in hosts
    ]
    (LAB_DIR / "ssh_config").write_text("".join(blocks))


def host_key_line(h: LabHost) -> str:
    keytype, key = (h.dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    return f"{h.address} {keytype} {key}\n"


def wait_host(h: LabHost) -> None:
    wait_for(f"sshd on {h.name}", lambda: tcp_open(h.address, 22), 20)
    wait_for(f"dockerd on {h.name}", lambda: h.docker_sock.exists() and _docker_ping(h), 45)


def _docker_ping(h: LabHost) -> bool:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(1)
        s.connect(str(h.docker_sock))
        s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
        ok = b"200 OK" in s.recv(128)
        s.close()
        return ok
    except OSError:
        return False


def put_secret(h: LabHost, name: str, value: str) -> None:
    """Place a secret on a lab host the way an operator would: root-owned, mode 0640, group docker."""
    p = h.dir / "secrets" / name
    tmp = p.with_name(f".{name}.tmp")
    tmp.write_text(value + "\n")
    shutil.chown(tmp, "root", "docker")
    tmp.chmod(0o640)
    os.replace(tmp, p)


def set_gpu_used(h: LabHost, *mib: int) -> None:
    """Memory in use on each of a lab host's fake GPUs (MiB, index order); NVML reports it from the next call on."""
    tmp = h.dir / ".nvml-used-mib.tmp"
    tmp.write_text(" ".join(str(m) for m in mib) + "\n")
    tmp.chmod(0o644)
    os.replace(tmp, h.dir / "nvml-used-mib")


def set_gpu_processes(h: LabHost, procs: list[tuple[int, int, int]]) -> None:
    """(GPU index, pid, MiB) of each compute process NVML reports on a lab host, from the next call on."""
    tmp = h.dir / ".nvml-procs.tmp"
    tmp.write_text("".join(f"{g} {pid} {mib}\n" for g, pid, mib in procs))
    tmp.chmod(0o644)
    os.replace(tmp, h.dir / "nvml-procs")


def set_link(h: LabHost, up_: bool) -> None:
    """Cut or restore a host's network link (fault injection: the SSH link drops)."""
    sh("ip", "link", "set", h.veth, "up" if up_ else "down")
