"""hello: the smallest real service on the CPU family (used by the runbook and the lab tests).

GET /health -> 200 {"status": "ok"}; GET / -> which machine and code this is.
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path == "/health":
            body = {"status": "ok"}
        else:
            body = {"service": os.environ.get("FLEETROLL_SERVICE", "hello"), "machine": os.environ.get("MACHINE", ""),
                    "git_sha": os.environ.get("GIT_SHA", "")}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
