"""The collector without an image: validation, authentication, storage, and the real waitress server in-process.

What the security issue found, each held here: anyone could post for any service and host;
an SBOM under a second digest was lost; slow connections each held a thread; a 4,000-package
SPDX cost seconds of CPU; a deeply nested body dropped the connection.
"""

from __future__ import annotations

import base64
import gzip
import importlib.util
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agent import container_args, secrets

ROOT = Path(__file__).resolve().parent.parent


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


collector = _module("frl_collector", ROOT / "services/fleetroll-collector/collector.py")
sbom_gen = _module("frl_sbom_gen", ROOT / "families/sbom_gen.py")
emit = _module("frl_emit", ROOT / "families/emitter/emit.py")

FLEET = "lab-fleet-report-secret-0123456789"
DIGEST = "sha256:" + "ab" * 32


def spdx(tmp_path: Path, packages: int) -> bytes:
    root = tmp_path / f"root{packages}"
    (root / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/status").write_text("\n\n".join(
        f"Package: pkg{i}\nStatus: install ok installed\nVersion: 1.{i}\nArchitecture: amd64" for i in range(packages)))
    return json.dumps(sbom_gen.sbom(root, "probe", "1")).encode()


def report(sbom: bytes, host="pc2", service="hello-pc2", digest=DIGEST, git_sha="a1b2c3d4e5f6a7b8", **extra) -> bytes:
    return json.dumps({"host": host, "service": service, "git_sha": git_sha, "image_digest": digest,
                       "started_at": "2026-11-26T12:00:00Z", "sbom_encoding": "gzip+base64",
                       "sbom": base64.b64encode(gzip.compress(sbom)).decode(), **extra}).encode()


def signed(body: bytes, host="pc2", service="hello-pc2", digest=DIGEST) -> str:
    return collector.sign(secrets.report_key(FLEET, host, service, digest), body)


@pytest.fixture(scope="module")
def small_sbom(tmp_path_factory) -> bytes:
    return spdx(tmp_path_factory.mktemp("sbom"), 5)


# --- the key: one derivation on both sides --------------------------------------------------


def test_agent_and_collector_derive_the_same_key_and_it_binds_every_claim():
    k = secrets.report_key(FLEET, "pc2", "hello-pc2", DIGEST)
    assert k == collector.report_key(FLEET, "pc2", "hello-pc2", DIGEST)
    others = {secrets.report_key(FLEET, "mainpc", "hello-pc2", DIGEST), secrets.report_key(FLEET, "pc2", "hello-mainpc", DIGEST),
              secrets.report_key(FLEET, "pc2", "hello-pc2", "sha256:" + "cd" * 32), secrets.report_key("other-fleet-secret!", "pc2",
                                                                                                      "hello-pc2", DIGEST)}
    assert k not in others and len(others) == 4
    # no field boundary can be shifted: ("pc2x", "y") and ("pc2", "xy") differ
    assert secrets.report_key(FLEET, "pc2x", "y", DIGEST) != secrets.report_key(FLEET, "pc2", "xy", DIGEST)


def test_the_agent_resolves_a_report_key_from_the_env_it_created_and_records_only_the_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEETROLL_SECRETS_DIR", str(tmp_path))
    (tmp_path / "fleetroll-report-key").write_text(FLEET + "\n")
    (tmp_path / "fleetroll-report-key").chmod(0o600)
    if (tmp_path / "fleetroll-report-key").stat().st_uid != 0:
        pytest.skip("secret files must be root-owned; run as root")
    spec = {"name": "hello-pc2", "env": {"FLEETROLL_HOST": "pc2", "FLEETROLL_SERVICE": "hello-pc2",
                                         "FLEETROLL_REPORT_KEY": {"report_key": "fleetroll-report-key"}}}
    args = container_args.from_spec(spec, "img", {"io.fleetroll.digest": DIGEST})
    env = secrets.resolve(args["env"])
    assert env["FLEETROLL_REPORT_KEY"] == secrets.report_key(FLEET, "pc2", "hello-pc2", DIGEST)
    # what `docker inspect` would show, turned back into create args: the key is a reference again
    attrs = {"Config": {"Env": [f"{k}={v}" for k, v in env.items()], "Labels": args["labels"]}, "HostConfig": {}}
    back = container_args.from_inspect(attrs)
    assert back["env"]["FLEETROLL_REPORT_KEY"] == {"report_key": "fleetroll-report-key"}
    assert FLEET not in json.dumps(back) and env["FLEETROLL_REPORT_KEY"] not in json.dumps(back)
    assert container_args.redacted(back, b"k")["env"]["FLEETROLL_REPORT_KEY"] == {"report_key": "fleetroll-report-key"}
    del args["env"]["FLEETROLL_IMAGE_DIGEST"]
    with pytest.raises(secrets.SecretError, match="FLEETROLL_IMAGE_DIGEST"):
        secrets.resolve(args["env"])


def test_the_emitter_signs_what_the_collector_verifies(monkeypatch, small_sbom):
    body = report(small_sbom)
    seen = {}

    class Answer:
        status = 201

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    def fake_urlopen(req, timeout):
        seen.update(req.headers, body=req.data)
        return Answer()

    monkeypatch.setattr(emit.urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setenv("FLEETROLL_REPORT_KEY", secrets.report_key(FLEET, "pc2", "hello-pc2", DIGEST))
    emit.post("http://collector/v1/startup", body)
    rec, _ = collector.decode(seen["body"], seen["X-fleetroll-signature"], FLEET)
    assert rec["service"] == "hello-pc2"


# --- validation, cheapest first --------------------------------------------------------------


def test_unsigned_and_wrongly_signed_reports_are_refused_before_the_sbom_is_read(small_sbom, monkeypatch):
    monkeypatch.setattr(collector, "decode_sbom", lambda rec: pytest.fail("SBOM decoded before authentication"))
    body = report(small_sbom)
    with pytest.raises(collector.Unauthorized, match="X-Fleetroll-Signature"):
        collector.decode(body, None, FLEET)
    # a container of hello-mainpc signs a report that claims to be hello-pc2
    with pytest.raises(collector.Unauthorized, match="only report for itself"):
        collector.decode(body, signed(body, host="mainpc", service="hello-mainpc"), FLEET)
    # the right key for another digest
    with pytest.raises(collector.Unauthorized):
        collector.decode(body, signed(body, digest="sha256:" + "00" * 32), FLEET)
    # a signature over another body (a replayed header on a changed report)
    with pytest.raises(collector.Unauthorized):
        collector.decode(body, signed(report(small_sbom, git_sha="ffffffff")), FLEET)


@pytest.mark.parametrize("field,value,reason", [
    ("host", "h" * 64, "field host"), ("host", "pc2\n", "field host"), ("service", "Hello World", "field service"),
    ("git_sha", "abc", "field git_sha"), ("git_sha", "a1b2c3d4e5f6a7b8\n", "field git_sha"),
    ("image_digest", "sha256:xyz", "field image_digest"), ("started_at", "yesterday", "field started_at"),
    ("started_at", "2026-11-26T12:00:00Z" + "\x1b[2J", "field started_at"),
])
def test_fields_are_capped_in_length_and_alphabet(small_sbom, field, value, reason):
    body = report(small_sbom, **{field: value})
    with pytest.raises(collector.Bad, match=reason) as err:
        collector.decode(body, signed(body), FLEET)
    assert err.value.status == 400


def test_a_deeply_nested_body_is_a_400_not_a_dropped_connection():
    body = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    with pytest.raises(collector.Bad, match="nested too deeply"):
        collector.decode(body, None, FLEET)


def test_too_many_packages_are_refused_before_spdx_validation(tmp_path, monkeypatch):
    monkeypatch.setattr(collector, "spdx_problems", lambda doc: pytest.fail("SPDX validated past the package cap"))
    big = spdx(tmp_path, collector.MAX_PACKAGES + 1)
    body = report(big)
    with pytest.raises(collector.Bad, match=f"{collector.MAX_PACKAGES + 1} packages, over the limit"):
        collector.decode(body, signed(body), FLEET)


def test_a_valid_signed_report_passes_and_junk_sbom_says_why(small_sbom):
    body = report(small_sbom)
    rec, sbom = collector.decode(body, signed(body), FLEET)
    assert rec["host"] == "pc2" and sbom == small_sbom
    junk = report(b'{"hello": "world"}')
    with pytest.raises(collector.Bad, match="SPDX"):
        collector.decode(junk, signed(junk), FLEET)


# --- storage: keyed by (digest, reported git SHA) --------------------------------------------


def test_sboms_are_kept_per_digest_and_sha_and_the_first_one_stays(tmp_path, small_sbom):
    store = collector.Store(str(tmp_path / "c.db"))
    other = small_sbom.replace(b'"probe-1"', b'"probe-2"')
    assert other != small_sbom
    store.add({"host": "pc2", "service": "s", "git_sha": "1111111", "image_digest": DIGEST, "started_at": "t"}, small_sbom)
    store.add({"host": "pc2", "service": "s", "git_sha": "1111111", "image_digest": DIGEST, "started_at": "t"}, other)
    store.add({"host": "pc2", "service": "s", "git_sha": "2222222", "image_digest": DIGEST, "started_at": "t"}, other)
    assert store.sbom(DIGEST, "1111111") == small_sbom  # a later report cannot replace it
    assert store.sbom(DIGEST, "2222222") == other  # nor is a second SHA lost
    assert store.sbom_shas(DIGEST) == ["1111111", "2222222"]


# --- the real server ---------------------------------------------------------------------------


def start(tmp_path, **limits):
    """The collector's own server (make_server) in this process on a free port; returns (base url, port, server)."""
    store = collector.Store(str(tmp_path / "c.db"))
    opts = {"threads": 2, "channel_timeout": 2, "request_deadline": 3, "per_client": 1000, **limits}
    srv = collector.make_server(collector.make_app(store, FLEET), "127.0.0.1", 0, **opts)
    threading.Thread(target=srv.run, daemon=True).start()
    return f"http://127.0.0.1:{srv.effective_port}", srv.effective_port, srv


@pytest.fixture
def server(tmp_path):
    base, port, srv = start(tmp_path)
    yield base, port
    srv.close()


def closed_by_server(socks: list[socket.socket], within: float) -> int:
    deadline = time.monotonic() + within
    closed = 0
    for s in socks:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            closed += s.recv(1) == b""
        except ConnectionResetError:
            closed += 1
        except TimeoutError:
            pass
    return closed


def call(url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 20):
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_server_round_trip_auth_and_sbom_choices(server, small_sbom):
    base, _ = server
    b1 = report(small_sbom, git_sha="1111111")
    assert call(base + "/v1/startup", b1)[0] == 401
    assert call(base + "/v1/startup", b1, {"X-Fleetroll-Signature": signed(b1)}) == (201, {"stored": True})
    code, doc = call(f"{base}/v1/sbom/{DIGEST}")
    assert code == 200 and doc["spdxVersion"] == "SPDX-2.3"
    b2 = report(small_sbom, git_sha="2222222")
    assert call(base + "/v1/startup", b2, {"X-Fleetroll-Signature": signed(b2)})[0] == 201
    code, ans = call(f"{base}/v1/sbom/{DIGEST}")
    assert code == 300 and ans["choices"] == [f"/v1/sbom/{DIGEST}/1111111", f"/v1/sbom/{DIGEST}/2222222"]
    assert call(f"{base}/v1/sbom/{DIGEST}/2222222")[0] == 200
    assert call(f"{base}/v1/sbom/not-a-digest")[0] == 400
    assert [r["git_sha"] for r in call(base + "/v1/services")[1]["services"]] == ["2222222"]
    code, ans = call(base + "/v1/startup", b'{"a":' * 50_000 + b"}" * 50_000)
    assert code == 400 and "nested" in ans["error"]
    code, ans = call(base + "/v1/startup", b"x" * (collector.MAX_BODY + 1))
    assert code == 400 and "limit" in ans["error"]


def test_slow_senders_hold_no_worker_and_are_cut_off_while_honest_ones_are_served(server, small_sbom):
    base, port = server
    threads_before = threading.active_count()
    slow = []
    for _ in range(150):  # slowloris: a request line and one header, then silence
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/startup HTTP/1.1\r\nHost: x\r\n")
        slow.append(s)
    try:
        assert threading.active_count() == threads_before  # the old server made a thread per connection
        for i in range(10):  # honest senders get through while 150 connections stall
            b = report(small_sbom, service=f"honest-{i}")
            assert call(base + "/v1/startup", b, {"X-Fleetroll-Signature": signed(b, service=f"honest-{i}")}, timeout=10)[0] == 201
        # the stalled ones are closed by the server once the idle timeout passes
        assert closed_by_server(slow, 15) == len(slow)
    finally:
        for s in slow:
            s.close()


def test_a_trickling_sender_is_cut_off_at_the_request_deadline(tmp_path):
    base, port, srv = start(tmp_path, channel_timeout=30)  # never idle long enough for the idle timeout
    try:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/startup HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        cut = False
        while time.monotonic() - t0 < 15 and not cut:
            try:
                s.sendall(b"X-Pad: a\r\n")  # one header line every 0.5 s: always active, never complete
                s.settimeout(0.5)
                cut = s.recv(1) == b""
            except TimeoutError:
                continue
            except OSError:
                cut = True
        assert cut, "the trickling request was never cut off"
        s.close()
    finally:
        srv.close()


def test_connections_per_client_are_capped_and_the_extra_ones_told_so(tmp_path, small_sbom):
    base, port, srv = start(tmp_path, per_client=5)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    try:
        time.sleep(0.3)  # accepted by the event loop
        extra = socket.create_connection(("127.0.0.1", port))
        extra.settimeout(5)
        assert extra.recv(100).startswith(b"HTTP/1.1 503")
        extra.close()
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    b = report(small_sbom)
    assert call(base + "/v1/startup", b, {"X-Fleetroll-Signature": signed(b)})[0] == 201  # room again once they left
    srv.close()
