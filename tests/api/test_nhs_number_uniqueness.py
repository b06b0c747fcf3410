"""One record per NHS number, under concurrency (issue 11): the scoped store's early check
gives the answer, and a unique partial index on each Patient's NHS-number blind token is what
holds when writes race. Every race is run through real HTTP against the threaded test server."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from ehcp_record.access.scoped import ScopedStore
from ehcp_record.fhir.parameters import parameters
from ehcp_record.store.repository import NHS_NUMBER_INDEX, Repository
from tests.conftest import start_server
from tests.support import LA, OTHER_LA, need, nhs_number

NHS = "https://fhir.nhs.uk/Id/nhs-number"
RACERS = 6


def _patient(number: str, **fields) -> dict:
    return {"resourceType": "Patient", "birthDate": "2016-05-05", "name": [{"family": "Race"}],
            "identifier": [{"system": NHS, "value": number}], **fields}


def _stored(api, number: str) -> int:
    """How many current Patients hold this number (the database's own count, every record)."""
    token = api.services.repo.seal.nhs_tokens(_patient(number))
    return api.services.repo.current.count_documents({"type": "Patient", "nhs_token": {"$in": token}})


def _at_once(work, count: int = RACERS) -> list:
    """`work(i)` in `count` threads released together, so the writes really overlap."""
    start = threading.Barrier(count)

    def run(i: int):
        start.wait()
        return work(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def _refusal(response) -> dict:
    assert response.status_code == 409, response.text
    issue = response.json()["issue"][0]
    assert issue["code"] == "duplicate" and issue["expression"] == ["Patient.identifier"], issue
    return issue


@pytest.fixture(scope="module")
def las(api):
    api.ensure_la_organization()
    api.ensure_la_organization(OTHER_LA)
    return [api.token("la", LA), api.token("la", OTHER_LA)]


@pytest.fixture(params=["with the early check", "index alone"])
def early_check(request, monkeypatch):
    """The race is run as it comes, and with the early check out of the way (every writer then
    passes it, as two overlapping creates can): the index alone must refuse all but one."""
    if request.param == "index alone":
        monkeypatch.setattr(ScopedStore, "_one_record_per_nhs_number", lambda self, resource: None)
    return request.param


def test_the_unique_index_exists(api):
    indexes = api.services.repo.current.index_information()
    assert indexes[NHS_NUMBER_INDEX]["unique"] is True
    assert indexes[NHS_NUMBER_INDEX]["partialFilterExpression"] == {"type": "Patient", "nhs_token": {"$type": "binData"}}


def test_concurrent_creates_of_one_child_make_one_record(api, las, early_check):
    number = nhs_number()
    responses = _at_once(lambda i: api.post("/fhir/Patient", _patient(number), las[i % 2]))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * (RACERS - 1), [r.text for r in responses]
    issues = [_refusal(r) for r in responses if r.status_code == 409]
    assert {i["diagnostics"] for i in issues} == {
        f"a child with NHS number {number} is already recorded; create it with If-None-Exist: "
        f"identifier={NHS}|{number}, or ask the local authority that holds the record for a transfer"}
    assert _stored(api, number) == 1
    winner = next(r for r in responses if r.status_code == 201).json()
    found = [api.get(f"/fhir/Patient?identifier={NHS}|{number}", la).json() for la in las]
    assert [e["resource"]["id"] for bundle in found for e in bundle.get("entry", [])] == [winner["id"]]


def _bundle(number: str, code: str) -> dict:
    child = f"urn:uuid:{uuid.uuid4()}"
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": child, "resource": _patient(number), "request": {"method": "POST", "url": "Patient"}},
        {"resource": need(child, "B", "SLCN", note=[{"text": code}]), "request": {"method": "POST", "url": "Condition"}},
    ]}


def test_concurrent_transactions_with_one_child_commit_once_and_wholly(api, las, early_check):
    number = nhs_number()
    marks = [f"bundle-{uuid.uuid4().hex[:8]}" for _ in range(RACERS)]
    responses = _at_once(lambda i: api.post("/fhir", _bundle(number, marks[i]), las[0]))
    assert sorted(r.status_code for r in responses) == [200] + [409] * (RACERS - 1), [r.text for r in responses]
    for refused in (r for r in responses if r.status_code == 409):
        _refusal(refused)
    assert _stored(api, number) == 1
    winner = next(r for r in responses if r.status_code == 200).json()
    child = next(e["resource"]["id"] for e in winner["entry"] if e["resource"]["resourceType"] == "Patient")
    needs = api.get(f"/fhir/Condition?patient={child}", las[0]).json()
    assert needs["total"] == 1  # nothing of a losing bundle was stored


def test_two_entries_of_one_transaction_with_one_number_are_refused_whole(api, las):
    number = nhs_number()
    bundle = _bundle(number, "first")
    bundle["entry"].append({"resource": _patient(number), "request": {"method": "POST", "url": "Patient"}})
    _refusal(api.post("/fhir", bundle, las[0]))
    assert _stored(api, number) == 0


def test_an_update_to_a_number_already_recorded_is_refused_and_changes_nothing(api, las, early_check):
    taken, own = nhs_number(), nhs_number()
    assert api.post("/fhir/Patient", _patient(taken), las[1]).status_code == 201
    mine = api.post("/fhir/Patient", _patient(own), las[0]).json()
    changed = dict({k: v for k, v in mine.items() if k != "meta"}, identifier=[{"system": NHS, "value": taken}])
    response = api.put(f"/fhir/Patient/{mine['id']}", changed, las[0], **{"If-Match": 'W/"1"'})
    assert _refusal(response)["diagnostics"].startswith(f"a child with NHS number {taken} is already recorded")
    now = api.get(f"/fhir/Patient/{mine['id']}", las[0]).json()
    assert now["meta"]["versionId"] == "1" and now["identifier"] == [{"system": NHS, "value": own}]
    assert (_stored(api, taken), _stored(api, own)) == (1, 1)


def test_an_erased_record_no_longer_holds_its_number(api, las):
    """$erase (end of retention) removes the number's token with the rest of the search index,
    so a keyed hash of it does not outlive the erasure, and a new record may take it."""
    number = nhs_number()
    old = api.post("/fhir/Patient", _patient(number, birthDate="1990-01-02"), las[0]).json()
    erase = api.post(f"/fhir/Patient/{old['id']}/$erase", parameters(reason=("string", "retention reached")), las[0])
    assert erase.status_code == 200, erase.text
    again = api.post("/fhir/Patient", _patient(number), las[0])
    assert again.status_code == 201, again.text
    assert api.get(f"/fhir/Patient/{old['id']}", las[0]).status_code == 410


def test_a_database_holding_duplicates_starts_and_says_which(api, mongo, data_dir):
    """An existing database with two Patients on one number cannot take the unique index: the
    repository still starts, names the Patients in its warnings (and /readyz), and builds the
    index at the next start once the duplicate is gone. Patients stored before the field
    existed get their token at start-up."""
    database = f"t_dup_{uuid.uuid4().hex[:8]}"
    number = nhs_number()
    old = [{"_id": f"Patient/{rid}", "type": "Patient", "rid": rid, "vid": 1, "record": rid, "res": _patient(number)}
           for rid in ("dup-a", "dup-b")]
    repo = Repository.connect(mongo.uri, database)
    try:
        repo.current.drop_index(NHS_NUMBER_INDEX)
        repo.current.insert_many(old)
        again, server = start_server(mongo, data_dir, database=database)  # a whole API starts on it
        try:
            ready = again.get("/readyz")
            assert ready.status_code == 200 and len(ready.json()["warnings"]) == 1
            assert "Patient/dup-a, Patient/dup-b" in ready.json()["warnings"][0]
            assert NHS_NUMBER_INDEX not in repo.current.index_information()
            assert repo.current.count_documents({"nhs_token": {"$type": "binData"}}) == 2  # backfilled
        finally:
            server.shutdown()
            again.services.repo.close()
        repo.current.delete_one({"_id": "Patient/dup-b"})
        fixed = Repository.connect(mongo.uri, database)
        assert fixed.warnings == [] and fixed.current.index_information()[NHS_NUMBER_INDEX]["unique"]
        fixed.close()
    finally:
        repo.client.drop_database(database)
        repo.close()
    assert "warnings" not in api.get("/readyz").json()


def test_a_transfer_of_a_child_already_recorded_here_is_refused_whole(api, las):
    """A receiving deployment that already holds a record with the child's NHS number (under
    another record id) refuses the import with 409 `duplicate` and stores nothing of it: the
    two local authorities reconcile the records. (Before the index it imported a second record
    beside the first.) The import is driven at the store, past the signature checks that
    tests/api/test_transfer_between_deployments.py covers."""
    from datetime import datetime, timezone

    from ehcp_record.errors import FhirError
    from ehcp_record.store.versions import ImportedRecord, VersionWrite

    number = nhs_number()
    assert api.post("/fhir/Patient", _patient(number), las[0]).status_code == 201
    record = f"moved-{uuid.uuid4().hex[:8]}"
    patient = dict(_patient(number), id=record, meta={"versionId": "1"})
    write = VersionWrite("Patient", record, 1, datetime.now(timezone.utc), patient, record, None, {}, "h", None)
    transfer = f"transfer-{uuid.uuid4().hex[:8]}"
    imported = ImportedRecord(transfer, "sha", "Organization/la-999", {}, record, [write], [], {"custodian": LA},
                              {}, [])
    with pytest.raises(FhirError) as refused:
        api.services.records.transfers.import_record(imported)
    assert (refused.value.status, refused.value.code) == (409, "duplicate")
    assert "reconcile" in refused.value.diagnostics
    repo = api.services.repo
    assert repo.records.find_one({"_id": record}) is None and repo.history.find_one({"record": record}) is None
    assert repo.db.transfers_received.find_one({"_id": transfer}) is None
    assert _stored(api, number) == 1


def test_concurrent_conditional_creates_of_one_child_all_answer_that_child(api, las, early_check):
    """fhirpy's get_or_create from several workers at once: one 201, and every other answer is
    the 200 of a conditional create that matched it (R4 http §3.1.0.8), never a 409."""
    number = nhs_number()
    path = f"/fhir/Patient?identifier={NHS}|{number}"
    responses = _at_once(lambda i: api.post(path, _patient(number), las[0]))
    assert sorted(r.status_code for r in responses) == [200] * (RACERS - 1) + [201], [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1 and _stored(api, number) == 1
