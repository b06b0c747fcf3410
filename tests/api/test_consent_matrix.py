"""Consent-controlled sharing through every read path, for every kind of caller, over HTTP.

Each caller's expected sections are written out here by hand (not asked of the engine): the
family and the custodian see everything; a school sees what the parent granted it; health sees
C and G while its consent is active; an expired, revoked or never-given consent sees nothing;
another LA, social care without consent and an auditor see no content. Every path must agree:
read, vread, history, search (results, total, _include), $document, $diff, $everything, Binary.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from tests.consent_support import SECTIONS, composition_sections, grant, load_issued_example, section_of

ALL = frozenset(SECTIONS)
NONE: frozenset[str] = frozenset()
EXPECTED = {
    "parent": ALL, "young-person": ALL, "custodian": ALL, "other-la": NONE,
    "school": frozenset({"A", "B", "E", "F", "I"}), "school-no-consent": NONE,
    "health": frozenset({"C", "G"}), "health-expired": NONE, "health-revoked": NONE,
    "social-care": NONE, "auditor": NONE,
}
SECTIONED = ("Condition", "Goal", "CarePlan", "DocumentReference")
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.fixture(scope="module")
def world(api):
    record = load_issued_example(api)
    child = record["Patient"][0]["id"]
    mum = record["RelatedPerson"][0]["id"]
    parent_token = record["parent_token"]
    grantor = f"RelatedPerson/{mum}"
    today = date.today()
    grants = [
        grant(child, grantor, "Organization/school-1", ["A", "B", "E", "F", "I"]),
        grant(child, grantor, "Organization/nhs-1", ["C", "G"], role="health"),
        grant(child, grantor, "Organization/nhs-2", ["C", "G"], role="health", start=today - timedelta(days=400),
              end=today - timedelta(days=10)),
        grant(child, grantor, "Organization/nhs-3", ["C", "G"], role="health"),
    ]
    created = []
    for body in grants:
        response = api.post("/fhir/Consent", body, parent_token)
        assert response.status_code == 201, response.text
        created.append(response.json())
    revoked = dict(created[3], status="inactive")
    assert api.put(f"/fhir/Consent/{revoked['id']}", revoked, parent_token, **{"If-Match": 'W/"1"'}).status_code == 200
    binaries = _attach_binaries(api, record)
    record["granting"] = {"school": {created[0]["id"]}, "health": {created[1]["id"]}}
    record["consents"] = [c["id"] for c in created]
    tokens = {
        "parent": parent_token,
        "young-person": api.token("young-person", None, fhir_user=f"Patient/{child}"),
        "custodian": api.la(),
        "other-la": api.token("la", "Organization/la-916"),
        "school": api.token("school", "Organization/school-1"),
        "school-no-consent": api.token("school", "Organization/school-2"),
        "health": api.token("health", "Organization/nhs-1"),
        "health-expired": api.token("health", "Organization/nhs-2"),
        "health-revoked": api.token("health", "Organization/nhs-3"),
        "social-care": api.token("social-care", "Organization/sc-1"),
        "auditor": api.token("auditor", None),
    }
    return record, tokens, binaries


def _attach_binaries(api, record) -> dict[str, str]:
    """A photo on the A document and one on a K document, keyed by section."""
    found = {}
    for document in record["DocumentReference"]:
        section = section_of(document)
        if section in ("A", "K") and section not in found:
            headers = {"Authorization": f"Bearer {api.la()}", "Content-Type": "image/png",
                       "X-Security-Context": f"DocumentReference/{document['id']}"}
            response = api.session.post(api.base + "/fhir/Binary", data=PNG, headers=headers)
            assert response.status_code == 201, response.text
            found[section] = response.json()["id"]
    return found


@pytest.mark.parametrize("who", sorted(EXPECTED))
def test_read_vread_history(api, world, who):
    record, tokens, _ = world
    expected = EXPECTED[who]
    for resource_type in SECTIONED:
        for resource in record[resource_type]:
            path = f"/fhir/{resource_type}/{resource['id']}"
            visible = section_of(resource) in expected
            for suffix in ("", "/_history/1", "/_history"):
                response = api.get(path + suffix, tokens[who])
                assert response.status_code == (200 if visible else 404), (who, path + suffix)
                if not visible:
                    assert "ETag" not in response.headers
                    body = response.json()
                    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "not-found"
                    assert "subject" not in response.text and "category" not in response.text


@pytest.mark.parametrize("who", sorted(EXPECTED))
def test_search_results_totals_and_includes(api, world, who):
    record, tokens, _ = world
    expected = EXPECTED[who]
    child = record["Patient"][0]["id"]
    for resource_type in SECTIONED:
        bundle = api.get(f"/fhir/{resource_type}?patient={child}&_count=100", tokens[who]).json()
        shown = {section_of(e["resource"]) for e in bundle.get("entry", [])}
        assert shown <= expected, (who, resource_type, shown)
        should = [r for r in record[resource_type] if section_of(r) in expected]
        assert bundle["total"] == len(should), (who, resource_type)
        assert len(bundle.get("entry", [])) == len(should)
        count = api.get(f"/fhir/{resource_type}?patient={child}&_summary=count", tokens[who]).json()["total"]
        assert count == len(should)
    included = api.get(f"/fhir/Condition?patient={child}&_include=Condition:subject", tokens[who]).json()
    patients = [e for e in included.get("entry", []) if e["resource"]["resourceType"] == "Patient"]
    assert len(patients) == (1 if expected & {"B", "C", "D"} else 0), who
    # Governance is the family's and the custodian's, except that a recipient sees the Consent
    # that grants it access (and no other: not the expired, the revoked, or another's).
    family = who in ("parent", "young-person", "custodian")
    tasks = api.get(f"/fhir/Task?patient={child}", tokens[who]).json()["total"]
    assert (tasks > 0) == family, who
    consents = {e["resource"]["id"] for e in api.get(f"/fhir/Consent?patient={child}", tokens[who]).json().get("entry", [])}
    counted = api.get(f"/fhir/Consent?patient={child}&_summary=count", tokens[who]).json()["total"]
    if family:
        assert len(consents) == counted >= 4, who
    else:
        assert consents == record["granting"].get(who, set()) and counted == len(consents), (who, consents)


@pytest.mark.parametrize("who", sorted(EXPECTED))
def test_document_everything_and_diff(api, world, who):
    record, tokens, _ = world
    expected = EXPECTED[who]
    plan = record["Composition"][0]["id"]
    child = record["Patient"][0]["id"]
    document = api.get(f"/fhir/Composition/{plan}/$document", tokens[who])
    everything = api.get(f"/fhir/Patient/{child}/$everything", tokens[who])
    diff = api.get(f"/fhir/Composition/{plan}/$diff?from=1&to=2", tokens[who])
    if not expected:
        assert (document.status_code, everything.status_code, diff.status_code) == (404, 404, 404), who
        return
    composition = document.json()["entry"][0]["resource"]
    assert composition_sections(composition) == expected
    for body in (document.json(), everything.json()):
        sections = {section_of(e["resource"]) for e in body["entry"]} - {None}
        assert sections <= expected, (who, sections - expected)
    listed = {next(p["valueCode"] for p in s["part"] if p["name"] == "code")
              for s in diff.json()["parameter"] if s["name"] == "section"}
    assert listed <= expected


@pytest.mark.parametrize("who", sorted(EXPECTED))
def test_binary_download_follows_its_document(api, world, who):
    _, tokens, binaries = world
    for section, binary in binaries.items():
        response = api.session.get(f"{api.base}/fhir/Binary/{binary}",
                                   headers={"Authorization": f"Bearer {tokens[who]}", "Accept": "image/png"})
        assert response.status_code == (200 if section in EXPECTED[who] else 404), (who, section)
        if response.status_code == 404:
            assert PNG not in response.content


def test_revocation_takes_effect_on_the_next_request(api, world):
    record, tokens, _ = world
    child = record["Patient"][0]["id"]
    mum = record["RelatedPerson"][0]["id"]
    goal = record["Goal"][0]
    body = grant(child, f"RelatedPerson/{mum}", "Organization/school-9", ["E"])
    consent = api.post("/fhir/Consent", body, tokens["parent"]).json()
    school = api.token("school", "Organization/school-9")
    assert api.get(f"/fhir/Goal/{goal['id']}", school).status_code == 200
    revoked = dict(consent, status="inactive")
    assert api.put(f"/fhir/Consent/{consent['id']}", revoked, tokens["parent"], **{"If-Match": 'W/"1"'}).status_code == 200
    assert api.get(f"/fhir/Goal/{goal['id']}", school).status_code == 404


def test_a_school_cannot_read_section_c_without_a_health_consent(api, world):
    record, tokens, _ = world
    health_need = next(c for c in record["Condition"] if section_of(c) == "C")
    assert api.get(f"/fhir/Condition/{health_need['id']}", tokens["school"]).status_code == 404
    assert api.get(f"/fhir/Condition/{health_need['id']}", tokens["health"]).status_code == 200


def test_parent_cannot_reach_or_grant_for_another_family(api, world):
    record, tokens, _ = world
    other = load_issued_example(api)
    other_child = other["Patient"][0]["id"]
    assert api.get(f"/fhir/Patient/{other_child}", tokens["parent"]).status_code == 404
    assert api.get(f"/fhir/Condition?patient={other_child}", tokens["parent"]).json()["total"] == 0
    mum = record["RelatedPerson"][0]["id"]
    forged = grant(other_child, f"RelatedPerson/{mum}", "Organization/school-1", ["B"])
    response = api.post("/fhir/Consent", forged, tokens["parent"])
    # another family's child is answered exactly as a child that does not exist (hidden equals missing)
    missing = api.post("/fhir/Consent", grant("no-such-child", f"RelatedPerson/{mum}", "Organization/school-1", ["B"]),
                       tokens["parent"])
    assert response.status_code == missing.status_code == 422
    assert response.text.replace(other_child, "<id>") == missing.text.replace("no-such-child", "<id>")
    school_view = api.get(f"/fhir/Condition?patient={other_child}", tokens["school"]).json()
    assert school_view["total"] == 0


def test_consent_decisions_are_audited_with_the_consent_that_decided(api, world):
    record, tokens, _ = world
    goal = next(g for g in record["Goal"])
    api.get(f"/fhir/Goal/{goal['id']}", tokens["school"])
    child = record["Patient"][0]["id"]
    log = api.get(f"/fhir/AuditEvent?patient={child}&agent=Organization/school-1&_count=5", tokens["custodian"]).json()
    assert log["total"] >= 1
    event = log["entry"][0]["resource"]
    policies = [p for a in event["agent"] for p in a.get("policy", [])]
    assert policies, event["agent"]


def test_patient_scoped_token_never_writes(api, world):
    record, _, _ = world
    child = record["Patient"][0]["id"]
    mum = record["RelatedPerson"][0]["id"]
    token = api.token("parent", None, fhir_user=f"RelatedPerson/{mum}", patient=f"Patient/{child}", scope="patient/*.rs")
    assert api.get(f"/fhir/Patient/{child}", token).status_code == 200
    body = grant(child, f"RelatedPerson/{mum}", "Organization/school-5", ["A"])
    assert api.post("/fhir/Consent", body, token).status_code == 403


def test_system_token_still_needs_consent(api, world):
    record, _, _ = world
    token = api.token("system", "Organization/nhs-1", scope="system/*.rs")
    need = next(c for c in record["Condition"] if section_of(c) == "C")
    other = next(c for c in record["Condition"] if section_of(c) == "B")
    assert api.get(f"/fhir/Condition/{need['id']}", token).status_code in (200, 404)
    assert api.get(f"/fhir/Condition/{other['id']}", token).status_code == 404


def test_contribute_adds_advice_without_seeing_anything_else(api, world):
    record, tokens, _ = world
    child = record["Patient"][0]["id"]
    mum = record["RelatedPerson"][0]["id"]
    body = grant(child, f"RelatedPerson/{mum}", "Organization/nhs-7", ["K"], actions=("contribute",), role="health")
    assert api.post("/fhir/Consent", body, tokens["parent"]).status_code == 201
    health = api.token("health", "Organization/nhs-7")
    advice = {"resourceType": "DocumentReference", "status": "current", "docStatus": "final",
              "subject": {"reference": f"Patient/{child}"},
              "category": [{"coding": [{"system": "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-section", "code": "K"}]}],
              "content": [{"attachment": {"contentType": "text/plain", "data": "UGFlZGlhdHJpYyBhZHZpY2U=",
                                          "title": "Paediatric advice"}}]}
    created = api.post("/fhir/DocumentReference", advice, health)
    assert created.status_code == 201, created.text
    for resource_type in ("Condition", "Goal", "CarePlan", "DocumentReference"):
        assert api.get(f"/fhir/{resource_type}?patient={child}", health).json()["total"] == 0
    elsewhere = dict(advice, category=[{"coding": [{"system": "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-section", "code": "A"}]}])
    assert api.post("/fhir/DocumentReference", elsewhere, health).status_code == 403
    plan = record["Composition"][0]["id"]
    assert api.get(f"/fhir/Composition/{plan}", api.la()).json()["meta"]["versionId"] == "2"


def test_a_recipient_finds_the_consent_that_names_it_and_no_other(api, world):
    """An NHS trust asks "what may I read for this child, and on whose word?": it finds its
    own active Consent by `actor`, reads it, and sees no other recipient's grant; a trust whose
    consent lapsed or was revoked finds nothing, as if no consent had existed."""
    record, tokens, _ = world
    school, health, expired, revoked = record["consents"]
    found = api.get("/fhir/Consent?actor=Organization/nhs-1", tokens["health"]).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [health] and found["total"] == 1
    assert api.get(f"/fhir/Consent/{health}", tokens["health"]).json()["provision"]["actor"][0]["reference"] == {
        "reference": "Organization/nhs-1"}
    assert api.get(f"/fhir/Consent/{health}/_history", tokens["health"]).json()["total"] == 1
    for other in (school, expired, revoked):
        assert api.get(f"/fhir/Consent/{other}", tokens["health"]).status_code == 404
    for who, own in (("health-expired", expired), ("health-revoked", revoked)):
        assert api.get("/fhir/Consent", tokens[who]).json()["total"] == 0, who
        assert api.get(f"/fhir/Consent/{own}", tokens[who]).status_code == 404, who
    assert api.get("/fhir/Consent", tokens["school-no-consent"]).json()["total"] == 0

