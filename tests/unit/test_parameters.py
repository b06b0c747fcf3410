"""The one Parameters reader (ehcp_record.fhir.parameters)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from ehcp_record.errors import FhirError
from ehcp_record.fhir.parameters import PART, RESOURCE, parameters, read_parameters


def refusal(body, *args, **kwargs) -> FhirError:
    with pytest.raises(FhirError) as caught:
        read_parameters(body, *args, **kwargs)
    assert caught.value.status == 400
    return caught.value


def test_values_of_any_type_references_resources_and_parts():
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "destination", "valueReference": {"reference": "Organization/la-916"}},
        {"name": "moveDate", "valueDate": "2026-09-01"},
        {"name": "urgent", "valueBoolean": False},
        {"name": "resource", "resource": {"resourceType": "Patient", "id": "p1"}},
        {"name": "contact", "part": [{"name": "name", "valueString": "Ann"}, {"name": "tel", "valueString": "1"}]},
    ]}
    assert read_parameters(body) == {
        "destination": {"reference": "Organization/la-916"}, "moveDate": "2026-09-01", "urgent": False,
        "resource": {"resourceType": "Patient", "id": "p1"}, "contact": {"name": "Ann", "tel": "1"},
    }


def test_repeated_parameters_as_lists_on_request():
    body = parameters(section=[("code", "B"), ("code", "C")], note=("string", "x"))
    assert read_parameters(body, repeating=["section", "absent"]) == {"section": ["B", "C"], "absent": [], "note": "x"}
    error = refusal(body)
    assert error.code == "structure" and "parameter 'section' is given more than once" in error.diagnostics
    assert error.expression == ["Parameters.parameter[1]"]


def test_missing_required_parameter_is_named_with_its_type():
    error = refusal(parameters(moveDate=("date", "2026-09-01")), {"destination": "Reference"},
                    required=["destination"])
    assert error.code == "required"
    assert error.diagnostics == "parameter 'destination' (a Reference (valueReference)) is required"
    assert refusal(parameters(), repeating=["x"], required=["x"]).code == "required"


def test_wrong_type_is_refused_naming_both_types():
    error = refusal(parameters(moveDate=("string", "next week")), {"moveDate": "date"})
    assert error.code == "value" and error.expression == ["Parameters.parameter[0]"]
    assert error.diagnostics == "parameter 'moveDate' must be a date (valueDate), not a string (valueString)"
    assert read_parameters(parameters(response=("code", "agree")), {"response": ("code", "string")}) == \
        {"response": "agree"}


def test_unknown_parameters_refused_only_when_strict():
    body = parameters(response=("code", "agree"), colour=("string", "blue"))
    assert read_parameters(body, {"response": "code"})["colour"] == "blue"
    error = refusal(body, {"response": "code"}, strict=True)
    assert error.code == "not-supported" and "parameter 'colour' is not known here (parameters: response)" == error.diagnostics


@pytest.mark.parametrize("body, fragment", [
    ({"resourceType": "Patient"}, "resourceType 'Patient' does not match"),
    ([], "must be a JSON object"),
    ({"resourceType": "Parameters", "parameter": [{"valueString": "x"}]}, "Parameters"),
])
def test_not_parameters_is_400(body, fragment):
    assert fragment in refusal(body).diagnostics


def test_parameter_without_a_value_is_refused():
    error = refusal({"parameter": [{"name": "response"}]}, check_structure=False)
    assert error.diagnostics == "parameter 'response' has no value; give exactly one value[x], resource or part"
    error = refusal({"parameter": [{"name": "r", "valueString": "a", "valueCode": "b"}]}, check_structure=False)
    assert "has 2 values (valueString, valueCode)" in error.diagnostics


SIMPLE = st.one_of(
    st.tuples(st.just("string"), st.text(st.characters(whitelist_categories=("L", "N")), min_size=1, max_size=20)),
    st.tuples(st.just("boolean"), st.booleans()),
    st.tuples(st.just("integer"), st.integers(-2**31, 2**31 - 1)),
    st.tuples(st.just("code"), st.sampled_from(["agree", "disagree", "comment"])),
    st.tuples(st.just("date"), st.dates().map(lambda d: d.isoformat())),
    st.tuples(st.just("Reference"), st.from_regex(r"Organization/[a-z0-9\-]{1,20}", fullmatch=True)
              .map(lambda r: {"reference": r})),
)
NAMES = st.from_regex(r"[a-z][A-Za-z]{0,10}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(single=st.dictionaries(NAMES, SIMPLE, max_size=6),
       repeated=st.dictionaries(NAMES.map(lambda n: n + "s"), st.lists(SIMPLE, max_size=3), max_size=3),
       part=st.dictionaries(NAMES, SIMPLE, min_size=1, max_size=3))
def test_random_parameters_round_trip(single, repeated, part):
    repeated = {k: v for k, v in repeated.items() if k not in single}
    body = parameters(**single, **repeated, nested=(PART, part))
    if not body["parameter"]:
        return
    read = read_parameters(body, {name: kind for name, (kind, _) in single.items()},
                           repeating=list(repeated), required=list(single))
    assert {k: v for k, v in read.items() if k != "nested"} == \
        {**{k: v for k, (_, v) in single.items()}, **{k: [v for _, v in vs] for k, vs in repeated.items()}}
    assert read["nested"] == {k: v for k, (_, v) in part.items()}


def test_resource_parameter_type():
    body = parameters(resource=(RESOURCE, {"resourceType": "Patient"}), profile=("canonical", "http://x/y"))
    assert read_parameters(body, {"resource": RESOURCE, "profile": ("uri", "canonical")}, required=["resource"]) == \
        {"resource": {"resourceType": "Patient"}, "profile": "http://x/y"}
