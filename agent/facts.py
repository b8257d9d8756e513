"""Read-only facts about a host, in the pyinfra manner.

Each fact has an I/O half that reads the host and a pure half that turns what was read
into plain data, so the parsing is tested from captured input without a host. Facts
never decide pass or fail: the controller's policy does, from the facts alone.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable

from . import contract, listening
from .registry import RegistryClient, RegistryError
from .timestamps import up_seconds

TYPE_CHECKING = False  # importing typing costs every agent call ~2.5 ms; Any is only ever an annotation here
if TYPE_CHECKING:
    from typing import Any

HOOK = "nvidia-container-runtime-hook"
HOOK_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/sbin")


# --- NVML ------------------------------------------------------------------------------


def nvml() -> dict[str, Any]:
    """GPU facts from the real pynvml binding (a fake libnvidia-ml.so.1 in the lab)."""
    try:
        import pynvml
    except ImportError as exc:  # pragma: no cover - the zipapp always vendors it
        return {"ok": False, "error": f"pynvml not importable: {exc}"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"ok": False, "error": f"NVML did not initialise: {exc} (is the NVIDIA driver loaded?)"}
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            gpus.append(
                {
                    "index": i,
                    "name": _text(pynvml.nvmlDeviceGetName(h)),
                    "uuid": _text(pynvml.nvmlDeviceGetUUID(h)),
                    "compute_capability": f"{major}.{minor}",
                    **_memory(pynvml.nvmlDeviceGetMemoryInfo(h)),
                }
            )
        return {
            "ok": True,
            "driver_version": _text(pynvml.nvmlSystemGetDriverVersion()),
            "cuda_driver_version": pynvml.nvmlSystemGetCudaDriverVersion(),
            "gpus": gpus,
        }
    except pynvml.NVMLError as exc:
        return {"ok": False, "error": f"NVML query failed: {exc}"}
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _memory(m: Any) -> dict[str, int]:
    mib = 1024 * 1024
    return {"memory_mib": m.total // mib, "memory_used_mib": m.used // mib, "memory_free_mib": m.free // mib}


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# --- listening ports: agent/listening.py (sock_diag netlink, /proc/net as the fallback) ----


# --- disk ------------------------------------------------------------------------------


def disk_free(path: str) -> dict[str, Any]:
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return {"path": path, "error": str(exc)}
    return {"path": path, "free_gb": round(st.f_bavail * st.f_frsize / 1e9, 2)}


# --- docker ----------------------------------------------------------------------------


def docker_client(timeout: float = 10.0):
    """The local Docker daemon as an SDK-shaped client (agent/dockerapi.py); UnsupportedDockerHost for a tcp:// DOCKER_HOST."""
    from . import dockerapi, engine

    return dockerapi.DockerClient(engine.require_engine(timeout))


def summarize_container(attrs: dict, now: float | None = None) -> dict[str, Any]:
    """The parts of `docker inspect` that planning and status need."""
    cfg = attrs.get("Config") or {}
    state = attrs.get("State") or {}
    labels = cfg.get("Labels") or {}
    return {
        "name": attrs.get("Name", "").lstrip("/"),
        "id": attrs.get("Id", "")[:12],
        "image": cfg.get("Image", ""),
        "image_id": attrs.get("Image", ""),
        "status": state.get("Status", ""),
        "running": bool(state.get("Running")),
        "restart_count": attrs.get("RestartCount", 0),
        "started_at": state.get("StartedAt", ""),
        "up_s": up_seconds(state.get("StartedAt", ""), now if now is not None else time.time()),
        "service": labels.get(contract.SERVICE, ""),
        "tag": labels.get(contract.TAG, ""),
        "digest": labels.get(contract.DIGEST, ""),
        "rollout_id": labels.get(contract.ROLLOUT_ID, ""),
        "spec_hash": labels.get(contract.SPEC_HASH, ""),
        "health": labels.get(contract.HEALTH, ""),  # the gate settings it was started with: status probes by these
        # What `docker update --restart` may have changed by hand since fleetroll made it (its labels do not say).
        "restart_policy": (((attrs.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name") or "no"),
        # The host ports it publishes: preflight names fleetroll's own container (an orphan) holding a wanted port.
        "host_ports": sorted({str(b.get("HostPort")) for bs in ((attrs.get("HostConfig") or {}).get("PortBindings") or {}).values()
                              for b in bs or [] if b.get("HostPort")}),
        "phase": labels.get(contract.PHASE, ""),
        # Addresses on user-defined networks (the proxy's): where the proxy and the gate reach it.
        "addresses": {n: (v or {}).get("IPAddress", "") for n, v in ((attrs.get("NetworkSettings") or {}).get("Networks") or {}).items()
                      if n not in ("bridge", "host", "none") and (v or {}).get("IPAddress")},
    }


def proxy_view() -> dict[str, Any]:
    """Which server the host's reverse proxy sends each service to, as its runtime API says."""
    from . import proxy

    try:
        return {"ok": True, "backends": proxy.Runtime(timeout=3.0).view()}
    except Exception as exc:  # noqa: BLE001 - facts and status must still answer
        return {"ok": False, "error": str(exc)[:300]}


def docker_facts(inspected: dict[str, dict] | None = None, runtimes: bool = True) -> dict[str, Any]:
    """Daemon version, data root, runtimes and fleetroll's containers (full inspect each), read over the Engine API.

    /info only where its runtimes are needed (`runtimes`: a GPU host's nvidia runtime) or nothing else says the rest:
    dockerd runs `runc --version` and `docker-init --version` for every /info (and /version), ~7 ms of the host's
    CPU, on every host of every preflight. Elsewhere the version comes from the Server header dockerd puts on every
    answer (with Api-Version), and the data root from a container's own files, which dockerd keeps under
    <root>/containers/<id>/. `inspected`, when given, is filled with each container's full inspect by name, so the
    plan's diffs need not ask again.
    """
    from . import engine

    try:
        eng = engine.open_engine()
        if eng is None:  # a tcp:// or ssh:// DOCKER_HOST: not spoken (engine.py says why)
            return {"ok": False, "error": engine.unsupported_host_message()}
        with eng:
            info = _info(eng) if runtimes else None
            with eng.open("GET", "/containers/json", {"all": 1, "filters": {"label": [contract.MANAGED]}}) as answer:
                listed = json.loads(answer.read())
                api_version = answer.response.getheader("Api-Version") or ""
                server = answer.response.getheader("Server") or ""
            containers, root = [], None
            for c in listed:
                try:
                    attrs = eng.get(f"/containers/{c['Id']}/json")
                except engine.EngineError as exc:
                    if exc.status != 404:  # removed between list and inspect: it is not there
                        raise
                    continue
                containers.append({**summarize_container(attrs), "secret_files_missing": _secret_files_missing(attrs),
                                   **_secrets_since_created(attrs)})
                if root is None or (attrs.get("State") or {}).get("Running"):
                    root = root_from_container(attrs) or root  # a running container's paths: those of dockerd now
                if inspected is not None:
                    inspected[attrs.get("Name", "").lstrip("/")] = attrs
            version = server_version(server)
            if info is None and (root is None or not version):
                info = _info(eng)
    except Exception as exc:  # noqa: BLE001 - any failure here means "daemon not usable"
        return {"ok": False, "error": f"Docker daemon not reachable: {str(exc)[:200]}"}
    if info is None:
        return {"ok": True, "version": version, "api_version": api_version, "root_dir": root, "runtimes": None,
                "image_store": "", "containers": containers}
    return _facts(info, api_version, containers)


def _info(eng) -> dict:
    info = eng.get("/info")
    return info if isinstance(info, dict) else {}


def server_version(server: str) -> str:
    """dockerd's version from its Server header, "Docker/20.10.24+dfsg1 (linux)"; "" from anything else. Pure."""
    name, _, rest = server.partition("/")
    version = rest.split(" ", 1)[0]
    return version if name == "Docker" and version and version.isprintable() else ""


def root_from_container(attrs: dict) -> str | None:
    """Docker's data root from where it keeps this container's own files (<root>/containers/<id>/), or None. Pure.

    Only a path naming this very container's id counts: a container sharing another's network names that one's
    resolv.conf."""
    cid = attrs.get("Id") or ""
    for key, leaf in (("HostnamePath", "hostname"), ("ResolvConfPath", "resolv.conf"), ("HostsPath", "hosts")):
        path = attrs.get(key) or ""
        tail = f"/containers/{cid}/{leaf}"
        if cid and isinstance(path, str) and path.endswith(tail) and path.startswith("/") and len(path) > len(tail):
            return path[: -len(tail)]
    return None


def _secrets_since_created(attrs: dict) -> dict:
    """{"secrets_since_created": …} for a container given secrets (secrets.since_created), else nothing: most are given none."""
    label = ((attrs.get("Config") or {}).get("Labels") or {}).get(contract.SECRET_ENV)
    if not label:
        return {}
    from . import secrets

    found = secrets.since_created(label, attrs.get("Created") or "", time.time())  # resolved at create, not at each start
    return {"secrets_since_created": found} if found else {}


def _secret_files_missing(attrs: dict) -> str:
    """secret_files.missing, imported only for a container that mounts secret files (most mount none)."""
    from . import secrets

    if not secrets.secret_mount_sources(attrs.get("HostConfig") or {}):
        return ""
    from . import secret_files

    return secret_files.missing(attrs)


def _facts(info: dict, api_version: str, containers: list[dict]) -> dict[str, Any]:
    return {
        "ok": True,
        "version": info.get("ServerVersion", ""),
        "api_version": api_version,
        "root_dir": info.get("DockerRootDir", "/var/lib/docker"),
        "runtimes": sorted((info.get("Runtimes") or {}).keys()),
        "image_store": image_store(info),
        "containers": containers,
    }


def image_store(info: dict) -> str:
    """"containerd" when dockerd keeps images in containerd's store (its driver-type says the snapshotter), else
    "classic" (graph drivers: overlay2 and the like). Pure."""
    status = dict(pair for pair in info.get("DriverStatus") or [] if isinstance(pair, list) and len(pair) == 2)
    return "containerd" if "containerd" in str(status.get("driver-type", "")) else "classic"


def _on_path(name: str) -> str | None:
    """shutil.which for one plain name, without importing shutil (and its bz2 and lzma) on every facts call."""
    search = os.environ.get("PATH")
    if search is None:
        search = os.defpath
    if not search:  # PATH set and empty: nothing is on it (shutil.which says the same)
        return None
    for d in search.split(os.pathsep):
        path = os.path.join(d or ".", name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def nvidia_runtime(runtimes: list[str]) -> dict[str, Any]:
    """Docker's --gpus needs the NVIDIA prestart hook on dockerd's PATH (or an nvidia runtime)."""
    hook = _on_path(HOOK) or next(
        (os.path.join(d, HOOK) for d in HOOK_DIRS if os.access(os.path.join(d, HOOK), os.X_OK)), None
    )
    return {"hook": hook, "nvidia_runtime": "nvidia" in runtimes}


# --- registry --------------------------------------------------------------------------


def images(refs: list[str], insecure: bool, timeout: float = 5.0, local: bool = False) -> dict[str, Any]:
    """Digest and config of each ref, as the registry answers this host (`local`: configs this host's Docker holds
    are read from it, not fetched again)."""
    client = RegistryClient(insecure=insecure, timeout=timeout)
    local_config = (lambda digest: _local_image_config(digest, timeout)) if local else None
    out: dict[str, Any] = {}
    unreachable: str | None = None
    for ref in refs:
        if unreachable:
            # One dead registry should cost one timeout, not one per image.
            out[ref] = {"ok": False, "kind": "unreachable", "error": unreachable}
            continue
        try:
            out[ref] = {"ok": True, **_inspect_once_more_if_late(client, ref, local_config)}
        except RegistryError as exc:
            out[ref] = {"ok": False, "kind": exc.kind, "error": str(exc)}
            if exc.kind == "unreachable":
                unreachable = str(exc)
    return out


def _inspect_once_more_if_late(client: RegistryClient, ref: str,
                              local_config: Callable[[str], dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """A registry that answered nothing in time is asked once more before it is called unreachable.

    A hundred hosts asking one registry at once (fleet-wide preflight) made a few of them wait past
    the timeout on a registry that was up; a refused connection or an unknown name is not retried.
    """
    try:
        return client.inspect(ref, local_config=local_config).to_json()
    except RegistryError as exc:
        if exc.kind != "unreachable" or "timed out" not in str(exc):
            raise
    return client.inspect(ref, local_config=local_config).to_json()


def _local_image_config(config_digest: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """The image config Docker holds under this digest, or None: then the registry's blob is read.

    Docker's classic image store names an image by its config's digest; the containerd store (an option
    since Docker 24) names it by its manifest's, so there the lookup finds nothing and the blob is read as
    before (gather skips the lookup where /info said containerd, and tries it where /info was not asked). The id must be the
    digest itself: a config is used only when it is that very content.
    """
    from . import engine

    if not _CONFIG_DIGEST.fullmatch(config_digest):
        return None
    try:
        with engine.require_engine(timeout=timeout) as eng:
            attrs = eng.get(f"/images/{config_digest}/json")
    except Exception:  # noqa: BLE001 - not there, or the daemon would not say: the registry answers instead
        return None
    if not isinstance(attrs, dict) or attrs.get("Id") != config_digest or not isinstance(attrs.get("Config") or {}, dict):
        return None
    return attrs.get("Config") or {}


_CONFIG_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def gather(args: dict[str, Any]) -> dict[str, Any]:
    """All facts preflight, plan and status need, in one agent call."""
    t0 = time.monotonic()
    inspected: dict[str, dict] = {}
    docker = docker_facts(inspected, runtimes=bool(args.get("gpu", True)))
    out: dict[str, Any] = {"docker": docker, "ports": listening.listening_ports()}
    if args.get("addresses"):
        out["addresses_missing"] = listening.missing_addresses(args["addresses"])
    root = (docker.get("root_dir") or "/var/lib/docker") if docker.get("ok") else "/"
    out["disk"] = disk_free(root if os.path.exists(root) else "/")
    if args.get("gpu", True):
        out["nvml"] = nvml()
        out["runtime"] = nvidia_runtime(docker.get("runtimes", []))
    refs = args.get("images") or []
    if refs:
        out["images"] = images(refs, bool(args.get("insecure_registry")), float(args.get("registry_timeout", 5)),
                               local=bool(docker.get("ok")) and docker.get("image_store") != "containerd")
    from .freeze import all_freezes

    out["freezes"] = all_freezes()
    from .journal import open_ids

    ids = open_ids()
    if ids:  # nearly never: the lock is read only when a transaction's journal is open
        from .lock import busy

        out["busy"] = busy(ids)
    if args.get("proxy") and docker.get("ok"):
        out["proxy"] = proxy_view()
    if args.get("secrets"):
        from .secrets import problems

        out["secrets"] = problems(args["secrets"])
    foreign: dict[str, dict] = {}
    if args.get("diff_specs") and docker.get("ok"):
        from .container_diffs import config_diffs

        out["diffs"] = config_diffs(args["diff_specs"], inspected, foreign)
    rest = [n for n in args.get("names") or [] if n not in inspected and n not in (args.get("diff_specs") or {})]
    if rest and docker.get("ok"):  # `fab preflight` without a phase: no diffs asked, names still looked at
        from .container_diffs import foreign_by_name

        foreign.update(foreign_by_name(rest))
    if foreign:
        out["foreign"] = foreign
    out["elapsed_s"] = round(time.monotonic() - t0, 3)
    return out
