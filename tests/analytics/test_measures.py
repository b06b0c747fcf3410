"""Every Measure, evaluated through `$evaluate-measure` over the extract of the 2,000-child
cohort, against figures computed here straight from what the generator made (bench/cohort.py
`facts`), in plain Python that shares no code with ehcp_record.analytics.

Published cells must equal the independent count; a cell of 1 to 4 children must be hidden;
the report's total must be the number of rows of the population."""

from __future__ import annotations

from collections import defaultdict
from datetime import date

import pytest

from bench.cohort import ChildFacts
from ehcp_record.fhir.model import parse_resource

LAS = {"866": "Organization/la-866", "855": "Organization/la-855"}
MASKED = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
PROGRESS = {"achieved": "achieved", "sustaining": "achieved", "in-progress": "progressing",
            "improving": "progressing"}  # everything else recorded: not progressing


def band(birth: date, year: int) -> str | None:
    age = year - birth.year - ((1, 1) < (birth.month, birth.day))
    if age > 25:
        return None
    return "0-4" if age < 5 else "5-10" if age < 11 else "11-15" if age < 16 else "16-19" if age < 20 else "20-25"


def maintained(child: ChildFacts, year: int, as_of: date) -> bool:
    if child.start.year > year or year > as_of.year:
        return False
    return child.ceased is None or child.ceased[0].year >= year


def rows_for(measure: str, facts: list[ChildFacts], la: str, year: int, as_of: date) -> list[tuple[str, dict]]:
    """(child, dimensions) per row of the measure's population, from the raw facts."""
    out: list[tuple[str, dict]] = []
    for c in facts:
        mine = c.custodian == LAS[la]
        need = c.needs[0]
        if measure in ("ehcp-need-prevalence", "ehcp-placements", "ehcp-provision") and mine \
                and maintained(c, year, as_of) and band(c.birth, year):
            if measure == "ehcp-need-prevalence":
                out.append((c.record, {"primary_need": need, "age_band": band(c.birth, year)}))
            elif measure == "ehcp-placements":
                out.append((c.record, {"setting_type": c.setting}))
            else:
                out += [(c.record, {"section": s, "category": k}) for s, k in c.provisions]
        elif measure == "ehcp-outcome-progress" and mine and c.last_review_held and c.last_review_held.year == year:
            out += [(c.record, {"primary_need": need, "progress": PROGRESS.get(a, "not-progressing")})
                    for a in c.outcomes]
        elif measure == "ehcp-twenty-week" and mine and c.start.year == year:
            late = "late-excepted" if c.final_exception else "late"
            out.append((c.record, {"timeliness": "met" if c.start <= c.final_due else late, "primary_need": need}))
        elif measure == "ehcp-reviews-on-time" and mine:
            for due, held in c.reviews:
                if due.year == year and (held or due < as_of):
                    state = "overdue" if held is None else "met" if held <= due else "late"
                    out.append((c.record, {"timeliness": state, "primary_need": need}))
        elif measure == "ehcp-transfers-on-time" and c.transfer and c.transfer[2] == LAS[la]:
            due, done, _ = c.transfer
            if due.year == year and (done or due < as_of):
                out.append((c.record, {"timeliness": "overdue" if done is None else "met" if done <= due else "late"}))
        elif measure == "ehcp-plans-ceased" and mine and c.ceased and c.ceased[0].year == year:
            out.append((c.record, {"reason": c.ceased[1], "primary_need": need}))
    return out


def expected_cells(rows: list[tuple[str, dict]], components: list[str]) -> dict[tuple, tuple[int, int]]:
    counts: dict[tuple, int] = defaultdict(int)
    children: dict[tuple, set] = defaultdict(set)
    for child, dims in rows:
        key = tuple(dims[c] for c in components)
        counts[key] += 1
        children[key].add(child)
    return {k: (counts[k], len(children[k])) for k in counts}


def published(stratifier: dict) -> dict[tuple, int | None]:
    found = {}
    for stratum in stratifier["stratum"]:
        key = tuple(c["value"]["text"] for c in stratum["component"]) if "component" in stratum \
            else (stratum["value"]["text"],)
        population = stratum["population"][0]
        masked = any(e["url"] == MASKED for e in population.get("extension", []))
        found[key] = None if masked else population["count"]
    return found


MEASURES = ["ehcp-need-prevalence", "ehcp-provision", "ehcp-outcome-progress", "ehcp-twenty-week",
            "ehcp-reviews-on-time", "ehcp-transfers-on-time", "ehcp-placements", "ehcp-plans-ceased"]


@pytest.mark.parametrize("measure", MEASURES)
def test_measure_matches_figures_computed_from_the_raw_cohort(cohort_api, measure):
    api, cohort = cohort_api
    token = api.token("partnership", "Organization/dfe")
    year = cohort.as_of.year - 1
    checked = 0
    for la in LAS:
        response = api.get(f"/fhir/Measure/{measure}/$evaluate-measure?periodStart={year}-01-01"
                           f"&periodEnd={year}-12-31&subject={la}", token)
        assert response.status_code == 200, response.text
        report = response.json()
        parse_resource(report, "MeasureReport")  # a valid R4 MeasureReport
        rows = rows_for(measure, cohort.facts, la, year, cohort.as_of)
        group = report["group"][0]
        total = group["population"][0]
        assert total.get("count") == len(rows) or (total.get("count") is None and 0 < len({c for c, _ in rows}) < 5)
        for stratifier in group["stratifier"]:
            components = stratifier["code"][0]["text"].split(" x ")
            expected = expected_cells(rows, components)
            shown = published(stratifier)
            assert set(shown) == set(expected), (measure, components)
            for key, value in shown.items():
                count, children = expected[key]
                if 0 < children < 5:
                    assert value is None, f"{measure} {la} {key}: {children} children published"
                if value is not None:
                    assert value == count, f"{measure} {la} {key}: {value} published, {count} in the cohort"
                    checked += 1
        numerator = next((p for p in group["population"] if p["code"]["coding"][0]["code"] == "numerator"), None)
        if numerator is not None and "count" in numerator:
            hits = [c for c, d in rows if d.get("timeliness", d.get("progress")) in ("met", "achieved")]
            assert numerator["count"] == len(hits)
            assert group["measureScore"]["value"] == pytest.approx(len(hits) / len(rows), abs=1e-4)
    assert checked > 0, f"{measure}: no published cell to compare"
