"""Transaction (all or nothing, urn:uuid resolved) and batch (each entry alone) Bundles."""

from __future__ import annotations

from tests.support import need, outcome_code, unique


def _plan_bundle(bad_entry: bool = False, goal_id: str = "G-1") -> dict:
    child_url, need_url = "urn:uuid:" + "1" * 8 + "-0000-4000-8000-" + "0" * 12, "urn:uuid:" + "2" * 8 + "-0000-4000-8000-" + "0" * 12
    first_need = need(child_url, code="ASD")
    if bad_entry:
        first_need["onsetDateTime"] = "not-a-date"
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": child_url, "resource": {"resourceType": "Patient", "birthDate": "2016-01-02", "name": [{"family": "Test"}],
                                            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": need_url, "resource": first_need, "request": {"method": "POST", "url": "Condition"}},
        {"resource": {"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "Talk in sentences"},
                      "subject": {"reference": child_url}, "addresses": [{"reference": need_url}],
                      "target": [{"dueDate": "2027-07-01"}],
                      "identifier": [{"system": "urn:test:goals", "value": goal_id}]},
         "request": {"method": "POST", "url": "Goal"}},
    ]}


def test_transaction_resolves_urn_uuid_references(api):
    response = api.post("/fhir", _plan_bundle(), api.la())
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == "transaction-response"
    locations = [e["response"]["location"] for e in bundle["entry"]]
    assert all(e["response"]["status"] == "201 Created" for e in bundle["entry"])
    child_id = locations[0].split("/")[1]
    need_id = locations[1].split("/")[1]
    goal = api.get("/" .join(["/fhir", *locations[2].split("/")[:2]]), api.la()).json()
    assert goal["subject"]["reference"] == f"Patient/{child_id}"
    assert goal["addresses"][0]["reference"] == f"Condition/{need_id}"


def test_transaction_with_one_bad_entry_stores_nothing(api):
    token = api.la()
    goal_id = unique()
    before = api.get("/fhir/Patient?_summary=count", token).json()["total"]
    response = api.post("/fhir", _plan_bundle(bad_entry=True, goal_id=goal_id), token)
    assert response.status_code == 400 and outcome_code(response) == "structure"
    assert api.get("/fhir/Patient?_summary=count", token).json()["total"] == before
    assert api.get(f"/fhir/Goal?identifier=urn:test:goals|{goal_id}", token).json()["total"] == 0


def test_transaction_failure_late_in_commit_stores_nothing(api):
    """A stale ifMatch on the last entry aborts the Bundle after earlier entries were prepared."""
    child = api.new_child()
    token = api.la()
    count_before = api.get("/fhir/Condition?_summary=count&patient=Patient/" + child["id"], token).json()["total"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": need(child["id"]),
         "request": {"method": "POST", "url": "Condition"}},
        {"resource": dict(child, gender="female"), "request": {"method": "PUT", "url": f"Patient/{child['id']}", "ifMatch": 'W/"7"'}},
    ]}
    response = api.post("/fhir", bundle, token)
    assert response.status_code == 412
    after = api.get("/fhir/Condition?_summary=count&patient=Patient/" + child["id"], token).json()["total"]
    assert after == count_before
    assert api.get(f"/fhir/Patient/{child['id']}", token).json()["meta"]["versionId"] == "1"


def test_transaction_unresolvable_reference_is_refused(api):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": need("urn:uuid:99999999-0000-4000-8000-000000000000"),
         "request": {"method": "POST", "url": "Condition"}}]}
    response = api.post("/fhir", bundle, api.la())
    assert response.status_code == 400 and "not a fullUrl" in response.json()["issue"][0]["diagnostics"]


def test_batch_entries_succeed_or_fail_alone(api):
    child = api.new_child()
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": need(child["id"]),
         "request": {"method": "POST", "url": "Condition"}},
        {"resource": need("does-not-exist"),
         "request": {"method": "POST", "url": "Condition"}},
        {"request": {"method": "GET", "url": f"Patient/{child['id']}"}},
    ]}
    response = api.post("/fhir", bundle, api.la())
    assert response.status_code == 200
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses[0] == "201 Created" and statuses[1] == "422" and statuses[2] == "200 OK"
    assert response.json()["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_transaction_conditional_create_reuses_existing(api):
    child = api.new_child()
    ident = unique()
    entry = {"resource": need(child["id"], identifier=[{"system": "urn:test", "value": ident}]),
             "request": {"method": "POST", "url": "Condition", "ifNoneExist": f"identifier=urn:test|{ident}"}}
    first = api.post("/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}, api.la()).json()
    second = api.post("/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}, api.la()).json()
    assert first["entry"][0]["response"]["status"] == "201 Created"
    assert second["entry"][0]["response"]["status"] == "200 OK"
    assert first["entry"][0]["response"]["location"] == second["entry"][0]["response"]["location"]


def test_bundle_must_be_transaction_or_batch(api):
    response = api.post("/fhir", {"resourceType": "Bundle", "type": "collection"}, api.la())
    assert response.status_code == 400 and outcome_code(response) == "invalid"
