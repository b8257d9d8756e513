"""The lab fleet: real sshd + dockerd per host in network namespaces, and a real registry.

`fab lab.up`, `fab lab.down` and the pytest session fixture all call `up()`/`down()`
here, so what the tests exercise is what an operator tries by hand. Each host is a
network namespace on one bridge with its own sshd (fresh host keys, recorded in the
lab's own known_hosts) and its own dockerd (started with `nsenter --net`, which keeps
the cgroup mounts dockerd needs). GPU hosts get a fake libnvidia-ml.so.1 built from C,
configured through the sshd's SetEnv, so the agent's real pynvml code path runs.
Everything the lab makes lives under one directory and a fixed name prefix, which is
how `down()` (and a second `up()` after a crash) finds and removes all of it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

LAB_DIR = Path(os.environ.get("FLEETROLL_LAB_DIR", "/tmp/frlab"))
BRIDGE = "frlab0"
NS_PREFIX = "frl-"
SUBNET = "10.213.0"
GATEWAY = f"{SUBNET}.1"
REGISTRY_NS = f"{NS_PREFIX}registry"
REGISTRY_ADDR = f"{SUBNET}.2:5000"
ORG = "lab"
# Lab hosts are entered as this unprivileged user (in the docker group), with /bin/sh as
# its shell and a home inside the lab: root's own dotfiles on the machine running the
# lab (pyenv init and the like) must not run on every SSH command and skew timings.
LAB_USER = "frlab"
# A second operator account on every lab host (same key, also in the docker group): two
# SSH users driving one Docker daemon must share its lock and its journal.
LAB_OPS_USER = "frops"
# An account like many real operators': bash as its shell, a ~/.bashrc that runs a pyenv-style init
# (~0.2 s, sourced by bash for every SSH command) and a `python3` shim first in its PATH.
LAB_PYENV_USER = "frpyenv"
LAB_USERS = (LAB_USER, LAB_OPS_USER, LAB_PYENV_USER)
PYENV_BASHRC = """# what `eval "$(pyenv init -)"` and friends cost on a real account, roughly
sleep 0.2
export PATH="$HOME/.pyenv/shims:$PATH"
"""
PYENV_SHIM = """#!/bin/bash
# a pyenv shim: a shell, a version lookup, then the real interpreter (and a note that it ran)
sleep 0.05
echo "$$ $*" >> "$HOME/.pyenv/shim.log"
exec /usr/bin/python3 "$@"
"""
SRC = Path(__file__).resolve().parent


class LabError(Exception):
    pass


@dataclass
class LabHost:
    name: str
    index: int
    address: str
    netns: str
    veth: str
    driver: str | None = None  # NVIDIA driver the fake NVML reports; None = no GPU
    gpu_name: str = ""
    compute_capability: str = ""
    gpu_memory_mib: int = 0
    hook: bool = True  # stub nvidia-container-runtime-hook on dockerd's PATH

    @property
    def dir(self) -> Path:
        return LAB_DIR / "hosts" / self.name

    @property
    def docker_sock(self) -> Path:
        return self.dir / "docker.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.docker_sock}"


@dataclass
class LabState:
    hosts: list[LabHost] = field(default_factory=list)
    registry: str = REGISTRY_ADDR
    inventory: str = ""
    known_hosts: str = ""
    key: str = ""

    def host(self, name: str) -> LabHost:
        return next(h for h in self.hosts if h.name == name)

    def save(self) -> None:
        (LAB_DIR / "lab.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls) -> LabState:
        path = LAB_DIR / "lab.json"
        if not path.exists():
            raise LabError(f"no lab is up ({path} is missing); run: fab lab.up")
        raw = json.loads(path.read_text())
        raw["hosts"] = [LabHost(**h) for h in raw["hosts"]]
        return cls(**raw)


GPU_PROFILES = {
    "mainpc": ("550.54.14", "NVIDIA GeForce RTX 4090", "8.9", 24564),
    "pc2": ("535.183.01", "NVIDIA GeForce RTX 3060", "8.6", 12288),
    "bad-driver": ("530.41.03", "NVIDIA GeForce RTX 3060", "8.6", 12288),
}


def plan_hosts(count: int, extras: list[str] | None = None) -> list[LabHost]:
    """Host names and addresses: mainpc, pc2, node03.. then extras such as bad-driver."""
    names = ["mainpc", "pc2"][:count] + [f"node{i:02d}" for i in range(3, count + 1)]
    names += [e for e in (extras or []) if e not in names]
    hosts = []
    for i, name in enumerate(names):
        h = LabHost(name=name, index=i, address=f"{SUBNET}.{10 + i}", netns=f"{NS_PREFIX}{name}", veth=f"frv{i}")
        if name in GPU_PROFILES:
            h.driver, h.gpu_name, h.compute_capability, h.gpu_memory_mib = GPU_PROFILES[name]
        hosts.append(h)
    return hosts


# --- small process helpers --------------------------------------------------------------


def sh(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(list(argv), capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()[:400]}")
    return r


def wait_for(what: str, ready, timeout: float = 30.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(interval)
    raise LabError(f"lab: {what} not ready after {timeout:.0f}s")


def tcp_open(addr: str, port: int) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=0.3):
            return True
    except OSError:
        return False


def require_tools() -> None:
    missing = [t for t in ("ip", "nsenter", "dockerd", "docker-registry", "ssh-keygen", "gcc") if not shutil.which(t)]
    if not os.path.exists("/usr/sbin/sshd"):
        missing.append("sshd")
    if missing:
        raise LabError(
            f"lab needs {', '.join(missing)}; install: apt-get install docker.io docker-registry"
            " openssh-server tini busybox-static iproute2 gcc"
        )
    if os.geteuid() != 0:
        raise LabError("lab needs root (network namespaces, dockerd)")


# --- teardown -------------------------------------------------------------------------


MARKER = ".frlab-owned"  # written by up() into a directory it created: the only kind down() deletes


def check_lab_dir() -> None:
    """Refuse a lab directory that could be anything but the lab's own (it is rm -rf'd as root)."""
    raw = Path(os.path.abspath(LAB_DIR))
    if raw.is_symlink():
        raise LabError(f"lab directory {raw} is a symlink; refusing to use it (set FLEETROLL_LAB_DIR to a plain directory)")
    real = raw.resolve()
    vital = {Path("/"), Path("/tmp"), Path("/var/tmp"), Path.home().resolve(), Path("/root"), Path("/etc"), Path("/usr"),
             Path("/var"), Path("/home"), Path("/srv"), Path("/opt"), Path("/boot"), Path.cwd().resolve()}
    for v in vital:
        if real == v or v.is_relative_to(real):
            raise LabError(f"lab directory {real} is {v} or a parent of it; refusing (set FLEETROLL_LAB_DIR to a directory of"
                           " its own, e.g. /tmp/frlab)")
    if real.exists():
        st = real.stat()
        if not real.is_dir() or st.st_uid != 0 or st.st_mode & 0o022:
            raise LabError(f"lab directory {real} is not a root-owned directory closed to others' writes; refusing to touch it")
        if not (real / MARKER).is_file():
            raise LabError(f"lab directory {real} was not made by fab lab.up (no {MARKER} in it); refusing to touch it —"
                           " remove it yourself if it is a leftover")


def _record_process(pid: int, what: str) -> None:
    """Remember a process the lab started (pid + start time), the only kind it signals by pid."""
    from agent.lock import start_time

    with open(LAB_DIR / "processes.jsonl", "a") as f:
        f.write(json.dumps({"pid": pid, "start": start_time(pid), "what": what}) + "\n")


def _recorded(what: str | None = None) -> list[int]:
    """Recorded processes that are still the very processes the lab started."""
    from agent.lock import same_process

    path = LAB_DIR / "processes.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        kind = str(r.get("what", ""))
        if (what is None or kind == what or kind.startswith(what + ":")) and same_process(int(r["pid"]), str(r["start"])):
            out.append(int(r["pid"]))
    return out


def _pid_in(pidfile: Path) -> int | None:
    """The pid a daemon wrote, once it has written all of it (it creates the file first)."""
    try:
        text = pidfile.read_text()
    except OSError:
        return None
    return int(text.strip()) if text.endswith("\n") and text.strip().isdigit() else None


def _created_users() -> list[str]:
    path = LAB_DIR / "users.json"
    return [u for u in json.loads(path.read_text()) if u in LAB_USERS] if path.exists() else []


def _lab_pids() -> set[int]:
    """What the lab started: recorded processes, whatever runs inside its own network namespaces,
    and the processes of the login users it created. Never a match on a name or a command line."""
    pids: set[int] = set(_recorded())
    r = sh("ip", "netns", "list", check=False)
    for line in r.stdout.splitlines():
        ns = line.split()[0] if line.strip() else ""
        if ns.startswith(NS_PREFIX):
            out = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            pids |= {int(p) for p in out if p.isdigit()}
    for user in _created_users():
        r = sh("pgrep", "-u", user, check=False)
        pids |= {int(p) for p in r.stdout.split() if p.isdigit()}
    pids.discard(os.getpid())
    return pids


def _kill_all(sig: int) -> set[int]:
    pids = _lab_pids()
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return pids


def down(quiet: bool = False) -> list[str]:
    """Remove every trace of the lab — and only the lab: processes, mounts, namespaces, bridge, files, users."""
    check_lab_dir()
    done = []
    # dockerd first, politely, so it stops containers and unmounts its layers itself.
    dockerds = _recorded("dockerd")
    for pid in dockerds:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _recorded("dockerd"):
        time.sleep(0.2)
    if _kill_all(signal.SIGTERM):
        time.sleep(0.5)
    for _ in range(20):
        if not _kill_all(signal.SIGKILL):
            break
        time.sleep(0.2)
    done.append("processes")
    for m in reversed(_lab_mounts()):
        sh("umount", "-l", m, check=False)
    r = sh("ip", "netns", "list", check=False)
    for line in r.stdout.splitlines():
        ns = line.split()[0] if line.strip() else ""
        if ns.startswith(NS_PREFIX):
            sh("ip", "netns", "del", ns, check=False)
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        sh("ip", "link", "del", BRIDGE, check=False)
    for link in Path("/sys/class/net").iterdir():
        if link.name.startswith("frv"):
            sh("ip", "link", "del", link.name, check=False)
    for user in _created_users():
        sh("userdel", user, check=False)
    if LAB_DIR.exists():
        shutil.rmtree(LAB_DIR, ignore_errors=True)  # checked above: root's, marked as the lab's own
    done.append("namespaces, bridge, mounts, files, users")
    return done


def _lab_mounts() -> list[str]:
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            mp = line.split()[1]
            if mp == str(LAB_DIR) or mp.startswith(f"{LAB_DIR}/") or mp.startswith(f"/run/netns/{NS_PREFIX}") or \
                    mp.startswith(f"/var/run/netns/{NS_PREFIX}"):
                out.append(mp)
    return out


def leftovers() -> list[str]:
    """What down() should have removed but is still there (used by tests and lab.up)."""
    found = []
    r = sh("ip", "netns", "list", check=False)
    found += [f"netns {line.split()[0]}" for line in r.stdout.splitlines() if line.startswith(NS_PREFIX)]
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        found.append(f"bridge {BRIDGE}")
    found += [f"pid {p}" for p in _lab_pids()]
    found += [f"mount {m}" for m in _lab_mounts()]
    return found


# --- bring-up ---------------------------------------------------------------------------


def _network(hosts: list[LabHost]) -> None:
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    pairs = [(REGISTRY_NS, f"{SUBNET}.2", "frvr")] + [(h.netns, h.address, h.veth) for h in hosts]
    for ns, addr, veth in pairs:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", veth, "master", BRIDGE, "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", GATEWAY)


def _nsenter(ns: str) -> list[str]:
    return ["nsenter", f"--net=/var/run/netns/{ns}"]


def _registry() -> None:
    d = LAB_DIR / "registry"
    (d / "data").mkdir(parents=True)
    (d / "config.yml").write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage:\n  filesystem: {{rootdirectory: {d / 'data'}}}\n  delete: {{enabled: true}}\n"
        f"http:\n  addr: {REGISTRY_ADDR}\n"
    )
    _spawn_registry()


def _spawn_registry() -> None:
    d = LAB_DIR / "registry"
    with open(d / "registry.log", "a") as log:
        p = subprocess.Popen(
            _nsenter(REGISTRY_NS) + ["setsid", "docker-registry", "serve", str(d / "config.yml")],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
    (d / "registry.pid").write_text(str(p.pid))
    _record_process(p.pid, "registry")


def registry_up() -> bool:
    host, port = REGISTRY_ADDR.split(":")
    return tcp_open(host, int(port))


def stop_registry() -> None:
    """Fault injection for tests: the registry goes away, everything else stays."""
    for pid in _recorded("registry"):
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    wait_for("registry stop", lambda: not registry_up() and not _recorded("registry"), 10)


def start_registry() -> None:
    _spawn_registry()
    wait_for("registry", registry_up, 15)


def _fake_nvml() -> Path:
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


def _lab_user() -> None:
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
    (LAB_DIR / "users.json").write_text(json.dumps(sorted(set(_created_users()) | set(created))))


def _client_key() -> Path:
    key = LAB_DIR / "id_ed25519"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleetroll-lab", "-f", str(key))
    (LAB_DIR / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    return key


def _host_env(h: LabHost) -> dict[str, str]:
    env = {
        "DOCKER_HOST": h.docker_host,
        "FLEETROLL_STATE_DIR": str(h.dir / "state"),
        "FLEETROLL_LOCK_DIR": str(h.dir / "lock"),
        "FLEETROLL_SECRETS_DIR": str(h.dir / "secrets"),
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


def _start_host(h: LabHost) -> None:
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
    env = _host_env(h)
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
    sh(*_nsenter(h.netns), "/usr/sbin/sshd", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log"))
    wait_for(f"sshd pid file on {h.name}", lambda: _pid_in(d / "sshd.pid") is not None, 10)
    _record_process(_pid_in(d / "sshd.pid"), f"sshd:{h.name}")


def _spawn_dockerd(h: LabHost) -> None:
    """dockerd: its own data root, socket, and the lab registry as insecure."""
    d = h.dir
    with open(d / "dockerd.log", "a") as log:
        p = subprocess.Popen(
            _nsenter(h.netns)
            + [
                "setsid", "dockerd",
                "--data-root", str(d / "docker"),
                "--exec-root", str(d / "exec"),
                "--pidfile", str(d / "dockerd.pid"),
                "-H", h.docker_host,
                "--insecure-registry", REGISTRY_ADDR,
                "--shutdown-timeout", "3",
            ],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env={"PATH": _host_env(h)["PATH"], "HOME": "/root"},
        )
    _record_process(p.pid, f"dockerd:{h.name}")


def restart_dockerd(h: LabHost) -> None:
    """Fault injection: stop this host's dockerd (the pid it recorded) and start it again."""
    for pid in _recorded(f"dockerd:{h.name}"):
        os.kill(pid, signal.SIGTERM)
    wait_for(f"dockerd on {h.name} to stop", lambda: not _recorded(f"dockerd:{h.name}"), 30)
    _spawn_dockerd(h)
    wait_for(f"dockerd on {h.name}", lambda: h.docker_sock.exists() and _docker_ping(h), 45)


def _ssh_config(hosts: list[LabHost], key: Path) -> None:
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


def _wait_host(h: LabHost) -> None:
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


def up(count: int = 2, extras: list[str] | None = None, images: bool = True, observability: bool = False) -> LabState:
    """Bring up a fresh lab of `count` hosts (+ extras); tears down any earlier one first."""
    require_tools()
    down()
    LAB_DIR.mkdir(parents=True, mode=0o711)
    LAB_DIR.chmod(0o711)  # others may traverse (lab users reach their homes and state), not list or write
    (LAB_DIR / MARKER).write_text(json.dumps({"created": time.time(), "by": os.getpid()}))
    hosts = plan_hosts(count, extras)
    try:
        _network(hosts)
        _registry()
        _fake_nvml()
        _lab_user()
        key = _client_key()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(_start_host, hosts))
            wait_for("registry", registry_up, 15)
            list(pool.map(_wait_host, hosts))
        (LAB_DIR / "known_hosts").write_text("".join(host_key_line(h) for h in hosts))
        _ssh_config(hosts, key)
        # The fleet's start-up report secret, on every host as an operator would place it.
        fleet_secret = secrets.token_urlsafe(32)
        for h in hosts:
            put_secret(h, REPORT_SECRET, fleet_secret)
        state = LabState(hosts=hosts, known_hosts=str(LAB_DIR / "known_hosts"), key=str(key))
        from . import images as lab_images
        from .inventory import write_inventory

        tags = lab_images.seed(state) if images else {}
        extra = None
        if observability:
            from .inventory import observability_services

            extra = observability_services(state, _build_observability(state))
        state.inventory = str(write_inventory(state, tags, extra=extra))
        state.save()
        return state
    except BaseException:
        down()
        raise


def _build_observability(state: LabState) -> str:
    """Build the CPU family, the collector and hello from this commit; push them; return the tag."""
    from playbooks.images import build

    if build.revision().dirty:
        raise LabError("--with-observability builds images from this commit: commit families/ first")
    fam = build.build_family("family-cpu-py311")
    reg = f"{state.registry}/{ORG}"
    for svc in ("fleetroll-collector", "hello"):
        build.build_service(svc, fam.local_ref, reg, push=True, insecure=True)
    return fam.tag


REPORT_SECRET = "fleetroll-report-key"  # the inventory's default observability.report_key_secret


def report_secret(state: LabState) -> str:
    """The lab fleet's report secret (tests and the bench sign reports with keys derived from it)."""
    return (state.hosts[0].dir / "secrets" / REPORT_SECRET).read_text().strip()


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
