"""Start-up emitter: tell the collector which code (git SHA) and SBOM this container runs.

Runs detached beside the service (see fleetroll-start). Reads the SPDX JSON SBOM baked
into the image, gzips and base64-encodes it, and POSTs it with host, service, image
digest and start time to $FLEETROLL_COLLECTOR_URL, signed with $FLEETROLL_REPORT_KEY (the key
the agent derived for this container alone: host, service and digest). Retries in the background with
tenacity (bounded attempts and time); whatever happens it logs one clear line and exits
0 — a collector that is down, refusing, slow, hanging, answering 500 or unresolvable must
never affect the service.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.request

SBOM = os.environ.get("FLEETROLL_SBOM", "/usr/share/fleetroll/sbom.spdx.json")
TIMEOUT = float(os.environ.get("FLEETROLL_EMIT_TIMEOUT", "2"))
ATTEMPTS = int(os.environ.get("FLEETROLL_EMIT_ATTEMPTS", "5"))
MAX_SECONDS = float(os.environ.get("FLEETROLL_EMIT_MAX_SECONDS", "60"))


def log(msg: str) -> None:
    sys.stderr.write(f"fleetroll-emit: {msg}\n")
    sys.stderr.flush()


def payload(started: str) -> bytes:
    with open(SBOM, "rb") as f:
        sbom = f.read()
    return json.dumps({
        "host": os.environ.get("FLEETROLL_HOST", ""),
        "service": os.environ.get("FLEETROLL_SERVICE", ""),
        "image_digest": os.environ.get("FLEETROLL_IMAGE_DIGEST", ""),
        "git_sha": os.environ.get("GIT_SHA", ""),
        "started_at": started,
        "sbom_encoding": "gzip+base64",
        "sbom": base64.b64encode(gzip.compress(sbom, mtime=0)).decode(),
    }).encode()


class Refused(Exception):
    """The collector answered 4xx: retrying the same payload cannot help."""


def post(url: str, body: bytes) -> int:
    headers = {"Content-Type": "application/json"}
    key = os.environ.get("FLEETROLL_REPORT_KEY", "")
    if key:
        headers["X-Fleetroll-Signature"] = "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            return r.status
    except urllib.error.HTTPError as e:
        if 400 <= e.code < 500:
            raise Refused(f"HTTP {e.code}: {e.read(300).decode(errors='replace')}") from None
        raise


def main() -> int:
    url = os.environ.get("FLEETROLL_COLLECTOR_URL", "").rstrip("/") + "/v1/startup"
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        body = payload(started)
    except OSError as exc:
        log(f"no SBOM to report ({exc}); service unaffected")
        return 0
    try:
        from tenacity import Retrying, retry_if_not_exception_type, stop_after_attempt, stop_after_delay, wait_exponential
    except ImportError:
        log("tenacity missing; one attempt only")
        Retrying = None  # noqa: N806
    try:
        if Retrying is None:
            post(url, body)
        else:
            for attempt in Retrying(stop=stop_after_attempt(ATTEMPTS) | stop_after_delay(MAX_SECONDS),
                                    wait=wait_exponential(multiplier=0.5, max=10),
                                    retry=retry_if_not_exception_type(Refused), reraise=True):
                with attempt:
                    post(url, body)
        log(f"reported git {os.environ.get('GIT_SHA', '')[:12]} and SBOM to {url}")
    except Refused as exc:
        log(f"collector refused the report ({exc}); service unaffected")
    except Exception as exc:  # noqa: BLE001 - nothing may escape to the service
        log(f"could not report to {url} after retries ({type(exc).__name__}: {str(exc)[:120]}); service unaffected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
