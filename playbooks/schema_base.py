"""The inventory schema's groundwork: its error, the tag scheme, and the rules several models share.

Kept apart so the service models (schema_service.py) and the fleet's (schema.py) build on one base
without importing each other.
"""

from __future__ import annotations

import datetime as _dt
import re

from pydantic import BaseModel, ConfigDict

from .ssh_names import HOSTNAME_RE, LOGIN_RE, address_problem  # noqa: F401 - the schema's names for them

TAG_RE = re.compile(r"(?P<date>\d{8})-(?P<sha>[0-9a-f]{7,40})")
DEFAULT_MIN_DRIVER = "535"


class InventoryError(Exception):
    """One or more problems in an inventory file; `problems` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def tag_problem(tag: str) -> str | None:
    """Why `tag` breaks the YYYYMMDD-<git_sha> scheme, or None if it keeps it."""
    m = TAG_RE.fullmatch(tag)
    if not m:
        return (
            f"tag {tag!r} does not match YYYYMMDD-<git_sha> (a UTC date, a dash, 7-40 lowercase"
            " hex digits of the commit), e.g. 20250817-1a2b3c4"
        )
    try:
        _dt.datetime.strptime(m["date"], "%Y%m%d")
    except ValueError:
        return f"tag {tag!r} starts with {m['date']!r}, which is not a calendar date (YYYYMMDD)"
    return None


def parse_version(text: str) -> tuple[int, ...]:
    """'550.54.14' -> (550, 54, 14): driver versions compare numerically, not as text."""
    parts = re.findall(r"\d+", text)
    return tuple(int(p) for p in parts)


class _Strict(BaseModel):
    # No inf or nan anywhere: `healthy_deadline: .inf` made a failing release gate forever with its old container stopped.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


HEALTH_PATH_RE = re.compile(r"/[A-Za-z0-9._~/%-]*")
PORT_RE = re.compile(r"(?:(?P<ip>[0-9.]+|\[[0-9a-fA-F:]+\]):)?(?P<host>\d+):(?P<container>\d+)(?:/(?P<proto>tcp|udp))?")


def _address(v: str) -> str:
    problem = address_problem(v)
    if problem:
        raise ValueError(problem)
    return v
