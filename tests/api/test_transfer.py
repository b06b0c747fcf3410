"""Transfer between local authorities in one deployment (SEND Regulations 2014 reg 15)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from ehcp_record.workflow import clocks
from tests.consent_support import grant, load_issued_example, section_of
from tests.support import outcome_code

NEW_LA = "Organization/la-916"
TASK_INPUT = "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-task-input"


def transfer_parameters(destination: str = NEW_LA, move: date | None = None, notified: date | None = None) -> dict:
    move = move or date.today() + timedelta(days=40)
    notified = notified or date.today() - timedelta(days=1)
    return {"resourceType": "Parameters", "parameter": [
        {"name": "destination", "valueReference": {"reference": destination}},
        {"name": "moveDate", "valueDate": move.isoformat()}, {"name": "notifiedDate", "valueDate": notified.isoformat()}]}


def _with(position: int, parameter: dict) -> dict:
    """Valid transfer Parameters with one parameter replaced."""
    body = transfer_parameters()
    body["parameter"][position] = parameter
    return body


def _inputs(task: dict) -> dict:
    return {i["type"]["coding"][0]["code"]: next(v for k, v in i.items() if k.startswith("value")) for i in task["input"]}


@pytest.fixture()
def record(api):
    return load_issued_example(api)


def test_transfer_task_carries_the_reg15_clocks(api, record):
    child = record["Patient"][0]["id"]
    move, notified = date.today() + timedelta(days=10), date.today() - timedelta(days=2)
    response = api.post(f"/fhir/Patient/{child}/$transfer", transfer_parameters(move=move, notified=notified), api.la())
    assert response.status_code == 201, response.text
    task = response.json()
    values = _inputs(task)
    plan_date = date.fromisoformat(api.get(f"/fhir/Composition/{record['Composition'][0]['id']}", api.la()).json()["date"][:10])
    expected = clocks.transfer_clocks(move, notified, plan_date)
    assert values["transfer-due"] == expected.transfer_due.isoformat()
    assert values["notice-due"] == expected.notice_due.isoformat()
    assert values["review-due"] == expected.review_due.isoformat()
    assert task["owner"]["reference"] == NEW_LA and task["status"] == "requested"
    assert task["restriction"]["period"]["end"] == expected.transfer_due.isoformat()


@pytest.mark.parametrize("parameters, status, code", [
    (transfer_parameters("Organization/la-866"), 409, "business-rule"),
    (transfer_parameters("Organization/la-999"), 422, "value"),
    (transfer_parameters("Organization/school-1"), 422, "value"),
    ({"resourceType": "Parameters", "parameter": [{"name": "destination", "valueReference": {"reference": NEW_LA}}]}, 400, "required"),
    (transfer_parameters(notified=date.today() + timedelta(days=3)), 422, "value"),
    (_with(0, {"name": "destination", "valueReference": {"display": "the new LA"}}), 400, "required"),
    (_with(1, {"name": "moveDate", "valueString": "next week"}), 400, "value"),
    (_with(2, {"name": "notifiedDate", "valueDate": "2026-02-30"}), 400, "structure"),
])
def test_bad_transfers_are_refused(api, record, parameters, status, code):
    child = record["Patient"][0]["id"]
    response = api.post(f"/fhir/Patient/{child}/$transfer", parameters, api.la())
    assert response.status_code == status and outcome_code(response) == code, response.text


def test_no_issued_plan_no_transfer(api):
    child = api.new_child()
    response = api.post(f"/fhir/Patient/{child['id']}/$transfer", transfer_parameters(), api.la())
    assert response.status_code == 409 and "issued plan" in response.json()["issue"][0]["diagnostics"]


def test_only_the_custodian_may_transfer(api, record):
    child = record["Patient"][0]["id"]
    assert api.post(f"/fhir/Patient/{child}/$transfer", transfer_parameters(), api.token("la", NEW_LA)).status_code == 404
    assert api.post(f"/fhir/Patient/{child}/$transfer", transfer_parameters(), record["parent_token"]).status_code == 403


def test_accept_moves_custody_and_nothing_else(api, record):
    child = record["Patient"][0]["id"]
    plan = record["Composition"][0]["id"]
    mum = f"RelatedPerson/{record['RelatedPerson'][0]['id']}"
    consent = api.post("/fhir/Consent", grant(child, mum, "Organization/school-1", ["A", "B"]), record["parent_token"]).json()
    old_la, new_la = api.la(), api.token("la", NEW_LA)
    before_document = api.get(f"/fhir/Composition/{plan}/$document", old_la).content
    before_history = api.get(f"/fhir/Composition/{plan}/_history", old_la).json()["total"]
    task = api.post(f"/fhir/Patient/{child}/$transfer", transfer_parameters(), old_la).json()
    assert api.post(f"/fhir/Patient/{child}/$transfer", transfer_parameters(), old_la).status_code == 409  # one at a time
    assert api.post(f"/fhir/Task/{task['id']}/$accept", None, api.token("la", "Organization/la-855")).status_code == 404
    accepted = api.post(f"/fhir/Task/{task['id']}/$accept", None, new_la)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["status"] == "completed"

    # the new LA holds the plan: reads the same document, can propose
    assert api.get(f"/fhir/Composition/{plan}/$document", new_la).content == before_document
    assert api.get(f"/fhir/Composition/{plan}/_history", new_la).json()["total"] == before_history
    draft = api.get(f"/fhir/Composition/{plan}", new_la).json()
    draft.pop("meta")
    proposal = {"resourceType": "Bundle", "type": "transaction",
                "entry": [{"resource": draft, "request": {"method": "PUT", "url": f"Composition/{plan}"}}]}
    assert api.post(f"/fhir/Composition/{plan}/$propose", proposal, new_la).status_code == 201

    # the old LA can no longer read or write, but still sees its own entries in the access log
    assert api.get(f"/fhir/Composition/{plan}", old_la).status_code == 404
    assert api.post(f"/fhir/Composition/{plan}/$propose", proposal, old_la).status_code == 404
    own = api.get(f"/fhir/Patient/{child}/$access-log", old_la).json()
    assert own["total"] > 0
    assert all(any(a.get("who", {}).get("reference") == "Organization/la-866" or
                   "la-866" in str(a) for a in e["resource"]["agent"]) for e in own["entry"])

    # the family is told, and their consents carry over unchanged
    tasks = api.get(f"/fhir/Task?patient={child}&code=notice-to-family", record["parent_token"]).json()
    assert tasks["total"] == 1
    notice = tasks["entry"][0]["resource"]
    assert notice["restriction"]["period"]["end"] == (date.today() + timedelta(weeks=6)).isoformat()
    # named as a family knows it (la-916 is not in this directory: its DfE name), not by reference
    assert notice["description"].startswith("Your child's EHC plan has moved to Gloucestershire.")
    assert notice["requester"] == {"reference": NEW_LA, "display": "Gloucestershire"}
    assert task["description"] == "Transfer of the EHC plan to Gloucestershire (SEND Regulations 2014 reg 15)"
    assert api.get(f"/fhir/Consent/{consent['id']}", record["parent_token"]).json()["meta"]["versionId"] == "1"
    need_b = next(c for c in record["Condition"] if section_of(c) == "B")
    assert api.get(f"/fhir/Condition/{need_b['id']}", api.token("school", "Organization/school-1")).status_code == 200

    # the audit chain is one continuous, verifying chain across the hop
    verdict = api.get(f"/fhir/Patient/{child}/$verify-audit", new_la).json()
    assert {p["name"]: p for p in verdict["parameter"]}["valid"]["valueBoolean"] is True


def test_assessment_in_progress_stops_on_transfer(api, record):
    child = record["Patient"][0]["id"]
    plan = record["Composition"][0]["id"]
    old_la = api.la()
    draft = api.get(f"/fhir/Composition/{plan}", old_la).json()
    draft.pop("meta")
    review = api.post(f"/fhir/Composition/{plan}/$propose", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": draft, "request": {"method": "PUT", "url": f"Composition/{plan}"}}]}, old_la).json()
    task = api.post(f"/fhir/Patient/{child}/$transfer", transfer_parameters(), old_la).json()
    assert api.post(f"/fhir/Task/{task['id']}/$accept", None, api.token("la", NEW_LA)).status_code == 200
    stopped = api.get(f"/fhir/Task/{review['id']}", api.token("la", NEW_LA)).json()
    assert stopped["status"] == "cancelled" and "reg 15" in stopped["statusReason"]["text"]


def test_the_destination_sees_its_incoming_transfer_and_nothing_else_before_accepting(api, record):
    """The new LA must act on the transfer (reg 15): it lists and reads the Task addressed to it
    (Task.owner) before custody moves, and the rest of the record stays hidden until then."""
    child = record["Patient"][0]["id"]
    plan = record["Composition"][0]["id"]
    task = api.post(f"/fhir/Patient/{child}/$transfer", transfer_parameters(), api.la()).json()
    new_la, elsewhere = api.token("la", NEW_LA), api.token("la", "Organization/la-855")
    incoming = api.get(f"/fhir/Task?code=transfer&owner={NEW_LA}&status=requested&_count=100", new_la).json()
    assert task["id"] in [e["resource"]["id"] for e in incoming["entry"]]
    assert api.get(f"/fhir/Task?owner={NEW_LA}&patient={child}&_summary=count", new_la).json()["total"] == 1
    assert api.get(f"/fhir/Task/{task['id']}", new_la).json()["owner"] == {"reference": NEW_LA}
    # only the Task addressed to it: not the record's other Tasks, not the child, not the plan
    assert [e["resource"]["id"] for e in api.get(f"/fhir/Task?patient={child}", new_la).json()["entry"]] == [task["id"]]
    assert api.get(f"/fhir/Task?patient={child}", api.la()).json()["total"] > 1
    for path in (f"/fhir/Patient/{child}", f"/fhir/Composition/{plan}", f"/fhir/Patient/{child}/$everything"):
        assert api.get(path, new_la).status_code == 404, path
    # an LA the transfer is not addressed to sees nothing at all
    assert api.get(f"/fhir/Task/{task['id']}", elsewhere).status_code == 404
    assert api.get(f"/fhir/Task?code=transfer&patient={child}", elsewhere).json()["total"] == 0


def test_overdue_transfers_are_searchable(api, record):
    child = record["Patient"][0]["id"]
    task = api.post(f"/fhir/Patient/{child}/$transfer", transfer_parameters(), api.la()).json()
    due = date.fromisoformat(task["restriction"]["period"]["end"])
    query = f"/fhir/Task?code=transfer&status=requested&patient={child}&due=lt"
    assert api.get(query + due.isoformat(), api.la()).json()["total"] == 0
    late = api.get(query + (due + timedelta(days=1)).isoformat(), api.la()).json()
    assert [e["resource"]["id"] for e in late["entry"]] == [task["id"]]


def _open_review_clock(api, child: str) -> dict:
    """The review clock $issue opened (CFA 2014 s44(1)): 12 months from the plan being made."""
    code = "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-task-code"
    found = api.get(f"/fhir/Task?patient={child}&code={code}|review-due&status=requested", api.la()).json()
    assert found["total"] == 1
    return found["entry"][0]["resource"]


def _step(api, task_id: str, **values: date | str) -> dict:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": name, "valueCode": value} if isinstance(value, str) else {"name": name, "valueDate": value.isoformat()}
        for name, value in values.items()]}
    response = api.post(f"/fhir/Task/{task_id}/$complete-step", body, api.la())
    assert response.status_code == 200, response.text
    return response.json()


def test_a_review_held_since_the_plan_was_issued_sets_the_review_clock(api, record, monkeypatch):
    child = record["Patient"][0]["id"]
    review = _open_review_clock(api, child)
    meeting = date.today() + timedelta(days=100)
    records = api.services.records
    later = records.clock() + timedelta(days=200)
    monkeypatch.setattr(records, "clock", lambda: later)  # the meeting has been held by then
    _step(api, review["id"], date=meeting, adviceCirculated=meeting - timedelta(weeks=2))
    move, notified = later.date() + timedelta(days=30), later.date()
    task = api.post(f"/fhir/Patient/{child}/$transfer", transfer_parameters(move=move, notified=notified), api.la()).json()
    values = _inputs(task)
    assert values["last-review"] == meeting.isoformat()
    assert values["review-due"] == clocks.transfer_clocks(move, notified, meeting).review_due.isoformat()


def test_accepting_a_transfer_ends_the_old_assessment_and_re_times_the_review(api, record):
    """Reg 15: the old LA's assessment in progress ends (the new LA decides whether to assess and
    says so within 6 weeks, reg 15(4)(b)); advice already given stays (reg 15(3)(b)); the review
    clock becomes the new LA's, due before the later of 12 months from the plan and 3 months from
    the transfer (reg 15(5))."""
    child = record["Patient"][0]["id"]
    old_la, new_la = api.la(), api.token("la", NEW_LA)
    today = date.today()
    old_review = _open_review_clock(api, child)
    asked = {"resourceType": "Parameters", "parameter": [{"name": "received", "valueDate": today.isoformat()},
                                                         {"name": "requester", "valueCode": "parent"}]}
    request = api.post(f"/fhir/Patient/{child}/$request-assessment", asked, old_la).json()
    tasks = lambda token: {e["resource"]["id"]: e["resource"] for e in api.get(  # noqa: E731
        f"/fhir/Task?patient={child}&_count=100", token).json()["entry"]}
    decision = next(t for t in tasks(old_la).values() if t["code"]["coding"][0]["code"] == "assessment-decision")
    _step(api, decision["id"], date=today, decision="assess")
    advice = []
    for kind in ("health", "educational"):
        body = {"resourceType": "Parameters", "parameter": [{"name": "adviceType", "valueCode": kind},
                                                            {"name": "requested", "valueDate": today.isoformat()}]}
        advice.append(api.post(f"/fhir/Task/{request['id']}/$request-advice", body, old_la).json())
    _step(api, advice[0]["id"], date=today)
    task = api.post(f"/fhir/Patient/{child}/$transfer", transfer_parameters(), old_la).json()
    pending = api.get("/fhir/$worklist?within=400", old_la).json()
    assert any(p["part"][0]["valueCode"] == "transfer" and p["part"][1]["valueReference"]["reference"] == f"Task/{task['id']}"
               for p in pending["parameter"] if p["name"] == "item")  # reg 15(2), on the old LA's list
    assert api.post(f"/fhir/Task/{task['id']}/$accept", None, new_la).status_code == 200

    after = tasks(new_la)
    assert after[request["id"]]["status"] == "cancelled" and "reg 15(4)(b)" in after[request["id"]]["statusReason"]["text"]
    assert after[advice[1]["id"]]["status"] == "cancelled"
    assert after[advice[0]["id"]]["status"] == "completed"  # advice given stays, reg 15(3)(b)
    finals = [t for t in after.values() if t["code"]["coding"][0]["code"] == "final-plan"]
    assert [t["status"] for t in finals] == ["cancelled"]
    assert after[old_review["id"]]["status"] == "cancelled" and "reg 15(5)" in after[old_review["id"]]["statusReason"]["text"]
    reviews = [t for t in after.values() if t["code"]["coding"][0]["code"] == "review-due" and t["status"] == "requested"]
    plan_date = date.fromisoformat(api.get(f"/fhir/Composition/{record['Composition'][0]['id']}", new_la).json()["date"][:10])
    assert len(reviews) == 1 and reviews[0]["owner"] == {"reference": NEW_LA}
    assert reviews[0]["restriction"]["period"] == {
        "start": today.isoformat(), "end": clocks.transfer_review_due(plan_date, today).isoformat()}
    work = api.get("/fhir/$worklist?within=400", new_la).json()
    listed = {(p["part"][0]["valueCode"], p["part"][1]["valueReference"]["reference"]) for p in work["parameter"]
              if p["name"] == "item"}
    assert ("review-due", f"Task/{reviews[0]['id']}") in listed
    assert any(clock == "notice-to-family" for clock, _ in listed)  # reg 15(4), on the new LA's list
    assert not any(ref == f"Task/{advice[1]['id']}" for _, ref in listed)

    # SEN2 for the new LA: the plan is theirs, with its original start (reg 15(3)(a)) and TransferLA
    from tests.e2e.test_statutory_timeline import sen2

    returned = sen2(api, today.year + 1 if today.month > 1 else today.year, new_la)
    plans = [r for r in returned["named-plans"] if r["person_id"] == child]
    assert [(r["transfer_la"], r["plan_start_date"]) for r in plans] == [("866", old_review["restriction"]["period"]["start"])]
    requests = [r for r in returned["requests"] if r["person_id"] == child]
    assert [(r["request_outcome"], r["request_outcome_code"]) for r in requests] == [("assess", "Y")]
    assert [r["assessment_outcome_code"] for r in returned["assessments"] if r["person_id"] == child] == ["W"]


def test_a_plan_can_come_back_to_an_la_that_held_it(api, record):
    child = record["Patient"][0]["id"]
    plan = record["Composition"][0]["id"]
    old_la, new_la = api.la(), api.token("la", NEW_LA)
    there = api.post(f"/fhir/Patient/{child}/$transfer", transfer_parameters(), old_la).json()
    assert api.post(f"/fhir/Task/{there['id']}/$accept", None, new_la).status_code == 200
    back = api.post(f"/fhir/Patient/{child}/$transfer", transfer_parameters("Organization/la-866"), new_la)
    assert back.status_code == 201, back.text
    assert api.post(f"/fhir/Task/{back.json()['id']}/$accept", None, old_la).status_code == 200
    assert api.get(f"/fhir/Composition/{plan}", old_la).status_code == 200
    assert api.get(f"/fhir/Composition/{plan}", new_la).status_code == 404
    state = api.services.repo.record_state(child)
    assert state["custodian"] == "Organization/la-866" and state["former_custodians"] == [NEW_LA]
    verdict = api.get(f"/fhir/Patient/{child}/$verify-audit", old_la).json()
    assert {p["name"]: p for p in verdict["parameter"]}["valid"]["valueBoolean"] is True


def test_capability_statement_lists_the_transfer_operations(api):
    rest = api.get("/fhir/metadata").json()["rest"][0]
    by_type = {r["type"]: {o["name"] for o in r.get("operation", [])} for r in rest["resource"]}
    assert "transfer" in by_type["Patient"] and "accept" in by_type["Task"]
    assert "receive-transfer" in {o["name"] for o in rest.get("operation", [])}
