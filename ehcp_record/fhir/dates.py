"""FHIR date/dateTime/instant values as the UTC range of time they denote.

FHIR search compares ranges, not points (R4 search §3.1.1.5.6 "date"): `2026` means the whole
year, `2026-03` the whole month. Both indexed values and search values become [lo, hi).

The project's one date module for everything above the consent package: the grammar and the
full-date and Period-bound parsers live in `consent.clock` (the bottom layer, which may import
nothing of ours) and are re-exported here: `parse_date` for a full YYYY-MM-DD, `parse_bound`
for a Period bound in UK civil time.
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta, timezone

from consent.clock import date_parts, parse_bound, parse_date  # noqa: F401 (re-exported)
MIN = datetime(1, 1, 1, tzinfo=timezone.utc)
MAX = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)


class DateFormatError(ValueError):
    """The text is not a FHIR date, dateTime or instant."""


def parse_range(text: str) -> tuple[datetime, datetime]:
    """Return the half-open UTC range [lo, hi) that a FHIR date/dateTime value covers."""
    try:
        parts = date_parts(text)
    except ValueError:
        raise DateFormatError(f"'{text}' is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or a dateTime)") from None
    try:
        return _range(parts)
    except ValueError as exc:
        raise DateFormatError(f"'{text}' is not a real date: {exc}") from None


def has_passed(value: object, at: datetime) -> bool:
    """Has a FHIR dateTime (e.g. Subscription.end) begun by `at`? Not a date: never."""
    if not isinstance(value, str):
        return False
    try:
        return parse_range(value)[0] <= at
    except DateFormatError:
        return False


def _range(p: dict) -> tuple[datetime, datetime]:
    year = int(p["y"])
    tz = _zone(p["tz"])
    if p["m"] is None:
        lo = datetime(year, 1, 1, tzinfo=tz)
        return _utc(lo), _utc(datetime(year + 1, 1, 1, tzinfo=tz)) if year < 9999 else MAX
    month = int(p["m"])
    if p["d"] is None:
        lo = datetime(year, month, 1, tzinfo=tz)
        days = calendar.monthrange(year, month)[1]
        return _utc(lo), _utc(lo + timedelta(days=days))
    day = datetime(year, month, int(p["d"]), tzinfo=tz)
    if p["H"] is None:
        return _utc(day), _utc(day + timedelta(days=1))
    if p["tz"] is None:
        raise ValueError("a time must carry a time zone (Z or +hh:mm)")
    if p["S"] is None:
        lo = day.replace(hour=int(p["H"]), minute=int(p["M"]))
        return _utc(lo), _utc(lo + timedelta(minutes=1))
    lo = day.replace(hour=int(p["H"]), minute=int(p["M"]), second=int(p["S"]))
    if p["f"] is None:
        return _utc(lo), _utc(lo + timedelta(seconds=1))
    # The precision given is the range meant (R4 search §3.1.1.5.6: "the range is the
    # implicit precision of the value"): `.5` is 100 ms, `.123` one millisecond. Stored instants
    # are BSON milliseconds, so a range never narrows below one millisecond.
    digits = p["f"][:3]
    lo = lo.replace(microsecond=int((digits + "000")[:3]) * 1000)
    width = 10 ** (6 - len(digits))
    return _utc(lo), _utc(lo + timedelta(microseconds=width))


def _zone(text: str | None) -> timezone:
    if text is None or text == "Z":
        return timezone.utc
    sign = 1 if text[0] == "+" else -1
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError("time zone offset out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc)


def instant(value: datetime) -> str:
    """A FHIR instant with milliseconds in UTC, the form used for meta.lastUpdated."""
    value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
