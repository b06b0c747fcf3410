"""The retention rule: when a child's record falls due for erasure (crypto-shredding).

SEN records are commonly kept until the young person's 25th birthday plus a further period set
by the LA's retention schedule (date of birth + 31 years is in use; EHCP-REFERENCE "Records
retention"; UK GDPR Art. 5(1)(e) storage limitation). The further period is configuration
(`EHCP_RETENTION_YEARS`, default 6). A legal hold blocks erasure whatever the date.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from ehcp_record.fhir.dates import parse_range
from ehcp_record.workflow.clocks import add_months

KEPT_UNTIL_BIRTHDAY = 25


@dataclass(frozen=True)
class RetentionDue:
    """One record of the custodian's whose retention has ended."""

    record: str
    birth_date: date
    due: date


def erasure_due(birth_date: date, extra_years: int) -> date:
    """The first day the record may be erased: the 25th birthday plus the further period (a
    29 February birthday falls on 28 February in a common year, as `clocks.add_months` clamps)."""
    return add_months(birth_date, 12 * (KEPT_UNTIL_BIRTHDAY + extra_years))


def parse_birth_date(text: str | None) -> date | None:
    """A FHIR date (YYYY, YYYY-MM or YYYY-MM-DD); a partial date counts from its last day
    (kept longest, so a record is never erased early). The range a partial date covers is the
    one FHIR date module's (`fhir.dates.parse_range`, R4 search §3.1.1.5.6)."""
    if not text:
        return None
    _, end = parse_range(text[:10])
    return (end - timedelta(days=1)).date()


def due_records(states: list[dict], extra_years: int, today: date) -> list[RetentionDue]:
    """The records among `states` (custody states: `_id`, `birth_date`, `legal_hold`) due for
    erasure on `today`, oldest first; held records and those with no birth date never are."""
    due = []
    for state in states:
        birth = parse_birth_date(state.get("birth_date"))
        if birth is None or state.get("legal_hold"):
            continue
        when = erasure_due(birth, extra_years)
        if when <= today:
            due.append(RetentionDue(state["_id"], birth, when))
    return sorted(due, key=lambda d: (d.due, d.record))
