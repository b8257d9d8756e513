"""The fleet inventory: load, validate, and explain what is wrong with it.

The inventory is the operators' frozen organizer. fleetroll reads it and never writes it,
so every mistake must be reported well enough that a person can fix the file by hand:
each error names the file, the line, the dotted field and what to do. Validation is done
by pydantic (declarative types, unknown keys refused), line numbers come from the YAML
node tree, and cross-field rules (port collisions, unknown hosts, GPU requests on hosts
without GPUs) are checked after the per-field schema passes.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from agent import contract

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
    """An env value kept on the host: the file <secrets dir>/<secret> there, read at container create."""

    secret: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


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
        return v

    @model_validator(mode="after")
    def _one_placement(self) -> Service:
        given = [k for k, v in (("host", self.host), ("hosts", self.hosts), ("group", self.group)) if v]
        if len(given) != 1:
            raise ValueError("say where it runs with exactly one of host: NAME, hosts: [A, B, ...] or group: NAME"
                             + (f" (it gives {' and '.join(given)})" if given else ""))
        if len(set(self.hosts)) != len(self.hosts):
            raise ValueError(f"hosts lists a host twice: {self.hosts}")
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


class Fleet(_Strict):
    registry: Registry
    ssh: Ssh = Ssh()
    defaults: Defaults = Defaults()
    security: Security = Security()
    observability: Observability = Observability()
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


class Phase(_Strict):
    name: PhaseName
    description: str = ""
    services: list[str]
    update: Update | None = None  # canary and batches across the phase's hosts (else its replicated service's own)


class Phases(_Strict):
    phases: list[Phase]


@dataclass(frozen=True)
class Inventory:
    """A validated fleet plus its phases, with the paths they came from (for messages)."""

    fleet: Fleet
    phases: list[Phase]
    path: Path
    phases_path: Path

    def image_ref(self, service: str, tag: str | None = None) -> str:
        svc = self.fleet.services[service]
        return f"{self.repo(service)}:{tag or svc.tag}"

    def repo(self, service: str) -> str:
        r = self.fleet.registry
        return f"{r.host}/{r.org}/{self.fleet.services[service].image}"

    def phase(self, name: str) -> Phase:
        for p in self.phases:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.phases)
        raise InventoryError(
            [f"{self.phases_path}: no phase named {name!r}; phases in order are: {known}"]
        )

    def services_for(self, phase: str | None, hosts: list[str] | None = None) -> list[str]:
        """Services of the phase (or all) with a replica on any of `hosts` (or anywhere)."""
        names = self.phase(phase).services if phase else list(self.fleet.services)
        return [n for n in names if hosts is None or any(h in hosts for h in self.fleet.hosts_of(n))]

    def replicas(self, phase: str | None, hosts: list[str] | None = None) -> list[tuple[str, str]]:
        """(service, host) for every container the phase (or the fleet) runs, limited to `hosts`."""
        return [(n, h) for n in self.services_for(phase, hosts) for h in self.fleet.hosts_of(n) if hosts is None or h in hosts]

    def gpu_budgets(self, host: str) -> dict[str, float]:
        """{service: gpu_memory_gb} of the GPU services placed on `host` (any phase) that declare one."""
        return {s: self.fleet.services[s].gpu_memory_gb for s in self.services_for(None, [host])
                if self.fleet.services[s].wants_gpu and self.fleet.services[s].gpu_memory_gb}

    def update_for(self, phase: str) -> Update | None:
        """The phase's canary/batch settings: its own, else those of a service in it (checked to agree at load)."""
        ph = self.phase(phase)
        return ph.update or next((u for s in ph.services if (u := self.fleet.services[s].update) and u.batches), None)

    def select_hosts(self, hosts: list[str] | None, phase: str | None = None) -> list[str]:
        """Hosts to act on: those named (checked), else those the phase touches, else all."""
        if hosts:
            unknown = [h for h in hosts if h not in self.fleet.hosts]
            if unknown:
                raise InventoryError(
                    [
                        f"{self.path}: --hosts names {', '.join(unknown)}, not in the inventory;"
                        f" known hosts: {', '.join(self.fleet.hosts)}"
                    ]
                )
            return list(hosts)
        if phase:
            touched = {h for s in self.phase(phase).services for h in self.fleet.hosts_of(s)}
            return [h for h in self.fleet.hosts if h in touched]
        return list(self.fleet.hosts)

    def known_hosts_for(self, host: str) -> Path:
        h = self.fleet.hosts[host]
        raw = h.known_hosts or self.fleet.ssh.known_hosts
        p = Path(raw).expanduser()
        return p if p.is_absolute() else (self.path.parent / p)

    def resolve(self, raw: str) -> Path:
        p = Path(raw).expanduser()
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def collector_url(self) -> str | None:
        """Where services report at start-up: the collector's host and first published port."""
        name = self.fleet.observability.collector
        if not name:
            return None
        svc = self.fleet.services[name]
        return f"http://{self.fleet.hosts[self.fleet.hosts_of(name)[0]].address}:{svc.port_pairs()[0][0]}"

    def disk_min_free_gb(self, host: str) -> float:
        h = self.fleet.hosts[host]
        return h.disk_min_free_gb if h.disk_min_free_gb is not None else self.fleet.defaults.disk_min_free_gb


# --- YAML with line numbers -------------------------------------------------------------


def _line_index(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict:
    """Map each dotted path in the document to the 1-based line it starts on."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value
            out[path + (key,)] = k.start_mark.line + 1
            _line_index(v, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_index(v, path + (i,), out)
    return out


def _duplicate_keys(node: yaml.Node, path: Path, trail: tuple = ()) -> list[str]:
    """YAML keeps the last of two equal keys without a word; an inventory treats that as the mistake it usually is."""
    out = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            key, line = str(k.value), k.start_mark.line + 1
            if key in seen:
                field = ".".join(str(p) for p in (*trail, key))
                out.append(f"{path}:{line}: {field}: key given twice (lines {seen[key]} and {line}); fix: keep one of them")
            else:
                seen[key] = line
            out += _duplicate_keys(v, path, (*trail, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out += _duplicate_keys(v, path, (*trail, i))
    return out


def _read_yaml(path: Path) -> tuple[Any, dict]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InventoryError([f"{path}: cannot read it ({exc.strerror}); check the path"]) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise InventoryError([f"{where}: not valid YAML ({getattr(exc, 'problem', exc)}); fix the syntax"]) from exc
    if node is None or not isinstance(data, dict):
        raise InventoryError([f"{path}:1: expected a YAML mapping at the top level"])
    lines = _line_index(node)
    lines[("__duplicates__",)] = _duplicate_keys(node, path)  # reported with every other problem, in one pass
    return data, lines


_FIXES = {
    "extra_forbidden": "remove it or check its spelling",
    "missing": "add it",
    "name": "rename it (and every reference to it) to lowercase letters, digits, '_', '.', '-'",
    "user": f"leave it out (the image contract's {contract.IMAGE_USER}) or give a numeric uid:gid with uid >= {contract.MIN_UID}"
            " and a gid that is no privileged group's (not root, adm, disk, sudo, shadow, nor the Docker socket's group)",
    "network": f"leave it out (the default {contract.DEFAULT_NETWORK!r}) or name fleetroll's own bridge network, e.g. 'fleetroll-web'",
}


def _known_keys(loc: tuple) -> list[str]:
    """The keys a mapping at `loc` may hold (for "did you mean"): walks the models by the location's names."""
    model: Any = Fleet
    for part in loc:
        if model is Fleet and part in ("hosts", "services"):
            model = {"hosts": Host, "services": Service}[part]
            continue
        if model in (Host, Service) and isinstance(part, str) and part not in model.model_fields:
            continue  # the entry's own name (hosts.<name>)
        field = getattr(model, "model_fields", {}).get(part)
        ann = getattr(field, "annotation", None)
        model = next((a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _line_for(lines: dict, loc: tuple) -> int:
    loc = tuple(loc)
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc, 1)


def _explain(path: Path, lines: dict, err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        loc = tuple(e["loc"])
        # A name that fails its pattern is shown quoted (a newline in it must not start a line here).
        field = ".".join(str(p) if contract.NAME_RE.fullmatch(str(p)) or isinstance(p, int) else repr(p)
                         for p in loc if p != "[key]") or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        fix = _FIXES.get(e["type"], "correct the value")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            close = difflib.get_close_matches(str(loc[-1]), _known_keys(loc[:-1]), n=1, cutoff=0.6)
            if close:
                fix = f"did you mean {close[0]!r}? (else remove it)"
        got = "" if e["type"] in ("missing", "extra_forbidden", "name", "network") else f" (got {e.get('input')!r})"
        out.append(f"{path}:{_line_for(lines, loc)}: {field}: {msg}{got}; fix: {fix}")
    return out


def _cross_checks(fleet: Fleet, path: Path, lines: dict, invalid_hosts: set[str] = frozenset()) -> list[str]:
    problems = []
    for gname, members in fleet.groups.items():
        unknown = [h for h in members if h not in fleet.hosts and h not in invalid_hosts]
        if unknown:
            problems.append(f"{path}:{_line_for(lines, ('groups', gname))}: groups.{gname}: unknown host(s) {', '.join(unknown)};"
                            f" fix: use hosts from hosts: ({', '.join(fleet.hosts)})")
    used: dict[tuple[str, str, int, str], str] = {}
    for name, svc in fleet.services.items():
        def at(*f: str, name: str = name) -> str:
            return f"{path}:{_line_for(lines, ('services', name) + f)}"

        where = "host" if svc.host else "hosts" if svc.hosts else "group"
        if svc.group and svc.group not in fleet.groups:
            problems.append(f"{at('group')}: services.{name}.group: no group {svc.group!r}; fix: define it under groups:"
                            f" ({', '.join(fleet.groups) or 'none defined'})")
            continue
        placed = fleet.hosts_of(name)
        if not placed and svc.group:
            problems.append(f"{at('group')}: services.{name}.group: group {svc.group!r} has no hosts; fix: list its hosts")
        unknown = [h for h in placed if h not in fleet.hosts and h not in invalid_hosts]
        if unknown and not svc.group:
            problems.append(
                f"{at(where)}: services.{name}.{where}: unknown host {', '.join(map(repr, unknown))}; fix: use one of"
                f" {', '.join(fleet.hosts)} or add the host under hosts:"
            )
        if svc.gpu_memory_gb and not svc.wants_gpu:
            problems.append(f"{at('gpu_memory_gb')}: services.{name}.gpu_memory_gb: a GPU memory budget on a service with"
                            " gpus: 0; fix: request a GPU or remove gpu_memory_gb")
        if svc.update and svc.update.batches and not fleet.replicated(name):
            problems.append(f"{at('update')}: services.{name}.update: canary and batches need replicas; fix: give hosts: or"
                            " group:, or remove canary/max_parallel")
        problems += _proxy_checks(fleet, name, at)
        for h in (h for h in placed if h in fleet.hosts):
            replica = f"{name}@{h}" if fleet.replicated(name) else name
            bindings = svc.port_bindings()
            if svc.proxy is not None:  # the proxy holds this port on the host for the service
                bindings = [*bindings, (svc.proxy.address, svc.proxy.listen_port, svc.proxy.port, "tcp")]
            for ip, hp, _cp, proto in bindings:
                # Two bindings of one port clash on the same address, or when either takes every address.
                other = next((o for (oh, oip, ohp, op), o in used.items()
                              if (oh, ohp, op) == (h, hp, proto) and (not ip or not oip or ip == oip)), None)
                if other:
                    problems.append(
                        f"{at('ports')}: services.{name}.ports: host port {hp}/{proto} on {h} is"
                        f" already published by service {other!r}; fix: give one of them another host port"
                    )
                used[(h, ip, hp, proto)] = replica
            host = fleet.hosts[h]
            if svc.wants_gpu:
                if host.gpus is None:
                    problems.append(
                        f"{at('gpus')}: services.{name}.gpus: requests a GPU but host {h!r} lists no gpus:"
                        + (f" (replica {replica}); fix: place the service on GPU hosts only" if replica != name
                           else "; fix: set gpus: 0 or move the service to a GPU host")
                    )
                elif svc.gpus != "all" and int(svc.gpus) > host.gpus.count:
                    problems.append(
                        f"{at('gpus')}: services.{name}.gpus: requests {svc.gpus} GPUs but {h!r} has"
                        f" {host.gpus.count}; fix: lower the request"
                    )
        for i, vol in enumerate(svc.volumes):
            problem = contract.host_path_problem(vol.split(":")[0], fleet.defaults.host_paths)
            if problem:
                problems.append(f"{at('volumes', i)}: services.{name}.volumes[{i}]: {problem}; fix: mount a named volume,"
                                " or open the directory in defaults.host_paths if the service must see it")
        if not fleet.on_network(name) and svc.health.port not in [hp for hp, _, _ in svc.port_pairs()]:
            problems.append(
                f"{at('health', 'port')}: services.{name}.health.port: {svc.health.port} is not one of"
                f" the service's published host ports ({', '.join(svc.ports) or 'none'}); fix: publish"
                " it under ports: or point health.port at a published host port"
            )
    return problems


def _proxy_checks(fleet: Fleet, name: str, at) -> list[str]:
    """A service behind the proxy: a proxy named, placed wherever the service runs, and no host port of its own."""
    svc, rp, out = fleet.services[name], fleet.reverse_proxy, []
    order = svc.update.order if svc.update else "auto"
    if order == "start-first" and svc.proxy is None:
        out.append(f"{at('update', 'order')}: services.{name}.update.order: start-first runs the new container beside the"
                   " old one, which cannot take the same host port; fix: put the service behind the proxy (proxy:"
                   " {listen: PORT, port: CONTAINER_PORT}) or use order: stop-first")
    if rp is not None and rp.service == name:
        if svc.proxy is not None:
            out.append(f"{at('proxy')}: services.{name}.proxy: the reverse proxy cannot sit behind itself; fix: remove proxy:")
        if svc.ports:
            out.append(f"{at('ports')}: services.{name}.ports: the proxy publishes the listen ports of the services behind"
                       " it and nothing else; fix: remove ports:")
        if svc.health.port != rp.health_port:
            out.append(f"{at('health', 'port')}: services.{name}.health.port: the proxy answers /health on"
                       f" reverse_proxy.health_port ({rp.health_port}); fix: set health.port: {rp.health_port}")
        return out
    if svc.proxy is None:
        return out
    if rp is None:
        out.append(f"{at('proxy')}: services.{name}.proxy: no reverse_proxy: section names the proxy service; fix: add"
                   " reverse_proxy: {service: NAME} and that service (the fleetroll-proxy image)")
        return out
    if rp.service not in fleet.services:
        return out  # said once, by _reverse_proxy_checks
    if svc.ports:
        out.append(f"{at('ports')}: services.{name}.ports: a service behind the proxy publishes no host port (the proxy"
                   f" holds {svc.proxy.listen}); fix: remove ports:")
    if svc.health.port != svc.proxy.port:
        out.append(f"{at('health', 'port')}: services.{name}.health.port: behind the proxy the gate probes the container"
                   f" itself, on proxy.port ({svc.proxy.port}), not {svc.health.port}; fix: set health.port:"
                   f" {svc.proxy.port}")
    missing = [h for h in fleet.hosts_of(name) if h not in fleet.hosts_of(rp.service)]
    if missing:
        out.append(f"{at('proxy')}: services.{name}.proxy: the proxy {rp.service!r} does not run on {', '.join(missing)};"
                   f" fix: place {rp.service} on every host this service runs on (hosts: or group:)")
    return out


def _reverse_proxy_checks(fleet: Fleet, path: Path, lines: dict) -> list[str]:
    rp = fleet.reverse_proxy
    if rp is None or rp.service in fleet.services:
        return []
    return [f"{path}:{_line_for(lines, ('reverse_proxy', 'service'))}: reverse_proxy.service: no service named"
            f" {rp.service!r}; fix: add it under services: (image fleetroll-proxy) or name an existing one"]


def _observability_checks(fleet: Fleet, path: Path, lines: dict) -> list[str]:
    name = fleet.observability.collector
    at = f"{path}:{_line_for(lines, ('observability', 'collector'))}: observability.collector"
    if name and (name not in fleet.services or not fleet.services[name].ports):
        return [f"{at}: {name!r} is not a service with a published port; fix: name the collector service or remove the key"]
    if name and len(fleet.hosts_of(name)) != 1:
        return [f"{at}: {name!r} runs on {len(fleet.hosts_of(name))} hosts; every container reports to one URL, so the"
                " collector runs on one host: fix: give it host: NAME"]
    return []


def _phase_checks(phases: list[Phase], fleet: Fleet, path: Path, lines: dict, invalid: frozenset | set = frozenset()) -> list[str]:
    problems, seen_phase, owner = [], set(), {}
    for i, ph in enumerate(phases):
        if ph.name in seen_phase:
            problems.append(f"{path}:{_line_for(lines, ('phases', i, 'name'))}: phases[{i}].name: phase {ph.name!r} appears twice; fix: rename one")
        seen_phase.add(ph.name)
        for j, s in enumerate(ph.services):
            ln = _line_for(lines, ("phases", i, "services", j))
            if s in invalid:
                continue  # the service's own errors are reported already
            if s not in fleet.services:
                problems.append(
                    f"{path}:{ln}: phases[{i}].services: {s!r} is not a service in the inventory;"
                    f" fix: add it under services: or remove it from phase {ph.name!r}"
                )
            elif s in owner:
                problems.append(
                    f"{path}:{ln}: phases[{i}].services: {s!r} is already in phase {owner[s]!r};"
                    " fix: a service belongs to exactly one phase"
                )
            owner.setdefault(s, ph.name)
        # Only the batch settings must agree: order and drain are each service's own.
        blocks = {s: fleet.services[s].update for s in ph.services
                  if s in fleet.services and fleet.services[s].update and fleet.services[s].update.batches}
        if ph.update is None and len({json.dumps([u.canary, u.max_parallel]) for u in blocks.values()}) > 1:
            problems.append(f"{path}:{_line_for(lines, ('phases', i, 'name'))}: phases[{i}]: services {', '.join(blocks)} give"
                            f" different update: blocks; a phase rolls in one order: fix: give phase {ph.name!r} its own update:")
    return problems


REPO_INVENTORY = Path(__file__).resolve().parent.parent / "inventory" / "fleet.yml"
REPO_PHASES = REPO_INVENTORY.parent / "phases.yml"
# Where the repository's phases lived before they moved beside fleet.yml: still read for this one
# release when an inventory/ has no phases.yml, with a note saying to move it.
OLD_REPO_PHASES = Path(__file__).resolve().parent / "phases.yml"


def default_phases_path(inventory_path: Path) -> Path:
    """phases.yml beside the inventory, for every inventory alike (the repository's own included).

    Falling back silently to another file would roll out phases the inventory's author never wrote;
    the one exception, for one release, is the repository's old playbooks/phases.yml, said aloud.
    """
    beside = inventory_path.parent / "phases.yml"
    if not beside.exists() and inventory_path.resolve() == REPO_INVENTORY and OLD_REPO_PHASES.exists():
        import sys

        print(f"note: reading {OLD_REPO_PHASES}; phases now live beside the inventory: git mv it to {beside}"
              " (the old place is read for this release only)", file=sys.stderr)
        return OLD_REPO_PHASES
    return beside


def _valid(model: type[BaseModel], value: Any) -> bool:
    try:
        model.model_validate(value)
        return True
    except ValidationError:
        return False


def _partial_fleet(data: dict) -> tuple[Fleet | None, set[str]]:
    """The valid part of an invalid inventory, so its cross-checks still run in the same pass.

    Returns (fleet, names of hosts and services left out for their own errors): checks that
    would only repeat those errors ("unknown host", "not a service") are skipped for them.
    """
    d = dict(data)
    dropped: set[str] = set()
    for section, model in (("hosts", Host), ("services", Service)):
        entries = d.get(section)
        if isinstance(entries, dict):
            keep = {k: v for k, v in entries.items() if _valid(model, v) and contract.NAME_RE.fullmatch(str(k))}
            dropped |= set(entries) - set(keep)
            d[section] = keep
    for _ in range(2):
        try:
            return Fleet.model_validate(d), dropped
        except ValidationError as err:
            bad = {e["loc"][0] for e in err.errors() if e["loc"] and e["loc"][0] not in ("registry", "hosts", "services")}
            if not bad:
                return None, dropped
            for key in bad:
                d.pop(key, None)
    return None, dropped


def _host_checks(fleet: Fleet, path: Path, lines: dict) -> list[str]:
    problems = []
    seen: dict[tuple[str, int], str] = {}
    for name, h in fleet.hosts.items():
        at = f"{path}:{_line_for(lines, ('hosts', name, 'address'))}"
        other = seen.get((h.address, h.port))
        if other:
            problems.append(f"{at}: hosts.{name}.address: {h.address}:{h.port} is also host {other!r}; fix: one entry per"
                            " machine (two names for one sshd would let two rollouts take the same host)")
        seen.setdefault((h.address, h.port), name)
        if h.key_filename and not Path(h.key_filename).expanduser().exists():
            problems.append(f"{path}:{_line_for(lines, ('hosts', name, 'key_filename'))}: hosts.{name}.key_filename: no such file"
                            f" {Path(h.key_filename).expanduser()}; fix: point it at the SSH private key for {h.user}@{h.address}")
    return problems


# --- links from messages to the field reference (docs/inventory.md, python -m playbooks.inventory_doc) ----------

DOC = "docs/inventory.md"
# The placeholder a reference path uses for the keys of a mapping field (default "<name>").
KEY_NAMES = {"env": "<VAR>"}


def field_anchor(path: str) -> str:
    """'services.<name>.health.port' -> 'services-name-health-port': the HTML id of a field in the reference."""
    return path.lower().replace("<", "").replace(">", "").replace("[]", "").replace(".", "-")


def _descend(ann: Any, parts: list, path: str, name: str) -> tuple[Any, str]:
    """Follow a location's mapping keys and list indexes through a field's type: (the model reached or None, its path)."""
    while True:
        if get_origin(ann) is Annotated:
            ann = get_args(ann)[0]
            continue
        origin = get_origin(ann)
        if origin is dict:
            if not parts:
                return None, path
            parts.pop(0)
            path, ann = f"{path}.{KEY_NAMES.get(name, '<name>')}", get_args(ann)[1]
            continue
        if origin is list:
            if not parts or not isinstance(parts[0], int):
                return None, path
            parts.pop(0)
            path, ann = f"{path}[]", get_args(ann)[0]
            continue
        if origin in (Union, types.UnionType):
            models = [a for a in get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
            if models and parts and parts[0] == models[0].__name__:
                parts.pop(0)  # pydantic names the union member it tried
            return (models[0] if models else None), path
        return (ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None), path


def field_path(loc: tuple | list) -> str | None:
    """The reference's path of the deepest field a location names: ('services', 'web', 'health', 'port') ->
    'services.<name>.health.port'; ('phases', 0, 'name') -> 'phases[].name'. None when it names no field."""
    parts = list(loc)
    model: Any = Phases if parts[:1] == ["phases"] else Fleet
    found, prefix = None, ""
    while parts and model is not None:
        part = parts.pop(0)
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            break
        found = prefix + part
        model, at = _descend(field.annotation, parts, found, part)
        prefix = at + "."
    return found


def _loc_of(field: str) -> tuple:
    """'phases[0].services' -> ('phases', 0, 'services'), as a message spells a location."""
    out: list = []
    for part in field.split("."):
        m = re.fullmatch(r"(.*?)((?:\[\d+\])*)", part)
        out.append(m[1])
        out += [int(i) for i in re.findall(r"\[(\d+)\]", m[2])]
    return tuple(out)


def with_link(problem: str, file: Path) -> str:
    """`problem` ("<file>:<line>: <field>: ...") with a link to its field's entry in the reference, when it names one."""
    head = f"{file}:"
    if not problem.startswith(head) or "(see " + DOC in problem:
        return problem
    line, _, rest = problem[len(head):].partition(": ")
    field = rest.split(": ", 1)[0]
    if not line.isdigit() or not re.fullmatch(r"[\w.\-'\[\]]+", field):
        return problem
    path = field_path(_loc_of(field))
    return f"{problem} (see {DOC}#{field_anchor(path)})" if path else problem


def load(path: str | Path, phases_path: str | Path | None = None) -> Inventory:
    """Read and validate an inventory and its phases; raise InventoryError listing every problem, all in one pass."""
    path = Path(path)
    ppath = Path(phases_path) if phases_path else default_phases_path(path)
    data, lines = _read_yaml(path)
    problems: list[str] = list(lines.pop(("__duplicates__",), []))
    dropped: set[str] = set()
    try:
        fleet: Fleet | None = Fleet.model_validate(data)
    except ValidationError as err:
        problems += _explain(path, lines, err)
        fleet, dropped = _partial_fleet(data)
    if fleet is not None:
        problems += (_cross_checks(fleet, path, lines, dropped) + _observability_checks(fleet, path, lines)
                     + _reverse_proxy_checks(fleet, path, lines)
                     + _host_checks(fleet, path, lines))
    phases: list[Phase] | None = None
    if not ppath.exists():
        problems.append(f"{ppath}: no phases file beside the inventory {path}; fix: write one (the shape of"
                        f" {REPO_PHASES}) — fleetroll does not fall back to the repository's phases for your inventory")
    else:
        try:
            pdata, plines = _read_yaml(ppath)
        except InventoryError as exc:
            raise InventoryError(problems + exc.problems) from None
        problems += plines.pop(("__duplicates__",), [])
        try:
            phases = Phases.model_validate(pdata).phases
        except ValidationError as err:
            problems += _explain(ppath, plines, err)
        if phases is not None and fleet is not None:
            problems += _phase_checks(phases, fleet, ppath, plines, dropped)
    if problems or fleet is None or phases is None:
        raise InventoryError([with_link(p, ppath if p.startswith(f"{ppath}:") else path) for p in problems]
                             or [f"{path}: not a valid inventory"])
    return Inventory(fleet=fleet, phases=phases, path=path, phases_path=ppath)
