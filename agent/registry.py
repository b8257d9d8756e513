"""Ask a registry about an image without pulling it (OCI distribution API).

Preflight must know, from the host, whether every tag a phase needs exists, what digest
it names, and what its config says (user, entrypoint, labels) — before anything is
pulled or stopped. A HEAD/GET of the manifest and a GET of the small config blob answer
all of that in two or three requests, where a pull could move gigabytes.

A private registry (ghcr.io for a private org) is asked with the login `docker login` left
for the agent's user (agent/registry_auth.py): its token service gets HTTP Basic
credentials, and a refusal is kind "denied" naming the registry and the config file.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable

from . import http1, registry_auth
from .digests import sha256

TYPE_CHECKING = False  # importing typing costs every agent call ~2.5 ms; Any is only ever an annotation here
if TYPE_CHECKING:
    from typing import Any

ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}


class RegistryError(Exception):
    """kind is one of: unreachable, missing, denied, bad-answer."""

    def __init__(self, kind: str, message: str):
        self.kind = kind
        super().__init__(message)


class ImageInfo:
    """What the registry says of one image: its digest and the config fields preflight and the plan read.

    A plain class, not a dataclass: `dataclasses` imports `inspect`, ~5 ms of every agent call's start.
    """

    FIELDS = ("ref", "digest", "user", "entrypoint", "cmd", "labels", "warnings")

    def __init__(self, ref: str, digest: str, user: str = "", entrypoint: list[str] | None = None, cmd: list[str] | None = None,
                 labels: dict[str, str] | None = None, warnings: list[str] | None = None):
        self.ref, self.digest, self.user = ref, digest, user
        self.entrypoint, self.cmd = list(entrypoint or []), list(cmd or [])
        self.labels = dict(labels or {})
        self.warnings = list(warnings or [])  # e.g. a credential file ignored (preflight shows it)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageInfo) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"ImageInfo({self.ref!r}, {self.digest!r})"

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in self.FIELDS}


def split_ref(ref: str) -> tuple[str, str, str]:
    """'reg:5000/org/img:tag' -> ('reg:5000', 'org/img', 'tag')."""
    m = re.fullmatch(r"(?P<host>[^/]+)/(?P<repo>[^:@]+)(:(?P<tag>[^@]+))?(@(?P<digest>.+))?", ref)
    if not m or not (m["tag"] or m["digest"]):
        raise RegistryError("bad-answer", f"image reference {ref!r} is not HOST/REPO:TAG")
    return m["host"], m["repo"], m["digest"] or m["tag"]


class Response:
    """The little of an HTTP answer the registry code reads (requests' names, without importing requests)."""

    def __init__(self, status: int, headers: dict[str, str], content: bytes, url: str = ""):
        self.status_code, self.headers, self.content = status, headers, content
        self.url = url  # where the answer came from, after redirects: whose challenge a 401 carries

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    def json(self) -> Any:
        return json.loads(self.content)


class RegistryClient:
    """Registry API v2 over agent/http1.py: keep-alive per host, bearer tokens (with the user's docker login), redirects.

    Not requests (~0.1 s of imports per agent call) nor http.client (~14 ms): preflight asks on every host.
    `auth_config` is the Docker client config to read logins from (None: the agent user's own).
    """

    def __init__(self, insecure: bool = False, timeout: float = 5.0, auth_config: str | None = None):
        self.scheme = "http" if insecure else "https"
        self.timeout = timeout
        self.auth_config = auth_config
        self.conns: dict[tuple[str, str], http1.Connection] = {}
        self.tokens: dict[tuple[str, str], str] = {}  # (host, repo) -> the Authorization header that worked
        self.logins: dict[str, registry_auth.Lookup | RegistryError] = {}
        self._config_warning: str | None = None

    def _request(self, url: str, headers: dict[str, str], redirects: int = 3, body: bytes | None = None) -> Response:
        u = urllib.parse.urlsplit(url)
        key = (u.scheme, u.netloc)
        for attempt in (1, 2):  # a kept-alive connection the server closed: once more on a fresh one
            conn = self.conns.get(key)
            if conn is not None and not conn.reusable:
                conn.close()
                conn = None
            try:
                if conn is None:
                    conn = self.conns[key] = self._connect(u)
                r = conn.request("GET" if body is None else "POST", (u.path or "/") + (f"?{u.query}" if u.query else ""),
                                 headers, body)
                content = r.read()
                break
            except (http1.Disconnected, BrokenPipeError, ConnectionResetError):
                # (also a reset while connecting: a load balancer dropping one handshake of a fleet-wide preflight)
                if conn is not None:
                    conn.close()
                self.conns.pop(key, None)
                if attempt == 2:
                    raise
            except BaseException:
                # A timeout (or anything else) mid-request leaves the connection waiting for an answer that may never
                # come: kept, the next request on it would read that late answer as its own, so the one retry a late
                # registry gets (facts._inspect_once_more_if_late) is made on a fresh connection.
                if conn is not None:
                    conn.close()
                self.conns.pop(key, None)
                raise
        if r.will_close:
            conn.close()
            self.conns.pop(key, None)
        hdrs = {k.title(): v for k, v in r.getheaders()}
        if r.status in http1.REDIRECTS and redirects and hdrs.get("Location"):
            nxt = urllib.parse.urljoin(url, hdrs["Location"])
            if http1.origin(nxt) != http1.origin(url):  # credentials never follow to another host, port or scheme
                if body is not None and r.status in (307, 308):
                    # A token POST's form carries the refresh token: not repeated to another origin (an https realm
                    # redirecting to http would put it in clear text); the redirect is the answer, no token is got.
                    return Response(r.status, hdrs, content, url)
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            # 307 and 308 repeat the request as it was (a token POST stays a POST); the others become a GET.
            return self._request(nxt, headers, redirects - 1, body if r.status in (307, 308) else None)
        return Response(r.status, hdrs, content, url)

    def _connect(self, u: urllib.parse.SplitResult) -> http1.Connection:
        """A connection to the URL's host; TLS (imported only then) verified against the system's CAs for https."""
        if u.scheme not in ("http", "https") or not u.hostname:
            raise http1.ProtocolError(f"not an http(s) URL: {u.geturl()[:120]!r}")
        try:
            port = u.port or (443 if u.scheme == "https" else 80)
        except ValueError:
            raise http1.ProtocolError(f"not a port in {u.netloc!r}") from None
        sock = http1.tcp_socket(u.hostname, port, self.timeout)
        try:
            if u.scheme == "https":
                import ssl

                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=u.hostname)
            return http1.Connection(sock, u.netloc.rpartition("@")[2])  # never a URL's user:password in the Host header
        except BaseException:
            sock.close()
            raise

    def _get(self, host: str, repo: str, path: str, accept: str | None = None) -> Response:
        url = f"{self.scheme}://{host}/v2/{repo}/{path}"
        headers = {"Accept": accept} if accept else {}
        auth = self.tokens.get((host, repo))
        if auth:
            headers["Authorization"] = auth
        try:
            r = self._request(url, headers)
            # Only the registry's own 401 is answered: one from a host a redirect led to (a CDN serving a blob)
            # must not get this registry's login at the realm it names, and is returned as it is.
            if r.status_code == 401 and not auth and http1.origin(r.url) == http1.origin(url):
                auth = self._authorize(host, r.headers.get("Www-Authenticate", ""), repo)
                if auth:
                    self.tokens[(host, repo)] = auth
                    headers["Authorization"] = auth
                    r = self._request(url, headers)
        except ValueError as exc:  # a redirect to a URL that cannot be sent (http1 refuses control characters)
            raise RegistryError("bad-answer", f"registry {host}: {_short(exc)}") from exc
        except http1.ProtocolError as exc:  # it answered, but not as an HTTP/1.x server (or sent us to a non-http URL)
            raise RegistryError("bad-answer", f"registry {host} answered, but not as an HTTP registry: {_short(exc)}") from exc
        except OSError as exc:
            raise RegistryError("unreachable", f"registry {host} did not answer: {_short(exc)}") from exc
        return r

    def login(self, host: str) -> registry_auth.Lookup:
        """The agent user's docker login for host, read once per client; a broken credential helper is "denied"."""
        if host not in self.logins:
            try:
                self.logins[host] = registry_auth.lookup(host, self.auth_config)
            except registry_auth.AuthError as exc:
                self.logins[host] = RegistryError("denied", str(exc))
        got = self.logins[host]
        if isinstance(got, RegistryError):
            raise got
        return got

    def config_warning(self) -> str:
        """Why the credential file is ignored, if it is (shown by preflight even when no login was needed)."""
        if self._config_warning is None:
            self._config_warning = registry_auth.read_config(self.auth_config or registry_auth.config_path())[1]
        return self._config_warning

    def _authorize(self, host: str, challenge: str, repo: str) -> str | None:
        """The Authorization header a 401's challenge asks for: a bearer token (with the login if any), or Basic.

        Public registries (ghcr.io among them) hand anonymous pull tokens; with a docker login the
        token service gets HTTP Basic credentials (or an identity token, OAuth2-style), and its 401
        means the login itself was refused.
        """
        creds = self.login(host).creds
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            return creds.basic() if creds else None
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", None)
        if scheme != "bearer" or not realm:
            return None
        params.setdefault("scope", f"repository:{repo}:pull")
        if creds and self.scheme == "https" and urllib.parse.urlsplit(realm).scheme.lower() != "https":
            raise RegistryError("denied", f"registry {host} is https but its token service is not"
                                          f" ({_where(realm)}): the login in {creds.source} is not sent there in clear"
                                          " text; fix the registry's token realm to https")
        try:
            if creds and creds.identitytoken:
                form = {**params, "grant_type": "refresh_token", "refresh_token": creds.identitytoken, "client_id": "fleetroll"}
                r = self._request(realm, {"Content-Type": "application/x-www-form-urlencoded"},
                                  body=urllib.parse.urlencode(form).encode())
            else:
                basic = creds.basic() if creds else None
                r = self._request(realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(params),
                                  {"Authorization": basic} if basic else {})
            if creds and r.status_code in (401, 403):
                raise RegistryError("denied", f"registry {host} refused the credentials in {creds.source} (its token service"
                                              f" answered HTTP {r.status_code}); log in again as the agent's user on this"
                                              f" host: docker login {host}")
            body = r.json() if r.ok else {}
            token = body.get("token") or body.get("access_token")
            return f"Bearer {token}" if token else None
        except (OSError, ValueError, AttributeError):
            return None

    def _refused(self, ref: str, host: str, r: Response) -> RegistryError:
        """kind "denied" for a 401/403, saying whose login was used (none, if the refusal came from elsewhere) and what to do."""
        status = r.status_code
        if r.url and http1.origin(r.url) != http1.origin(f"{self.scheme}://{host}/"):
            return RegistryError("denied", f"{ref}: registry {host} redirected to {_where(r.url)}, which refused access"
                                           f" (HTTP {status}); the login for {host} is not sent to another host")
        login = self.login(host)
        if login.creds:
            return RegistryError("denied", f"{ref}: registry {host} refused access (HTTP {status}) with the credentials in"
                                           f" {login.creds.source}; check that login may pull it (docker login {host} as"
                                           " the agent's user on this host)")
        ignored = f"; {login.warning}" if login.warning else ""
        return RegistryError("denied", f"{ref}: registry {host} refused anonymous access (HTTP {status}); if the image is"
                                       f" private, log in as the agent's user on this host: docker login {host}{ignored}")

    def digest(self, ref: str) -> str:
        """What the tag names right now (one manifest GET): the agent's last check before a swap."""
        host, repo, ref_tag = split_ref(ref)
        r = self._get(host, repo, f"manifests/{ref_tag}", ACCEPT)
        if r.status_code == 404:
            raise _missing(ref, host, repo, r.content)
        if r.status_code in (401, 403):
            raise self._refused(ref, host, r)
        if not r.ok:
            raise RegistryError("bad-answer", f"{ref}: registry {host} answered HTTP {r.status_code}")
        return manifest_digest(r.headers.get("Docker-Content-Digest", ""), r.content)

    def inspect(self, ref: str, platform: str = "linux/amd64",
                local_config: Callable[[str], dict[str, Any] | None] | None = None) -> ImageInfo:
        """The tag's digest (always asked of the registry) and its image's config.

        `local_config(config_digest)`: the config as this host's Docker already holds it, or None. Docker's classic
        image store names an image by its config's digest, so an image held under it is the very config the blob
        would be: one registry round trip fewer per image on every preflight of a host already running its release.
        """
        host, repo, ref_tag = split_ref(ref)
        r = self._get(host, repo, f"manifests/{ref_tag}", ACCEPT)
        if r.status_code == 404:
            raise _missing(ref, host, repo, r.content)
        if r.status_code in (401, 403):
            raise self._refused(ref, host, r)
        if not r.ok:
            raise RegistryError("bad-answer", f"{ref}: registry {host} answered HTTP {r.status_code}")
        digest = manifest_digest(r.headers.get("Docker-Content-Digest", ""), r.content)
        manifest = r.json()
        if r.headers.get("Content-Type", "").split(";")[0] in INDEX_TYPES or "manifests" in manifest:
            os_, arch = platform.split("/")
            chosen = next(
                (
                    m
                    for m in manifest.get("manifests", [])
                    if m.get("platform", {}).get("os") == os_
                    and m.get("platform", {}).get("architecture") == arch
                ),
                None,
            )
            if chosen is None:
                raise RegistryError("missing", f"{ref}: no {platform} image in its manifest list")
            r = self._get(host, repo, f"manifests/{chosen['digest']}", ACCEPT)
            if not r.ok:
                raise RegistryError("bad-answer", f"{ref}: manifest {chosen['digest']} HTTP {r.status_code}")
            manifest = r.json()
        config_digest = manifest.get("config", {}).get("digest")
        if not config_digest:
            raise RegistryError("bad-answer", f"{ref}: manifest has no config")
        cfg = local_config(config_digest) if local_config else None
        if cfg is None:
            c = self._get(host, repo, f"blobs/{config_digest}")
            if not c.ok:
                raise RegistryError("bad-answer", f"{ref}: config blob HTTP {c.status_code}")
            cfg = c.json().get("config") or {}
        return ImageInfo(
            ref=ref,
            digest=digest,
            user=cfg.get("User") or "",
            entrypoint=list(cfg.get("Entrypoint") or []),
            cmd=list(cfg.get("Cmd") or []),
            labels=dict(cfg.get("Labels") or {}),
            warnings=[w for w in [self.config_warning()] if w],
        )


def manifest_digest(header: str, body: bytes) -> str:
    """The manifest's digest: the registry's header if it gave one, else sha256 of the exact bytes.

    A registry may omit Docker-Content-Digest (the distribution spec only says SHOULD);
    the digest of the served manifest bytes is by definition the same value, and an empty
    digest would make pull-by-digest and every later comparison meaningless.
    """
    if header.startswith("sha256:"):
        return header
    return "sha256:" + sha256(body).hexdigest()


def _where(url: str) -> str:
    """scheme://host:port of a URL for a message: never its path or query, which may carry a signature."""
    u = urllib.parse.urlsplit(url)
    return f"{u.scheme}://{u.netloc.rpartition('@')[2]}"


def _short(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "timed out", "Name or service not known", "No route to host"):
        if marker in text:
            return marker
    return text[:160]


def _missing(ref: str, host: str, repo: str, body: bytes) -> RegistryError:
    """A 404 for a manifest, in the registry's own words: no such repository (the image's name or the org is wrong)
    or no such tag in it. Found by an exploratory run: a misspelled image was told to fix its tag."""
    try:
        codes = {e.get("code") for e in json.loads(body or b"{}").get("errors") or [] if isinstance(e, dict)}
    except (ValueError, AttributeError):
        codes = set()
    if "NAME_UNKNOWN" in codes:
        return RegistryError("missing", f"{ref}: no repository {repo} in registry {host}")
    return RegistryError("missing", f"{ref}: no such tag in registry {host}")
