"""The inventory's schema: pydantic models of fleet.yml and phases.yml, their per-field rules and types.

Every field a model declares is documented in docs/inventory.md (python -m playbooks.inventory_doc),
whose types, defaults and constraints come from these models.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator
from pydantic_core import PydanticCustomError

from agent import contract, secrets

TAG_RE = re.compile(r"(?P<date>\d{8})-(?P<sha>[0-9a-f]{7,40})")
DEFAULT_MIN_DRIVER = "535"


class InventoryError(Exception):
    """One or more problems in an inventory file; `problems` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def tag_problem(tag: str) -> str | None:
    """Why `tag` breaks the YYYYMMDD-<git_sha> scheme, or None if it keeps it."""
    m = TAG_RE.fullmatch(tag)
    if not m:
        return (
            f"tag {tag!r} does not match YYYYMMDD-<git_sha> (a UTC date, a dash, 7-40 lowercase"
            " hex digits of the commit), e.g. 20250817-1a2b3c4"
        )
    try:
        _dt.datetime.strptime(m["date"], "%Y%m%d")
    except ValueError:
        return f"tag {tag!r} starts with {m['date']!r}, which is not a calendar date (YYYYMMDD)"
    return None


def parse_version(text: str) -> tuple[int, ...]:
    """'550.54.14' -> (550, 54, 14): driver versions compare numerically, not as text."""
    parts = re.findall(r"\d+", text)
    return tuple(int(p) for p in parts)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Registry(_Strict):
    host: str = "ghcr.io"
    org: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    insecure: bool = False  # plain HTTP; only for the lab's own registry


class GpuSpec(_Strict):
    model: str
    count: int = Field(ge=1)
    compute_capability: str = Field(pattern=r"^\d+\.\d$")
    min_driver: str = DEFAULT_MIN_DRIVER

    @field_validator("min_driver")
    @classmethod
    def _driver(cls, v: str) -> str:
        if not re.fullmatch(r"\d+(\.\d+)*", v):
            raise ValueError("min_driver must look like 535 or 535.104")
        return v


HOSTNAME_RE = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
LOGIN_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
HEALTH_PATH_RE = re.compile(r"/[A-Za-z0-9._~/%-]*")
PORT_RE = re.compile(r"(?:(?P<ip>[0-9.]+|\[[0-9a-fA-F:]+\]):)?(?P<host>\d+):(?P<container>\d+)(?:/(?P<proto>tcp|udp))?")


def _address(v: str) -> str:
    import ipaddress

    try:
        ipaddress.ip_address(v)
        return v
    except ValueError:
        pass
    if not HOSTNAME_RE.fullmatch(v):
        raise ValueError(f"address {v!r} is neither an IP address nor a host name (letters, digits, '-', '.')")
    return v


class Host(_Strict):
    address: str
    port: int = Field(default=22, ge=1, le=65535)
    user: str = "root"
    role: Literal["gpu", "cpu", "infra"] = "cpu"
    key_filename: str | None = None
    # The interpreter the agent runs under, as an absolute path (not `python3` from the login PATH, which on
    # many accounts is a pyenv or conda shim). Debian 12's system Python by default.
    python: str = Field(default="/usr/bin/python3", pattern=r"^/[A-Za-z0-9._/+-]+$")
    known_hosts: str | None = None  # overrides ssh.known_hosts for this host
    gpus: GpuSpec | None = None
    disk_min_free_gb: float | None = Field(default=None, ge=0)

    @field_validator("address")
    @classmethod
    def _addr(cls, v: str) -> str:
        return _address(v)

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not LOGIN_RE.fullmatch(v):
            raise ValueError(f"user {v!r} is not a POSIX login name (lowercase letters, digits, '_', '-'; 32 at most)")
        return v


class Health(_Strict):
    path: str = "/health"
    port: int = Field(ge=1, le=65535)
    healthy_deadline: float = Field(default=60.0, gt=0)
    min_healthy_time: float = Field(default=10.0, ge=0)
    interval: float = Field(default=0.5, gt=0)

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


class Service(_Strict):
    image: str = Field(pattern=r"^[a-z0-9][a-z0-9_./-]*$")
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

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, v: list[str]) -> list[str]:
        for item in v:
            if not re.fullmatch(r"([A-Za-z0-9][\w.-]*|/[^:]*):/[^:]*(:ro|:rw)?", item):
                raise ValueError(f"volume {item!r} must be NAME:/path or /host/path:/path (optionally :ro)")
            problem = contract.host_path_problem(item.split(":")[0])  # the hard rules; allowed prefixes: cross-check
            if problem:
                raise ValueError(problem)
            if secrets.in_mount_dir(item):  # the host refuses it too (agent/host_checks.py); say so before any host is asked
                raise ValueError(f"volume {item!r}: {secrets.MOUNT_DIR} in the container is where fleetroll mounts secret"
                                 " files (env: {KEY: {secret: NAME, as: file}}); mount the volume somewhere else")
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


class Ssh(_Strict):
    # fleetroll's own pinned file, beside the inventory (relative paths are): OpenSSH's ~/.ssh/known_hosts
    # is filled by trust on first use, this one only by `fab hostkeys` with the operator's confirmation.
    known_hosts: str = "known_hosts"
    connect_timeout: float = Field(default=5.0, gt=0)
    max_parallel: int = Field(default=10, ge=1)


class Security(_Strict):
    """Where the supply-chain gate finds reports and risk acceptances (paths relative to this file)."""

    artifacts: str = "../artifacts"
    acceptances: str = "../security/risk-acceptances.yml"
    missing_report: Literal["refuse", "warn"] = "refuse"
    # A risk acceptance may reach at most this many days ahead: a finding is re-decided at least this often.
    max_acceptance_days: int = Field(default=90, ge=1, le=366)


class Observability(_Strict):
    collector: str | None = None  # the service that receives start-up reports (SBOM + git SHA)
    # The fleet's report secret: a host-side secret file of this name on every host that runs a
    # service (and on the collector's). Each container gets only a key derived from it for its
    # own host, service and digest; the collector alone gets the secret itself.
    report_key_secret: str = Field(default="fleetroll-report-key", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class Defaults(_Strict):
    disk_min_free_gb: float = Field(default=20.0, ge=0)
    # GPU memory kept free on every card beyond the services' declared gpu_memory_gb (driver, display, fragmentation).
    gpu_memory_reserve_gb: float = Field(default=0.0, ge=0)
    # Absolute host directories services may bind-mount (and what is below them); nothing else.
    host_paths: list[str] = []

    @field_validator("host_paths")
    @classmethod
    def _host_paths(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.startswith("/"):
                raise ValueError(f"host path prefix {p!r} must be absolute")
            problem = contract.host_path_problem(p)
            if problem:
                raise ValueError(problem)
        return v


def _named(kind: str):
    def check(v: str) -> str:
        problem = contract.name_problem(kind, v)
        if problem:
            raise PydanticCustomError("name", "{why}", {"why": problem})
        return v
    return AfterValidator(check)


HostName = Annotated[str, _named("host")]
GroupName = Annotated[str, _named("group")]
ServiceName = Annotated[str, _named("service")]
PhaseName = Annotated[str, _named("phase")]


Engine = Literal["ssh", "swarm"]


class Swarm(_Strict):
    """How phases with `engine: swarm` run: Docker Swarm schedules their stack (docs/swarm.md).

    `managers` are the hosts `fab swarm.form` makes managers (the first one initialises the
    swarm); every other host joins as a worker. `healthcheck` is what the rendered Swarm
    healthcheck runs inside the image: `python` (python3 -c, parses the JSON body, for the
    family images) or `wget` (busybox sh + wget, matches the body's status, for images without
    Python, such as the lab's).
    """

    managers: list[str] = []
    healthcheck: Literal["python", "wget"] = "python"


class Fleet(_Strict):
    registry: Registry
    ssh: Ssh = Ssh()
    defaults: Defaults = Defaults()
    security: Security = Security()
    observability: Observability = Observability()
    # Who runs a phase's release: fleetroll's SSH push (each host's agent) or Docker Swarm. A phase's own engine wins.
    engine: Engine = "ssh"
    swarm: Swarm = Swarm()
    hosts: dict[HostName, Host]
    # Named host lists for replicated services (`group: cpu-workers`).
    groups: dict[GroupName, list[str]] = {}
    reverse_proxy: ReverseProxy | None = None
    services: dict[ServiceName, Service] = {}

    def is_proxy(self, service: str) -> bool:
        return self.reverse_proxy is not None and self.reverse_proxy.service == service

    def on_network(self, service: str) -> bool:
        """Does this service's container join the proxy network (so its gate probes it there, not on a host port)?"""
        return self.is_proxy(service) or self.services[service].proxy is not None

    def proxied_on(self, host: str) -> list[str]:
        """The services behind the proxy with a replica on `host`, in inventory order."""
        return [n for n, s in self.services.items() if s.proxy is not None and host in self.hosts_of(n)]

    def health_spec(self, service: str) -> dict:
        """The gate settings of `service`; a container on the proxy network is probed there, by its address."""
        h = self.services[service].health_spec()
        if self.on_network(service) and self.reverse_proxy:
            h["network"] = self.reverse_proxy.network
        if self.services[service].proxy is not None:
            h["proxied"] = True  # the proxy switches to it once it passed (and back on revert)
        return h

    def update_order(self, service: str) -> tuple[str, float]:
        u = self.services[service].update
        return (u.order, u.drain_s) if u else ("auto", Update().drain_s)

    def hosts_of(self, service: str) -> list[str]:
        """The hosts a service runs on, one container each, in the order the inventory gives them."""
        svc = self.services[service]
        if svc.host:
            return [svc.host]
        if svc.hosts:
            return list(svc.hosts)
        return list(self.groups.get(svc.group or "", []))

    def replicated(self, service: str) -> bool:
        svc = self.services[service]
        return not svc.host

    def engine_of(self, phase: Phase) -> str:
        """ssh or swarm: the phase's own engine, else the inventory's."""
        return phase.engine or self.engine

    def swarm_managers(self) -> list[str]:
        """The swarm's managers: swarm.managers, else the inventory's first host."""
        return list(self.swarm.managers) or list(self.hosts)[:1]


class Phase(_Strict):
    name: PhaseName
    description: str = ""
    services: list[str]
    update: Update | None = None  # canary and batches across the phase's hosts (else its replicated service's own)
    engine: Engine | None = None  # ssh or swarm for this phase; not set: the inventory's engine


class Phases(_Strict):
    phases: list[Phase]
