"""The agent's registry client (http.client, no requests): token challenge, redirects, digest — against a server in this process."""

from __future__ import annotations

import hashlib
import json
import threading
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
                    return self.send(404)
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


def test_missing_tag_and_unreachable_registry_are_named(registry):
    with pytest.raises(RegistryError) as exc:
        RegistryClient(insecure=True).digest(f"{registry}/acme/svc:nosuch")
    assert exc.value.kind == "missing"
    with pytest.raises(RegistryError) as exc:
        RegistryClient(insecure=True, timeout=1).digest("127.0.0.1:9/acme/svc:20261126-abcdef0")
    assert exc.value.kind == "unreachable" and "Connection refused" in str(exc.value)
