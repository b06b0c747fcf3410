"""`$evaluate-measure` for the dashboard and for national collection: who may ask, for which
LA and period, and the audit of every query of the extract.

Who may call (the inclusion dashboards of the SEND Review green paper ch. 5 are for LAs and
the national partnership, never for a family or a school): a local authority user, for its
own LA only; a partnership user (role `partnership`, e.g. DfE or a Change Programme
partnership), for any LA it names. Everyone else is refused (403), and the refusal is audited
too. A query reads only the extract's Parquet files, never the record store, and is recorded
in the audit trail (the directory chain: no child's record is read) with the measure, the
period and the LA.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable

from ehcp_record.access.scoped import ScopedStore
from ehcp_record.analytics.disclosure import DEFAULT_THRESHOLD
from ehcp_record.analytics.extract import Extract
from ehcp_record.analytics.measures import Period, evaluate, load_measures
from ehcp_record.errors import FhirError, forbidden, invalid, not_found

ROLES = ("la", "partnership")
AUDIT_ACTION = "evaluate-measure"
_LA_NUMBER = re.compile(r"\d{3}")
_YEAR_START = re.compile(r"(\d{4})(-01(-01)?)?")
_YEAR_END = re.compile(r"(\d{4})(-12(-31)?)?")


@dataclass
class AnalyticsService:
    extract: Extract
    measures_dir: Path
    threshold: int = DEFAULT_THRESHOLD
    today: Callable[[], date] = field(default=lambda: datetime.now(timezone.utc).date())

    def measures(self) -> dict[str, dict]:
        return load_measures(self.measures_dir)

    def evaluate(self, store: ScopedStore, measure_id: str, params: dict[str, str]) -> dict:
        """The summary MeasureReport of `measure_id` for one LA and one calendar year."""
        actor = store.caller.actor
        try:
            if actor.role not in ROLES:
                raise forbidden("the analytics measures are for local authority and partnership users; "
                                "families, schools and services read the record itself")
            measure = self.measures().get(measure_id)
            if measure is None:
                raise not_found(f"Measure/{measure_id}")
            period = period_of(params.get("periodStart"), params.get("periodEnd"))
            if period.year >= self.today().year:
                raise invalid(f"figures for {period.year} are published once the year has ended (a year still "
                              "running would show each new child as a change)", "value", ["periodStart"])
            la = self._subject(actor.role, actor.organization, params.get("subject"))
            files = self.extract.files()
        except FhirError as refusal:
            store.audit_record(None, AUDIT_ACTION, f"Measure/{measure_id}: {refusal.diagnostics}", outcome="deny")
            raise
        store.audit_record(None, AUDIT_ACTION, f"Measure/{measure_id} for LA {la}, {period.start} to {period.end}")
        return self._released(measure, files, la, period)

    def _released(self, measure: dict, files: dict | None, la: str, period: Period) -> dict:
        """A year's report is released once and then stays as it was, like an official
        statistics release: a child recorded late cannot be found by comparing today's
        figures with yesterday's. The release is kept beside the extract."""
        path = self.extract.root / "releases" / f"t{self.threshold}" / measure["id"] / f"{la}-{period.year}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            pass
        if files is None:  # nothing built yet: a pending report of nothing, never released
            return evaluate(measure, None, la, period, self.threshold)
        report = evaluate(measure, files, la, period, self.threshold)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(report), encoding="utf-8")
        os.replace(temporary, path)
        return report

    def _subject(self, role: str, organization: str | None, subject: str | None) -> str:
        """The LA number the report is about: an LA's own; the one a partnership user names."""
        las = (self.extract.manifest() or {}).get("local_authorities", {})
        own = las.get(organization or "")
        asked = _la_of(subject, las) if subject else None
        if role == "la":
            if own is None:
                raise forbidden("your organisation is not a local authority known to this deployment")
            if asked is not None and asked != own:
                raise forbidden("a local authority sees its own figures only")
            return own
        if asked is None:
            raise invalid("parameter 'subject' must name the local authority: Organization/<id> or its "
                          "three-digit DfE LA number", "required", ["subject"])
        return asked


def _la_of(subject: str, las: dict[str, str]) -> str:
    if _LA_NUMBER.fullmatch(subject):
        return subject
    if subject in las:
        return las[subject]
    raise invalid("parameter 'subject' must be Organization/<id> of a local authority or a three-digit DfE LA "
                  "number", "value", ["subject"])


def period_of(start: str | None, end: str | None) -> Period:
    """One whole calendar year: periodStart YYYY(-01-01), periodEnd the same YYYY(-12-31).

    Whole, disjoint years are the only periods, so two reports never differ by a few
    children (disclosure.py)."""
    first = _YEAR_START.fullmatch(start or "")
    last = _YEAR_END.fullmatch(end or start or "")
    if not first or not last or first.group(1) != last.group(1) or not 2000 <= int(first.group(1)) <= 2100:
        raise invalid("periodStart and periodEnd must be one calendar year, e.g. periodStart=2025-01-01&"
                      "periodEnd=2025-12-31 (figures are published for whole years only, so that no child can be "
                      "found by comparing two periods)", "value", ["periodStart", "periodEnd"])
    return Period(int(first.group(1)))
