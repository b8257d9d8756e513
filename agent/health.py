"""The health gate: GET /health must answer 200 with {"status": "ok"}, and keep doing so.

Nomad's vocabulary: `healthy_deadline` is how long a new container has to become
healthy; `min_healthy_time` is the stability window it must then stay healthy for
(a restart or exit inside the window fails the gate). The verdict on one answer is a
pure function; the polling uses tenacity for the wait-until-deadline part.
"""

from __future__ import annotations

import json
import string
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay

from . import http1


@dataclass
class Probe:
    ok: bool
    reason: str
    status: int | None = None
    body: str = ""


def verdict(status: int | None, body: str) -> Probe:
    """Judge one answer by its code and parsed body (busybox httpd sends no JSON content type)."""
    if status is None:
        return Probe(False, body or "no answer", None, "")
    if status != 200:
        return Probe(False, f"HTTP {status}", status, body[:200])
    try:
        doc = json.loads(body)
    except ValueError:
        return Probe(False, "HTTP 200 but the body is not JSON", status, body[:200])
    if not isinstance(doc, dict) or doc.get("status") != "ok":
        got = doc.get("status") if isinstance(doc, dict) else doc
        return Probe(False, f'HTTP 200 but status is {got!r}, not "ok"', status, body[:200])
    return Probe(True, "HTTP 200 {\"status\":\"ok\"}", status, body[:200])


def probe(url: str, timeout: float) -> Probe:
    """One GET of the health URL; whatever goes wrong is a failed probe with its reason, never an exception.

    A port that speaks another protocol, an endless header, a malformed URL: all are simply
    "unhealthy", so the gate fails and the transaction restores the old container instead of being
    torn down by a traceback. Over agent/http1.py, not urllib.request (whose import, http.client and
    the email package with it, is ~15 ms of every rollout's agent before its first probe). A redirect
    is followed only to the same address and port: a container's health is its own answer.
    """
    host = urllib.parse.urlsplit(url).hostname or ""
    if host.endswith(".invalid"):  # url_for's "no address on the network yet": said at once, never asked of a resolver
        return Probe(False, f"no answer (the container has no address on network {host[len('no-address-on-'):-8]} yet)")
    try:
        status, body = _get(url, timeout)
        return verdict(status, body.decode(errors="replace"))
    except http1.ProtocolError as e:
        return Probe(False, f"not a valid HTTP answer ({str(e)[:160]})")
    except _Elsewhere as e:
        return Probe(False, str(e))
    except (TimeoutError, OSError) as e:
        text = "timed out" if "timed out" in str(e) else str(e)
        return Probe(False, f"no answer ({text} after {timeout:g}s)" if "timed out" in text else f"no answer ({text})")
    except Exception as e:  # noqa: BLE001 - see the docstring
        return Probe(False, f"not a valid HTTP answer ({type(e).__name__}: {str(e)[:160]})")


class _Elsewhere(Exception):
    """A redirect away from the container being probed."""


def _get(url: str, timeout: float, hops: int = 4) -> tuple[int, bytes]:
    """(status, the first 4 KiB of the body) of a GET, same-origin redirects followed."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise ValueError(f"not an http:// URL: {url[:120]!r}")
    port = u.port or 80
    conn = http1.Connection(http1.tcp_socket(u.hostname, port, timeout), u.netloc.rpartition("@")[2])
    try:
        r = conn.request("GET", (u.path or "/") + (f"?{u.query}" if u.query else ""), {"Connection": "close"})
        body = r.read(4096)
    finally:
        conn.close()
    location = r.getheader("location")
    if r.status in http1.REDIRECTS and location and hops:
        # Quoted as urllib's redirect handler does: a space or a non-ASCII byte in a Location is sent %-encoded.
        nxt = urllib.parse.quote(urllib.parse.urljoin(url, location), safe=string.punctuation, encoding="iso-8859-1")
        if http1.origin(nxt) != http1.origin(url):
            raise _Elsewhere(f"HTTP {r.status} to {nxt[:120]}: not followed (a health check is the container's own answer)")
        return _get(nxt, timeout, hops - 1)
    return r.status, body


@dataclass
class GateResult:
    ok: bool
    phase: str  # "deadline" | "window" | "passed"
    reason: str
    time_to_healthy_s: float | None = None
    elapsed_s: float = 0.0
    last: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


TICK_S = 5.0


def gate(url: str, healthy_deadline: float, min_healthy_time: float, interval: float,
         container_state: Callable[[], tuple[bool, int, str]], on_tick: Callable[[str], None] | None = None,
         restarts0: int | None = None) -> GateResult:
    """Wait for healthy, then hold it for the window. container_state() -> (running, restarts, status).

    `restarts0`: the restart count to count from, when the caller knows it (0: a container it has just created).
    Unknown (None), the gate reads it; a daemon silent then has its first answer set it (a crash before it unseen)."""
    t0 = time.monotonic()
    timeout = max(0.5, min(2.0, interval * 4))
    if restarts0 is None:
        try:
            restarts0 = container_state()[1]
        except Exception:  # noqa: BLE001 - attempt() reports it
            restarts0 = -1
    last: list[Probe] = []
    ticked = [t0]
    baseline = [restarts0]  # unknown at the start (the daemon did not answer): the first state read sets it
    holding = [False]

    def tick() -> None:
        """Every 5 s of waiting, a line for the operator: a gate that takes a minute must not look hung."""
        now = time.monotonic()
        if on_tick and now - ticked[0] >= TICK_S and last:
            ticked[0] = now
            on_tick(f"still gating after {now - t0:.0f}s (deadline {healthy_deadline:g}s, window {min_healthy_time:g}s):"
                    f" last probe {'ok' if last[-1].ok else last[-1].reason}")

    def attempt() -> bool:
        asked = time.monotonic()
        try:
            running, restarts, status = container_state()
        except Exception as exc:  # noqa: BLE001 - a daemon that cannot answer is not a healthy container
            last.append(Probe(False, f"container state unknown: {str(exc)[:160]}"))
            return False
        took = time.monotonic() - asked
        late = not holding[0] and time.monotonic() > t0 + healthy_deadline + interval and took > max(1.0, 2 * interval)
        problem = _state_problem(running, restarts, baseline, status)
        if problem:
            last.append(Probe(False, problem))
            tick()
            return False
        p = probe(url, timeout)
        if p.ok and late:  # only a pass is in doubt: a failing probe is the release's own answer, blamed as ever
            p = Probe(False, f"the Docker daemon did not answer the container's state for {took:.0f}s; the"
                             f" {healthy_deadline:g}s deadline passed meanwhile")
        last.append(p)
        del last[:-8]
        tick()
        return p.ok

    if not _until_healthy(attempt, healthy_deadline, interval):
        p = last[-1] if last else Probe(False, "never probed")
        return GateResult(False, "deadline", f"not healthy within {healthy_deadline:g}s: {p.reason}",
                          elapsed_s=time.monotonic() - t0, last=asdict(p))
    healthy_at = time.monotonic() - t0
    holding[0] = True
    if on_tick:
        on_tick(f"healthy after {healthy_at:.2f}s; holding for {min_healthy_time:g}s")
    return _hold(attempt, last, t0, healthy_at, min_healthy_time, interval)


def _state_problem(running: bool, restarts: int, baselines: list[int], status: str) -> str:
    """Why the container's state fails this attempt before any probe, or "" (pure).

    A pass whose state read the daemon held past the deadline fails too (in gate()): found by an exploratory
    run, dockerd stopped for 30 s, the probe after it passed, and the gate said 'healthy after 30.04s' of a 5 s
    deadline; nothing was observed in time ("did not answer" keeps the release unfrozen: motion.points_away).
    Only a slow daemon counts (a read over a second), not a host too busy to schedule the gate on time.
    `baselines[0]`: the restart count restarts are measured from, set by the first answer when the gate's start
    could not read one (-1).
    """
    if restarts >= 0 and baselines[0] < 0:
        baselines[0] = restarts
    baseline = baselines[0]
    if not running or restarts != baseline:
        again = f", restarted {restarts - baseline} time(s) during the gate" if running and restarts > baseline >= 0 else ""
        return f"container {status}{again}"
    return ""


def _until_healthy(attempt: Callable[[], bool], healthy_deadline: float, interval: float) -> bool:
    """Attempt every `interval` until one passes (True) or `healthy_deadline` has gone by (False).

    The last attempt is at the deadline itself, not up to an interval after it: a service that turns healthy
    just before its deadline still passes, and a release that never does is failed (and its host begins
    putting the old container back) when the deadline says, not up to one `interval` later.
    """
    try:
        for att in Retrying(
            stop=stop_after_delay(healthy_deadline),
            wait=lambda state: min(interval, max(0.0, healthy_deadline - state.seconds_since_start)),
            retry=retry_if_result(lambda ok: not ok),
        ):
            with att:
                ok = attempt()
            if not att.retry_state.outcome.failed:
                att.retry_state.set_result(ok)
    except RetryError:
        return False
    return True


def _hold(attempt: Callable[[], bool], last: list[Probe], t0: float, healthy_at: float, min_healthy_time: float,
          interval: float) -> GateResult:
    """The stability window: healthy at every attempt for `min_healthy_time`, or the gate fails naming when and why."""
    end = time.monotonic() + min_healthy_time
    while time.monotonic() < end:
        time.sleep(min(interval, max(0.0, end - time.monotonic())))
        if not attempt():
            p, held = last[-1], time.monotonic() - t0 - healthy_at
            # The last check runs at the window's end; one the daemon held answers later ("20.5s into the 2s window",
            # found by an exploratory run with dockerd stopped mid-window): say when it came, not a time inside it.
            when = (f"{held:.1f}s into the {min_healthy_time:g}s stability window" if held <= min_healthy_time else
                    f"at the end of the {min_healthy_time:g}s stability window (checked {held:.1f}s after it began)")
            return GateResult(False, "window", f"unhealthy {when}: {p.reason}", healthy_at, time.monotonic() - t0, asdict(p))
    p = last[-1]
    return GateResult(True, "passed", p.reason, healthy_at, time.monotonic() - t0, asdict(p))


def url_for(h: dict, container_address: str = "") -> str:
    """The URL the host-side gate probes: the health port on its bound address (default loopback).

    A container on the proxy network (`network` in its settings) publishes no port: it is
    probed directly at its own address there — not through the proxy, which it must not
    reach before it has passed.
    """
    if h.get("network") and not container_address:
        # No address there (yet): a name that cannot resolve fails each probe with a reason, where
        # 0.0.0.0 would have reached whatever listens on the host's own port.
        return f"http://no-address-on-{h['network']}.invalid:{h['port']}{h.get('path', '/health')}"
    addr = container_address or h.get("address") or "127.0.0.1"
    host = f"[{addr}]" if ":" in addr else addr
    return f"http://{host}:{h['port']}{h.get('path', '/health')}"
