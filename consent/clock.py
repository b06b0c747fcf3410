"""Calendar arithmetic for consent: UK civil dates and FHIR period bounds, stdlib only.

A consent "until 1 May" given by a family in England means until the end of 1 May in England,
so date-only bounds are read in UK civil time, not UTC. UK summer time runs from 01:00 UTC on
the last Sunday of March to 01:00 UTC on the last Sunday of October (Summer Time Order 2002),
a fixed rule, so no time-zone database is needed (slim images often ship none).
"""

from __future__ import annotations

import calendar
from functools import lru_cache
import re
from datetime import date, datetime, timedelta, timezone

_HOUR = timedelta(hours=1)
_TICK = timedelta(microseconds=1)
# The one grammar of FHIR date, dateTime and instant text (https://hl7.org/fhir/R4/datatypes.html):
# YYYY, YYYY-MM, YYYY-MM-DD, or a date with a time (seconds and fraction optional here, for search
# values) and a zone. `ehcp_record.fhir.dates` builds its search ranges on the same grammar.
FHIR_DATE_PATTERN = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def date_parts(text: object) -> dict[str, str | None]:
    """The parts (y, m, d, H, M, S, f, tz) of FHIR date/dateTime text; ValueError otherwise.

    Only the shape is checked here; whether the date exists is for the caller building it.
    """
    match = FHIR_DATE_PATTERN.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"'{text}' is not a FHIR date or dateTime")
    return match.groupdict()


@lru_cache(maxsize=512)
def _last_sunday(year: int, month: int) -> date:
    last = date(year, month, calendar.monthrange(year, month)[1])
    return last - timedelta(days=(last.weekday() - 6) % 7)


def as_utc(moment: datetime) -> datetime:
    """The moment as an aware UTC datetime; a naive value is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def uk_date(moment: datetime) -> date:
    """The calendar date in England at this moment."""
    utc = as_utc(moment)
    year = utc.year
    starts = datetime.combine(_last_sunday(year, 3), datetime.min.time(), timezone.utc) + _HOUR
    ends = datetime.combine(_last_sunday(year, 10), datetime.min.time(), timezone.utc) + _HOUR
    offset = _HOUR if starts <= utc < ends else timedelta(0)
    return (utc + offset).date()


def uk_midnight(day: date) -> datetime:
    """The UTC instant at which `day` begins in England.

    Clocks change at 01:00 UTC on a Sunday, never at local midnight, so the offset at the
    start of `day` is summer time exactly when day is after March's and on or before
    October's last Sunday.
    """
    summer = _last_sunday(day.year, 3) < day <= _last_sunday(day.year, 10)
    start = datetime.combine(day, datetime.min.time(), timezone.utc)
    return start - _HOUR if summer else start


def parse_bound(text: str, *, end: bool) -> datetime:
    """A FHIR date/dateTime as the first (start) or last (end) UTC instant it covers.

    `Period.end` is inclusive (https://hl7.org/fhir/R4/datatypes.html#Period), so "2026-05-01"
    as an end covers the whole of 1 May. Partial dates (YYYY, YYYY-MM) cover their whole span.
    Raises ValueError when the text is not a FHIR date or dateTime.
    """
    p = date_parts(text)
    if p["H"] is not None and (p["S"] is None or p["tz"] is None):
        raise ValueError(f"'{text}' is not a FHIR dateTime: a time needs seconds and a zone (Z or +hh:mm)")
    try:
        if p["H"] is not None:
            return _instant(p)
        first, after = _span(int(p["y"]), p["m"], p["d"])
    except ValueError as exc:
        raise ValueError(f"'{text}' is not a real date or time: {exc}") from None
    return uk_midnight(after) - _TICK if end else uk_midnight(first)


def _instant(p: dict) -> datetime:
    micros = int((p["f"] or "0").ljust(6, "0")[:6])
    zone = timezone.utc
    if p["tz"] != "Z":
        sign = 1 if p["tz"][0] == "+" else -1
        zone = timezone(sign * timedelta(hours=int(p["tz"][1:3]), minutes=int(p["tz"][4:6])))
    local = datetime(int(p["y"]), int(p["m"]), int(p["d"]), int(p["H"]), int(p["M"]),
                     int(p["S"]), micros, tzinfo=zone)
    return local.astimezone(timezone.utc)


def _span(year: int, month: str | None, day: str | None) -> tuple[date, date]:
    """First day covered and the first day after, for a (possibly partial) date."""
    if month is None:
        return date(year, 1, 1), date(year + 1, 1, 1)
    if day is None:
        first = date(year, int(month), 1)
        return first, first + timedelta(days=calendar.monthrange(year, int(month))[1])
    first = date(year, int(month), int(day))
    return first, first + timedelta(days=1)


def parse_date(text: object) -> date:
    """A full FHIR date (YYYY-MM-DD) that exists. Raises ValueError otherwise.

    Stricter than `date.fromisoformat`, which also takes "20260901" and week dates.
    """
    try:
        p = date_parts(text)
    except ValueError:
        p = {}
    if not p or p["d"] is None or p["H"] is not None:
        raise ValueError(f"'{text}' is not a full date (YYYY-MM-DD)")
    try:
        return date(int(p["y"]), int(p["m"]), int(p["d"]))
    except ValueError as exc:
        raise ValueError(f"'{text}' is not a real date: {exc}") from None
