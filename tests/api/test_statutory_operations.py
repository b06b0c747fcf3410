"""The statutory operations over HTTP: who may call them, bad input refused with nothing
changed, and the server's own writes (notices, receipts, progress) each audited under their
own action. The whole timeline is walked in tests/e2e/test_statutory_timeline.py."""

from __future__ import annotations

import json
import uuid

import pytest

from ehcp_record.errors import FhirError
from tests.e2e.plan_builders import draft_plan_bundle, ids_by_type
from tests.e2e.test_statutory_timeline import new_family, one_clock, output, params

BASE = "http://ehcp-record.example.org/fhir"


@pytest.fixture()
def child(api):
    child_id, mum = new_family(api, f"Child {uuid.uuid4().hex[:6]}")
    return child_id, mum


def tasks_of(api, child_id: str) -> int:
    return api.get(f"/fhir/Task?patient={child_id}&_count=0", api.la()).json()["total"]


@pytest.mark.parametrize("values, status, words", [
    ({"requester": "school"}, 400, "'received'"),
    ({"received": "2999-01-01", "requester": "school"}, 400, "in the future"),
    ({"received": "2026-13-45", "requester": "school"}, 400, "is not a date"),
    ({"received": "2026-01-05", "requester": "neighbour"}, 400, "ehcp-requester"),
    ({"received": "2026-01-05", "requester": "school", "surprise": "x y"}, 400, "not known here"),
])
def test_a_bad_request_for_assessment_is_refused_and_changes_nothing(api, child, values, status, words):
    child_id, _ = child
    response = api.post(f"/fhir/Patient/{child_id}/$request-assessment", params(**values), api.la())
    assert response.status_code == status and words in response.json()["issue"][0]["diagnostics"]
    assert tasks_of(api, child_id) == 0


def test_only_the_custodian_records_the_timeline(api, child):
    child_id, mum = child
    body = params(received="2026-01-05", requester="parent")
    school = api.token("school", "Organization/school-1")
    assert api.post(f"/fhir/Patient/{child_id}/$request-assessment", body, school).status_code == 404  # hidden
    assert api.post(f"/fhir/Patient/{child_id}/$request-assessment", body, mum).status_code == 403
    other_la = api.token("la", "Organization/la-916")
    assert api.post(f"/fhir/Patient/{child_id}/$request-assessment", body, other_la).status_code == 404
    assert tasks_of(api, child_id) == 0
    created = api.post(f"/fhir/Patient/{child_id}/$request-assessment", body, api.la())
    assert created.status_code == 201
    clock = one_clock(api, child_id, "assessment-decision")
    done = api.post(f"/fhir/Task/{clock['id']}/$complete-step", params(date="2026-01-06", decision="assess"), mum)
    assert done.status_code == 403
    assert api.get(f"/fhir/Task/{clock['id']}", api.la()).json()["status"] == "requested"


def test_a_decision_clock_needs_a_decision_and_a_step_cannot_be_recorded_twice(api, child):
    child_id, _ = child
    api.post(f"/fhir/Patient/{child_id}/$request-assessment", params(received="2026-01-05", requester="parent"),
             api.la())
    clock = one_clock(api, child_id, "assessment-decision")
    path = f"/fhir/Task/{clock['id']}/$complete-step"
    assert api.post(path, params(date="2026-01-06"), api.la()).status_code == 400
    assert api.post(path, params(date="2026-01-04", decision="assess"), api.la()).status_code == 400  # before start
    assert api.post(path, params(date="2026-01-06", decision="assess"), api.la()).status_code == 200
    again = api.post(path, params(date="2026-01-07", decision="assess"), api.la())
    assert again.status_code == 409 and "only an open clock" in again.text
    late_exception = api.post(f"/fhir/Task/{clock['id']}/$clock-exception",
                              params(reason="absent-from-area", start="2026-01-01", end="2026-02-01"), api.la())
    assert late_exception.status_code == 409  # the outcome is recorded; an exception is noted while it runs
    # a Task that is not a clock is answered as a missing clock
    request_task = [t for t in api.get(f"/fhir/Task?patient={child_id}", api.la()).json()["entry"]
                    if t["resource"]["code"]["coding"][0]["code"] == "assessment-request"][0]["resource"]
    assert api.post(f"/fhir/Task/{request_task['id']}/$clock-exception",
                    params(reason="absent-from-area", start="2026-01-01", end="2026-02-01"), api.la()).status_code == 404


def test_notices_receipts_and_progress_are_audited_under_their_own_actions(api, child):
    child_id, mum = child
    api.post(f"/fhir/Patient/{child_id}/$request-assessment", params(received="2026-01-05", requester="parent"),
             api.la())
    refused = api.post(f"/fhir/Task/{one_clock(api, child_id, 'assessment-decision')['id']}/$complete-step",
                       params(date="2026-01-06", decision="not-assess", reason="Needs met at SEN support"), api.la())
    notice = output(refused.json(), "notice")["reference"]
    event = {"notice": {"reference": notice}, "kind": "read"}
    assert api.post(f"/fhir/Patient/{child_id}/$notice-event", params(**event), mum).status_code == 200
    log = json.dumps(api.get(f"/fhir/Patient/{child_id}/$access-log?_count=100", mum).json())
    assert '"notice"' in log and '"notice-read"' in log
    # the family sees the notice; a school does not, and cannot tell it exists
    assert api.get(f"/fhir/{notice}", mum).status_code == 200
    assert api.get(f"/fhir/{notice}", api.token("school", "Organization/school-1")).status_code == 404


def test_progress_changes_only_the_achievement_status_and_adds_a_note(api, child):
    child_id, _ = child
    ids = ids_by_type(api.post("/fhir", draft_plan_bundle(child_id), api.la()).json())
    goal = {"id": ids["Goal"]}
    caller = api.services.verifier.caller(f"Bearer {api.la()}", "127.0.0.1", "test", uuid.uuid4().hex)
    store = api.services.records.for_caller(caller)
    current, _ = store.resource("Goal", goal["id"], "write")
    changed = {k: v for k, v in current.resource.items() if k != "meta"}
    changed["description"] = {"text": "Reads a long book"}
    with pytest.raises(FhirError) as refused:
        store.prepare_outcome_progress(changed, current)
    assert refused.value.status == 400 and "$propose" in str(refused.value)
    progress = {k: v for k, v in current.resource.items() if k != "meta"}
    progress["achievementStatus"] = {"coding": [{"code": "achieved"}]}
    progress["note"] = [{"text": "Achieved"}]
    prepared = store.prepare_outcome_progress(progress, current)
    assert prepared.operation == "progress"
