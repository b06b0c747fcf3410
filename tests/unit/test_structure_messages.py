"""Structural errors in plain English, one OperationOutcome issue each with its FHIRPath."""

from __future__ import annotations

import pytest

from ehcp_record.errors import FhirError, outcome_of
from ehcp_record.fhir.model import parse_resource


def issues(body: dict) -> list[dict]:
    with pytest.raises(FhirError) as caught:
        parse_resource(body)
    return outcome_of(caught.value)["issue"]


def test_every_problem_is_its_own_issue_with_its_expression():
    found = issues({"resourceType": "Patient", "birthDate": "14/03/2015", "gendr": "male", "name": [{"given": "Sam"}]})
    assert [i["expression"] for i in found] == [["Patient.birthDate"], ["Patient.name[0].given"], ["Patient.gendr"]]
    assert all(i["code"] == "structure" and i["severity"] == "error" for i in found)
    text = " ".join(i["diagnostics"] for i in found)
    assert "YYYY-MM-DD" in text and "must be a list" in text and "check its spelling" in text
    for jargon in ("regex", "Extra inputs", "should match pattern", "more problem", "Input should"):
        assert jargon not in text


def test_missing_and_malformed_id_and_datetime():
    assert issues({"resourceType": "Condition"})[0]["diagnostics"] == \
        "Condition.subject: this element is required and is missing"
    found = issues({"resourceType": "Patient", "id": "bad id!", "deceasedDateTime": "2020-13"})
    assert "letters, digits" in found[0]["diagnostics"] and "time zone" in found[1]["diagnostics"]
