"""The SSH push's proxy serving Swarm tasks too: the lines that make it resolve a service's tasks by Docker's DNS. Pure.

Why. Moving a phase between the SSH push and Swarm used to close the listen ports for seconds: both engines'
proxies wanted the same host port. Instead the SSH push's proxy (agent/proxy.py) stays the front door and, in a
fleet that uses Swarm, each backend also carries `server-template` slots for the service's Swarm tasks, found as
the proxy on Swarm finds them (the swarm render's proxy.py): `tasks.fr-<phase>_<service>` on Docker's embedded DNS,
once the proxy's container is joined to the overlay `fr-proxy`. They start empty (`init-addr none`) and are
health-checked, so a backend with no stack behind it is exactly today's two slots; a hand-over makes the tasks
serve beside slots a/b, then drains the slots (the controller's swarm handover.py), and back.

Every line here is also a grammar line: the host accepts only what it could have rendered itself (proxy.py).
This module imports nothing of proxy.py (proxy.py imports it), so the agent's import graph has no circle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SWARM_NETWORK = "fr-proxy"  # the overlay `fab swarm.form` makes (the swarm render names this one)
SWARM_NETWORK_LABEL = ("io.fleetroll.network", "proxy")
STACK_PREFIX = "fr-"
DOCKER_DNS = "127.0.0.11:53"  # Docker's embedded DNS, inside every container on a user-defined network
DNS_LABEL_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # no '.': it would split tasks.<stack>_<service> into labels
PATH_RE = re.compile(r"/[A-Za-z0-9._~/%-]{0,200}")  # the schema's rule for health.path, checked again here
TASK_PREFIX = "task"  # server-template names: task1, task2, ...
MAX_SLOTS = 256
MIN_SLOTS = 16


def slots_for(tasks: int) -> int:
    """Server-template slots for a service of `tasks` tasks (old and new at once under start-first: twice that). Pure.

    At least MIN_SLOTS, then the next power of two: the count is in every proxy's configuration, and a count that
    followed each change of a service's hosts or replicas would change every proxy's text, and so recreate every
    proxy (stop-first: its listen ports close), for a placement change elsewhere. Empty slots cost a DNS answer each.
    """
    want = max(MIN_SLOTS, 2 * max(1, int(tasks)))
    return min(MAX_SLOTS, 1 << (want - 1).bit_length())

RESOLVERS = [
    "resolvers docker",
    f"    nameserver dns {DOCKER_DNS}",
    "    accepted_payload_size 8192",
    "    resolve_retries 3",
    "    timeout resolve 1s",
    "    timeout retry 1s",
    "    hold valid 1s",
    "    hold other 1s",
    "    hold refused 1s",
    "    hold nx 1s",
    "    hold timeout 1s",
    "    hold obsolete 0s",  # a task gone from DNS leaves its slot at the next resolution
]
# Only where no answer came: a request that met a task (or a container) going away is sent to another server.
RETRY_ON = "    retry-on conn-failure empty-response response-timeout"
CHECK = "check inter 1s fall 2 rise 1"


class TasksError(ValueError):
    """A name or path that cannot be written into the proxy's configuration safely."""


@dataclass(frozen=True)
class Tasks:
    """Where a service's Swarm tasks are, as the SSH push's proxy reaches them over the overlay."""

    stack: str  # fr-<phase of the service>: stable whichever engine runs the phase
    path: str  # health.path: the proxy checks each task itself
    slots: int  # server-template slots: every task the service can have at once, old and new (start-first)

    def dns(self, service: str) -> str:
        return f"tasks.{self.stack}_{service}"


def dns_label(kind: str, name: str) -> str:
    """`name` if it fits a DNS label (no '.'); else TasksError naming the fix."""
    if not DNS_LABEL_RE.fullmatch(str(name)):
        raise TasksError(f"{kind} name {name!r} does not fit a DNS label (a '.' would split the name the proxy resolves,"
                         " tasks.<stack>_<service>); fix: rename it without '.'")
    return name


def checked(service: str, t: Tasks) -> Tasks:
    """`t` with every token checked (stack, service, path, slot count); TasksError otherwise."""
    dns_label("service", service)
    if not t.stack.startswith(STACK_PREFIX):
        raise TasksError(f"stack {t.stack!r} is not one fleetroll names ({STACK_PREFIX}<phase>)")
    dns_label("phase", t.stack)
    if not PATH_RE.fullmatch(str(t.path)):
        raise TasksError(f"health path {t.path!r} of {service} is not a plain URL path")
    if isinstance(t.slots, bool) or not isinstance(t.slots, int) or not 1 <= t.slots <= MAX_SLOTS:
        raise TasksError(f"{t.slots!r} task slots for {service}: 1-{MAX_SLOTS}")
    return t


def health_lines(path: str) -> list[str]:
    """How the proxy checks a task: GET health.path, 200 (the template's `check`); slots a/b are never checked."""
    return [f"    option httpchk GET {path}", "    http-check expect status 200"]


def template_line(service: str, port: int, t: Tasks) -> str:
    return (f"    server-template {TASK_PREFIX} 1-{t.slots} {t.dns(service)}:{port} resolvers docker init-addr none"
            f" resolve-prefer ipv4 {CHECK}")


_NAME = DNS_LABEL_RE.pattern
GRAMMAR = [re.compile(x) for x in (
    *(re.escape(x) for x in RESOLVERS),
    re.escape(RETRY_ON),
    rf"    option httpchk GET {PATH_RE.pattern}",
    r"    http-check expect status 200",
    rf"    server-template {TASK_PREFIX} 1-[0-9]{{1,3}} tasks\.{STACK_PREFIX}{_NAME}:[0-9]{{1,5}} resolvers docker"
    rf" init-addr none resolve-prefer ipv4 {re.escape(CHECK)}",
)]


def parse_block(service: str, block: list[str]) -> Tasks | None:
    """The Tasks a backend block declares (its template and check lines), None when it has none. Pure.

    Only what re-rendering needs: proxy.config_problems renders the routes again and compares the whole text.
    """
    tmpl = next((m for ln in block if (m := re.fullmatch(rf"    server-template {TASK_PREFIX} 1-([0-9]+) tasks\.(\S+):[0-9]+ .*",
                                                          ln))), None)
    if tmpl is None:
        return None
    path = next((m[1] for ln in block if (m := re.fullmatch(r"    option httpchk GET (\S+)", ln))), "")
    stack = tmpl[2].removesuffix(f"_{service}")
    return Tasks(stack, path, int(tmpl[1]))


def is_task(server: str) -> bool:
    """A server-template slot's name (task1, task2, ...): the only other names than a/b that go into a command line."""
    return bool(re.fullmatch(rf"{TASK_PREFIX}[0-9]{{1,3}}", server))
