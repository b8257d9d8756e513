"""What `status` returns leaves the host: no journal env value in it, and no row that crashes the controller.

The Docker facts are stubbed (no daemon in unit tests); the journal, the redaction key and
the collector (a real HTTP server on 127.0.0.1) are real.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent import facts, journal, ops

MARKER = "PLAIN-ENV-MARKER-7f3a"

pytestmark = pytest.mark.usefixtures("host_state")


@pytest.fixture(autouse=True)
def no_docker(monkeypatch):
    monkeypatch.setattr(facts, "docker_facts", lambda: {"ok": True, "containers": []})


def _old_config() -> dict:
    return {"image": "sha256:old", "name": "svc", "user": "10001:10001", "env": {"DB_PASSWORD": MARKER, "MODE": "prod"},
            "labels": {}, "ports": {}, "binds": [], "restart": "unless-stopped", "gpus": 0, "stop_timeout": 10, "network": ""}


def test_a_plain_env_value_in_the_last_journal_record_never_leaves_the_host():
    rid = "r20260101T000000Z-core-abcdef"
    journal.mark_last(rid)
    journal.mark_open(rid)
    journal.append(rid, "accepted", steps=[])
    journal.append(rid, "set-aside", service="svc", container="c1", kept_name="svc--kept-1", old_config=_old_config())
    answer = ops.status({})
    text = json.dumps(answer)
    assert MARKER not in text
    last = answer["data"]["last"]
    assert last["rollout_id"] == rid and last["last_step"]["step"] == "set-aside"
    env = last["last_step"]["old_config"]["env"]
    assert set(env) == {"DB_PASSWORD", "MODE"} and env["DB_PASSWORD"].startswith("hmac:"), "names stay, values become hashes"
    assert MARKER in journal.path_for(rid).read_text(), "the journal on the host keeps the value (recovery needs it)"
    # The outcome record too, however deep the configuration sits in it.
    journal.append(rid, "done", ok=False, state="good", services=[{"service": "svc", "outcome": "reverted", "old_config": _old_config(),
                                                                   "tried_config": {"env": {"X": MARKER}}}])
    assert MARKER not in json.dumps(ops.status({}))


class _Collector(BaseHTTPRequestHandler):
    rows: list = []

    def do_GET(self):  # noqa: N802 - http.server's name
        body = json.dumps({"services": self.rows}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_malformed_collector_rows_are_dropped_not_passed_on():
    _Collector.rows = [{"service": "web"}, {"host": "pc2"}, "junk", None, {"host": 3, "service": "web"},
                       {"host": "pc2", "service": "web", "git_sha": "abc1234"}]
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        got = ops.status({"collector_port": srv.server_address[1]})["data"]["collector"]
    finally:
        srv.shutdown()
        srv.server_close()
    assert got["ok"] and got["services"] == [{"host": "pc2", "service": "web", "git_sha": "abc1234"}] and got["malformed"] == 5
    # What the controller does with them (playbooks/executor.py status) no longer meets a row without a key.
    assert {(r["host"], r["service"]) for r in got["services"]} == {("pc2", "web")}
