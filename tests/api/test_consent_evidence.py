"""Through the API: a consent the LA records for a parent carries the evidence of the parent's
decision (the signed form, or a verbal statement with who took it and when), or it is refused
and shares nothing (consent.evidence)."""

from __future__ import annotations

from consent.evidence import EXT_RECORDED_BY, EXT_VERBAL_STATEMENT
from tests.consent_support import grant, load_issued_example

SCHOOL = "Organization/school-ev1"


def _school_sees(api, record: dict) -> tuple[int, int]:
    school = api.token("school", SCHOOL)
    plan = record["Composition"][0]["id"]
    goal = record["Goal"][0]["id"]
    return (api.get(f"/fhir/Composition/{plan}", school).status_code,
            api.get(f"/fhir/Goal/{goal}", school).status_code)


def _signed_form(api, child: str) -> dict:
    form = {"resourceType": "DocumentReference", "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]},
            "subject": {"reference": f"Patient/{child}"},
            "content": [{"attachment": {"contentType": "application/pdf", "data": "JVBERi0xLjQK",
                                        "title": "Consent to share sections A and E, signed by the parent"}}]}
    response = api.post("/fhir/DocumentReference", form, api.la())
    assert response.status_code == 201, response.text
    return response.json()


def test_an_la_recording_a_parent_s_consent_without_evidence_is_refused_and_shares_nothing(api):
    record = load_issued_example(api)
    child = record["Patient"][0]["id"]
    mum = f"RelatedPerson/{record['RelatedPerson'][0]['id']}"
    response = api.post("/fhir/Consent", grant(child, mum, SCHOOL, ["A", "E"]), api.la())
    assert response.status_code == 422, response.text
    issue = response.json()["issue"][0]
    assert issue["code"] == "business-rule"
    assert f"recorded by Organization/la-866, not by {mum} who gave it" in issue["diagnostics"]
    assert "signed form" in issue["diagnostics"] and "takenBy" in issue["diagnostics"]
    assert "Consent.sourceReference" in issue["expression"]
    assert api.get(f"/fhir/Consent?patient={child}", api.la()).json()["total"] == 0  # nothing stored
    assert _school_sees(api, record) == (404, 404)


def test_an_la_cannot_pass_its_record_off_as_the_parent_s_own(api):
    record = load_issued_example(api)
    child = record["Patient"][0]["id"]
    mum = f"RelatedPerson/{record['RelatedPerson'][0]['id']}"
    claimed = grant(child, mum, SCHOOL, ["A", "E"])
    claimed["extension"] = [{"url": EXT_RECORDED_BY, "valueReference": {"reference": mum}}]
    assert api.post("/fhir/Consent", claimed, api.la()).status_code == 422
    assert _school_sees(api, record) == (404, 404)


def test_with_the_signed_form_as_a_document_reference_the_school_reads(api):
    record = load_issued_example(api)
    child = record["Patient"][0]["id"]
    mum = f"RelatedPerson/{record['RelatedPerson'][0]['id']}"
    form = _signed_form(api, child)
    body = grant(child, mum, SCHOOL, ["A", "E"])
    body["sourceReference"] = {"reference": f"DocumentReference/{form['id']}"}
    stored = api.post("/fhir/Consent", body, api.la())
    assert stored.status_code == 201, stored.text
    recorder = [e for e in stored.json()["extension"] if e["url"] == EXT_RECORDED_BY]
    assert recorder == [{"url": EXT_RECORDED_BY, "valueReference": {"reference": "Organization/la-866"}}]
    assert _school_sees(api, record) == (200, 200)
    # the form itself is governance: the family and the custodian see it, the school does not
    school = api.token("school", SCHOOL)
    assert api.get(f"/fhir/DocumentReference/{form['id']}", school).status_code == 404
    assert api.get(f"/fhir/DocumentReference/{form['id']}", record["parent_token"]).status_code == 200


def test_with_a_recorded_verbal_statement_the_school_reads(api):
    record = load_issued_example(api)
    child = record["Patient"][0]["id"]
    mum = f"RelatedPerson/{record['RelatedPerson'][0]['id']}"
    body = grant(child, mum, SCHOOL, ["E"])
    body["extension"] = [{"url": EXT_VERBAL_STATEMENT, "extension": [
        {"url": "takenBy", "valueReference": {"display": "Sam Caseworker, SEN team"}},
        {"url": "takenOn", "valueDateTime": "2026-11-30T10:15:00Z"},
        {"url": "statement", "valueString": "Yes, the school may see the outcomes."}]}]
    stored = api.post("/fhir/Consent", body, api.la())
    assert stored.status_code == 201, stored.text
    assert _school_sees(api, record)[1] == 200
    # without takenOn it is no evidence
    body["extension"][0]["extension"] = body["extension"][0]["extension"][:1]
    refused = api.post("/fhir/Consent", body, api.la())
    assert refused.status_code == 422 and "carries no evidence" in refused.json()["issue"][0]["diagnostics"]


def test_the_parent_s_own_consent_needs_no_evidence_and_the_la_may_revoke_it(api):
    record = load_issued_example(api)
    child = record["Patient"][0]["id"]
    mum = f"RelatedPerson/{record['RelatedPerson'][0]['id']}"
    own = api.post("/fhir/Consent", grant(child, mum, SCHOOL, ["A", "E"]), record["parent_token"])
    assert own.status_code == 201, own.text
    recorder = [e["valueReference"]["reference"] for e in own.json()["extension"] if e["url"] == EXT_RECORDED_BY]
    assert recorder == [mum]
    assert _school_sees(api, record) == (200, 200)
    revoked = dict(own.json(), status="inactive")
    response = api.put(f"/fhir/Consent/{revoked['id']}", revoked, api.la(), **{"If-Match": 'W/"1"'})
    assert response.status_code == 200, response.text  # stopping sharing never waits for a form
    assert _school_sees(api, record) == (404, 404)


def test_the_signed_form_must_be_a_document_of_this_child_s_record(api):
    record = load_issued_example(api)
    child = record["Patient"][0]["id"]
    mum = f"RelatedPerson/{record['RelatedPerson'][0]['id']}"
    other_child = api.new_child()["id"]
    elsewhere = _signed_form(api, other_child)
    for target in ("DocumentReference/no-such-form", f"DocumentReference/{elsewhere['id']}"):
        body = grant(child, mum, SCHOOL, ["A", "E"])
        body["sourceReference"] = {"reference": target}
        response = api.post("/fhir/Consent", body, api.la())
        assert response.status_code == 422, response.text
        assert response.json()["issue"][0]["diagnostics"] == (
            f"Consent.sourceReference points at {target}, which is not a document of this child's record here")
    assert _school_sees(api, record) == (404, 404)
