"""Search: parameters, paging, _sort, _include, totals, and injection refused."""

from __future__ import annotations

import pytest

from tests.support import NEED_SYSTEM, need, outcome_code, unique

SECTION = "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-section"


@pytest.fixture(scope="module")
def family(api):
    child = api.new_child(identifier=[{"system": "urn:test:child", "value": unique()}])
    ids = []
    for n, section in enumerate(["B", "B", "C", "D", "B"]):
        body = need(child["id"], section, identifier=[{"system": "urn:test:need", "value": f"{child['id']}-{n}"}])
        body["code"] = {"coding": [{"system": NEED_SYSTEM, "code": "SLCN" if n % 2 else "ASD"}]} if section == "B" else \
            {"coding": [{"system": "urn:health", "code": "SLCN" if n % 2 else "ASD"}]}
        ids.append(api.post("/fhir/Condition", body, api.la()).json()["id"])
    return child, ids


def test_search_by_patient_and_category(api, family):
    child, ids = family
    bundle = api.get(f"/fhir/Condition?patient=Patient/{child['id']}&category={SECTION}|B", api.la()).json()
    assert bundle["type"] == "searchset" and bundle["total"] == 3
    assert {e["resource"]["id"] for e in bundle["entry"]} == {ids[0], ids[1], ids[4]}
    assert all(e["search"]["mode"] == "match" for e in bundle["entry"])


def test_token_forms(api, family):
    child, ids = family
    token = api.la()
    assert api.get(f"/fhir/Condition?subject={child['id']}&code=ASD", token).json()["total"] == 3
    assert api.get(f"/fhir/Condition?subject={child['id']}&code={NEED_SYSTEM}|SLCN", token).json()["total"] == 1
    assert api.get(f"/fhir/Condition?subject={child['id']}&code=urn:health|SLCN", token).json()["total"] == 1
    assert api.get(f"/fhir/Condition?subject={child['id']}&code=other|SLCN", token).json()["total"] == 0
    assert api.get(f"/fhir/Condition?subject={child['id']}&code:not=ASD", token).json()["total"] == 2
    assert api.get(f"/fhir/Condition?identifier=urn:test:need|{child['id']}-3", token).json()["entry"][0]["resource"]["id"] == ids[3]
    assert api.get(f"/fhir/Condition?_id={ids[0]},{ids[1]}", token).json()["total"] == 2


def test_paging_and_count_cap(api, family):
    child, ids = family
    token = api.la()
    first = api.get(f"/fhir/Condition?patient={child['id']}&_count=2&_sort=_lastUpdated", token).json()
    assert first["total"] == 5 and len(first["entry"]) == 2
    next_url = next(l["url"] for l in first["link"] if l["relation"] == "next")
    second = api.session.get(next_url, headers=api.headers(token)).json()
    assert [e["resource"]["id"] for e in first["entry"] + second["entry"]] == ids[:4]
    capped = api.get("/fhir/Condition?_count=5000", token).json()
    assert len(capped["entry"]) <= 100


def test_sort_descending_by_last_updated(api, family):
    child, ids = family
    bundle = api.get(f"/fhir/Condition?patient={child['id']}&_sort=-_lastUpdated", api.la()).json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == list(reversed(ids))


def test_include_subject(api, family):
    child, _ = family
    bundle = api.get(f"/fhir/Condition?patient={child['id']}&_include=Condition:subject", api.la()).json()
    included = [e for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert [e["resource"]["id"] for e in included] == [child["id"]]
    assert bundle["total"] == 5


def test_last_updated_prefixes(api, family):
    child, _ = family
    token = api.la()
    assert api.get(f"/fhir/Condition?patient={child['id']}&_lastUpdated=gt2000-01-01", token).json()["total"] == 5
    assert api.get(f"/fhir/Condition?patient={child['id']}&_lastUpdated=lt2000-01-01", token).json()["total"] == 0


def test_post_search_form(api, family):
    child, _ = family
    response = api.session.post(f"{api.base}/fhir/Condition/_search", data={"patient": child["id"], "code": "ASD"},
                                headers={"Authorization": f"Bearer {api.la()}"})
    assert response.status_code == 200 and response.json()["total"] == 3


@pytest.mark.parametrize("query", [
    "identifier[$ne]=x", "identifier.$ne=x", 'identifier={"$gt": ""}', "status=%7B%22%24ne%22%3A1%7D",
    "_id[$regex]=.*", "$where=1", "_count=-1", "_count=abc", "_sort=code",
    "_lastUpdated=yesterday", "_include=Patient:foo", "code:regex=A",
])
def test_injection_and_bad_parameters_are_refused(api, family, query):
    response = api.get(f"/fhir/Condition?{query}", api.la())
    assert response.status_code == 400, (query, response.text)
    assert response.json()["resourceType"] == "OperationOutcome"


def test_query_string_limit(api):
    response = api.get("/fhir/Condition?code=" + "A" * 9000, api.la())
    assert response.status_code == 414 and outcome_code(response) == "too-costly"


def test_unknown_parameter_ignored_unless_strict(api, family):
    """R4 search §3.1.1.3.1: ignored (and left out of the self link) unless Prefer: handling=strict."""
    child, _ = family
    lenient = api.get(f"/fhir/Condition?patient={child['id']}&_totalMethod=count&unknown-param=1", api.la())
    assert lenient.status_code == 200 and lenient.json()["total"] == 5
    self_link = next(l["url"] for l in lenient.json()["link"] if l["relation"] == "self")
    assert "unknown-param" not in self_link and "_totalMethod" not in self_link and "patient=" in self_link
    strict = api.get(f"/fhir/Condition?unknown-param=1", api.la(), Prefer="return=minimal, handling=strict")
    assert strict.status_code == 400 and "unknown-param" in strict.text


def test_an_la_finds_a_record_another_la_holds_once_the_family_shares_it(api):
    """An LA's search of its custody also asks, in the same command, which records elsewhere a
    Consent shares with it (`shared` on each document): before the grant another LA finds nothing,
    after it the child by NHS number and the needs of the shared section only."""
    from tests.consent_support import grant
    from tests.e2e.plan_builders import parent

    child = api.new_child()
    nhs = child["identifier"][0]["value"]
    mum = api.post("/fhir/RelatedPerson", parent(child["id"], "Alex"), api.la()).json()["id"]
    for section in ("B", "C"):
        assert api.post("/fhir/Condition", need(child["id"], section), api.la()).status_code == 201
    other = api.token("la", "Organization/la-916")
    by_nhs = f"/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"
    assert api.get(by_nhs, other).json()["total"] == 0
    assert api.get(f"/fhir/Condition?patient={child['id']}", other).json()["total"] == 0
    mum_token = api.token("parent", None, fhir_user=f"RelatedPerson/{mum}")
    shared = api.post("/fhir/Consent", grant(child["id"], f"RelatedPerson/{mum}", "Organization/la-916", ["A", "B"],
                                             role="la"), mum_token)
    assert shared.status_code == 201, shared.text
    found = api.get(by_nhs, other).json()
    assert found["total"] == 1 and found["entry"][0]["resource"]["id"] == child["id"]
    needs = api.get("/fhir/Condition", other).json()  # its custody search: the shared record's B need only
    sections = {e["resource"]["category"][0]["coding"][0]["code"] for e in needs["entry"]
                if e["resource"]["subject"]["reference"] == f"Patient/{child['id']}"}
    assert sections == {"B"}
