"""fleetroll-collector: receives start-up reports (git SHA + SPDX SBOM) from every service.

POST /v1/startup   validate (size, base64, gzip, JSON, SPDX via spdx-tools) and store;
                   anything malformed gets 400 with the reason and nothing is stored
GET  /v1/services  latest report per host/service: git SHA, image digest, times
GET  /v1/sbom/<d>  the SBOM last reported for image digest <d>
GET  /health       200 {"status": "ok"} when the database answers

Records live in SQLite (WAL) under $COLLECTOR_DATA (a volume), so a restart loses nothing.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import os
import sqlite3
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DATA = os.environ.get("COLLECTOR_DATA", "/data")
PORT = int(os.environ.get("COLLECTOR_PORT", "9400"))
MAX_BODY = int(os.environ.get("COLLECTOR_MAX_BODY", str(2 * 1024 * 1024)))
MAX_SBOM = int(os.environ.get("COLLECTOR_MAX_SBOM", str(32 * 1024 * 1024)))
REQUIRED = ("host", "service", "git_sha", "image_digest", "started_at", "sbom")

SCHEMA = """
CREATE TABLE IF NOT EXISTS startups (
  id INTEGER PRIMARY KEY, host TEXT NOT NULL, service TEXT NOT NULL, git_sha TEXT NOT NULL,
  image_digest TEXT NOT NULL, started_at TEXT NOT NULL, received_at REAL NOT NULL, sbom_sha256 TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS startups_hs ON startups(host, service, id);
CREATE TABLE IF NOT EXISTS sboms (sha256 TEXT PRIMARY KEY, image_digest TEXT NOT NULL, doc BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS sboms_digest ON sboms(image_digest);
"""


class Bad(Exception):
    pass


class Store:
    def __init__(self, path: str):
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.lock = threading.Lock()

    def add(self, rec: dict, sbom: bytes) -> None:
        sha = hashlib.sha256(sbom).hexdigest()
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute("INSERT OR IGNORE INTO sboms VALUES (?,?,?)", (sha, rec["image_digest"], gzip.compress(sbom, mtime=0)))
                self.db.execute("INSERT INTO startups (host, service, git_sha, image_digest, started_at, received_at, sbom_sha256)"
                                " VALUES (?,?,?,?,?,?,?)",
                                (rec["host"], rec["service"], rec["git_sha"], rec["image_digest"], rec["started_at"], time.time(), sha))
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

    def sbom(self, digest: str) -> bytes | None:
        with self.lock:
            row = self.db.execute("SELECT doc FROM sboms WHERE image_digest = ? ORDER BY rowid DESC LIMIT 1", (digest,)).fetchone()
        return gzip.decompress(row[0]) if row else None

    def ping(self) -> bool:
        with self.lock:
            return self.db.execute("SELECT 1").fetchone() == (1,)


def decode(body: bytes) -> tuple[dict, bytes]:
    """Validate one report; raise Bad with the reason a sender can act on."""
    try:
        rec = json.loads(body)
    except ValueError:
        raise Bad("body is not JSON") from None
    if not isinstance(rec, dict):
        raise Bad("body must be a JSON object")
    missing = [k for k in REQUIRED if not isinstance(rec.get(k), str)]
    if missing:
        raise Bad(f"missing or non-string fields: {', '.join(missing)}")
    if rec.get("sbom_encoding", "gzip+base64") != "gzip+base64":
        raise Bad("sbom_encoding must be gzip+base64")
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
    try:
        doc = json.loads(sbom)
    except ValueError:
        raise Bad("sbom is not JSON") from None
    problems = spdx_problems(doc)
    if problems:
        raise Bad("sbom is not a valid SPDX document: " + "; ".join(problems[:3]))
    return rec, sbom


def spdx_problems(doc) -> list[str]:
    from spdx_tools.spdx.parser.error import SPDXParsingError
    from spdx_tools.spdx.parser.jsonlikedict.json_like_dict_parser import JsonLikeDictParser
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    if not isinstance(doc, dict):
        return ["not a JSON object"]
    try:
        parsed = JsonLikeDictParser().parse(doc)
    except SPDXParsingError as exc:
        return [str(m) for m in exc.get_messages()][:3] or ["unparseable"]
    except Exception as exc:  # noqa: BLE001 - spdx-tools raises assorted errors on junk
        return [f"{type(exc).__name__}: {exc}"[:200]]
    return [p.validation_message for p in validate_full_spdx_document(parsed)]


class Handler(BaseHTTPRequestHandler):
    store: Store
    protocol_version = "HTTP/1.1"

    def _send(self, code: int, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):  # one line per request on stderr, no reverse DNS
        sys.stderr.write(f"collector: {self.client_address[0]} {fmt % args}\n")

    def do_GET(self):  # noqa: N802
        if self.path == "/health":
            ok = self.store.ping()
            return self._send(200 if ok else 503, {"status": "ok" if ok else "db-unavailable"})
        if self.path == "/v1/services":
            return self._send(200, {"services": self.store.services()})
        if self.path.startswith("/v1/sbom/"):
            doc = self.store.sbom(self.path.removeprefix("/v1/sbom/"))
            return self._send(200, json.loads(doc)) if doc else self._send(404, {"error": "no SBOM for that digest"})
        return self._send(404, {"error": "not found"})

    def do_POST(self):  # noqa: N802
        if self.path != "/v1/startup":
            return self._send(404, {"error": "not found"})
        try:
            length = int(self.headers.get("Content-Length", "-1"))
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            return self._send(400, {"error": "Content-Length is required"})
        if length > MAX_BODY:
            # Read (and drop) a moderately oversized body so the sender sees the 400 rather than a
            # reset; anything huge is cut off unread.
            if length <= 16 * MAX_BODY:
                left = length
                while left > 0:
                    chunk = self.rfile.read(min(left, 65536))
                    if not chunk:
                        break
                    left -= len(chunk)
            self.close_connection = True
            return self._send(400, {"error": f"payload of {length} bytes is over the {MAX_BODY}-byte limit"})
        body = self.rfile.read(length)
        try:
            rec, sbom = decode(body)
        except Bad as exc:
            return self._send(400, {"error": str(exc)})
        self.store.add(rec, sbom)
        return self._send(201, {"stored": True})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # socketserver's default of 5 resets bursts of start-ups


def main() -> int:
    os.makedirs(DATA, exist_ok=True)
    Handler.store = Store(os.path.join(DATA, "collector.db"))
    server = Server(("0.0.0.0", PORT), Handler)
    sys.stderr.write(f"collector: listening on :{PORT}, data in {DATA}\n")
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
