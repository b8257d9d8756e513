"""What may stand for a host's address, login and interpreter: one rule for the schema and for prewarm.

Pure and without pydantic, so prewarm (playbooks/prewarm.py) can hold the raw YAML to the very
rules the validated inventory will (playbooks/schema_base.py) before pydantic has loaded.
"""

from __future__ import annotations

import ipaddress
import re

HOSTNAME_RE = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
LOGIN_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
PYTHON_RE = re.compile(r"/[A-Za-z0-9._/+-]+")  # hosts.<name>.python: an absolute path, nothing a shell would read
PYTHON_PATTERN = f"^{PYTHON_RE.pattern}$"  # the same, as pydantic's Field(pattern=...)
ZONE_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # an IPv6 zone after '%': an interface name, never shell text


def address_problem(v: str) -> str | None:
    """Why v cannot be a host's address, or None if it is an IP address or a host name."""
    try:
        ipaddress.ip_address(v)
    except ValueError:
        if HOSTNAME_RE.fullmatch(v):
            return None
        return f"address {v!r} is neither an IP address nor a host name (letters, digits, '-', '.')"
    if "%" in v and not ZONE_RE.fullmatch(v.partition("%")[2]):
        return f"address {v!r}: an IPv6 zone after '%' is an interface name (letters, digits, '_', '.', '-')"
    return None
