"""The inventory's schema: pydantic models of fleet.yml and phases.yml, their per-field rules and types.

Every field a model declares is documented in docs/inventory.md (python -m playbooks.inventory_doc),
whose types, defaults and constraints come from these models.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator
from pydantic_core import PydanticCustomError

from agent import contract

from .schema_base import (  # noqa: F401 - where the controller has always found them
    DEFAULT_MIN_DRIVER,
    HEALTH_PATH_RE,
    HOSTNAME_RE,
    LOGIN_RE,
    PORT_RE,
    TAG_RE,
    InventoryError,
    _address,
    _Strict,
    parse_version,
    tag_problem,
)
from .schema_service import (  # noqa: F401
    Health,
    ProxyRoute,
    ReverseProxy,
    SecretRef,
    Service,
    Update,
)
from .ssh_names import PYTHON_PATTERN


class Registry(_Strict):
    host: str = "ghcr.io"
    org: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    insecure: bool = False  # plain HTTP; only for the lab's own registry

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        scheme, sep, rest = v.partition("://")
        if sep:
            raise ValueError(f"registry host {v!r} has a scheme: give HOST[:PORT] alone ({rest.split('/')[0]!r});"
                             + (" plain HTTP is insecure: true" if scheme.lower() == "http" else " HTTPS is the default"))
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:\d{1,5})?|\[[0-9A-Fa-f:]+\](:\d{1,5})?", v):
            raise ValueError(f"registry host {v!r} must be HOST[:PORT], e.g. ghcr.io or 10.0.0.5:5000 (no path: the"
                             " organisation is registry.org)")
        return v


class GpuSpec(_Strict):
    model: str
    count: int = Field(ge=1)
    compute_capability: str
    min_driver: str = DEFAULT_MIN_DRIVER

    @field_validator("compute_capability")
    @classmethod
    def _capability(cls, v: str) -> str:
        """MAJOR.MINOR as NVIDIA writes it: a regex in the error told the operator nothing (exploratory run: "8.90")."""
        if not re.fullmatch(r"\d+\.\d", v):
            raise ValueError(f"compute_capability {v!r} must be MAJOR.MINOR with one digit after the dot, as"
                             " `nvidia-smi --query-gpu=compute_cap --format=csv` prints it: \"8.9\" for an RTX 4090,"
                             " \"8.6\" for an RTX 3060")
        return v

    @field_validator("min_driver")
    @classmethod
    def _driver(cls, v: str) -> str:
        if not re.fullmatch(r"\d+(\.\d+)*", v):
            raise ValueError("min_driver must look like 535 or 535.104")
        return v


class Host(_Strict):
    address: str
    port: int = Field(default=22, ge=1, le=65535)
    user: str = "root"
    role: Literal["gpu", "cpu", "infra"] = "cpu"
    key_filename: str | None = None
    # The interpreter the agent runs under, as an absolute path (not `python3` from the login PATH, which on
    # many accounts is a pyenv or conda shim). Debian 12's system Python by default.
    python: str = Field(default="/usr/bin/python3", pattern=PYTHON_PATTERN)
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


class Ssh(_Strict):
    # fleetroll's own pinned file, beside the inventory (relative paths are): OpenSSH's ~/.ssh/known_hosts
    # is filled by trust on first use, this one only by `fab hostkeys` with the operator's confirmation.
    known_hosts: str = "known_hosts"
    connect_timeout: float = Field(default=5.0, gt=0)
    max_parallel: int = Field(default=10, ge=1)
    # Which SSH client carries the agent's calls: the system's OpenSSH (auto: whenever `ssh` is on PATH) or paramiko.
    # Both refuse unknown and changed keys; OpenSSH also honours @revoked and @cert-authority lines (playbooks/openssh.py).
    client: Literal["auto", "openssh", "paramiko"] = "auto"


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
