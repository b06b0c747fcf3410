"""The Measures in profiles/Measure are valid FHIR R4 Measures, one per dashboard figure the
issue names, each readable by the evaluator; pseudonyms and bands behave as documented."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from ehcp_record.analytics.banding import age_band, month
from ehcp_record.analytics.pseudonym import Pseudonymiser
from ehcp_record.analytics.rows import TABLES
from ehcp_record.analytics.service import period_of
from ehcp_record.errors import FhirError
from ehcp_record.fhir.model import parse_resource

MEASURES = Path(__file__).resolve().parents[2] / "profiles" / "Measure"
FIGURES = {"ehcp-need-prevalence", "ehcp-provision", "ehcp-outcome-progress", "ehcp-twenty-week",
           "ehcp-reviews-on-time", "ehcp-transfers-on-time", "ehcp-placements", "ehcp-plans-ceased"}


def test_one_valid_measure_per_figure():
    found = {}
    for path in MEASURES.glob("*.json"):
        resource = json.loads(path.read_text())
        parse_resource(resource, "Measure")  # valid FHIR R4
        assert resource["id"] == path.stem and resource["url"].endswith(f"/Measure/{path.stem}")
        found[resource["id"]] = resource
    assert set(found) == FIGURES
    for measure in found.values():
        group = measure["group"][0]
        population = group["population"][0]
        assert population["criteria"]["language"] == "application/x-duckdb-sql"
        table = population["criteria"]["expression"].split(" FROM ")[1].split()[0]
        assert table in TABLES
        for stratifier in group["stratifier"]:
            for component in stratifier["component"]:
                assert component["criteria"]["expression"] in TABLES[table]


def test_pseudonyms_are_keyed_and_differ_per_recipient():
    one, other = Pseudonymiser(b"a" * 32), Pseudonymiser(b"b" * 32)
    assert one.own("record-1") == one.own("record-1") != other.own("record-1")
    assert one.for_recipient(one.own("r"), "dfe") != one.for_recipient(one.own("r"), "la-866")
    assert len(one.own("r")) == 32
    with pytest.raises(ValueError):
        Pseudonymiser(b"short")


@pytest.mark.parametrize("birth,year,band", [
    (date(2020, 1, 1), 2025, "5-10"), (date(2020, 1, 2), 2025, "0-4"), (date(2025, 6, 1), 2025, "0-4"),
    (date(2009, 12, 31), 2025, "11-15"), (date(2009, 1, 1), 2025, "16-19"), (date(2000, 1, 1), 2025, "20-25"), (date(1999, 1, 1), 2025, None)])
def test_age_bands_on_1_january(birth, year, band):
    assert age_band(birth, year) == band


def test_dates_become_months():
    assert month(date(2025, 3, 17)) == "2025-03" and month(None) is None


@pytest.mark.parametrize("start,end,year", [("2025-01-01", "2025-12-31", 2025), ("2025", "2025", 2025),
                                            ("2024", None, 2024)])
def test_whole_years(start, end, year):
    assert period_of(start, end).year == year


@pytest.mark.parametrize("start,end", [("2025-01-01", "2025-11-30"), ("2025-02-01", "2025-12-31"),
                                       ("2024-01-01", "2025-12-31"), ("", ""), ("2025-13-01", "2025-12-31")])
def test_no_other_period(start, end):
    with pytest.raises(FhirError):
        period_of(start, end)


def test_a_numerator_never_shows_a_margin_the_table_hides():
    """met 20, late 30, late-excepted 3: the 3 is hidden and so is the next smallest, met;
    publishing the numerator (met) would give both back."""
    from ehcp_record.analytics.disclosure import Cell, suppress
    from ehcp_record.analytics.measures import _numerator_shown

    cells = {("met",): Cell(20, 20), ("late",): Cell(30, 30), ("late-excepted",): Cell(3, 3), (None,): Cell(53, 53)}
    suppress(cells)
    assert cells[("met",)].suppressed and not cells[("late",)].suppressed
    assert not _numerator_shown("timeliness = 'met'", ["timeliness"], cells)
    assert _numerator_shown("timeliness = 'late'", ["timeliness"], cells)
    assert not _numerator_shown("timeliness <> 'late'", ["timeliness"], cells)  # not one margin: table hides some
