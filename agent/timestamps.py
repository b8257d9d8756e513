"""Docker's timestamps as seconds: pure, and without the modules the standard library would import for it."""

from __future__ import annotations


def up_seconds(started_at: str, now: float) -> float | None:
    """Seconds since Docker's StartedAt (RFC 3339, nanoseconds, UTC; the fraction is dropped). Pure.

    By hand, not time.strptime + calendar.timegm: those import calendar, datetime, locale and _strptime (~3 ms of
    every agent call's start, on every host) for one fixed format."""
    t = started_at[:19] if isinstance(started_at, str) else ""
    if len(t) != 19 or t[4] + t[7] + t[10] + t[13] + t[16] != "--T::":
        return None
    fields = (t[0:4], t[5:7], t[8:10], t[11:13], t[14:16], t[17:19])
    if not all(f.isascii() and f.isdigit() for f in fields):
        return None
    year, month, day, hour, minute, second = map(int, fields)
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        return None
    return max(0.0, now - (_days_since_epoch(year, month, day) * 86400 + hour * 3600 + minute * 60 + second))


def _days_since_epoch(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to the proleptic Gregorian date (H. Hinnant's days_from_civil). Pure."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
