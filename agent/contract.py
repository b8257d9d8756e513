"""The image contract and the label names, defined once for the agent and the controller.

Every image runs as 10001:10001 with tini as PID 1 (the blueprint); every container
fleetroll starts carries these labels, which is how the planner, status and recovery
know what a container is, which rollout made it and what it replaced.
"""

from __future__ import annotations

IMAGE_USER = "10001:10001"

MANAGED = "io.fleetroll.managed"
SERVICE = "io.fleetroll.service"
TAG = "io.fleetroll.tag"
DIGEST = "io.fleetroll.digest"
ROLLOUT_ID = "io.fleetroll.rollout-id"
PHASE = "io.fleetroll.phase"
SPEC_HASH = "io.fleetroll.spec-hash"
PREV_TAG = "io.fleetroll.prev-tag"
PREV_DIGEST = "io.fleetroll.prev-digest"
GIT_SHA = "io.fleetroll.git-sha"
OPERATOR = "io.fleetroll.operator"
HEALTH = "io.fleetroll.health"  # the health gate settings, JSON: a restored container is gated on its own port
ARCH = "io.fleetroll.cuda-arch-list"
REVISION = "org.opencontainers.image.revision"


def image_problems(user: str, entrypoint: list[str] | None) -> list[tuple[str, str]]:
    """What in an image's config breaks the contract: (what was observed, how to fix it)."""
    out = []
    if (user or "") != IMAGE_USER:
        out.append((f"runs as user {user or 'root (unset)'}, required {IMAGE_USER}", f"set USER {IMAGE_USER} in the Dockerfile"))
    entry = entrypoint or []
    if not entry or "tini" not in entry[0].rsplit("/", 1)[-1]:
        out.append((f"entrypoint {entry or '(none)'} does not start with tini", 'ENTRYPOINT ["tini", "--", ...]'))
    return out
