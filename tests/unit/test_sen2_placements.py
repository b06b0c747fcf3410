"""SEN2 placements and the named plan's personal budget, read from a plan's sections I and J
(pure: no server). The end-to-end rows are in tests/e2e/test_statutory_timeline.py."""

from __future__ import annotations

from datetime import date

from ehcp_record.operations.sen2 import Return, _personal_budget, _placements

BASE = "http://ehcp-record.example.org/fhir"
YEAR_2026 = (date(2026, 1, 1), date(2026, 12, 31))


def entry(reference: str | None = None, display: str | None = None, **parts) -> dict:
    values = []
    for name, value in parts.items():
        if name in ("attendancePattern", "setting", "residential"):
            system = {"attendancePattern": "sen2-attendance-pattern", "setting": "sen2-setting",
                      "residential": "sen2-residential"}[name]
            values.append({"url": name, "valueCoding": {"system": f"{BASE}/CodeSystem/{system}", "code": value}})
        elif isinstance(value, bool):
            values.append({"url": name, "valueBoolean": value})
        else:
            values.append({"url": name, "valueDate": value})
    found = {"extension": [{"url": f"{BASE}/StructureDefinition/ehcp-placement", "extension": values}]}
    found.update({k: v for k, v in (("reference", reference), ("display", display)) if v})
    return found


def plan(*entries: dict, budget: list[dict] | None = None) -> dict:
    section_j = {"code": {"coding": [{"code": "J"}]}}
    if budget is not None:
        section_j["extension"] = [{"url": f"{BASE}/StructureDefinition/ehcp-personal-budget", "extension": budget}]
    return {"resourceType": "Composition", "section": [{"code": {"coding": [{"code": "I"}]}, "entry": list(entries)},
                                                       section_j]}


COLLEGE = {"resourceType": "Organization", "id": "college", "name": "Example College",
           "identifier": [{"system": f"{BASE}/NamingSystem/ukprn", "value": "10001234"}]}


def test_each_placement_of_the_year_in_rank_order_with_its_dfe_codes():
    result = Return(2027, date(2027, 1, 21))
    rows = _placements(result, "p1", plan(
        entry("Organization/college", start="2025-09-01", end="2025-12-19", attendancePattern="FT"),  # before the year
        entry("Organization/college", start="2026-01-05", attendancePattern="PT", residential="A", resourcedProvision=True),
        entry(display="Awaiting a placement after moving in", setting="NIEO", start="2026-02-01", attendancePattern="FT"),
    ), [COLLEGE], date(2025, 6, 1), YEAR_2026)
    assert [(r["ukprn"], r["sen_setting"], r["sen_setting_other"], r["placement_rank"], r["entry_date"],
             r["attendance_pattern"], r["residential"], r["resourced_provision"]) for r in rows] == [
        ("10001234", "", "", 1, "2026-01-05", "PT", "A", "Y"),
        ("", "NIEO", "Awaiting a placement after moving in", 2, "2026-02-01", "FT", "", "N")]
    assert result.problems == []


def test_a_missing_attendance_pattern_or_start_is_reported_or_taken_from_the_plan():
    result = Return(2027, date(2027, 1, 21))
    rows = _placements(result, "p1", plan(entry("Organization/college")), [COLLEGE], date(2026, 3, 2), YEAR_2026)
    assert rows[0]["entry_date"] == "2026-03-02" and rows[0]["attendance_pattern"] == ""
    assert [p[2][:38] for p in result.problems] == ["attendance pattern of Example College "]


def test_a_setting_is_reported_only_where_there_is_no_urn_or_ukprn():
    result = Return(2027, date(2027, 1, 21))
    rows = _placements(result, "p1", plan(entry("Organization/college", setting="OLA", attendancePattern="FT")),
                       [COLLEGE], None, YEAR_2026)
    assert rows[0]["ukprn"] == "10001234" and rows[0]["sen_setting"] == ""


def test_the_personal_budget_is_y_or_n_and_reported_when_not_recorded():
    result = Return(2027, date(2027, 1, 21))
    taken = [{"url": "takenUp", "valueBoolean": True}, {"url": "organisedArrangements", "valueBoolean": True}]
    assert _personal_budget(result, "p1", plan(budget=taken)) == {"pb": "Y", "oa": "Y", "dp": "N"}
    assert _personal_budget(result, "p1", plan()) == {"pb": "", "oa": "", "dp": ""}
    assert [p[1] for p in result.problems] == ["named-plans"]
