"""The agent's registry client (agent/http1.py, no requests): token challenge, redirects, digest — against a server in this process."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.registry import RegistryClient, RegistryError

MANIFEST = json.dumps({"schemaVersion": 2, "config": {"digest": "sha256:" + "c" * 64}}).encode()
CONFIG = json.dumps({"config": {"User": "10001:10001", "Entrypoint": ["/usr/bin/tini", "--"], "Labels": {"a": "b"}}}).encode()
seen: list[tuple[str, str]] = []


class Blobs(BaseHTTPRequestHandler):
    """Another host the registry redirects blob reads to (as registries do to object storage)."""

    def do_GET(self):  # noqa: N802
        seen.append(("blobs", self.headers.get("Authorization") or ""))
        self.send_response(200)
        self.send_header("Content-Length", str(len(CONFIG)))
        self.end_headers()
        self.wfile.write(CONFIG)

    def log_message(self, *a):
        pass


def registry_handler(blob_port: int):
    class Registry(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def send(self, code: int, body: bytes = b"", **headers: str):
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k.replace("_", "-"), v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            if self.path.startswith("/token"):
                return self.send(200, json.dumps({"token": "t0k"}).encode())
            if self.headers.get("Authorization") != "Bearer t0k":
                port = self.server.server_address[1]
                return self.send(401, WWW_Authenticate=f'Bearer realm="http://127.0.0.1:{port}/token",service="reg"')
            if "/manifests/" in self.path:
                if self.path.endswith("/nosuch"):
                    return self.send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')
                if "/acme/typo/" in self.path:  # as the Docker registry answers for a repository it does not have
                    return self.send(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known"}]}')
                return self.send(200, MANIFEST, Content_Type="application/vnd.oci.image.manifest.v1+json")  # no digest header
            if "/blobs/" in self.path:
                return self.send(307, Location=f"http://127.0.0.1:{blob_port}/storage/blob")
            return self.send(404)

        def log_message(self, *a):
            pass

    return Registry


@pytest.fixture
def registry():
    blobs = ThreadingHTTPServer(("127.0.0.1", 0), Blobs)
    reg = ThreadingHTTPServer(("127.0.0.1", 0), registry_handler(blobs.server_address[1]))
    for srv in (blobs, reg):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{reg.server_address[1]}"
    for srv in (blobs, reg):
        srv.shutdown()


def test_inspect_takes_a_token_computes_the_digest_and_keeps_credentials_off_other_hosts(registry):
    seen.clear()
    info = RegistryClient(insecure=True).inspect(f"{registry}/acme/svc:20261126-abcdef0")
    assert info.digest == "sha256:" + hashlib.sha256(MANIFEST).hexdigest()  # computed: the registry sent no header
    assert info.user == "10001:10001" and info.entrypoint == ["/usr/bin/tini", "--"] and info.labels == {"a": "b"}
    assert seen == [("blobs", "")]  # the bearer token did not follow the redirect to the storage host


def test_a_config_the_host_already_holds_is_not_fetched_and_the_digest_still_comes_from_the_registry(registry):
    seen.clear()
    asked: list[str] = []
    local = {"User": "0:0", "Entrypoint": ["/local"], "Labels": {"from": "docker"}}

    def holds(digest: str) -> dict | None:
        asked.append(digest)
        return local

    info = RegistryClient(insecure=True).inspect(f"{registry}/acme/svc:20261126-abcdef0", local_config=holds)
    assert asked == ["sha256:" + "c" * 64] and seen == []  # the manifest's config digest; no blob read
    assert info.digest == "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
    assert (info.user, info.entrypoint, info.labels) == ("0:0", ["/local"], {"from": "docker"})
    info = RegistryClient(insecure=True).inspect(f"{registry}/acme/svc:20261126-abcdef0", local_config=lambda d: None)
    assert seen == [("blobs", "")] and info.user == "10001:10001"  # not held: read from the registry as before


def test_missing_tag_and_unreachable_registry_are_named(registry):
    with pytest.raises(RegistryError) as exc:
        RegistryClient(insecure=True).digest(f"{registry}/acme/svc:nosuch")
    assert exc.value.kind == "missing" and "no such tag" in str(exc.value)
    # a misspelled image (or org) is said to be one: it was told to fix its tag (exploratory run)
    with pytest.raises(RegistryError) as exc:
        RegistryClient(insecure=True).inspect(f"{registry}/acme/typo:20261126-abcdef0")
    assert exc.value.kind == "missing" and str(exc.value).endswith(f": no repository acme/typo in registry {registry}")
    with pytest.raises(RegistryError) as exc:
        RegistryClient(insecure=True, timeout=1).digest("127.0.0.1:9/acme/svc:20261126-abcdef0")
    assert exc.value.kind == "unreachable" and "Connection refused" in str(exc.value)


# --- a private registry: its token service wants the docker login (HTTP Basic) ----------------------------

LOGIN = "Basic " + base64.b64encode(b"bot:pa55").decode()


def private_handler():
    class Private(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        send = registry_handler(0).send

        def do_GET(self):  # noqa: N802
            port = self.server.server_address[1]
            if self.path.startswith("/token"):
                if self.headers.get("Authorization") != LOGIN:
                    return self.send(401, WWW_Authenticate='Basic realm="token"')
                return self.send(200, json.dumps({"token": "priv"}).encode())
            if self.headers.get("Authorization") != "Bearer priv":
                return self.send(401, WWW_Authenticate=f'Bearer realm="http://127.0.0.1:{port}/token",service="reg"')
            return self.send(200, MANIFEST, Content_Type="application/vnd.oci.image.manifest.v1+json",
                             Docker_Content_Digest="sha256:" + "e" * 64)

        def do_POST(self):  # noqa: N802 - OAuth2 refresh with an identity token
            form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
            ok = form.get("grant_type") == "refresh_token" and form.get("refresh_token") == "idtok" and form.get("scope")
            return self.send(200, json.dumps({"access_token": "priv"}).encode()) if ok else self.send(401)

        def log_message(self, *a):
            pass

    return Private


@pytest.fixture
def private():
    reg = ThreadingHTTPServer(("127.0.0.1", 0), private_handler())
    threading.Thread(target=reg.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{reg.server_address[1]}"
    reg.shutdown()


def config(tmp_path, host: str, entry: dict, mode: int = 0o600) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {f"https://{host}/v1/": entry}}))
    os.chmod(path, mode)
    return str(path)


def test_a_private_registry_is_read_with_the_docker_login(private, tmp_path):
    ref = f"{private}/example-org/svc:20261126-abcdef0"
    path = config(tmp_path, private, {"auth": base64.b64encode(b"bot:pa55").decode()})
    assert RegistryClient(insecure=True, auth_config=path).digest(ref) == "sha256:" + "e" * 64
    token = config(tmp_path, private, {"identitytoken": "idtok"})
    assert RegistryClient(insecure=True, auth_config=token).digest(ref) == "sha256:" + "e" * 64


def test_a_private_registry_without_a_login_is_denied_saying_what_to_do(private, tmp_path):
    ref = f"{private}/example-org/svc:20261126-abcdef0"
    with pytest.raises(RegistryError) as exc:
        RegistryClient(insecure=True, auth_config=str(tmp_path / "none.json")).digest(ref)
    assert exc.value.kind == "denied"
    assert str(exc.value) == (f"{ref}: registry {private} refused anonymous access (HTTP 401); if the image is private,"
                              f" log in as the agent's user on this host: docker login {private}")
    ignored = config(tmp_path, private, {"auth": base64.b64encode(b"bot:pa55").decode()}, mode=0o646)
    with pytest.raises(RegistryError, match=r"refused anonymous access .* ignored: writable by group or others") as exc:
        RegistryClient(insecure=True, auth_config=ignored).digest(ref)
    assert "pa55" not in str(exc.value)


def test_refused_credentials_are_denied_naming_the_registry_and_the_config(private, tmp_path):
    ref = f"{private}/example-org/svc:20261126-abcdef0"
    path = config(tmp_path, private, {"username": "bot", "password": "wrong-pw"})
    with pytest.raises(RegistryError) as exc:
        RegistryClient(insecure=True, auth_config=path).inspect(ref)
    assert exc.value.kind == "denied"
    assert str(exc.value) == (f"registry {private} refused the credentials in {path} (its token service answered HTTP 401);"
                              f" log in again as the agent's user on this host: docker login {private}")
    assert "wrong-pw" not in str(exc.value)


def test_an_ignored_config_is_a_warning_in_the_image_facts(registry, tmp_path):
    path = config(tmp_path, registry, {"username": "bot", "password": "pa55"}, mode=0o666)
    info = RegistryClient(insecure=True, auth_config=path).inspect(f"{registry}/acme/svc:20261126-abcdef0")
    assert info.warnings == [f"registry credentials in {path} ignored: writable by group or others (mode 0666);"
                             f" fix: chmod go-w {path}"]


# --- a 401 from a host a redirect led to: its realm never gets the registry's login ------------------------

asked: list[tuple[str, str, str]] = []  # path, Authorization, body: what the other host was sent


class Elsewhere(BaseHTTPRequestHandler):
    """A host the registry redirects to (a CDN, a mirror) that answers 401 with a Bearer realm of its own."""

    protocol_version = "HTTP/1.1"
    send = registry_handler(0).send

    def record(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        asked.append((self.path.split("?")[0], self.headers.get("Authorization") or "", body))

    def do_GET(self):  # noqa: N802
        self.record()
        if self.path.startswith("/token"):
            return self.send(200, json.dumps({"token": "stolen"}).encode())
        port = self.server.server_address[1]
        return self.send(401, WWW_Authenticate=f'Bearer realm="http://127.0.0.1:{port}/token",service="cdn"')

    def do_POST(self):  # noqa: N802
        self.record()
        return self.send(200, json.dumps({"access_token": "stolen"}).encode())

    def log_message(self, *a):
        pass


def redirecting_handler(to_port: int):
    class Redirecting(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        send = registry_handler(0).send

        def do_GET(self):  # noqa: N802
            return self.send(307, Location=f"http://127.0.0.1:{to_port}/storage{self.path}")

        def log_message(self, *a):
            pass

    return Redirecting


@pytest.fixture
def redirecting():
    other = ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    reg = ThreadingHTTPServer(("127.0.0.1", 0), redirecting_handler(other.server_address[1]))
    for srv in (other, reg):
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"127.0.0.1:{reg.server_address[1]}", f"127.0.0.1:{other.server_address[1]}"
    for srv in (other, reg):
        srv.shutdown()


@pytest.mark.parametrize("entry", [{"auth": base64.b64encode(b"bot:pa55").decode()}, {"identitytoken": "idtok"}])
def test_a_challenge_from_a_redirect_target_never_gets_the_registry_login(redirecting, tmp_path, entry):
    """Basic credentials or an identity token for the registry must not reach a realm another host names."""
    reg, other = redirecting
    ref = f"{reg}/example-org/svc:20261126-abcdef0"
    asked.clear()
    with pytest.raises(RegistryError) as exc:
        RegistryClient(insecure=True, auth_config=config(tmp_path, reg, entry)).digest(ref)
    assert asked == [("/storage/v2/example-org/svc/manifests/20261126-abcdef0", "", "")]  # its realm was never asked
    assert exc.value.kind == "denied"
    assert str(exc.value) == (f"{ref}: registry {reg} redirected to http://{other}, which refused access (HTTP 401);"
                              f" the login for {reg} is not sent to another host")


def test_an_https_registry_login_is_not_sent_to_a_plain_http_token_realm(tmp_path):
    """A realm on http:// would carry the login in clear text: refused, saying so; an anonymous token request may go."""
    path = config(tmp_path, "reg.example", {"auth": base64.b64encode(b"bot:pa55").decode()})
    client = RegistryClient(timeout=1, auth_config=path)  # https
    with pytest.raises(RegistryError) as exc:
        client._authorize("reg.example", 'Bearer realm="http://127.0.0.1:9/token?sig=x",service="reg"', "acme/svc")
    assert exc.value.kind == "denied"
    assert str(exc.value) == (f"registry reg.example is https but its token service is not (http://127.0.0.1:9): the"
                              f" login in {path} is not sent there in clear text; fix the registry's token realm to https")
    assert "pa55" not in str(exc.value) and "sig=x" not in str(exc.value)
    anonymous = RegistryClient(timeout=1, auth_config=str(tmp_path / "none.json"))
    assert anonymous._authorize("reg.example", 'Bearer realm="http://127.0.0.1:9/token"', "acme/svc") is None  # refused port



def test_a_registry_late_once_is_asked_again_on_a_fresh_connection_and_answers():
    """A timeout mid-request must not leave that connection kept: the retry a late registry gets went out on it and
    failed at once with CannotSendRequest('Request-sent') (seen at 100 hosts as 'did not answer: Request-sent')."""
    import time

    from agent import facts

    blobs = ThreadingHTTPServer(("127.0.0.1", 0), Blobs)
    base = registry_handler(blobs.server_address[1])
    late = {"left": 1}

    class LateOnce(base):
        def do_GET(self):  # noqa: N802
            if "/manifests/" in self.path and late["left"]:
                late["left"] -= 1
                time.sleep(1.5)  # past the client's 1 s timeout
            return super().do_GET()

    reg = ThreadingHTTPServer(("127.0.0.1", 0), LateOnce)
    for srv in (blobs, reg):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        ref = f"127.0.0.1:{reg.server_address[1]}/acme/svc:20261126-abcdef0"
        out = facts.images([ref], insecure=True, timeout=1.0)
    finally:
        for srv in (blobs, reg):
            srv.shutdown()
    assert late["left"] == 0, "the first request was the late one"
    assert out[ref]["ok"], out


def test_a_token_post_is_not_repeated_to_another_origin_and_a_reset_connect_is_tried_again():
    """A 307 from the token realm to another host would repeat the form, refresh token and all (in clear text if the
    other host is http): the redirect is the answer instead. A connection reset while connecting (a balancer
    dropping one handshake of a fleet-wide preflight) gets the one retry a dropped kept-alive connection gets."""
    got: list[bytes] = []

    class Elsewhere(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            got.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    other = ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)

    class Realm(Elsewhere):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{other.server_address[1]}/collect")
            self.send_header("Content-Length", "0")
            self.end_headers()

    realm = ThreadingHTTPServer(("127.0.0.1", 0), Realm)
    for srv in (other, realm):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        client = RegistryClient(insecure=True, timeout=2)
        r = client._request(f"http://127.0.0.1:{realm.server_address[1]}/token", {}, body=b"refresh_token=SECRET")
        assert r.status_code == 307 and got == []
        tries = []
        real = client._connect

        def reset_once(u):
            tries.append(u.netloc)
            if len(tries) == 1:
                raise ConnectionResetError(104, "Connection reset by peer")
            return real(u)

        client._connect = reset_once
        assert client._request(f"http://127.0.0.1:{other.server_address[1]}/x", {}, body=b"a=1").status_code == 200
        assert len(tries) == 2 and got == [b"a=1"]
    finally:
        for srv in (other, realm):
            srv.shutdown()
            srv.server_close()


def test_a_registry_that_answers_but_not_in_http_is_a_bad_answer_not_an_unreachable_one():
    """Something listens at the address (an SSH server, a TLS port asked in plain HTTP): the fix is the address, not the network."""
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def speak_ssh() -> None:
        conn, _ = srv.accept()
        conn.recv(4096)
        conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
        conn.close()

    threading.Thread(target=speak_ssh, daemon=True).start()
    with pytest.raises(RegistryError) as exc:
        RegistryClient(insecure=True, timeout=2).digest(f"127.0.0.1:{srv.getsockname()[1]}/acme/svc:20261126-abcdef0")
    srv.close()
    assert exc.value.kind == "bad-answer" and "not as an HTTP registry" in str(exc.value) and "SSH-2.0" in str(exc.value)
