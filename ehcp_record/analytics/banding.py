"""Generalisation of what the extract keeps: ages in bands, dates as months, LA numbers, and
settings named only when enough children attend them.

Age bands are those DfE publishes for EHC plans (SEN2, "Education, health and care plans"
statistics): under 5, 5 to 10, 11 to 15, 16 to 19, 20 to 25, age taken on 1 January of the
year (SEN2 counts plans at its January census).
"""

from __future__ import annotations

from datetime import date

AGE_BANDS = ("0-4", "5-10", "11-15", "16-19", "20-25")
#: A setting (URN) is named in the extract only when at least this many children attend it;
#: otherwise it is folded into its SEN2 setting type.
SMALL_SETTING = 10


def age_on(birth: date, day: date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def age_band(birth: date | None, year: int) -> str | None:
    """The band of the child's age on 1 January of `year`; None outside 0-25."""
    if birth is None:
        return None
    age = age_on(birth, date(year, 1, 1))
    if age > 25:
        return None
    if age < 5:  # born during the year (age below 0 on 1 January) counts as under 5
        return "0-4"
    if age <= 10:
        return "5-10"
    if age <= 15:
        return "11-15"
    return "16-19" if age <= 19 else "20-25"


def month(day: date | None) -> str | None:
    """A date kept as its month only ('2026-03'): no exact date enters the extract."""
    return day.strftime("%Y-%m") if day else None


def la_number(reference: str | None, directory: dict[str, dict], system: str) -> str:
    """The DfE LA number of an LA Organization reference ('866'); 'unknown' when not recorded."""
    organization = directory.get(reference or "", {})
    for identifier in organization.get("identifier", []) or []:
        if identifier.get("system") == system and identifier.get("value"):
            return str(identifier["value"])
    return "unknown"
