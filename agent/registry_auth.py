"""Registry credentials from the Docker client config of the agent's user, as `docker login` left them.

Why: operators log in once per host (`docker login ghcr.io` as the SSH user the agent runs
as) and expect every pull and registry query to use that login, as the docker SDK did. The
agent reads `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`) on each call and
keeps nothing: no credential is copied, logged, journalled or put in an answer, and every
message here names only the registry, the config file and the helper.

The file is a credential file, so it is opened with O_NOFOLLOW and must be this user's own
and not writable by group or others; otherwise it is ignored and `Lookup.warning` says why
(preflight shows it). A `credHelpers`/`credsStore` entry runs `docker-credential-<name> get`
with the registry on stdin (no shell, a timeout), as the docker CLI does.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat

HELPER_TIMEOUT = 15.0
_NOT_FOUND = "credentials not found"  # what docker-credential-* print when they hold nothing for the server
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
INDEX_SERVER = "https://index.docker.io/v1/"  # the key `docker login` (no argument) stores Docker Hub's login under
_HUB_NAMES = {"", "docker.io", "index.docker.io", "registry-1.docker.io"}


class AuthError(Exception):
    """The config names a credential helper that is missing or failed; the message names it and what to do."""


class Credentials:
    """A login for one registry; `source` says where it came from (a path or a helper), never what it is.

    A plain class, not a dataclass: `dataclasses` imports `inspect` (~5 ms of every agent call's start,
    and every preflight reads the registry). Immutable, compared by value, secrets kept out of its repr.
    """

    __slots__ = ("serveraddress", "username", "password", "identitytoken", "source")

    def __init__(self, serveraddress: str, username: str = "", password: str = "", identitytoken: str = "", source: str = ""):
        for name, value in zip(self.__slots__, (serveraddress, username, password, identitytoken, source), strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Credentials are read-only ({name})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Credentials are read-only ({name})")

    def __reduce__(self) -> tuple:  # copy, deepcopy and pickle: made anew through __init__
        return (Credentials, self._key())

    def _key(self) -> tuple[str, ...]:
        return tuple(getattr(self, n) for n in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Credentials) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Credentials(serveraddress={self.serveraddress!r}, username={self.username!r}, source={self.source!r})"

    def basic(self) -> str | None:
        """The HTTP Basic header value for a token request, or None for an identity token (OAuth2 refresh) login."""
        if not self.username or not self.password:
            return None
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    def x_registry_auth(self) -> str:
        """The Engine API's X-Registry-Auth header: base64url of the JSON auth config."""
        body = ({"identitytoken": self.identitytoken, "serveraddress": self.serveraddress} if self.identitytoken
                else {"username": self.username, "password": self.password, "serveraddress": self.serveraddress})
        return base64.urlsafe_b64encode(json.dumps(body).encode()).decode()


class Lookup:
    """What the config says for one registry: credentials or None, the config's path, and why it was ignored if it was.

    A plain class, as Credentials: a NamedTuple would import typing into every agent call.
    """

    __slots__ = ("creds", "path", "warning")

    def __init__(self, creds: Credentials | None, path: str, warning: str = "") -> None:
        self.creds, self.path, self.warning = creds, path, warning


def config_path(env: dict[str, str] | None = None) -> str:
    """Where the docker CLI of this user keeps its config: $DOCKER_CONFIG/config.json, else ~/.docker/config.json."""
    env = os.environ if env is None else env
    base = env.get("DOCKER_CONFIG") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".docker")
    return os.path.join(base, "config.json")


def read_config(path: str) -> tuple[dict, str]:
    """(config, warning): {} and "" when there is none; {} and a warning when it is not to be trusted or not JSON."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return {}, ""
    except OSError as exc:
        return {}, f"registry credentials in {path} ignored: cannot open it ({exc.strerror}); a symlink is not followed"
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        euid = os.geteuid()
        if not stat.S_ISREG(st.st_mode):
            return {}, f"registry credentials in {path} ignored: not a regular file"
        if st.st_uid != euid:
            return {}, (f"registry credentials in {path} ignored: owned by uid {st.st_uid}, not the agent's user (uid {euid});"
                        f" fix: chown {euid} {path}")
        if st.st_mode & 0o022:
            return {}, (f"registry credentials in {path} ignored: writable by group or others (mode"
                        f" {stat.S_IMODE(st.st_mode):04o}); fix: chmod go-w {path}")
        data = f.read(1 << 20)
    try:
        cfg = json.loads(data)
    except ValueError:
        return {}, f"registry credentials in {path} ignored: not JSON; fix it or log in again (docker login)"
    return (cfg, "") if isinstance(cfg, dict) else ({}, f"registry credentials in {path} ignored: not a JSON object")


def hostname(key: str) -> str:
    """Docker's ConvertToHostname: 'https://ghcr.io/v1/' and 'ghcr.io' both name ghcr.io."""
    for scheme in ("http://", "https://"):
        if key.startswith(scheme):
            key = key[len(scheme):]
    return key.split("/", 1)[0]


def registry_of(repository: str) -> str:
    """The registry a repository name pulls from, by Docker's rule: 'nginx' and 'org/img' are Docker Hub's (docker.io).

    The first component is a registry only when it has a '.' or ':', is 'localhost', or is not all lowercase
    (as Docker's splitDockerDomain reads it); otherwise the name is on Docker Hub.
    """
    first, sep, _ = repository.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        return first
    return "docker.io"


def auth_key(host: str) -> str:
    """The config key a registry's login is under: Docker Hub's names all mean INDEX_SERVER, as the docker CLI keys them.

    Why: `docker login` stores the Hub login as 'https://index.docker.io/v1/', so a lookup of 'docker.io'
    (or of no host at all) would find nothing and pull anonymously. Every other registry is its own key.
    """
    return INDEX_SERVER if host.lower() in _HUB_NAMES else host


def _from_auths(auths: dict, host: str, path: str) -> Credentials | None:
    """The `auths` entry for host: the exact key first, then any key whose host part is host (as Docker matches)."""
    entry = auths.get(host)
    if not isinstance(entry, dict):
        entry = next((v for k, v in auths.items() if isinstance(v, dict) and hostname(k) == host), None)
    if not entry:
        return None
    user, password = str(entry.get("username") or ""), str(entry.get("password") or "")
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(str(entry["auth"])).decode().partition(":")
        except ValueError:
            raise AuthError(f"registry {host}: the `auth` entry in {path} is not base64 of user:password;"
                            f" log in again: docker login {host}") from None
    token = str(entry.get("identitytoken") or "")
    if not token and not (user and password):
        return None
    return Credentials(host, user, password, token, path)


def from_helper(name: str, host: str, path: str, timeout: float = HELPER_TIMEOUT) -> Credentials | None:
    """Ask docker-credential-<name> (found on PATH) for host's login; None when it holds none."""
    prog = f"docker-credential-{name}"
    if not _HELPER_NAME.fullmatch(name):
        raise AuthError(f"registry {host}: credential helper name {name!r} in {path} is not a plain name; fix {path}")
    hint = f"install {prog} on the agent's PATH or remove it from {path}, then docker login {host}"
    import subprocess  # here: only a config naming a helper needs it, and every preflight imports this module

    try:
        r = subprocess.run([prog, "get"], input=host.encode(), capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise AuthError(f"registry {host}: credential helper {prog} (named in {path}) is not on the agent's PATH; {hint}") from None
    except subprocess.TimeoutExpired:
        raise AuthError(f"registry {host}: credential helper {prog} (named in {path}) did not answer within"
                        f" {timeout:.0f} s; check it works for this user: echo {host} | {prog} get") from None
    except OSError as exc:
        raise AuthError(f"registry {host}: credential helper {prog} (named in {path}) could not run: {exc.strerror}; {hint}") from None
    if r.returncode != 0:
        if _NOT_FOUND in (r.stdout + r.stderr).decode(errors="replace").lower():
            return None
        raise AuthError(f"registry {host}: credential helper {prog} (named in {path}) failed (exit {r.returncode});"
                        f" check it for this user: echo {host} | {prog} get")
    try:
        got = json.loads(r.stdout)
        user, secret = str(got["Username"]), str(got["Secret"])
    except (ValueError, KeyError, TypeError):
        raise AuthError(f"registry {host}: credential helper {prog} (named in {path}) gave no Username/Secret JSON;"
                        f" check it: echo {host} | {prog} get") from None
    if user == "<token>":  # the helpers' convention for an identity token
        return Credentials(host, "", "", secret, f"{prog} ({path})")
    return Credentials(host, user, secret, "", f"{prog} ({path})") if user and secret else None


def lookup(host: str, path: str | None = None) -> Lookup:
    """Credentials for registry `host` ('ghcr.io', 'reg:5000', 'docker.io'): credHelpers, then credsStore, then auths.

    Docker Hub is looked up under INDEX_SERVER (auth_key); a credHelpers entry is keyed by the key's host
    part ('index.docker.io' for the Hub) and the helper is asked for the key, as the docker CLI does.
    Raises AuthError when a helper the config names is missing or fails (as `docker pull` does).
    """
    path = path or config_path()
    host = auth_key(host)
    cfg, warning = read_config(path)
    helpers = cfg.get("credHelpers")
    helper = helpers.get(hostname(host)) if isinstance(helpers, dict) else None
    helper = helper or cfg.get("credsStore")
    creds = None
    if helper:
        creds = from_helper(str(helper), host, path)
    if creds is None and isinstance(cfg.get("auths"), dict):
        creds = _from_auths(cfg["auths"], host, path)
    return Lookup(creds, path, warning)
