"""Trying to single out a child of the 2,000-child cohort, and failing.

The attacker has: every identifying detail of every child (name, NHS number, UPN, postcode,
date of birth, record id, the free text of the plan, the school), a recipient's copy of the
extract, any MeasureReport an LA or partnership user can ask for, and the dashboard.
- the extract holds none of those details, nothing but pseudonyms, codes, bands and months,
  and names a school only when at least ten children attend it;
- pseudonyms differ per recipient and cannot be recomputed without the deployment's key;
- no published cell describes 1 to 4 children, and none hidden follows from a total and the
  cells beside it (unique combinations);
- periods cannot overlap (whole single years only), and a year's figures are released once, so
  a child recorded later cannot be found by comparing two evaluations (differencing).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bench.cohort import ChildFacts, _envelope, resources
from tests.analytics.conftest import staff_browser
from tests.analytics.test_measures import LAS, MASKED, MEASURES, rows_for

PROFILES = Path(__file__).resolve().parents[2] / "profiles" / "CodeSystem"
PROFILE_CODES = {c["code"] for p in PROFILES.glob("*.json") for c in json.loads(p.read_text())["concept"]} | {
    "none", "unspecified"}
HEX = re.compile(r"[0-9a-f]{32}")
MONTH = re.compile(r"20\d\d-(0[1-9]|1[0-2])")
CODES = {
    "la": {"866", "855", "unknown"},
    "age_band": {"0-4", "5-10", "11-15", "16-19", "20-25"},
    "progress": {"achieved", "progressing", "not-progressing"},
    "timeliness": {"met", "late", "late-excepted", "overdue", "overdue-excepted"},
    "section": {"F", "G", "H1", "H2"},
}


def _values(table) -> dict[str, list]:
    return {name: table.column(name).to_pylist() for name in table.column_names}


def _forbidden(cohort) -> set[str]:
    found = set()
    for c in cohort.facts:
        found |= {c.record, c.nhs_number, c.upn, c.postcode, c.birth.isoformat(), c.start.isoformat(), c.note}
        found |= set(c.name.split())
    return found


def test_the_extract_holds_no_name_identifier_free_text_or_exact_date(cohort_api, tmp_path):
    api, cohort = cohort_api
    extract = api.services.analytics.extract
    forbidden = _forbidden(cohort)
    schools: dict[str, set] = defaultdict(set)
    for c in cohort.facts:
        schools[cohort.schools[c.school][0]].add(c.record)
    big = {urn for urn, children in schools.items() if len(children) >= 10}
    exported = extract.export("national-warehouse", tmp_path)
    assert set(pq.read_table(exported["plan_years"]).column("child").to_pylist()).isdisjoint(
        pq.read_table(extract.files()["plan_years"]).column("child").to_pylist())
    files = list(extract.files().values())  # the export differs from these in `child` only
    seen_rows = 0
    for path in files:
        metadata = pq.read_metadata(path).metadata or {}
        assert not any(any(f in str(v) for f in forbidden) for v in metadata.values()), path
        for column, values in _values(pq.read_table(path)).items():
            seen_rows += len(values)
            for value in values:
                if value is None:
                    continue
                text = str(value)
                assert text not in forbidden, f"{path.name}.{column}: {text!r} is a child's detail"
                assert not re.search(r"\d{4}-\d\d-\d\d", text), f"{path.name}.{column}: an exact date {text!r}"
                if column == "child":
                    assert HEX.fullmatch(text)
                elif column == "month":
                    assert MONTH.fullmatch(text)
                elif column in CODES:
                    assert text in CODES[column], (column, text)
                elif column == "setting":
                    assert text in big or not text.isdigit(), f"school {text} named with fewer than ten children"
                elif column not in ("year", "rank"):
                    assert text in PROFILE_CODES, (column, text)  # a code of profiles/CodeSystem, never prose
    assert seen_rows > 20000


def test_pseudonyms_differ_per_recipient_and_cannot_be_recomputed(cohort_api, tmp_path):
    api, cohort = cohort_api
    extract = api.services.analytics.extract
    own = set(pq.read_table(extract.files()["plan_years"]).column("child").to_pylist())
    first = set(pq.read_table(extract.export("la-866-analysts", tmp_path / "a")["plan_years"]).column("child").to_pylist())
    second = set(pq.read_table(extract.export("dfe", tmp_path / "b")["plan_years"]).column("child").to_pylist())
    assert len(own) > 1500 and len(first) == len(second) > 1500  # the release: one per child and year
    assert not (own & first) and not (own & second) and not (first & second)
    guesses = set()
    for c in cohort.facts:
        for secret in (c.record, c.nhs_number, c.upn):
            digest = hashlib.sha256(secret.encode()).hexdigest()
            guesses |= {digest[:32], digest[-32:], hashlib.md5(secret.encode()).hexdigest()}
    assert not guesses & (own | first | second)


def _lines(report: dict) -> list[tuple[int | None, list[int | None]]]:
    """(published total, the counts that add up to it) for each line of each table."""
    group = report["group"][0]
    cells: dict[tuple, int | None] = {}
    dims: list[str] = []
    for stratifier in group["stratifier"]:
        mine = stratifier["code"][0]["text"].split(" x ")
        dims = mine if len(mine) > len(dims) else dims
    for stratifier in group["stratifier"]:
        mine = stratifier["code"][0]["text"].split(" x ")
        for stratum in stratifier["stratum"]:
            parts = [c["value"]["text"] for c in stratum["component"]] if "component" in stratum else [stratum["value"]["text"]]
            key = tuple(parts[mine.index(d)] if d in mine else None for d in dims)
            population = stratum["population"][0]
            cells[key] = None if any(e["url"] == MASKED for e in population.get("extension", [])) else population["count"]
    total = group["population"][0]
    cells[(None,) * len(dims)] = total.get("count")
    lines = defaultdict(list)
    for key, value in cells.items():
        for position, part in enumerate(key):
            if part is not None:
                lines[(key[:position] + (None,) + key[position + 1:], position)].append(value)
    return [(cells.get(total_key), members) for (total_key, _), members in lines.items()]


@pytest.mark.parametrize("measure", MEASURES)
def test_no_report_singles_out_a_child(cohort_api, measure):
    """Unique combinations: every published cell is 0 or at least five children (counted from
    the raw cohort), and no hidden cell equals a published total minus the cells beside it."""
    api, cohort = cohort_api
    token = api.token("partnership", "Organization/dfe")
    for la in LAS:
        for year in (cohort.as_of.year - 2, cohort.as_of.year - 1):
            report = api.get(f"/fhir/Measure/{measure}/$evaluate-measure?periodStart={year}&periodEnd={year}"
                             f"&subject={la}", token).json()
            children: dict[tuple, set] = defaultdict(set)
            for child, dims in rows_for(measure, cohort.facts, la, year, cohort.as_of):
                for name, value in dims.items():
                    children[(name, value)].add(child)
            for stratifier in report["group"][0]["stratifier"]:
                if len(stratifier["code"][0]["text"].split(" x ")) != 1:
                    continue
                name = stratifier["code"][0]["text"]
                for stratum in stratifier["stratum"]:
                    few = 0 < len(children[(name, stratum["value"]["text"])]) < 5
                    assert not (few and "count" in stratum["population"][0]), (measure, la, year, stratum)
            for total, members in _lines(report):
                if total is not None:
                    assert sum(m is None for m in members) != 1, (measure, la, year, total, members)
            _numerator_hides_nothing(measure, report)


#: A proportion's numerator is one margin cell: published only where that cell is.
NUMERATORS = {"ehcp-outcome-progress": ("progress", "achieved"), "ehcp-twenty-week": ("timeliness", "met"),
              "ehcp-reviews-on-time": ("timeliness", "met"), "ehcp-transfers-on-time": ("timeliness", "met")}


def _numerator_hides_nothing(measure: str, report: dict) -> None:
    group = report["group"][0]
    numerator = next((p for p in group["population"] if p["code"]["coding"][0]["code"] == "numerator"), None)
    if measure not in NUMERATORS or numerator is None or "count" not in numerator:
        return
    dimension, value = NUMERATORS[measure]
    margin = next(s for s in group["stratifier"] if s["code"][0]["text"] == dimension)
    cell = next((t["population"][0] for t in margin["stratum"] if t["value"]["text"] == value), {"count": 0})
    assert cell.get("count") == numerator["count"], (measure, "the numerator shows a hidden margin")


def test_overlapping_or_partial_periods_cannot_be_differenced(cohort_api):
    api, cohort = cohort_api
    token = api.token("partnership", "Organization/dfe")
    year = cohort.as_of.year - 1
    path = "/fhir/Measure/ehcp-need-prevalence/$evaluate-measure"
    for start, end in ((f"{year}-01-01", f"{year}-11-30"), (f"{year}-02-01", f"{year}-12-31"),
                       (f"{year - 1}-01-01", f"{year}-12-31"), (f"{year}-06-01", f"{year}-06-30")):
        response = api.get(f"{path}?periodStart={start}&periodEnd={end}&subject=866", token)
        assert response.status_code == 400, (start, end, response.text)
    running = api.get(f"{path}?periodStart={cohort.as_of.year}&periodEnd={cohort.as_of.year}&subject=866", token)
    assert running.status_code == 400 and "once the year has ended" in running.json()["issue"][0]["diagnostics"]


def test_a_child_recorded_later_cannot_be_found_by_comparing_evaluations(cohort_api):
    """Differencing over time: a year's figures are released once, so adding a child with a
    rare need to that year changes nothing anyone can see, though the extract has the child."""
    api, cohort = cohort_api
    token = api.token("partnership", "Organization/dfe")
    year = cohort.as_of.year - 1
    query = f"periodStart={year}-01-01&periodEnd={year}-12-31&subject=866"
    before = {m: api.get(f"/fhir/Measure/{m}/$evaluate-measure?{query}", token).json()["group"] for m in MEASURES}
    template = cohort.facts[0]
    newcomer = ChildFacts(**{**template.__dict__, "record": "f" * 8 + "-0000-4000-8000-" + "a" * 12,
                             "custodian": "Organization/la-866", "needs": ["MSI"], "start": date(year, 3, 2),
                             "final_due": date(year, 3, 10), "final_exception": False, "ceased": None,
                             "transfer": None, "reviews": [], "outcomes": [], "last_review_held": None,
                             "birth": date(year - 17, 5, 5)})
    db = api.services.repo.db
    docs = [_envelope(r, newcomer.record, newcomer.custodian, api.services.records.clock()) for r in resources(newcomer)]
    db.current.insert_many(docs)
    db.records.insert_one({"_id": newcomer.record, "custodian": newcomer.custodian, "parents": []})
    feed = api.services.analytics.extract.feed
    overlap, feed.overlap = feed.overlap, timedelta(0)  # the cohort itself was written moments ago
    try:
        report = api.services.analytics.extract.refresh()
        assert not report.full and report.records_rebuilt == 1  # incremental: only what changed
        years = pq.read_table(api.services.analytics.extract.files()["plan_years"]).to_pylist()
        mine = [r for r in years if r["year"] == year and r["primary_need"] == "MSI" and r["la"] == "866"]
        assert any(r["age_band"] == "16-19" for r in mine)  # the newcomer is in the extract
        after = {m: api.get(f"/fhir/Measure/{m}/$evaluate-measure?{query}", token).json()["group"] for m in MEASURES}
        assert after == before
    finally:
        feed.overlap = overlap
        db.current.delete_many({"record": newcomer.record})
        db.records.delete_one({"_id": newcomer.record})


def test_the_dashboard_shows_only_what_the_reports_publish(cohort_api):
    api, cohort = cohort_api
    browser = staff_browser(api, "la", "Organization/la-866", "casey-professional")
    year = cohort.as_of.year - 1
    bundle = browser.get(f"{api.base}/dashboard/reports?year={year}", timeout=30).json()
    token = api.token("la", "Organization/la-866")
    for entry in bundle["entry"]:
        report = entry["resource"]
        if report["resourceType"] != "MeasureReport":
            continue
        measure = report["measure"].rsplit("/", 1)[1]
        direct = api.get(f"/fhir/Measure/{measure}/$evaluate-measure?periodStart={year}&periodEnd={year}", token).json()
        assert report["group"] == direct["group"]
