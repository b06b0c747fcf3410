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
from tests.support import outcome_code

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
    ({"received": "2026-13-45", "requester": "school"}, 400, "is not a valid date"),
    ({"received": "2026-01-05", "requester": "neighbour"}, 400, "ehcp-requester"),
    ({"received": "2026-01-05", "requester": "school", "surprise": "x y"}, 400, "not known here"),
])
def test_a_bad_request_for_assessment_is_refused_and_changes_nothing(api, child, values, status, words):
    child_id, _ = child
    response = api.post(f"/fhir/Patient/{child_id}/$request-assessment", params(**values), api.la())
    assert response.status_code == status and words in response.json()["issue"][0]["diagnostics"]
    assert tasks_of(api, child_id) == 0


def family_of(api, name: str, birth: str = "2017-02-01") -> tuple[str, str, str]:
    """A child, their parent's RelatedPerson id and the parent's token."""
    from tests.e2e.plan_builders import parent

    child = api.new_child(birthDate=birth, name=[{"family": "Example", "given": [name]}])["id"]
    mum = api.post("/fhir/RelatedPerson", parent(child, f"{name}'s parent"), api.la()).json()["id"]
    return child, mum, api.token("parent", None, fhir_user=f"RelatedPerson/{mum}")


def request_of(api, child_id: str) -> dict:
    found = api.get(f"/fhir/Task?patient={child_id}&code={BASE}/CodeSystem/ehcp-task-code|assessment-request",
                    api.la()).json()
    return found["entry"][0]["resource"]


def test_a_parent_requests_an_assessment_through_the_record_and_only_the_la_runs_the_rest(api):
    """CFA 2014 s36(1): the child's parent may request; the request is received the day it is made,
    the clocks are the custodian LA's, and only the LA records the steps."""
    child_id, mum_id, mum = family_of(api, "Pat")
    today = api.services.records.clock().date()
    backdated = api.post(f"/fhir/Patient/{child_id}/$request-assessment", params(received="2026-01-05"), mum)
    assert backdated.status_code == 400 and "received today" in backdated.text
    as_school = api.post(f"/fhir/Patient/{child_id}/$request-assessment", params(requester="school"), mum)
    assert as_school.status_code == 400 and tasks_of(api, child_id) == 0
    made = api.post(f"/fhir/Patient/{child_id}/$request-assessment", params(note="Please assess his speech"), mum)
    assert made.status_code == 201, made.text
    request = made.json()
    assert request["requester"] == {"reference": f"RelatedPerson/{mum_id}"}
    assert output({"output": request["input"]}, "requester-type")["coding"][0]["code"] == "parent"
    assert output({"output": request["input"]}, "received") == today.isoformat()
    decision = one_clock(api, child_id, "assessment-decision")
    assert decision["owner"] == {"reference": "Organization/la-866"}  # the LA's clock, on the parent's request
    done = api.post(f"/fhir/Task/{decision['id']}/$complete-step", params(date=today.isoformat(), decision="assess"), mum)
    assert done.status_code == 403
    assert api.get(f"/fhir/Task/{decision['id']}", api.la()).json()["status"] == "requested"
    log = json.dumps(api.get(f"/fhir/Patient/{child_id}/$access-log?_count=100", mum).json())
    assert '"assessment-request"' in log


def test_a_school_may_request_for_a_child_it_works_with_and_nobody_else_may(api):
    """s36(1) "a person acting on behalf of a school or post-16 institution": a school the family
    lets contribute to the record; a school with no consent cannot tell the child exists."""
    from tests.consent_support import grant

    child_id, mum_id, mum = family_of(api, "Lee")
    school = api.token("school", "Organization/school-77")
    assert api.post(f"/fhir/Patient/{child_id}/$request-assessment", params(), school).status_code == 404
    other_la = api.token("la", "Organization/la-916")
    assert api.post(f"/fhir/Patient/{child_id}/$request-assessment", params(), other_la).status_code == 404
    health = api.token("health", "Organization/nhs-7")
    assert api.post(f"/fhir/Patient/{child_id}/$request-assessment", params(), health).status_code == 404
    assert tasks_of(api, child_id) == 0
    consent = grant(child_id, f"RelatedPerson/{mum_id}", "Organization/school-77", ["K"], actions=("contribute",))
    assert api.post("/fhir/Consent", consent, mum).status_code == 201
    made = api.post(f"/fhir/Patient/{child_id}/$request-assessment", params(), school)
    assert made.status_code == 201, made.text
    assert output({"output": made.json()["input"]}, "requester-type")["coding"][0]["code"] == "school"
    assert made.json()["requester"] == {"reference": "Organization/school-77"}
    clock = one_clock(api, child_id, "assessment-decision")
    exception = params(reason="absent-from-area", start="2026-01-01", end="2026-02-01")
    assert api.post(f"/fhir/Task/{clock['id']}/$clock-exception", exception, school).status_code == 404
    assert api.get(f"/fhir/Task/{clock['id']}", api.la()).json().get("extension") is None


def test_a_young_person_requests_for_themselves_and_their_parent_no_longer_can(api):
    """Over compulsory school age the young person decides (CFA 2014 ss36(1), 83(2))."""
    child_id, _, mum = family_of(api, "Ash", birth="2007-03-01")
    # the parent no longer decides (nor sees the record without the young person's consent)
    assert api.post(f"/fhir/Patient/{child_id}/$request-assessment", params(), mum).status_code == 404
    young_person = api.token("young-person", None, fhir_user=f"Patient/{child_id}")
    made = api.post(f"/fhir/Patient/{child_id}/$request-assessment", params(), young_person)
    assert made.status_code == 201, made.text
    assert output({"output": made.json()["input"]}, "requester-type")["coding"][0]["code"] == "young-person"
    again = api.post(f"/fhir/Patient/{child_id}/$request-assessment", params(), young_person)
    assert again.status_code == 409


def test_only_the_custodian_runs_the_steps_after_a_request(api):
    """After the request, every step is the custodian LA's (SEND Regulations 2014 regs 5-31): the
    family is refused (403); a school that may only contribute advice, another LA and a health
    service cannot see these Tasks or run the record's steps, and are answered as if they did not
    exist (404). Nothing changes."""
    from tests.consent_support import grant

    child_id, mum_id, mum = family_of(api, "Rio")
    school = api.token("school", "Organization/school-88")
    consent = grant(child_id, f"RelatedPerson/{mum_id}", "Organization/school-88", ["K"], actions=("contribute",))
    assert api.post("/fhir/Consent", consent, mum).status_code == 201
    request = api.post(f"/fhir/Patient/{child_id}/$request-assessment", params(), mum).json()
    clock = one_clock(api, child_id, "assessment-decision")
    today = api.services.records.clock().date().isoformat()
    steps = [
        (f"/fhir/Task/{request['id']}/$request-advice", params(adviceType="health", requested=today)),
        (f"/fhir/Task/{clock['id']}/$clock-exception", params(reason="absent-from-area", start=today, end=today)),
        (f"/fhir/Task/{clock['id']}/$complete-step", params(date=today, decision="assess")),
        (f"/fhir/Patient/{child_id}/$phase-transfer", params(transferYear=int(today[:4]) + 1)),
        (f"/fhir/Patient/{child_id}/$cease", params(consulted=today, decided=today, reason="needs-met")),
    ]
    callers = {"parent": (mum, 403), "school": (school, 404), "other LA": (api.token("la", "Organization/la-916"), 404),
               "health": (api.token("health", "Organization/nhs-7"), 404)}
    for path, body in steps:
        for who, (token, status) in callers.items():
            response = api.post(path, body, token)
            assert response.status_code == status, (path, who, response.text)
    assert tasks_of(api, child_id) == 3
    # a parent's token without write scopes (SMART patient/*.rs) cannot make a request either
    other, other_mum_id, _ = family_of(api, "Noa")
    read_only = api.token("parent", None, fhir_user=f"RelatedPerson/{other_mum_id}", scope="patient/*.rs",
                          patient=f"Patient/{other}")
    assert api.post(f"/fhir/Patient/{other}/$request-assessment", params(), read_only).status_code == 403
    assert tasks_of(api, other) == 0


def test_a_plain_write_cannot_create_or_move_a_statutory_clock(api, child):
    """Due dates come from the regulations through the operations; POST and PUT of a clock Task
    are refused (409 business-rule), and a clock keeps its dates."""
    child_id, _ = child
    api.post(f"/fhir/Patient/{child_id}/$request-assessment", params(received="2026-01-05", requester="parent"),
             api.la())
    clock = one_clock(api, child_id, "assessment-decision")
    moved = {k: v for k, v in clock.items() if k != "meta"}
    moved["restriction"] = {"period": {"start": "2026-01-05", "end": "2026-12-31"}}
    response = api.put(f"/fhir/Task/{clock['id']}", moved, api.la(), **{"If-Match": f'W/"{clock["meta"]["versionId"]}"'})
    assert response.status_code == 409 and outcome_code(response) == "business-rule"
    assert "$complete-step" in response.json()["issue"][0]["diagnostics"]
    renamed = dict(moved, code={"coding": [{"system": f"{BASE}/CodeSystem/ehcp-task-code", "code": "transfer"}]})
    assert api.put(f"/fhir/Task/{clock['id']}", renamed, api.la(),
                   **{"If-Match": f'W/"{clock["meta"]["versionId"]}"'}).status_code == 409
    forged = {k: v for k, v in moved.items() if k != "id"}
    created = api.post("/fhir/Task", forged, api.la())
    assert created.status_code == 409 and outcome_code(created) == "business-rule"
    in_bundle = api.post("/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": forged, "request": {"method": "POST", "url": "Task"}}]}, api.la())
    assert in_bundle.status_code == 409
    assert api.get(f"/fhir/Task/{clock['id']}", api.la()).json()["restriction"]["period"]["end"] == "2026-02-16"
    assert tasks_of(api, child_id) == 3  # the request and its two clocks, nothing else


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


def test_a_transfer_task_is_the_servers_and_a_review_task_keeps_the_regulations_dates(api):
    """A transfer Task is written only by $transfer (its due dates are reg 15(2)'s): a plain POST,
    or one in a transaction, is refused (409 business-rule naming $transfer), and nothing is
    written. The parental-review example may be posted as it is, but not with a due date the
    regulations do not give (regs 13(1)(a), 22(2)(c)) (422 business-rule)."""
    from tests.api.test_shipped_examples import example

    child_id, _, _ = family_of(api, "Ira")
    transfer = dict(example("transfer-task.json"), **{"for": {"reference": f"Patient/{child_id}"}})
    refused = api.post("/fhir/Task", transfer, api.la())
    assert refused.status_code == 409 and outcome_code(refused) == "business-rule"
    assert "$transfer" in refused.json()["issue"][0]["diagnostics"]
    in_bundle = api.post("/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": transfer, "request": {"method": "POST", "url": "Task"}}]}, api.la())
    assert in_bundle.status_code == 409 and "$transfer" in in_bundle.text
    assert tasks_of(api, child_id) == 0
    review = dict(example("parental-review-task.json"), **{"for": {"reference": f"Patient/{child_id}"}})
    short = dict(review, restriction={"period": {"start": "2025-03-03", "end": "2025-03-10"}})
    too_short = api.post("/fhir/Task", short, api.la())
    assert too_short.status_code == 422 and "at least 15 days" in too_short.text
    made = api.post("/fhir/Task", review, api.la())
    assert made.status_code == 201, made.text
    renamed = dict(made.json(), code=transfer["code"])  # a PUT cannot turn a Task into a transfer either
    put = api.put(f"/fhir/Task/{renamed['id']}", renamed, api.la(), **{"If-Match": 'W/"1"'})
    assert put.status_code == 409 and "$transfer" in put.json()["issue"][0]["diagnostics"]
    assert api.get(f"/fhir/Task/{renamed['id']}", api.la()).json()["code"] == review["code"]
