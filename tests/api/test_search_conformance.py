"""Search and REST conformance beyond the basics (FHIR R4 search and http pages), each through
the caller-scoped store: what a caller cannot see is neither matched, included, counted nor
listed in history."""

from __future__ import annotations

import pytest

from tests.consent_support import grant
from tests.e2e.plan_builders import parent
from tests.support import SECTION_SYSTEM, need, nhs_number, unique

SCHOOL = "Organization/school-77"


@pytest.fixture(scope="module")
def world(api):
    family = f"Ñuñez{unique()}"
    child = api.new_child(name=[{"family": family, "given": ["Zoë", "Ann"]}], address=[{"postalCode": "LS1 4AP"}])
    la = api.la()
    mum = api.post("/fhir/RelatedPerson", parent(child["id"], "Rachel"), la).json()
    learning = api.post("/fhir/Condition", need(child["id"], "B", "SLCN"), la).json()
    health = api.post("/fhir/Condition", need(child["id"], "C", "Asthma"), la).json()
    mum_token = api.token("parent", None, fhir_user=f"RelatedPerson/{mum['id']}")
    consent = api.post("/fhir/Consent", grant(child["id"], f"RelatedPerson/{mum['id']}", SCHOOL, ["A", "B"]), mum_token)
    assert consent.status_code == 201, consent.text
    other = api.new_child(name=[{"family": family, "given": ["Other"]}])
    return {"child": child, "family": family, "learning": learning, "health": health, "other": other,
            "school": api.token("school", SCHOOL), "mum": mum_token, "la": la}


def ids(bundle: dict, mode: str | None = None) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if mode is None or e["search"]["mode"] == mode}


def test_last_updated_finds_a_resource_by_its_own_timestamp(api, world):
    stamp = world["learning"]["meta"]["lastUpdated"]  # e.g. 2026-12-01T12:28:01.255Z
    for query in (f"_lastUpdated={stamp}", f"_lastUpdated=eq{stamp}", f"_lastUpdated=le{stamp}",
                  f"_lastUpdated={stamp[:21]}Z"):  # .2 covers 100 ms
        bundle = api.get(f"/fhir/Condition?patient={world['child']['id']}&{query.replace('+', '%2B')}", world["la"]).json()
        assert world["learning"]["id"] in ids(bundle), query
    later = api.get(f"/fhir/Condition?patient={world['child']['id']}&_lastUpdated=gt{stamp}", world["la"]).json()
    assert world["learning"]["id"] not in ids(later)


@pytest.mark.parametrize("query, matches", [
    ("family={f}", {"child", "other"}), ("family={F}", {"child", "other"}), ("family=nunez", {"child", "other"}),
    ("given=zoe", {"child"}), ("given=ZO", {"child"}), ("name=ann", {"child"}), ("given:exact=Zoë", {"child"}),
    ("given:exact=zoë", set()), ("given:contains=o", {"child", "other"}), ("address-postalcode=ls1", {"child"}),
    ("given=oe", set()),
])
def test_string_search_is_starts_with_ignoring_case_and_accents(api, world, query, matches):
    query = query.format(f=world["family"], F=world["family"].upper())
    bundle = api.get(f"/fhir/Patient?family={world['family']}&{query}", world["la"]).json()
    assert ids(bundle) == {world[k]["id"] for k in matches}, query


def test_string_search_respects_visibility(api, world):
    """The school sees the child through the family's consent, never the other child."""
    bundle = api.get(f"/fhir/Patient?family={world['family']}", world["school"]).json()
    assert ids(bundle) == {world["child"]["id"]} and bundle["total"] == 1


def test_revinclude_applies_consent_to_what_it_includes(api, world):
    child = world["child"]["id"]
    la = api.get(f"/fhir/Patient?_id={child}&_revinclude=Condition:subject", world["la"]).json()
    assert ids(la, "include") >= {world["learning"]["id"], world["health"]["id"]}
    school = api.get(f"/fhir/Patient?_id={child}&_revinclude=Condition:subject", world["school"]).json()
    assert ids(school, "match") == {child}
    assert world["learning"]["id"] in ids(school, "include")
    assert world["health"]["id"] not in ids(school, "include")  # section C: hidden equals missing
    assert "Asthma" not in str(school)


def test_chained_and_has_search_see_only_what_the_caller_may(api, world):
    nhs = world["child"]["identifier"][0]["value"]
    chained = api.get(f"/fhir/Condition?subject.identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}", world["la"]).json()
    assert ids(chained) == {world["learning"]["id"], world["health"]["id"]}
    typed = api.get(f"/fhir/Condition?subject:Patient.family={world['family']}&category={SECTION_SYSTEM}|C",
                    world["la"]).json()
    assert ids(typed) == {world["health"]["id"]}
    health = f"_has:Condition:subject:category={SECTION_SYSTEM}|C"
    has = api.get(f"/fhir/Patient?family={world['family']}&{health}", world["la"]).json()
    assert ids(has) == {world["child"]["id"]}
    hidden = api.get(f"/fhir/Patient?{health}&family={world['family']}", world["school"]).json()
    assert hidden["total"] == 0  # the school may not see the health need, so it matches nothing
    too_deep = api.get("/fhir/Condition?subject.organization.name=x", world["la"])
    assert too_deep.status_code == 400


def test_compartment_search(api, world):
    child = world["child"]["id"]
    la = api.get(f"/fhir/Patient/{child}/Condition", world["la"]).json()
    assert ids(la) == {world["learning"]["id"], world["health"]["id"]}
    self_link = next(l["url"] for l in la["link"] if l["relation"] == "self")
    assert self_link.startswith(f"{api.base}/fhir/Patient/{child}/Condition")
    assert ids(api.get(f"/fhir/Patient/{child}/Condition", world["school"]).json()) == {world["learning"]["id"]}
    outsider = api.token("school", "Organization/school-nobody")
    assert api.get(f"/fhir/Patient/{child}/Condition", outsider).json()["total"] == 0


def test_summary_and_elements(api, world):
    child = world["child"]["id"]
    count = api.get(f"/fhir/Condition?patient={child}&category={SECTION_SYSTEM}|C&_summary=count", world["la"]).json()
    assert count["total"] == 1 and not count.get("entry")
    noted = api.post("/fhir/Condition", need(child, "B", "ASD", note=[{"text": "seen weekly"}]), world["la"]).json()
    summary = api.get(f"/fhir/Condition?_id={noted['id']}&_summary=true", world["la"]).json()["entry"][0]["resource"]
    assert "note" not in summary and summary["subject"] == noted["subject"]  # note is not a summary element
    assert any(t["code"] == "SUBSETTED" for t in summary["meta"]["tag"])
    whole = api.get(f"/fhir/Patient?_id={child}&_summary=true", world["la"]).json()["entry"][0]["resource"]
    assert "name" in whole and "identifier" in whole
    elements = api.get(f"/fhir/Patient?_id={child}&_elements=birthDate", world["la"]).json()["entry"][0]["resource"]
    assert set(elements) == {"resourceType", "id", "meta", "birthDate"}
    data = api.get(f"/fhir/Patient?_id={child}&_summary=data", world["la"]).json()["entry"][0]["resource"]
    assert "text" not in data and "name" in data
    assert api.get(f"/fhir/Patient?_id={child}&_summary=bogus", world["la"]).status_code == 400


def test_history_at_type_and_system_level_is_scoped(api, world):
    la = api.get("/fhir/Condition/_history?_count=100", world["la"]).json()
    assert la["type"] == "history" and {world["learning"]["id"], world["health"]["id"]} <= ids(la)
    school = api.get("/fhir/Condition/_history?_count=100", world["school"]).json()
    assert world["learning"]["id"] in ids(school) and world["health"]["id"] not in ids(school)
    assert school["total"] == len(school["entry"])  # hidden versions are not counted either
    system = api.get("/fhir/_history?_count=100", world["school"]).json()
    assert world["other"]["id"] not in ids(system) and world["health"]["id"] not in ids(system)
    since = api.get("/fhir/Condition/_history?_since=2999-01-01", world["la"]).json()
    assert since["total"] == 0


def test_conditional_read_answers_304(api, world):
    path = f"/fhir/Patient/{world['child']['id']}"
    first = api.get(path, world["la"])
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    again = api.get(path, world["la"], **{"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == etag
    assert api.get(path, world["la"], **{"If-Modified-Since": modified}).status_code == 304
    assert api.get(path, world["la"], **{"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200
    assert api.get(path, world["la"], **{"If-None-Match": 'W/"99"'}).status_code == 200
    hidden = api.get(f"/fhir/Condition/{world['health']['id']}", world["school"], **{"If-None-Match": 'W/"1"'})
    assert hidden.status_code == 404  # a 304 would tell the school the need exists


def test_meta_operation(api, world):
    answer = api.get(f"/fhir/Patient/{world['child']['id']}/$meta", world["la"]).json()
    assert answer["resourceType"] == "Parameters" and answer["parameter"][0]["valueMeta"]["versionId"]


def test_xml_is_not_acceptable_on_any_read(api, world):
    path = f"/fhir/Patient/{world['child']['id']}"
    for suffix, headers in (("?_format=xml", {}), ("", {"Accept": "application/fhir+xml"}),
                            ("/_history", {"Accept": "application/fhir+xml"}), ("/_history/1?_format=xml", {})):
        response = api.get(path + suffix, world["la"], **headers)
        assert response.status_code == 406, (suffix, headers)
    assert api.get(path, world["la"], Accept="application/fhir+xml, application/fhir+json;q=0.5").status_code == 200
    assert api.get(path, world["la"], Accept="*/*").status_code == 200


def test_links_ignore_a_forged_host_header(api, world):
    bundle = api.get(f"/fhir/Patient?_id={world['child']['id']}", world["la"], Host="evil.example").json()
    assert all(l["url"].startswith(api.base + "/fhir/") for l in bundle["link"])
    assert all(e["fullUrl"].startswith(api.base + "/fhir/") for e in bundle["entry"])


def test_conditional_create_from_the_query_string(api, world):
    """fhirpy's get_or_create posts the search as the query string of the create."""
    nhs = nhs_number()
    body = {"resourceType": "Patient", "birthDate": "2016-02-02", "name": [{"family": "Query"}],
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}]}
    path = f"/fhir/Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"
    first = api.post(path, body, world["la"])
    second = api.post(path, body, world["la"])
    assert (first.status_code, second.status_code) == (201, 200) and first.json()["id"] == second.json()["id"]


def test_second_patient_with_the_same_nhs_number_is_refused(api, world):
    body = {"resourceType": "Patient", "birthDate": "2016-02-02", "identifier": world["child"]["identifier"]}
    response = api.post("/fhir/Patient", body, api.token("la", "Organization/la-916"))
    assert response.status_code == 409 and response.json()["issue"][0]["code"] == "duplicate"


def test_conditional_update(api, world):
    la = world["la"]
    code = f"C{unique()}"
    body = need(world["child"]["id"], "D", code, identifier=[{"system": "urn:test:cu", "value": code}])
    created = api.put(f"/fhir/Condition?identifier=urn:test:cu|{code}", body, la)
    assert created.status_code == 201
    changed = dict(body, note=[{"text": "updated"}])
    without = api.put(f"/fhir/Condition?identifier=urn:test:cu|{code}", changed, la)
    assert without.status_code == 428 and 'W/"1"' in without.json()["issue"][0]["diagnostics"]
    updated = api.put(f"/fhir/Condition?identifier=urn:test:cu|{code}", changed, la, **{"If-Match": 'W/"1"'})
    assert updated.status_code == 200 and updated.json()["id"] == created.json()["id"]
    assert updated.json()["meta"]["versionId"] == "2"
    hidden = api.put(f"/fhir/Condition?_id={world['health']['id']}", world["health"] | {"id": world["health"]["id"]},
                     world["school"], **{"If-Match": 'W/"1"'})
    assert hidden.status_code in (403, 404) and "Asthma" not in hidden.text


def test_trailing_slash_base_takes_a_batch(api, world):
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{world['child']['id']}"}}]}
    response = api.post("/fhir/", batch, world["la"])
    assert response.status_code == 200 and response.json()["entry"][0]["response"]["status"].startswith("200")


def test_access_log_pages_like_a_search(api, world):
    child = world["child"]["id"]
    first = api.get(f"/fhir/Patient/{child}/$access-log?_count=1", world["mum"]).json()
    links = {l["relation"]: l["url"] for l in first["link"]}
    assert first["total"] > 1 and len(first["entry"]) == 1 and {"self", "next", "signed-head"} <= set(links)
    assert links["next"].startswith(f"{api.base}/fhir/Patient/{child}/$access-log?")
    second = api.session.get(links["next"], headers=api.headers(world["mum"])).json()
    assert "previous" in {l["relation"] for l in second["link"]}
    assert first["entry"][0]["fullUrl"].startswith(f"{api.base}/fhir/AuditEvent/")
