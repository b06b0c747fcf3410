"""Who decides: the parent until the end of the academic year in which the child turns 16, then
the young person (1 September; consent.engine.handover_date), as seen through the API."""

from __future__ import annotations

from datetime import date

from tests.consent_support import grant, load_issued_example


def test_young_person_decides_after_the_handover(api):
    # born 31 August 2010: turns 16 on the last day of the 2025/26 academic year -> decides from 1 Sep 2026
    record = load_issued_example(api, birth_date="2010-08-31")
    child = record["Patient"][0]["id"]
    mum = f"RelatedPerson/{record['RelatedPerson'][0]['id']}"
    young_person = api.token("young-person", None, fhir_user=f"Patient/{child}")
    by_parent = api.post("/fhir/Consent", grant(child, mum, "Organization/college-1", ["A", "E"], role="school"),
                         api.token("parent", None, fhir_user=mum))
    # after the handover the parent may not know of the record: answered as a child that does not exist
    assert by_parent.status_code == 422
    assert by_parent.json()["issue"][0]["diagnostics"] == f"Consent.patient points at Patient/{child}, which does not exist here"
    by_young_person = api.post("/fhir/Consent", grant(child, f"Patient/{child}", "Organization/college-1", ["A", "E"]),
                               young_person)
    assert by_young_person.status_code == 201, by_young_person.text


def test_parent_still_decides_the_year_before(api):
    # born 1 September 2010: the academic year of the 16th birthday ends 31 August 2027
    record = load_issued_example(api, birth_date="2010-09-01")
    child = record["Patient"][0]["id"]
    mum = f"RelatedPerson/{record['RelatedPerson'][0]['id']}"
    response = api.post("/fhir/Consent", grant(child, mum, "Organization/school-1", ["A"]), record["parent_token"])
    assert response.status_code == 201, response.text
    assert date.today() < date(2027, 9, 1)


def test_parent_consents_are_flagged_for_the_young_person_to_confirm(api):
    # born 31 August 2010: the young person decides from 1 September 2026; a consent the
    # parent gave before then held for the 28-day grace and has lapsed unless confirmed
    record = load_issued_example(api, birth_date="2010-08-31")
    child = record["Patient"][0]["id"]
    mum = f"RelatedPerson/{record['RelatedPerson'][0]['id']}"
    given = grant(child, mum, "Organization/college-2", ["A", "E"], role="school",
                  start=date(2026, 6, 1), end=date(2027, 6, 1))
    given["sourceAttachment"] = {"contentType": "application/pdf", "title": "Signed consent form, June 2026",
                                 "data": "JVBERi0xLjQK"}  # the form itself: the evidence (consent.evidence)
    stored = api.post("/fhir/Consent", given, api.la())  # recorded by the LA from the parent's paper form
    assert stored.status_code == 201, stored.text
    consent = stored.json()
    young_person = api.token("young-person", None, fhir_user=f"Patient/{child}")
    seen = api.get(f"/fhir/Consent/{consent['id']}", young_person).json()
    flags = [t for t in seen["meta"].get("tag", []) if t["code"] == "needs-confirmation"]
    assert flags and "lapsed on 2026-09-29" in flags[0]["display"]
    everything = api.get(f"/fhir/Patient/{child}/$everything", young_person).json()
    listed = next(e["resource"] for e in everything["entry"] if e["resource"]["id"] == consent["id"])
    assert listed["meta"].get("tag") == seen["meta"]["tag"]  # the same view on every read path
    college = api.token("school", "Organization/college-2")
    goal = record["Goal"][0]["id"]
    assert api.get(f"/fhir/Goal/{goal}", college).status_code == 404  # lapsed: nothing shared
    confirmed = dict(consent, extension=[{"url": "http://ehcp-record.example.org/fhir/StructureDefinition/ehcp-consent-confirmed-by",
                                         "valueReference": {"reference": f"Patient/{child}"}}])
    response = api.put(f"/fhir/Consent/{consent['id']}", confirmed, young_person, **{"If-Match": 'W/"1"'})
    assert response.status_code == 200, response.text
    assert api.get(f"/fhir/Goal/{goal}", college).status_code == 200
    again = api.get(f"/fhir/Consent/{consent['id']}", young_person).json()
    assert not [t for t in again["meta"].get("tag", []) if t["code"] == "needs-confirmation"]
