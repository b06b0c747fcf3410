"""Versioned documents: nothing overwritten, If-Match mandatory, no version skipped or doubled."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.support import need, outcome_code


def _condition(child_id: str) -> dict:
    return need(child_id)


def test_create_returns_location_and_etag(api):
    child = api.new_child()
    response = api.post("/fhir/Condition", _condition(child["id"]), api.la())
    assert response.status_code == 201
    body = response.json()
    assert response.headers["Location"].endswith(f"/fhir/Condition/{body['id']}/_history/1")
    assert response.headers["ETag"] == 'W/"1"'
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")


def test_update_needs_if_match_and_rejects_stale(api):
    child = api.new_child()
    path = f"/fhir/Patient/{child['id']}"
    changed = dict(child, gender="female")
    missing = api.put(path, changed, api.la())
    assert missing.status_code == 428 and outcome_code(missing) == "required"
    ok = api.put(path, changed, api.la(), **{"If-Match": 'W/"1"'})
    assert ok.status_code == 200 and ok.headers["ETag"] == 'W/"2"'
    stale = api.put(path, dict(child, gender="male"), api.la(), **{"If-Match": 'W/"1"'})
    assert stale.status_code == 412 and outcome_code(stale) == "conflict"
    assert api.get(path, api.la()).json()["gender"] == "female"


def test_vread_and_history_keep_every_version(api):
    child = api.new_child()
    path = f"/fhir/Patient/{child['id']}"
    for version, gender in ((1, "female"), (2, "male"), (3, "other")):
        assert api.put(path, dict(child, gender=gender), api.la(), **{"If-Match": f'W/"{version}"'}).status_code == 200
    first = api.get(f"{path}/_history/1", api.la())
    assert first.status_code == 200 and "gender" not in first.json()
    assert api.get(f"{path}/_history/3", api.la()).json()["gender"] == "male"
    history = api.get(f"{path}/_history", api.la()).json()
    assert history["type"] == "history" and history["total"] == 4
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["4", "3", "2", "1"]
    assert api.get(f"{path}/_history/9", api.la()).status_code == 404


def test_twenty_concurrent_updates_one_wins(api):
    child = api.new_child()
    path = f"/fhir/Patient/{child['id']}"
    token = api.la()

    def attempt(n: int) -> int:
        body = dict(child, name=[{"family": f"Writer{n}"}])
        return api.put(path, body, token, **{"If-Match": 'W/"1"'}).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(attempt, range(20)))
    assert sorted(statuses) == [200] + [412] * 19
    history = api.get(f"{path}/_history", token).json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]


def test_delete_is_refused(api):
    child = api.new_child()
    response = api.delete(f"/fhir/Patient/{child['id']}", api.la())
    assert response.status_code == 405 and outcome_code(response) == "not-supported"
    assert api.get(f"/fhir/Patient/{child['id']}", api.la()).status_code == 200


def test_put_creates_at_client_id_once(api):
    child = api.new_child()
    body = dict(_condition(child["id"]), id="need-client-1")
    created = api.put("/fhir/Condition/need-client-1", body, api.la())
    assert created.status_code == 201 and created.headers["ETag"] == 'W/"1"'
    again = api.put("/fhir/Condition/need-client-1", body, api.la())
    assert again.status_code == 428


def test_prefer_return(api):
    child = api.new_child()
    minimal = api.post("/fhir/Condition", _condition(child["id"]), api.la(), Prefer="return=minimal")
    assert minimal.status_code == 201 and minimal.content == b"" and minimal.headers["Location"]
    outcome = api.post("/fhir/Condition", _condition(child["id"]), api.la(), Prefer="return=OperationOutcome")
    assert outcome.json()["resourceType"] == "OperationOutcome"


def test_conditional_create(api):
    child = api.new_child()
    body = dict(_condition(child["id"]), identifier=[{"system": "urn:la-866:needs", "value": "N-1"}])
    headers = {"If-None-Exist": "identifier=urn:la-866:needs|N-1"}
    first = api.post("/fhir/Condition", body, api.la(), **headers)
    assert first.status_code == 201
    second = api.post("/fhir/Condition", body, api.la(), **headers)
    assert second.status_code == 200 and second.json()["id"] == first.json()["id"]
    api.post("/fhir/Condition", body, api.la())
    third = api.post("/fhir/Condition", body, api.la(), **headers)
    assert third.status_code == 412
