"""The inventory's service models: a service, its health gate, update policy, proxy route and secret references.

Every field is documented in docs/inventory.md (python -m playbooks.inventory_doc); schema.py
re-exports these names where the rest of the controller has always found them.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_serializer, model_validator
from pydantic_core import PydanticCustomError

from agent import contract, secrets
from agent.proxy import CONFIG_ENV

from .schema_base import HEALTH_PATH_RE, PORT_RE, _Strict, tag_problem


class Health(_Strict):
    path: str = "/health"
    port: int = Field(ge=1, le=65535)
    # Bounded: a failing release waits out its deadline with the old container stopped (stop-first). Six hours covers
    # the largest model's load; more is a typo, not a plan.
    healthy_deadline: float = Field(default=60.0, gt=0, le=21600)
    min_healthy_time: float = Field(default=10.0, ge=0, le=3600)
    interval: float = Field(default=0.5, gt=0, le=60)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not HEALTH_PATH_RE.fullmatch(v):
            raise ValueError(f"health path {v!r} must start with '/' and use only letters, digits and . _ ~ / % -")
        return v


class SecretRef(_Strict):
    """An env value kept on the host: the file <secrets dir>/<secret> there, read at container create.

    `as: file` gives it to the container as the file /run/secrets/<secret> (a tmpfs, readable by
    the container's uid alone) and the variable holds that path: the value is then in neither
    the container's environment nor `docker inspect` (agent/secret_files.py).
    """

    secret: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    as_: Literal["env", "file"] = Field(default="env", alias="as")

    @model_serializer
    def _reference(self) -> dict[str, str]:
        """The reference as the agent reads it (agent/secrets.py): `{secret}` as every earlier plan said it (so spec
        hashes of env secrets stay what they were), `{secret, as: file}` for a file."""
        return {"secret": self.secret, **({"as": "file"} if self.as_ == "file" else {})}


class Update(_Strict):
    """How a service is updated. Nomad's batches for replicated services: `canary` replicas first,
    then `max_parallel` at a time, each batch gated before the next (0 = no canary / all at once).

    Swarm's `order` for each swap: `start-first` starts the new container beside the old one and
    switches the host's reverse proxy to it once it passed its gate (the service must sit behind
    the proxy); `stop-first` stops the old one first; `auto` (default) is start-first when the
    service is behind the proxy and its GPU card has the memory for a second copy. `drain_s` is
    how long the old container keeps finishing its requests after the switch, before it stops.
    """

    canary: int = Field(default=0, ge=0)
    max_parallel: int = Field(default=0, ge=0)
    order: Literal["start-first", "stop-first", "auto"] = "auto"
    drain_s: float = Field(default=2.0, ge=0, le=600)

    @property
    def batches(self) -> bool:
        return bool(self.canary or self.max_parallel)


class ProxyRoute(_Strict):
    """A public port the host's reverse proxy holds for a service; the service's container publishes none.

    The proxy reaches the container over the proxy network by name, at `port` (the container port).
    """

    listen: str  # [ADDRESS:]PORT on the host
    port: int = Field(ge=1, le=65535)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        import ipaddress

        addr, _, port = str(v).rpartition(":")
        if not port.isdigit() or not 1024 <= int(port) <= 65535:
            raise ValueError(f"proxy listen {v!r} must be [ADDRESS:]PORT with PORT 1024-65535 (the proxy runs as a"
                             " non-root user, so it cannot bind ports below 1024)")
        if addr:
            try:
                ipaddress.ip_address(addr.strip("[]"))
            except ValueError:
                raise ValueError(f"proxy listen {v!r}: {addr!r} is not an IP address") from None
        return v

    @property
    def address(self) -> str:
        return str(self.listen).rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(str(self.listen).rpartition(":")[2])


class ReverseProxy(_Strict):
    """The service that holds the public ports of the services behind it (HAProxy, family-built), per host."""

    service: str
    network: str = contract.DEFAULT_NETWORK
    health_port: int = Field(default=8404, ge=1024, le=65535)

    @field_validator("network")
    @classmethod
    def _own_network(cls, v: str) -> str:
        # The proxy reaches its backends by name: a user-defined bridge the agent makes, never host,
        # none, container:<other>, the default bridge or a network someone else made.
        if not contract.OWN_NETWORK_RE.fullmatch(v):
            raise PydanticCustomError("network", "{why}", {"why": contract.network_problem(v)
                                      or f"network {v!r} is Docker's default bridge, where the proxy cannot reach containers by name"})
        return v


# Docker's reference grammar for a repository path: lowercase components joined by '/', each separated inside only by
# '.', '_', '__' or dashes. `x/../cpu-svc` or `cpu-svc/` passed the old pattern and failed on the host.
IMAGE_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
# A variable name the environment can hold and a shell can name; FLEETROLL_ is fleetroll's own (it sets those itself).
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
RESERVED_ENV = "FLEETROLL_"


class Service(_Strict):
    image: str
    tag: str
    # Where it runs: one host, a list of hosts, or a host group (exactly one of the three).
    host: str | None = None
    hosts: list[str] = []
    group: str | None = None
    # engine: swarm only: run N tasks over the hosts of hosts:/group: (Swarm reschedules one whose node is lost),
    # instead of one on each. Not set: one per host, as the SSH push runs it.
    replicas: int | None = Field(default=None, ge=1)
    update: Update | None = None
    ports: list[str] = []
    # Behind the host's reverse proxy (reverse_proxy:): the proxy publishes `listen`, the container nothing.
    proxy: ProxyRoute | None = None
    env: dict[str, str | SecretRef] = {}
    gpus: int | Literal["all"] = 0
    # What the model needs on the card, in GB (preflight checks the services placed on a host fit its GPU memory).
    gpu_memory_gb: float | None = Field(default=None, gt=0)
    user: str = "10001:10001"
    restart: Literal["no", "always", "unless-stopped", "on-failure"] = "unless-stopped"
    stop_timeout: int = Field(default=10, ge=0, le=600)
    volumes: list[str] = []
    health: Health

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not IMAGE_RE.fullmatch(v) or len(v) > 255:
            raise ValueError(f"image {v!r} is not a repository path Docker accepts: lowercase letters and digits in"
                             " components joined by '/', each separated inside only by '.', '_', '__' or '-'"
                             " (e.g. family-cpu-py311 or team/family-cpu-py311)")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict) -> dict:
        """Names and values a container's environment can hold; never the value in a message (it may be a secret)."""
        for name, value in v.items():
            if not ENV_NAME_RE.fullmatch(name):
                raise ValueError(f"env name {name!r} is not a variable name (letters, digits, '_', '.', '-', not starting"
                                 " with a digit; '=' would split it into another variable's name and value)")
            if name.startswith(RESERVED_ENV) and name != CONFIG_ENV:  # the proxy's own: inventory_checks says more
                raise ValueError(f"env {name}: variables starting with {RESERVED_ENV} are set by fleetroll itself (its"
                                 " host, service and image digest); the inventory's value would be replaced: rename it")
            if isinstance(value, str) and "\x00" in value:
                raise ValueError(f"env {name}: the value holds a NUL character, which no process environment can hold"
                                 " (Docker refuses it when the container is created, after the old one stopped)")
        return v

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, v: list[str]) -> list[str]:
        import posixpath

        for item in v:
            if not re.fullmatch(r"([A-Za-z0-9][\w.-]*|/[^:]*):/[^:]*(:ro|:rw)?", item):
                raise ValueError(f"volume {item!r} must be NAME:/path or /host/path:/path (optionally :ro)")
            problem = contract.host_path_problem(item.split(":")[0])  # the hard rules; allowed prefixes: cross-check
            if problem:
                raise ValueError(problem)
            if secrets.in_mount_dir(item):  # the host refuses it too (agent/host_checks.py); say so before any host is asked
                raise ValueError(f"volume {item!r}: {secrets.MOUNT_DIR} in the container is where fleetroll mounts secret"
                                 " files (env: {KEY: {secret: NAME, as: file}}); mount the volume somewhere else")
            inside = item.split(":")[1]
            if ".." in inside.split("/"):  # '/data/../../etc' mounts over /etc; '/models/' and '/a/./b' are harmless
                raise ValueError(f"volume {item!r}: the container path {inside!r} has a '..' component (it resolves to"
                                 f" {posixpath.normpath(inside)!r}); write the path it is meant to be")
        return v

    @model_validator(mode="after")
    def _one_placement(self) -> Service:
        given = [k for k, v in (("host", self.host), ("hosts", self.hosts), ("group", self.group)) if v]
        if len(given) != 1:
            raise ValueError("say where it runs with exactly one of host: NAME, hosts: [A, B, ...] or group: NAME"
                             + (f" (it gives {' and '.join(given)})" if given else ""))
        if len(set(self.hosts)) != len(self.hosts):
            raise ValueError(f"hosts lists a host twice: {self.hosts}")
        if self.replicas is not None and self.host:
            raise ValueError("replicas: spreads tasks over the hosts of hosts: or group:; with host: there is no other host to"
                             " reschedule to (give hosts: [A, B, ...] or group: NAME)")
        return self

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        # What can be known without the host: numeric, uid >= 1000, gid not root's nor Debian's fixed
        # adm/disk/sudo/shadow gids. The host adds its own privileged groups (the Docker socket's).
        problem = contract.user_problem(v)
        if problem:
            raise PydanticCustomError("user", "{why}", {"why": problem})
        return v

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        problem = tag_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[str]) -> list[str]:
        import ipaddress

        for item in v:
            m = PORT_RE.fullmatch(item)
            if not m or not all(1 <= int(m[g]) <= 65535 for g in ("host", "container")):
                raise ValueError(f"port mapping {item!r} must be [ADDRESS:]HOST:CONTAINER, e.g. '8080:8080' or '10.0.0.5:8080:8080'")
            if m["ip"]:
                try:
                    ipaddress.ip_address(m["ip"].strip("[]"))
                except ValueError:
                    raise ValueError(f"port mapping {item!r}: {m['ip']!r} is not an IP address") from None
        return v

    def port_pairs(self) -> list[tuple[int, int, str]]:
        return [(hp, cp, proto) for _ip, hp, cp, proto in self.port_bindings()]

    def port_bindings(self) -> list[tuple[str, int, int, str]]:
        """(address or "" for all, host port, container port, protocol) per published port."""
        out = []
        for item in self.ports:
            m = PORT_RE.fullmatch(item)
            out.append(((m["ip"] or "").strip("[]"), int(m["host"]), int(m["container"]), m["proto"] or "tcp"))
        return out

    def health_spec(self) -> dict:
        """The gate settings the agent gets; `address` only when the health port is bound to one address
        (else the gate uses loopback), so services published on every address keep their spec hash."""
        ip = next((ip for ip, hp, _cp, _p in self.port_bindings() if hp == self.health.port and ip), "")
        return {**self.health.model_dump(), **({"address": ip} if ip else {})}

    @property
    def wants_gpu(self) -> bool:
        return self.gpus == "all" or int(self.gpus) > 0
