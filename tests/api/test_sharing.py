"""`shared` on every current document of a record: the recipient keys its Consents name, kept
by the store in the transaction that writes (`Repository.share_within`), so a reader with no
custody searches the records shared with it through one index. What is asserted here is the
field itself, as the database holds it; what each caller may see is the leak suite's and the
consent matrix's."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from tests.consent_support import grant
from tests.e2e.plan_builders import parent
from tests.support import need


def _family(api) -> tuple[dict, str, str]:
    child = api.new_child()
    mum = api.post("/fhir/RelatedPerson", parent(child["id"], "Alex"), api.la()).json()["id"]
    return child, f"RelatedPerson/{mum}", api.token("parent", None, fhir_user=f"RelatedPerson/{mum}")


def _sharing(api, child_id: str) -> dict[str, list[str]]:
    """Each current document of the child's record -> its `shared`, as stored."""
    record = api.services.repo.current.find_one({"_id": f"Patient/{child_id}"}, {"record": 1})["record"]
    return {d["_id"]: d.get("shared") for d in api.services.repo.current.find({"record": record}, {"shared": 1})}


def _school() -> str:
    return f"Organization/school-{uuid.uuid4().hex[:8]}"


def test_a_consent_shares_every_document_of_its_record_and_those_written_after(api):
    child, mum, mum_token = _family(api)
    before = _sharing(api, child["id"])
    assert before and set(map(tuple, before.values())) == {()}, before  # nothing shared yet
    school = _school()
    made = api.post("/fhir/Consent", grant(child["id"], mum, school, ["A", "B"]), mum_token)
    assert made.status_code == 201, made.text
    need_id = api.post("/fhir/Condition", need(child["id"], "B"), api.la()).json()["id"]
    after = _sharing(api, child["id"])
    assert f"Condition/{need_id}" in after and f"Consent/{made.json()['id']}" in after
    assert set(map(tuple, after.values())) == {(school,)}, after
    other, _, _ = _family(api)
    assert set(map(tuple, _sharing(api, other["id"]).values())) == {()}  # another record: untouched


def test_a_consent_changed_to_another_recipient_moves_the_sharing(api):
    child, mum, mum_token = _family(api)
    first, second = _school(), _school()
    consent = api.post("/fhir/Consent", grant(child["id"], mum, first, ["A"]), mum_token).json()
    changed = grant(child["id"], mum, second, ["A"], role="health")
    changed["id"] = consent["id"]
    reply = api.put(f"/fhir/Consent/{consent['id']}", changed, mum_token, **{"If-Match": 'W/"1"'})
    assert reply.status_code == 200, reply.text
    assert set(map(tuple, _sharing(api, child["id"]).values())) == {(second,)}


def test_a_withdrawn_consent_still_names_its_recipient_but_the_decision_refuses(api):
    """The field is a superset, like `custodian`: a consent made inactive still names the
    school (the record is still a candidate), and the decision taken on each match refuses."""
    child, mum, mum_token = _family(api)
    school = _school()
    consent = api.post("/fhir/Consent", grant(child["id"], mum, school, ["A"]), mum_token).json()
    token = api.token("school", school)
    assert api.get(f"/fhir/Patient?_id={child['id']}", token).json()["total"] == 1
    withdrawn = dict(consent, status="inactive")
    assert api.put(f"/fhir/Consent/{consent['id']}", withdrawn, mum_token, **{"If-Match": 'W/"1"'}).status_code == 200
    assert school in next(iter(_sharing(api, child["id"]).values()))
    assert api.get(f"/fhir/Patient?_id={child['id']}", token).json()["total"] == 0
    assert api.get("/fhir/Patient", token).json()["total"] == 0


def test_consents_and_other_writes_racing_in_one_record_leave_every_document_shared(api):
    """Consent grants and new needs written at once in one record: whichever commits first,
    every current document ends with the keys of every Consent (the writes conflict on the
    record state's `sharing_rev` and one is retried, so none keeps the sharing its snapshot saw)."""
    child, mum, mum_token = _family(api)
    schools = [_school() for _ in range(8)]

    def write(index: int) -> int:
        if index % 2 == 0:
            return api.post("/fhir/Consent", grant(child["id"], mum, schools[index // 2], ["B"]), mum_token).status_code
        return api.post("/fhir/Condition", need(child["id"], "B"), api.la()).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(write, range(16))) == {201}
    sharing = _sharing(api, child["id"])
    assert len(sharing) >= 1 + 8 + 8
    keys = {key for value in sharing.values() for key in value}
    assert all(value == sorted(keys) for value in sharing.values()), sharing
    assert len([k for k in keys if k.startswith("Organization/")]) == 8


def test_documents_stored_before_the_field_get_it_when_the_store_starts(api):
    child, mum, mum_token = _family(api)
    school = _school()
    assert api.post("/fhir/Consent", grant(child["id"], mum, school, ["A"]), mum_token).status_code == 201
    other, _, _ = _family(api)
    repo = api.services.repo
    for record_child in (child, other):
        record = repo.current.find_one({"_id": f"Patient/{record_child['id']}"}, {"record": 1})["record"]
        repo.current.update_many({"record": record}, {"$unset": {"shared": ""}})
    assert set(map(repr, _sharing(api, child["id"]).values())) == {"None"}
    repo.ensure_indexes()
    assert set(map(tuple, _sharing(api, child["id"]).values())) == {(school,)}
    assert set(map(tuple, _sharing(api, other["id"]).values())) == {()}
    assert api.get("/fhir/Patient", api.token("school", school)).json()["total"] == 1
