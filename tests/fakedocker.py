"""A fake Docker client for unit tests of the host transaction (the shape of agent/dockerapi.py, its errors).

Why a fake here when the lab has real dockerd: some faults a real daemon will not
produce on demand at a chosen call (a `stop` that errors, a `rename` that fails, a
`start` refused after the old container was set aside). The fake implements only the
calls the transaction makes, keeps containers as plain data, and can be told to raise at
any named call. Health is decided per image "behaviour" ("ok", "bad", "raise") through a
patched `health.probe`, keyed by the published host port of the running container.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from agent import docker_errors, health

_ids = itertools.count(1)
_ips = itertools.count(2)


class FakeImage:
    def __init__(self, daemon: FakeDaemon, image_id: str, user: str = "10001:10001", entry=("/tini", "--", "/app/run"),
                 behaviour: str = "ok"):
        self.daemon, self.id, self.behaviour = daemon, image_id, behaviour
        self.attrs = {"Id": image_id, "Config": {"User": user, "Entrypoint": list(entry), "Labels": {"org.opencontainers.image.revision": "abc1234"}}}
        self.tags: list[str] = []

    def tag(self, repo: str, tag: str) -> bool:
        self.daemon.call("image.tag")
        self.tags.append(f"{repo}:{tag}")
        self.daemon.refs[f"{repo}:{tag}"] = self
        return True


def missing_bind_source(host_config: dict[str, Any]) -> None:
    """As dockerd: a `Mounts` bind whose source is missing is refused at create and at every start.

    (A `Binds` string's missing source is created as an empty directory instead; the fake does
    not model that, it just starts.)
    """
    for m in host_config.get("mounts") or []:
        if m.get("Type") == "bind" and not os.path.exists(m.get("Source") or ""):
            raise docker_errors.APIError(f'invalid mount config for type "bind": bind source path does not exist: {m.get("Source")}')


class FakeContainer:
    def __init__(self, daemon: FakeDaemon, cid: str, create: dict[str, Any], host_config: dict[str, Any]):
        self.daemon, self.id = daemon, cid
        self.name = create["name"]
        self.create, self.host_config = create, host_config
        self.running, self.restart_policy, self.exit_code = False, (host_config.get("restart_policy") or {}).get("Name", "no"), 0
        # Docker's own restart loop: while `restarting`, the sandbox is torn down and set up again and
        # rename/update/remove answer "sandbox … not found" or "is restarting" (what raced in the lab).
        self.restarting, self.paused, self.restart_count = False, False, 0
        # On a user-defined network (the proxy's) a running container has an address there, as on Docker.
        self.network = host_config.get("network_mode") or ""
        self.address = f"172.18.0.{next(_ips)}" if self.network else ""
        self.joined: dict[str, str] = {}  # networks connected after creation (the proxy's overlay fr-proxy): name -> address

    def crash_loop(self) -> None:
        """Make this container crash-loop as a restart policy makes Docker do (exit code 3, restarting)."""
        self.running, self.restarting, self.exit_code, self.restart_count = True, True, 3, self.restart_count + 2

    def _in_motion(self, what: str) -> None:
        if self.restarting:
            raise docker_errors.NotFound(f"sandbox {self.id[:12]} not found" if what == "rename"
                                         else f"Cannot {what} container {self.id[:12]}: container is restarting")

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.create.get("labels") or {})

    @property
    def image(self) -> FakeImage:
        return self.daemon.images.by_id[self.create["image"]]

    @property
    def attrs(self) -> dict[str, Any]:
        ports = {}
        for port, b in (self.host_config.get("port_bindings") or {}).items():
            ip, hp = (b if isinstance(b, tuple) else ("", b))
            ports[port] = [{"HostIp": ip, "HostPort": str(hp)}]
        binds = [f"{src}:{v['bind']}:{v['mode']}" for src, v in (self.host_config.get("binds") or {}).items()]
        reqs = [{"Count": r["count"], "Capabilities": r["capabilities"]} for r in (self.host_config.get("device_requests") or [])]
        return {
            "Id": self.id, "Name": "/" + self.name, "Image": self.create["image"], "RestartCount": self.restart_count,
            "State": {"Status": ("restarting" if self.restarting else "paused" if self.paused else "running" if self.running else "exited"),
                      "Running": self.running, "Restarting": self.restarting, "Paused": self.paused, "ExitCode": self.exit_code},
            "Config": {"User": self.create.get("user"), "Env": [f"{k}={v}" for k, v in (self.create.get("environment") or {}).items()],
                       "Labels": self.labels, "StopTimeout": self.create.get("stop_timeout")},
            "HostConfig": {"PortBindings": ports, "Binds": binds, "Mounts": [dict(m) for m in self.host_config.get("mounts") or []],
                           "RestartPolicy": {"Name": self.restart_policy}, "DeviceRequests": reqs,
                           "NetworkMode": self.network or "default"},
            "NetworkSettings": {"Networks": {**({self.network: {"IPAddress": self.address}} if self.network and self.running else {}),
                                             **{n: {"IPAddress": a if self.running else ""} for n, a in self.joined.items()}}},
        }

    def host_ports(self) -> list[int]:
        out = []
        for b in (self.host_config.get("port_bindings") or {}).values():
            out.append(int(b[1] if isinstance(b, tuple) else b))
        return out

    def reload(self) -> None:
        self.daemon.call("container.reload")
        if self.id not in self.daemon.containers.by_id:
            raise docker_errors.NotFound("gone")

    def rename(self, name: str) -> None:
        self.daemon.call("container.rename")
        self._in_motion("rename")
        if any(c.name == name and c is not self for c in self.daemon.containers.by_id.values()):
            raise docker_errors.APIError(f"Conflict. The container name {name!r} is already in use")
        if self.running and any(n in self.daemon.overlays for n in self.joined):
            # As dockerd (daemon/rename.go): a running container's endpoints are renamed in its sandbox, and on a swarm
            # overlay the cluster's endpoint table refuses it. A stopped one is renamed whatever networks it is on.
            raise docker_errors.APIError(f"Could not add service state for endpoint {name} to cluster on rename: cannot create"
                                         " entry in table endpoint_table: an entry with the same key already exists")
        self.name = name

    def update(self, restart_policy: dict | None = None, **_: Any) -> None:
        self.daemon.call("container.update")
        if restart_policy is not None:
            self.restart_policy = restart_policy.get("Name") or "no"

    def stop(self, timeout: int = 10) -> None:
        self.daemon.call("container.stop")
        if self.paused:
            raise docker_errors.APIError(f"Cannot stop container {self.id[:12]}: container is paused, unpause it first")
        self.running = self.restarting = False  # as Docker: a stop cancels a pending restart

    def unpause(self) -> None:
        self.daemon.call("container.unpause")
        self.paused = False

    def pause(self) -> None:
        self.paused = True

    def start(self) -> None:
        self.daemon.call("container.start")
        missing_bind_source(self.host_config)
        for other in self.daemon.containers.by_id.values():
            if other is not self and other.running and set(other.host_ports()) & set(self.host_ports()):
                raise docker_errors.APIError("driver failed programming external connectivity: port is already allocated")
        self.running = True

    def remove(self, force: bool = False) -> None:
        self.daemon.call("container.remove")
        self._in_motion("remove")
        self.daemon.containers.by_id.pop(self.id, None)

    def logs(self, tail: int = 10) -> bytes:
        text = "fake log line\n" + "".join(line.replace("$TOKEN", self.create.get("environment", {}).get("TOKEN", "")) + "\n"
                                            for line in getattr(self.image, "log_lines", []))
        return text.encode()


class FakeContainers:
    def __init__(self, daemon: FakeDaemon):
        self.daemon = daemon
        self.by_id: dict[str, FakeContainer] = {}

    def get(self, ref: str) -> FakeContainer:
        self.daemon.call("containers.get")
        for c in self.by_id.values():
            if c.id == ref or c.name == ref:
                return c
        raise docker_errors.NotFound(f"No such container: {ref}")

    def list(self, all: bool = False, filters: dict | None = None) -> list[FakeContainer]:
        wanted = (filters or {}).get("label") or []
        wanted = [wanted] if isinstance(wanted, str) else wanted
        out = []
        for c in self.by_id.values():
            ok = True
            for w in wanted:
                k, _, v = w.partition("=")
                ok = ok and k in c.labels and (not v or c.labels[k] == v)
            if ok and (all or c.running):
                out.append(c)
        return out


class FakeImages:
    def __init__(self, daemon: FakeDaemon):
        self.daemon = daemon
        self.by_id: dict[str, FakeImage] = {}
        self.registry: dict[str, FakeImage] = {}  # "repo@digest" -> image the registry would serve

    def pull(self, repo: str, tag: str | None = None) -> FakeImage:
        self.daemon.call("images.pull")
        ref = f"{repo}@{tag}" if tag and tag.startswith("sha256:") else f"{repo}:{tag}"
        img = self.registry.get(ref)
        if img is None:
            raise docker_errors.APIError(f"manifest for {ref} not found")
        self.by_id[img.id] = img
        self.daemon.refs[ref] = img
        if "@" in ref and ref not in img.attrs.setdefault("RepoDigests", []):
            img.attrs["RepoDigests"].append(ref)
        return img

    def list(self) -> list[FakeImage]:
        self.daemon.call("images.list")
        return list(self.by_id.values())

    def remove(self, ref: str) -> None:
        """As dockerd: one name goes; the image goes with its last name, unless a container still uses it."""
        self.daemon.call("images.remove")
        img = self.daemon.refs.get(ref) or self.by_id.get(ref)
        if img is None:
            raise docker_errors.ImageNotFound(f"No such image: {ref}")
        img.tags = [t for t in img.tags if t != ref]
        img.attrs["RepoDigests"] = [d for d in img.attrs.get("RepoDigests") or [] if d != ref]
        self.daemon.refs.pop(ref, None)
        if img.tags or img.attrs["RepoDigests"]:
            return
        if any(c.attrs.get("Image") == img.id for c in self.daemon.containers.by_id.values()):
            raise docker_errors.APIError(f"conflict: unable to delete {img.id[7:19]} - image is being used by a container")
        self.by_id.pop(img.id, None)

    def get(self, ref: str) -> FakeImage:
        self.daemon.call("images.get")
        img = self.by_id.get(ref) or self.daemon.refs.get(ref)
        if img is None:
            raise docker_errors.ImageNotFound(f"No such image: {ref}")
        return img


class FakeAPI:
    def __init__(self, daemon: FakeDaemon):
        self.daemon = daemon

    def create_host_config(self, **kw: Any) -> dict:
        return kw

    def create_container(self, host_config: dict | None = None, **kw: Any) -> dict:
        self.daemon.call("api.create_container")
        if any(c.name == kw["name"] for c in self.daemon.containers.by_id.values()):
            raise docker_errors.APIError(f"Conflict. The container name {kw['name']!r} is already in use")
        missing_bind_source(host_config or {})
        cid = f"{next(_ids):064x}"
        self.daemon.containers.by_id[cid] = FakeContainer(self.daemon, cid, kw, host_config or {})
        return {"Id": cid}


class FakeNetworks:
    """User-defined networks: listed by name, created once (the proxy's network)."""

    def __init__(self, daemon: FakeDaemon):
        self.daemon, self.names = daemon, set()

    def list(self, names: list[str] | None = None) -> list[str]:
        return [n for n in self.names if not names or n in names]

    def create(self, name: str, driver: str = "bridge", labels: dict | None = None) -> str:
        self.daemon.call("networks.create")
        self.names.add(name)
        return name


class FakeEngine:
    """The Engine API calls the agent makes directly (agent/engine.py): /info, a network's inspect, connect, disconnect."""

    def __init__(self, daemon: FakeDaemon):
        self.daemon = daemon

    def get(self, path: str, **_: Any) -> Any:
        self.daemon.call(f"engine.get {path}")
        if path == "/info":
            return {"Swarm": {"LocalNodeState": "active" if self.daemon.swarm else "inactive"}}
        name = path.removeprefix("/networks/")
        if name in self.daemon.overlays:
            return {"Name": name, "Driver": "overlay", "Scope": "swarm", "Attachable": True,
                    "Labels": {"io.fleetroll.network": "proxy"}}
        raise docker_errors.NotFound(f"network {name} not found")

    def call(self, method: str, path: str, query: dict | None = None, body: Any = None, **_: Any) -> Any:
        if (method, path) == ("GET", "/containers/json"):  # the list (agent/secret_sweep.py): inspect's shape carries the mounts
            return [c.attrs for c in self.daemon.containers.list(all=True)]
        net, _, what = path.removeprefix("/networks/").partition("/")
        self.daemon.call(f"network.{what}")
        c = self.daemon.containers.get(body["Container"])
        if net not in self.daemon.overlays:
            raise docker_errors.NotFound(f"network {net} not found")
        if what == "connect":
            c.joined[net] = f"10.0.9.{next(_ips)}"
        elif net not in c.joined:
            raise docker_errors.APIError(f"container {c.id[:12]} is not connected to network {net}", 403)
        else:
            c.joined.pop(net)
        return None


class FakeProxy:
    """The host's HAProxy as its runtime API answers (agent/proxy.Runtime): two slots per service, one live.

    Why a fake: the real proxy is a family image, built and run in the lab tests; here the
    transaction's start-first, switch-back and recovery branches run without any host.
    """

    def __init__(self) -> None:
        self.live: dict[str, str] = {}  # service -> "addr:port" the proxy sends it to
        self.slot: dict[str, str] = {}  # service -> the slot ("a" or "b") serving it
        self.switches: list[tuple[str, str]] = []
        self.idle_waits: list[tuple[str, tuple[str, ...]]] = []  # the slots each switch waited on for requests in flight
        self.idle_answer: bool | str = True  # what wait_idle says (a string: the proxy could not be read)
        self.fail_next = ""
        self.states: list[tuple[str, tuple[str, ...], str]] = []  # set_state calls

    def runtime(self, *_a, **_kw) -> FakeProxy:
        return self

    def point(self, service: str, addr: str, port: int) -> dict:
        if self.fail_next:
            msg, self.fail_next = self.fail_next, ""
            from agent.proxy import ProxyError

            raise ProxyError(msg)
        to = f"{addr}:{port}"
        if self.live.get(service) == to:
            return {"switched": False, "to": self.slot.get(service, "a"), "from": [], "switch_ms": 0.0}
        before = self.slot.get(service)
        self.live[service], self.slot[service] = to, "b" if before == "a" else "a"
        self.switches.append((service, to))
        return {"switched": True, "to": self.slot[service], "from": [before] if before else [], "switch_ms": 0.1}

    def retire(self, service: str, keep_addr: str, keep_port: int) -> None:
        pass

    def slots(self, service: str) -> dict:
        from types import SimpleNamespace

        live = self.slot.get(service) if service in self.live else None
        return {n: SimpleNamespace(name=n, live=n == live) for n in ("a", "b")}

    def set_state(self, service: str, servers: list[str], state: str) -> None:
        """maint of the live slot: the proxy sends the service's clients nowhere (503) until the next point()."""
        self.states.append((service, tuple(servers), state))
        if state == "maint" and self.slot.get(service) in servers:
            self.live.pop(service, None)

    def wait_idle(self, service: str, servers: list[str], within: float) -> bool | str:
        self.idle_waits.append((service, tuple(servers)))
        return self.idle_answer

    def servers(self) -> dict:
        return {}


class FakeDaemon:
    """containers / images / api / networks as the docker SDK's DockerClient offers them."""

    def __init__(self) -> None:
        self.networks = FakeNetworks(self)
        self.engine = FakeEngine(self)
        self.swarm = False  # a swarm node (docker info's Swarm.LocalNodeState active)
        self.overlays: set[str] = set()  # swarm overlays here (fab swarm.form's fr-proxy)
        self.containers = FakeContainers(self)
        self.images = FakeImages(self)
        self.api = FakeAPI(self)
        self.refs: dict[str, FakeImage] = {}
        self.fail: dict[str, BaseException] = {}  # call name -> exception raised the next time (once)
        self.calls: list[str] = []

    def call(self, name: str) -> None:
        self.calls.append(name)
        exc = self.fail.pop(name, None)
        if exc is not None:
            raise exc

    def image(self, repo: str, digest: str, behaviour: str = "ok", **kw: Any) -> FakeImage:
        img = FakeImage(self, "sha256:" + digest[-8:].rjust(64, "0"), behaviour=behaviour, **kw)
        self.images.registry[f"{repo}@{digest}"] = img
        return img

    def probe(self, url: str, timeout: float) -> health.Probe:
        addr, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
        port = int(port)
        for c in self.containers.by_id.values():
            reached = (c.address == addr) if c.network else port in c.host_ports()
            if c.running and not c.restarting and not c.paused and reached:
                b = c.image.behaviour
                if "FAKE_HEALTH=bad" in c.attrs["Config"]["Env"]:  # a configuration that breaks a good image
                    b = "bad"
                if b == "raise":
                    raise RuntimeError("a probe that blows up")
                if b == "ok":
                    return health.Probe(True, 'HTTP 200 {"status":"ok"}', 200, '{"status":"ok"}')
                return health.Probe(False, 'HTTP 200 but status is "degraded"', 200, '{"status":"degraded"}')
        return health.Probe(False, "no answer (Connection refused)")
