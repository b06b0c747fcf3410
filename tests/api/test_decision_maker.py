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
    assert by_parent.status_code in (403, 404)
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
