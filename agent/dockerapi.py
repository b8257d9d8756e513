"""A docker-SDK-shaped client over the Engine API (agent/engine.py): exactly the calls the agent makes, no more.

The transaction, the container operations and the tests' fake daemon (tests/fakedocker.py)
share one shape — `client.containers.get/list`, `container.rename/stop/start/update/remove/
reload/attrs/logs/exec_run`, `client.images.get/pull/list/remove`, `image.tag`,
`client.api.create_host_config/create_container`, `client.networks.list/create` — the shape
of the docker SDK, whose import this replaces (see engine.py for why). Errors are
agent/docker_errors.py's, with the daemon's own message as `explanation`.

`host_config` and `container_config` are pure and produce the JSON the SDK's
`create_host_config`/`create_container` sent for the same keyword arguments
(tests/test_engine_client_unit.py compares them), so a container is created as before.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from typing import Any, NamedTuple

from .docker_errors import APIError, NotFound
from .engine import Engine, Stream


def _q(ref: str) -> str:
    """A container or image reference as a path segment (slashes and colons as the SDK sent them)."""
    return urllib.parse.quote(ref, safe="/:")


# --- create configuration (pure) ----------------------------------------------------------


def _port_binding(binding: Any) -> dict[str, str]:
    """8001 -> HostPort 8001; ('127.0.0.1', 8001) -> HostIp and HostPort, as the SDK converts them."""
    if isinstance(binding, tuple):
        ip, port = (binding if len(binding) == 2 else ("", binding[0]))
        return {"HostIp": str(ip or ""), "HostPort": "" if port is None else str(port)}
    return {"HostIp": "", "HostPort": "" if binding is None else str(binding)}


def _bind(src: str, v: Any) -> str:
    if isinstance(v, str):
        return f"{src}:{v}:rw"
    mode = ("ro" if v["ro"] else "rw") if "ro" in v else (v.get("mode") or "rw")
    return f"{src}:{v['bind']}:{mode}"


def host_config(binds: dict[str, dict] | list[str] | None = None, port_bindings: dict[str, Any] | None = None,
                restart_policy: dict | None = None, device_requests: list[dict] | None = None,
                network_mode: str | None = None, mounts: list[dict] | None = None) -> dict[str, Any]:
    """The Engine API's HostConfig for the keyword arguments container_args.api_kwargs gives (pure)."""
    out: dict[str, Any] = {"NetworkMode": network_mode or "default"}
    if restart_policy:
        out["RestartPolicy"] = restart_policy
    if binds is not None:
        out["Binds"] = list(binds) if isinstance(binds, list) else [_bind(k, v) for k, v in binds.items()]
    if mounts is not None:  # the secret files' directory (container_args.api_kwargs), as the Engine API takes it
        out["Mounts"] = [dict(m) for m in mounts]
    if port_bindings is not None:
        out["PortBindings"] = {(k if "/" in str(k) else f"{k}/tcp"): [_port_binding(b) for b in (v if isinstance(v, list) else [v])]
                               for k, v in port_bindings.items()}
    if device_requests is not None:
        out["DeviceRequests"] = [{"Driver": r.get("driver", r.get("Driver")) or "",
                                  "Count": r.get("count", r.get("Count")) or 0,
                                  "DeviceIDs": r.get("device_ids", r.get("DeviceIDs")) or [],
                                  "Capabilities": r.get("capabilities", r.get("Capabilities")) or [],
                                  "Options": r.get("options", r.get("Options")) or {}} for r in device_requests]
    return out


def container_config(image: str, user: str | None = None, environment: dict[str, str] | list[str] | None = None,
                     ports: list[Any] | None = None, labels: dict[str, str] | None = None, stop_timeout: int | None = None,
                     host_config: dict | None = None) -> dict[str, Any]:
    """The body of POST /containers/create for a detached container (pure); null fields are left out, as the SDK did."""
    exposed = None
    if ports is not None:
        exposed = {}
        for p in ports:
            port, proto = (p if isinstance(p, tuple) else (p, "tcp"))
            exposed[f"{port}/{proto}"] = {}
    env = [f"{k}={v}" for k, v in environment.items()] if isinstance(environment, dict) else environment
    body = {"ExposedPorts": exposed, "User": None if user is None else str(user), "Tty": False, "OpenStdin": False,
            "StdinOnce": False, "AttachStdin": False, "AttachStdout": True, "AttachStderr": True, "Env": env,
            "Image": image, "NetworkDisabled": False, "HostConfig": host_config, "Labels": labels, "StopTimeout": stop_timeout}
    return {k: v for k, v in body.items() if v is not None}


# --- the object model ---------------------------------------------------------------------


class ExecResult(NamedTuple):
    exit_code: int | None
    output: Any  # bytes, or (stdout, stderr) with demux


def _demux(stream: Stream, tty: bool) -> tuple[bytes, bytes]:
    if tty:
        return b"".join(stream.chunks()), b""
    out, err = [], []
    for kind, payload in stream.frames():
        (err if kind == 2 else out).append(payload)
    return b"".join(out), b"".join(err)


class LogChunks:
    """A log read as it comes (chunks of bytes); `cut()` from another thread ends a follow that waits for a line."""

    def __init__(self, s: Stream, tty: bool):
        self.s, self.tty = s, tty

    def __iter__(self) -> Iterator[bytes]:
        with self.s:
            if self.tty:
                yield from self.s.chunks()
            else:
                for _, payload in self.s.frames():
                    yield payload

    def cut(self) -> None:
        self.s.cut()


class Container:
    def __init__(self, client: DockerClient, attrs: dict[str, Any]):
        self.client, self.attrs = client, attrs

    @property
    def engine(self) -> Engine:
        return self.client.engine

    @property
    def id(self) -> str:
        return self.attrs.get("Id", "")

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def name(self) -> str:
        return (self.attrs.get("Name") or "").lstrip("/")

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.attrs.get("Config") or {}).get("Labels") or {})

    @property
    def status(self) -> str:
        return (self.attrs.get("State") or {}).get("Status", "")

    def _path(self, what: str = "") -> str:
        return f"/containers/{_q(self.id)}{what}"

    def reload(self) -> None:
        self.attrs = self.engine.call("GET", self._path("/json"))

    def start(self) -> None:
        self.engine.call("POST", self._path("/start"))

    def stop(self, timeout: int = 10) -> None:
        """Docker waits up to `timeout` seconds for the process to exit before it kills it; the call waits that long more."""
        self.engine.call("POST", self._path("/stop"), {"t": int(timeout)}, timeout=self.engine.timeout + timeout)

    def rename(self, name: str) -> None:
        self.engine.call("POST", self._path("/rename"), {"name": name})

    def update(self, restart_policy: dict | None = None) -> None:
        body = {"RestartPolicy": restart_policy} if restart_policy is not None else {}
        self.engine.call("POST", self._path("/update"), body=body)

    def pause(self) -> None:
        self.engine.call("POST", self._path("/pause"))

    def unpause(self) -> None:
        self.engine.call("POST", self._path("/unpause"))

    def remove(self, force: bool = False) -> None:
        self.engine.call("DELETE", self._path(), {"v": False, "link": False, "force": force})

    def logs(self, stdout: bool = True, stderr: bool = True, stream: bool = False, timestamps: bool = False,
             tail: int | str = "all", since: int | float | None = None, follow: bool | None = None):
        """The container's output: bytes, or with `stream` an iterator of chunks as they come (until `follow` ends)."""
        query: dict[str, Any] = {"stdout": stdout, "stderr": stderr, "timestamps": timestamps, "tail": tail,
                                 "follow": bool(follow) if follow is not None else stream}
        if since:
            query["since"] = f"{since:.6f}" if isinstance(since, float) else int(since)
        tty = bool((self.attrs.get("Config") or {}).get("Tty"))
        s = self.engine.open("GET", self._path("/logs"), query)
        if stream:
            return LogChunks(s, tty)
        with s:  # stdout and stderr interleaved, as they came
            return b"".join(s.chunks()) if tty else b"".join(payload for _, payload in s.frames())

    def exec_run(self, cmd: list[str], user: str = "", demux: bool = False) -> ExecResult:
        """Run `cmd` (argv, no shell) in the container as `user` ("" = the container's own) and wait for it to end."""
        created = self.engine.call("POST", self._path("/exec"), body={
            "User": user, "Privileged": False, "Tty": False, "AttachStdin": False, "AttachStdout": True,
            "AttachStderr": True, "Cmd": list(cmd)})
        eid = created["Id"]
        with self.engine.open("POST", f"/exec/{_q(eid)}/start", body={"Detach": False, "Tty": False}) as s:
            out, err = _demux(s, False)
        code = (self.engine.call("GET", f"/exec/{_q(eid)}/json") or {}).get("ExitCode")
        return ExecResult(code, (out or None, err or None) if demux else out + err)


class Containers:
    def __init__(self, client: DockerClient):
        self.client = client

    def get(self, ref: str) -> Container:
        return Container(self.client, self.client.engine.call("GET", f"/containers/{_q(ref)}/json"))

    def list(self, all: bool = False, filters: dict[str, Any] | None = None) -> list[Container]:  # noqa: A002 - the SDK's name
        """Each listed container, inspected; one removed between the list and its inspect is not there."""
        listed = self.client.engine.call("GET", "/containers/json", {"all": all, "filters": _filters(filters)}) or []
        out = []
        for c in listed:
            try:
                out.append(self.get(c["Id"]))
            except NotFound:
                continue
        return out


def _filters(filters: dict[str, Any] | None) -> dict[str, list[str]] | None:
    """{"label": "a"} or {"label": ["a", "b=c"]} as the Engine API's filters (every value a list)."""
    if not filters:
        return None
    return {k: [v] if isinstance(v, str) else list(v) for k, v in filters.items()}


class Image:
    def __init__(self, client: DockerClient, attrs: dict[str, Any]):
        self.client, self.attrs = client, attrs

    @property
    def id(self) -> str:
        return self.attrs.get("Id", "")

    @property
    def tags(self) -> list[str]:
        return [t for t in self.attrs.get("RepoTags") or [] if t != "<none>:<none>"]

    def tag(self, repository: str, tag: str) -> bool:
        self.client.engine.call("POST", f"/images/{_q(self.id)}/tag", {"repo": repository, "tag": tag}, image=True)
        return True


def _registry_auth(repository: str) -> dict[str, str]:
    """{"X-Registry-Auth": …} for the repository's registry when the agent user has a docker login there, else {}.

    A credential helper that is missing or fails is an APIError naming it (docker pull fails the same way).
    """
    from . import registry_auth

    try:  # 'nginx' or 'org/img' is Docker Hub's, whose login is under https://index.docker.io/v1/
        creds = registry_auth.lookup(registry_auth.registry_of(repository)).creds
    except registry_auth.AuthError as exc:
        raise APIError(f"no credentials to pull {repository}: {exc}", None) from None
    return {"X-Registry-Auth": creds.x_registry_auth()} if creds else {}


class Images:
    def __init__(self, client: DockerClient):
        self.client = client

    def get(self, ref: str) -> Image:
        return Image(self.client, self.client.engine.call("GET", f"/images/{_q(ref)}/json", image=True))

    def pull(self, repository: str, tag: str) -> Image:
        """Pull `repository` at `tag` (a sha256 digest pulls by digest) and return it; an error line in the progress raises.

        Docker answers 200 as soon as the pull starts and reports a failure later, as a JSON
        line with "error" in the progress stream: that line is the APIError's explanation.
        The agent user's docker login for the registry goes along as X-Registry-Auth (as the SDK sent it).
        """
        headers = _registry_auth(repository)
        with self.client.engine.open("POST", "/images/create", {"fromImage": repository, "tag": tag}, image=True,
                                     headers=headers) as s:
            for line in s.lines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("error"):
                    detail = event.get("errorDetail") or {}
                    raise APIError(str(event["error"]), int(detail.get("code") or 500))
        return self.get(f"{repository}{'@' if tag.startswith('sha256:') else ':'}{tag}")

    def list(self) -> list[Image]:
        """Every image, inspected (one removed meanwhile is not there)."""
        out = []
        for summary in self.client.engine.call("GET", "/images/json") or []:
            try:
                out.append(self.get(summary["Id"]))
            except NotFound:
                continue
        return out

    def remove(self, image: str, force: bool = False) -> None:
        """Untag `image` (a name), or delete it when no other name holds it; 409 if a container uses it."""
        self.client.engine.call("DELETE", f"/images/{_q(image)}", {"force": force, "noprune": False}, image=True)


class Network:
    def __init__(self, attrs: dict[str, Any]):
        self.attrs = attrs

    @property
    def name(self) -> str:
        return self.attrs.get("Name", "")

    @property
    def id(self) -> str:
        return self.attrs.get("Id", "")


class Networks:
    def __init__(self, client: DockerClient):
        self.client = client

    def list(self, names: list[str] | None = None) -> list[Network]:
        """Networks by exact name (Docker's own name filter also matches a part of a name)."""
        listed = self.client.engine.call("GET", "/networks", {"filters": {"name": list(names)} if names else None}) or []
        return [Network(n) for n in listed if not names or n.get("Name") in names]

    def create(self, name: str, driver: str = "bridge", labels: dict[str, str] | None = None) -> Network:
        made = self.client.engine.call("POST", "/networks/create", body={
            "Name": name, "Driver": driver, "Labels": labels or {}, "CheckDuplicate": True})
        return Network({"Id": (made or {}).get("Id", ""), "Name": name})


class LowLevelAPI:
    """`client.api`: creating a container from container_args.api_kwargs (the SDK's low-level names)."""

    def __init__(self, client: DockerClient):
        self.client = client

    @staticmethod
    def create_host_config(**kw: Any) -> dict[str, Any]:
        return host_config(**kw)

    def create_container(self, image: str, name: str | None = None, host_config: dict | None = None, **kw: Any) -> dict:
        """POST /containers/create; {"Id": …, "Warnings": […]}. A missing image is ImageNotFound, a taken name APIError 409."""
        return self.client.engine.call("POST", "/containers/create", {"name": name},
                                       body=container_config(image, host_config=host_config, **kw))


class DockerClient:
    """The local daemon, as the docker SDK's DockerClient offered it to the agent."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.containers = Containers(self)
        self.images = Images(self)
        self.networks = Networks(self)
        self.api = LowLevelAPI(self)
