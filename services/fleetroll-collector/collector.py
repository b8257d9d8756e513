"""fleetroll-collector: receives start-up reports (git SHA + SPDX SBOM) from every service.

POST /v1/startup           an authenticated report; every bad one is a 400 (401 when the
                           signature does not hold) with the reason, and nothing is stored
GET  /v1/services          latest report per host/service: git SHA, image digest, times
GET  /v1/sbom/<d>          the SBOM of image digest <d> (300 with the choices when reports
                           for <d> named more than one git SHA)
GET  /v1/sbom/<d>/<sha>    the SBOM reported for digest <d> and git SHA <sha>
GET  /health               200 {"status": "ok"} when the database answers

Who may report what. The agent gives each container a key of its own, derived from the
fleet's report secret and the host, service and image digest it started the container
with (agent/secrets.py `report_key`). The sender signs the body with it
(`X-Fleetroll-Signature: sha256=<hmac>`); this collector holds the fleet secret
(COLLECTOR_FLEET_KEY), derives the key from what the body claims and checks the
signature, so a container can report for its own host, service and digest and for
nothing else. The check runs before anything costly (SBOM decoding, SPDX validation).

Why waitress rather than http.server: waitress reads requests on one event loop and hands
only complete requests to a fixed pool of worker threads, so a slow or stalled sender
holds a socket and a small buffer, never a thread; idle connections are closed after
COLLECTOR_READ_TIMEOUT; connections are capped at COLLECTOR_MAX_CONNECTIONS; bodies and
headers have hard limits. http.server has none of these. Added here: at most
COLLECTOR_MAX_PER_CLIENT connections per client address, and a request must arrive whole
within COLLECTOR_REQUEST_DEADLINE of its first byte (a trickling slowloris is cut off).

Records live in SQLite (WAL) under $COLLECTOR_DATA (a volume), so a restart loses nothing.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import hmac
import json
import os
import re
import sqlite3
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable

DATA = os.environ.get("COLLECTOR_DATA", "/data")
BIND = os.environ.get("COLLECTOR_BIND", "0.0.0.0")  # inside its container; the inventory's port binding picks the host address
PORT = int(os.environ.get("COLLECTOR_PORT", "9400"))
MAX_BODY = int(os.environ.get("COLLECTOR_MAX_BODY", str(2 * 1024 * 1024)))
MAX_SBOM = int(os.environ.get("COLLECTOR_MAX_SBOM", str(32 * 1024 * 1024)))
# spdx-tools' validation is superlinear in the package count (4,000 packages cost 14 s of CPU);
# a real image's SBOM has a few hundred.
MAX_PACKAGES = int(os.environ.get("COLLECTOR_MAX_PACKAGES", "1500"))
MAX_RELATIONSHIPS = int(os.environ.get("COLLECTOR_MAX_RELATIONSHIPS", "5000"))
READ_TIMEOUT = float(os.environ.get("COLLECTOR_READ_TIMEOUT", "10"))  # idle connection
REQUEST_DEADLINE = float(os.environ.get("COLLECTOR_REQUEST_DEADLINE", "30"))  # first byte of a request to its last
MAX_CONNECTIONS = int(os.environ.get("COLLECTOR_MAX_CONNECTIONS", "2000"))
MAX_PER_CLIENT = int(os.environ.get("COLLECTOR_MAX_PER_CLIENT", "64"))  # a host's containers share its address
THREADS = int(os.environ.get("COLLECTOR_THREADS", "4"))

REPORT_KEY_CONTEXT = b"fleetroll-report-v1"  # must match agent/secrets.py (a test holds them equal)
SIGNATURE_HEADER = "HTTP_X_FLEETROLL_SIGNATURE"
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
FIELDS: dict[str, re.Pattern] = {
    "host": re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"),
    "service": re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}"),
    "git_sha": re.compile(r"[0-9a-f]{7,64}"),
    "image_digest": DIGEST_RE,
    "started_at": re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)"),
}
MAX_SBOM_FIELD = 4 * MAX_BODY // 3 + 4  # base64 of the largest body that can hold it

SCHEMA = """
CREATE TABLE IF NOT EXISTS startups (
  id INTEGER PRIMARY KEY, host TEXT NOT NULL, service TEXT NOT NULL, git_sha TEXT NOT NULL,
  image_digest TEXT NOT NULL, started_at TEXT NOT NULL, received_at REAL NOT NULL, sbom_sha256 TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS startups_hs ON startups(host, service, id);
CREATE TABLE IF NOT EXISTS sbom_reports (
  image_digest TEXT NOT NULL, git_sha TEXT NOT NULL, sbom_sha256 TEXT NOT NULL, doc BLOB NOT NULL,
  first_host TEXT NOT NULL, first_service TEXT NOT NULL, received_at REAL NOT NULL,
  PRIMARY KEY (image_digest, git_sha));
"""


class Bad(Exception):
    status = 400


class Unauthorized(Bad):
    status = 401


class Store:
    def __init__(self, path: str):
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.lock = threading.Lock()

    def add(self, rec: dict, sbom: bytes) -> None:
        """Record a start-up; the first SBOM for a (digest, git SHA) stays (an image's SBOM cannot change)."""
        sha = hashlib.sha256(sbom).hexdigest()
        now = time.time()
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute("INSERT OR IGNORE INTO sbom_reports VALUES (?,?,?,?,?,?,?)",
                                (rec["image_digest"], rec["git_sha"], sha, gzip.compress(sbom, mtime=0), rec["host"],
                                 rec["service"], now))
                self.db.execute("INSERT INTO startups (host, service, git_sha, image_digest, started_at, received_at, sbom_sha256)"
                                " VALUES (?,?,?,?,?,?,?)",
                                (rec["host"], rec["service"], rec["git_sha"], rec["image_digest"], rec["started_at"], now, sha))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def services(self) -> list[dict]:
        with self.lock:
            rows = self.db.execute(
                "SELECT host, service, git_sha, image_digest, started_at, received_at, sbom_sha256 FROM startups"
                " WHERE id IN (SELECT MAX(id) FROM startups GROUP BY host, service) ORDER BY host, service").fetchall()
        keys = ("host", "service", "git_sha", "image_digest", "started_at", "received_at", "sbom_sha256")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def sbom_shas(self, digest: str) -> list[str]:
        with self.lock:
            return [r[0] for r in self.db.execute(
                "SELECT git_sha FROM sbom_reports WHERE image_digest = ? ORDER BY received_at", (digest,)).fetchall()]

    def sbom(self, digest: str, git_sha: str) -> bytes | None:
        with self.lock:
            row = self.db.execute("SELECT doc FROM sbom_reports WHERE image_digest = ? AND git_sha = ?",
                                  (digest, git_sha)).fetchone()
        return gzip.decompress(row[0]) if row else None

    def ping(self) -> bool:
        with self.lock:
            return self.db.execute("SELECT 1").fetchone() == (1,)


# --- validation (pure) -------------------------------------------------------------------


def report_key(fleet_secret: str, host: str, service: str, digest: str) -> str:
    msg = b"\0".join([REPORT_KEY_CONTEXT, host.encode(), service.encode(), digest.encode()])
    return hmac.new(fleet_secret.encode(), msg, hashlib.sha256).hexdigest()


def sign(key: str, body: bytes) -> str:
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def parse_json(raw: bytes, what: str):
    try:
        return json.loads(raw)
    except RecursionError:
        raise Bad(f"{what} is nested too deeply") from None
    except ValueError:
        raise Bad(f"{what} is not JSON") from None


def check_fields(rec) -> dict:
    """The claimed identity and times, each within its length and alphabet."""
    if not isinstance(rec, dict):
        raise Bad("body must be a JSON object")
    missing = [k for k in (*FIELDS, "sbom") if not isinstance(rec.get(k), str)]
    if missing:
        raise Bad(f"missing or non-string fields: {', '.join(missing)}")
    for name, rx in FIELDS.items():
        if not rx.fullmatch(rec[name]):
            raise Bad(f"field {name} is not valid: it must match {rx.pattern}")
    if len(rec["sbom"]) > MAX_SBOM_FIELD:
        raise Bad("field sbom is longer than the body limit allows")
    if rec.get("sbom_encoding", "gzip+base64") != "gzip+base64":
        raise Bad("sbom_encoding must be gzip+base64")
    return rec


def authenticate(rec: dict, body: bytes, signature: str | None, fleet_secret: str) -> None:
    """The signature must be the body's HMAC under the key of the host, service and digest it claims."""
    if not signature:
        raise Unauthorized("no X-Fleetroll-Signature header: reports must be signed with the container's FLEETROLL_REPORT_KEY")
    want = sign(report_key(fleet_secret, rec["host"], rec["service"], rec["image_digest"]), body)
    if not hmac.compare_digest(want.encode(), signature.strip().encode()):
        raise Unauthorized(f"signature does not match host {rec['host']!r}, service {rec['service']!r} and digest"
                           f" {rec['image_digest'][:19]}…: a container can only report for itself")


def decode_sbom(rec: dict) -> tuple[bytes, dict]:
    try:
        packed = base64.b64decode(rec["sbom"], validate=True)
    except (binascii.Error, ValueError):
        raise Bad("sbom is not valid base64") from None
    try:
        d = zlib.decompressobj(wbits=31)
        sbom = d.decompress(packed, MAX_SBOM + 1)
        if len(sbom) > MAX_SBOM or d.unconsumed_tail:
            raise Bad(f"sbom is larger than {MAX_SBOM} bytes once decompressed")
        if not d.eof:
            raise Bad("sbom is not complete gzip data")
    except zlib.error:
        raise Bad("sbom is not gzip data") from None
    doc = parse_json(sbom, "sbom")
    if not isinstance(doc, dict):
        raise Bad("sbom is not a valid SPDX document: not a JSON object")
    for key, cap in (("packages", MAX_PACKAGES), ("relationships", MAX_RELATIONSHIPS), ("files", MAX_PACKAGES)):
        if isinstance(doc.get(key), list) and len(doc[key]) > cap:
            raise Bad(f"sbom has {len(doc[key])} {key}, over the limit of {cap} (COLLECTOR_MAX_{key.upper()})")
    return sbom, doc


def decode(body: bytes, signature: str | None, fleet_secret: str) -> tuple[dict, bytes]:
    """Validate one report, cheapest checks first; raise Bad with the reason a sender can act on."""
    rec = check_fields(parse_json(body, "body"))
    authenticate(rec, body, signature, fleet_secret)
    sbom, doc = decode_sbom(rec)
    problems = spdx_problems(doc)
    if problems:
        raise Bad("sbom is not a valid SPDX document: " + "; ".join(problems[:3]))
    return rec, sbom


def spdx_problems(doc: dict) -> list[str]:
    from spdx_tools.spdx.parser.error import SPDXParsingError
    from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    try:
        parsed = JsonLikeDictParser().parse(doc)
    except SPDXParsingError as exc:
        return [str(m)[:300] for m in exc.get_messages()][:3] or ["unparseable"]
    except Exception as exc:  # noqa: BLE001 - spdx-tools raises assorted errors on junk
        return [f"{type(exc).__name__}: {exc}"[:200]]
    return [p.validation_message[:300] for p in validate_full_spdx_document(parsed)]


# --- the WSGI application ----------------------------------------------------------------


StartResponse = Callable[..., object]


def make_app(store: Store, fleet_secret: str):
    def send(start_response: StartResponse, code: int, obj) -> Iterable[bytes]:
        body = json.dumps(obj).encode()
        reason = {200: "OK", 201: "Created", 300: "Multiple Choices", 400: "Bad Request", 401: "Unauthorized",
                  404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[code]
        start_response(f"{code} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def get(path: str, start_response: StartResponse) -> Iterable[bytes]:
        if path == "/health":
            ok = store.ping()
            return send(start_response, 200 if ok else 503, {"status": "ok" if ok else "db-unavailable"})
        if path == "/v1/services":
            return send(start_response, 200, {"services": store.services()})
        if path.startswith("/v1/sbom/"):
            digest, _, sha = path.removeprefix("/v1/sbom/").partition("/")
            if not DIGEST_RE.fullmatch(digest) or (sha and not FIELDS["git_sha"].fullmatch(sha)):
                return send(start_response, 400, {"error": "expected /v1/sbom/sha256:<64 hex>[/<git sha>]"})
            if not sha:
                shas = store.sbom_shas(digest)
                if len(shas) > 1:
                    return send(start_response, 300, {"error": f"reports for {digest} name {len(shas)} git SHAs; ask for one",
                                                      "choices": [f"/v1/sbom/{digest}/{s}" for s in shas]})
                sha = shas[0] if shas else ""
            doc = store.sbom(digest, sha) if sha else None
            if doc is None:
                return send(start_response, 404, {"error": "no SBOM for that digest" + (" and git SHA" if sha else "")})
            return send(start_response, 200, json.loads(doc))
        return send(start_response, 404, {"error": "not found"})

    def post(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or "-1")
        except ValueError:
            length = -1
        if length < 0:
            return send(start_response, 400, {"error": "Content-Length is required"})
        if length > MAX_BODY:
            return send(start_response, 400, {"error": f"payload of {length} bytes is over the {MAX_BODY}-byte limit"})
        body = environ["wsgi.input"].read(length)
        try:
            rec, sbom = decode(body, environ.get(SIGNATURE_HEADER), fleet_secret)
        except Bad as exc:
            return send(start_response, exc.status, {"error": str(exc)})
        store.add(rec, sbom)
        return send(start_response, 201, {"stored": True})

    def app(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        if method == "GET":
            return get(path, start_response)
        if method == "POST" and path == "/v1/startup":
            return post(environ, start_response)
        if method == "POST":
            return send(start_response, 404, {"error": "not found"})
        return send(start_response, 405, {"error": f"method {method} is not allowed"})

    return app


def guarded_channel(per_client: int):
    """waitress's channel, plus a cap on connections per client address and the start time of each request."""
    from waitress.channel import HTTPChannel

    busy = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

    class Channel(HTTPChannel):
        request_started = 0.0

        def __init__(self, server, sock, addr, adj, map=None):
            self.client_ip = addr[0] if isinstance(addr, tuple) else str(addr)
            held = sum(1 for ch in server.active_channels.values() if getattr(ch, "client_ip", None) == self.client_ip)
            if held >= per_client:
                # Never registered with the event loop: one short answer, then the socket is gone.
                try:
                    sock.setblocking(False)
                    sock.send(busy)
                except OSError:
                    pass
                sock.close()
                return
            super().__init__(server, sock, addr, adj, map)

        def received(self, data):
            if self.request is None and data:
                self.request_started = time.time()
            return super().received(data)

    return Channel


def make_server(app, host: str, port: int, per_client: int = MAX_PER_CLIENT, request_deadline: float = REQUEST_DEADLINE,
                **overrides):
    """waitress with the collector's limits (tests pass smaller ones).

    On top of waitress's own (idle timeout, connection cap, body and header limits): at most
    `per_client` connections per client address, and a request must arrive whole within
    `request_deadline` seconds of its first byte, so a sender trickling a header line every
    few seconds (slowloris) is cut off rather than kept forever.
    """
    from waitress.server import create_server

    opts = dict(
        threads=THREADS, connection_limit=MAX_CONNECTIONS,
        channel_timeout=READ_TIMEOUT, cleanup_interval=1,
        # waitress answers 413 itself past this; up to it the app gives the 400 with the reason.
        max_request_body_size=2 * MAX_BODY, max_request_header_size=16 * 1024, inbuf_overflow=256 * 1024,
        asyncore_use_poll=True, backlog=1024, expose_tracebacks=False, ident="fleetroll-collector",
        clear_untrusted_proxy_headers=True,
    )
    opts.update(overrides)
    server = create_server(app, host=host, port=port, **opts)
    server.channel_class = guarded_channel(per_client)
    idle_check = server.maintenance

    def maintenance(now: float) -> None:
        idle_check(now)
        cutoff = now - request_deadline
        for ch in list(server.active_channels.values()):
            req = getattr(ch, "request", None)
            if req is not None and not req.completed and 0 < getattr(ch, "request_started", 0) < cutoff:
                ch.will_close = True

    server.maintenance = maintenance
    return server


def main() -> int:
    fleet_secret = os.environ.get("COLLECTOR_FLEET_KEY", "")
    if len(fleet_secret) < 16:
        sys.stderr.write("collector: COLLECTOR_FLEET_KEY is missing or shorter than 16 characters; it must hold the fleet's"
                         " report secret (the inventory's observability.report_key_secret, given as a host-side secret)\n")
        return 2
    os.makedirs(DATA, exist_ok=True)
    store = Store(os.path.join(DATA, "collector.db"))
    sys.stderr.write(f"collector: listening on {BIND}:{PORT}, data in {DATA}, {THREADS} workers, at most {MAX_CONNECTIONS}"
                     f" connections ({MAX_PER_CLIENT} per client), {READ_TIMEOUT:g} s idle timeout, {REQUEST_DEADLINE:g} s per"
                     " request\n")
    make_server(make_app(store, fleet_secret), BIND, PORT).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
