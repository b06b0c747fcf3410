"""Bad input gets a clear OperationOutcome and changes nothing; no 500 for a client mistake."""

from __future__ import annotations

import pytest

from tests.support import need, outcome_code


def _count(api, path="/fhir/Patient?_summary=count"):
    return api.get(path, api.la()).json()["total"]


def _raw(api, method, path, data, content_type="application/fhir+json"):
    headers = {"Authorization": f"Bearer {api.la()}", "Content-Type": content_type}
    return api.session.request(method, api.base + path, data=data, headers=headers, timeout=30)


@pytest.mark.parametrize("data, code", [
    (b"{not json", "structure"),
    (b"[]", "structure"),
    (b'{"birthDate": "2015-01-01"}', "required"),
    (b'{"resourceType": "Patient", "birthDate": "2015-13-45"}', "structure"),
    (b'{"resourceType": "Patient", "unknownField": 1}', "structure"),
    (b'{"resourceType": "Observation"}', "invalid"),
    (b'{"resourceType": "Patient", "birthDate": NaN}', "structure"),
    (b"", "required"),
])
def test_bad_bodies_are_400_and_store_nothing(api, data, code):
    before = _count(api)
    response = _raw(api, "POST", "/fhir/Patient", data)
    assert response.status_code == 400, response.text
    assert outcome_code(response) == code
    assert response.json()["issue"][0]["diagnostics"]
    assert _count(api) == before


def test_wrong_content_type_is_415(api):
    response = _raw(api, "POST", "/fhir/Patient", b'{"resourceType":"Patient"}', "text/plain")
    assert response.status_code == 415 and outcome_code(response) == "not-supported"


def test_oversized_body_is_413(api):
    big = b'{"resourceType":"Patient","text":{"status":"generated","div":"' + b"x" * (1024 * 1024 + 10) + b'"}}'
    response = _raw(api, "POST", "/fhir/Patient", big)
    assert response.status_code == 413 and outcome_code(response) == "too-costly"


def test_unknown_type_and_unknown_route(api):
    assert outcome_code(api.get("/fhir/Observation", api.la())) == "not-supported"
    missing = api.get("/nowhere", api.la())
    assert missing.status_code == 404 and outcome_code(missing) == "not-found"


def test_id_mismatch_and_bad_id(api):
    child = api.new_child()
    mismatch = api.put(f"/fhir/Patient/{child['id']}", dict(child, id="other"), api.la(), **{"If-Match": 'W/"1"'})
    assert mismatch.status_code == 400 and "does not match" in mismatch.json()["issue"][0]["diagnostics"]
    bad_id = api.put("/fhir/Patient/bad$id", dict(child, id="bad$id"), api.la())
    assert bad_id.status_code == 400


def test_bad_if_match_header(api):
    child = api.new_child()
    response = api.put(f"/fhir/Patient/{child['id']}", child, api.la(), **{"If-Match": "yesterday"})
    assert response.status_code == 400


def test_bad_identifiers_are_422(api):
    before = _count(api)
    bad_nhs = {"resourceType": "Patient", "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000008"}]}
    response = api.post("/fhir/Patient", bad_nhs, api.la())
    assert response.status_code == 422 and "modulus" in response.json()["issue"][0]["diagnostics"].lower()
    assert response.json()["issue"][0]["expression"] == ["Patient.identifier[0].value"]
    assert _count(api) == before


def test_resource_cannot_move_between_children(api):
    first, second = api.new_child(), api.new_child()
    created = api.post("/fhir/Condition", need(first["id"]), api.la()).json()
    moved = dict(created, subject={"reference": f"Patient/{second['id']}"})
    response = api.put(f"/fhir/Condition/{created['id']}", moved, api.la(), **{"If-Match": 'W/"1"'})
    assert response.status_code == 422 and outcome_code(response) == "business-rule"


def test_subject_must_exist(api):
    response = api.post("/fhir/Condition", need("nope"), api.la())
    assert response.status_code == 422


def test_audit_event_is_read_only(api):
    response = api.post("/fhir/AuditEvent", {"resourceType": "AuditEvent"}, api.la())
    assert response.status_code in (400, 405) and response.json()["resourceType"] == "OperationOutcome"


def test_validate_parameters_form(api):
    """An invalid inner resource is answered with its problems (200); a missing or mistyped
    parameter is a 400 naming it."""
    bad = {"resourceType": "Patient", "birthDate": "2015-13-45"}
    wrapped = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": bad}]}
    response = api.post("/fhir/Patient/$validate", wrapped, api.la())
    assert response.status_code == 200, response.text
    assert any(i["severity"] == "error" for i in response.json()["issue"])
    missing = api.post("/fhir/Patient/$validate", {"resourceType": "Parameters", "parameter": []}, api.la())
    assert missing.status_code == 400 and outcome_code(missing) == "required"
    assert "'resource'" in missing.json()["issue"][0]["diagnostics"]
    mistyped = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Patient"}}, {"name": "profile", "valueInteger": 1}]}
    response = api.post("/fhir/Patient/$validate", mistyped, api.la())
    assert response.status_code == 400 and outcome_code(response) == "value"


#: An R4 Extension with a Meta value (R4 extensibility.html lists Meta among its types; R4B
#: removed it, so the R4B models once refused this R4 content).
_R4_EXTENSION = {"url": "http://example.org/fhir/StructureDefinition/source-version", "valueMeta": {"versionId": "3"}}


def _organization(name: str, extension: dict) -> dict:
    return {"resourceType": "Organization", "name": name, "extension": [extension]}


def test_r4_content_is_stored_and_reads_back_as_sent(api):
    sent = _organization("R4 content school", _R4_EXTENSION)
    created = api.post("/fhir/Organization", sent, api.la())
    assert created.status_code == 201, created.text
    read = api.get(f"/fhir/Organization/{created.json()['id']}", api.la()).json()
    assert {k: v for k, v in read.items() if k not in ("id", "meta")} == sent


def test_r4b_only_content_is_refused_in_plain_words(api):
    before = _count(api, "/fhir/Organization?_summary=count")
    sent = _organization("R4B content school", {"url": "http://example.org/x", "valueCodeableReference": {
        "reference": {"reference": "Organization/x"}}})
    sent["telecom"] = [{"system": "email", "value": "office@school.example", "rank": 0}]
    response = api.post("/fhir/Organization", sent, api.la())
    assert response.status_code == 400
    assert response.json()["issue"] == [
        {"severity": "error", "code": "structure", "expression": ["Organization.extension[0].valueCodeableReference"],
         "diagnostics": "Organization.extension[0].valueCodeableReference: CodeableReference is not one of the "
                        "types Extension.value[x] takes in FHIR R4"},
        {"severity": "error", "code": "structure", "expression": ["Organization.telecom[0].rank"],
         "diagnostics": "Organization.telecom[0].rank: 0 is not a valid positiveInt (a whole number from 1 to 2147483647)"},
    ]
    assert _count(api, "/fhir/Organization?_summary=count") == before
