"""The statutory process end to end: drafted, proposed, answered, revised, issued, amended.

SEND Regulations 2014 regs 13 and 22: nothing in an issued plan changes without the family's
response to the exact content proposed, and every step shows in history, $diff and the access log.
"""

from __future__ import annotations

import copy

import pytest

from tests.e2e.plan_builders import draft_plan_bundle, ids_by_type, parent
from tests.support import need, outcome_code

TASK_INPUT = "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-task-input"


def respond(api, task_id: str, token: str, answer: str, comment: str = "") -> object:
    parameters = [{"name": "response", "valueCode": answer}]
    if comment:
        parameters.append({"name": "comment", "valueString": comment})
    return api.post(f"/fhir/Task/{task_id}/$respond", {"resourceType": "Parameters", "parameter": parameters}, token)


def proposal_from_current(api, ids: dict[str, str], change) -> dict:
    """A proposal Bundle: the plan's current resources as PUT entries, with `change` applied."""
    entries = []
    for resource_type in ("Condition", "Goal", "CarePlan", "Composition"):
        resource = api.get(f"/fhir/{resource_type}/{ids[resource_type]}", api.la()).json()
        resource.pop("meta")
        change(resource)
        entries.append({"resource": resource, "request": {"method": "PUT", "url": f"{resource_type}/{resource['id']}"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


@pytest.fixture()
def family(api):
    child = api.new_child()
    mum = api.post("/fhir/RelatedPerson", parent(child["id"], "Alex"), api.la()).json()
    carer = api.post("/fhir/RelatedPerson", parent(child["id"], "Jo", responsibility=False), api.la()).json()
    plan = api.post("/fhir", draft_plan_bundle(child["id"]), api.la())
    assert plan.status_code == 200, plan.text
    ids = ids_by_type(plan.json())
    mum_token = api.token("parent", None, fhir_user=f"RelatedPerson/{mum['id']}")
    carer_token = api.token("parent", None, fhir_user=f"RelatedPerson/{carer['id']}")
    return child, ids, mum_token, carer_token


def test_draft_proposed_answered_revised_issued_amended(api, family):
    child, ids, mum, _ = family
    la = api.la()
    plan_path = f"/fhir/Composition/{ids['Composition']}"

    # the draft is the LA's to edit directly
    draft = api.get(plan_path, la).json()
    draft["title"] = "EHCP for Sam (draft)"
    assert api.put(plan_path, draft, la, **{"If-Match": 'W/"1"'}).status_code == 200

    # first proposal; the family comments
    first = api.post(f"{plan_path}/$propose", proposal_from_current(api, ids, lambda r: None), la)
    assert first.status_code == 201, first.text
    task = first.json()
    assert task["status"] == "requested" and task["owner"]["reference"].startswith("RelatedPerson/")
    assert task["restriction"]["period"]["end"] > task["restriction"]["period"]["start"]
    answered = respond(api, task["id"], mum, "comment", "Please add speech therapy in the holidays")
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "completed"

    # the LA revises and proposes again; the family agrees; the LA issues
    def revise(resource):
        if resource["resourceType"] == "CarePlan":
            resource["activity"][0]["detail"]["scheduledString"] = "30 minutes, 3 times a week, including holidays"
    second = api.post(f"{plan_path}/$propose", proposal_from_current(api, ids, revise), la).json()
    assert respond(api, second["id"], mum, "agree").status_code == 200
    issued = api.post(f"/fhir/Task/{second['id']}/$issue", None, la)
    assert issued.status_code == 200, issued.text
    plan = issued.json()
    assert plan["status"] == "final"
    care_plan = api.get(f"/fhir/CarePlan/{ids['CarePlan']}", la).json()
    assert "including holidays" in care_plan["activity"][0]["detail"]["scheduledString"]

    # the earlier proposal cannot be issued now: the plan has moved on
    stale = api.post(f"/fhir/Task/{task['id']}/$issue", None, la)
    assert stale.status_code == 409 and outcome_code(stale) == "business-rule"

    # a signed Provenance links the issued version to the response
    provenance = api.get(f"/fhir/Provenance?target=Composition/{ids['Composition']}", la).json()
    assert provenance["total"] == 1
    assert provenance["entry"][0]["resource"]["signature"][0]["data"]

    # a year later: an annual-review amendment the family disagrees with
    def amend(resource):
        if resource["resourceType"] == "Goal":
            resource["description"]["text"] = "Sam will hold a short conversation with a peer"
    amendment = api.post(f"{plan_path}/$propose", proposal_from_current(api, ids, amend), la).json()
    assert any(i["type"]["coding"][0]["code"] == "final-plan-due" for i in amendment["input"])
    assert respond(api, amendment["id"], mum, "disagree", "The target is too low").status_code == 200
    amended = api.post(f"/fhir/Task/{amendment['id']}/$issue", None, la).json()
    assert amended["status"] == "amended"
    view = next(e for e in amended["extension"] if e["url"].endswith("ehcp-family-recorded-view"))
    parts = {p["url"]: p for p in view["extension"]}
    assert parts["response"]["valueCode"] == "disagree"
    assert "Tribunal" in parts["rights"]["valueString"]

    # every step is in the history and the audit trail, which verifies
    history = api.get(f"{plan_path}/_history", la).json()
    assert [e["resource"]["status"] for e in history["entry"]][:2] == ["amended", "final"]
    latest = int(history["entry"][0]["resource"]["meta"]["versionId"])
    diff = api.get(f"{plan_path}/$diff?from={latest - 1}&to={latest}", mum).json()
    changed = {s["part"][0]["valueCode"]: s["part"][2]["valueCode"] for s in diff["parameter"] if s["name"] == "section"}
    assert changed["E"] == "changed" and changed["B"] == "unchanged"
    assert {p["name"]: p for p in diff["parameter"]}["status"]["valueCode"] == "changed"  # final -> amended
    log = api.get(f"/fhir/Patient/{child['id']}/$access-log", mum).json()
    actions = {e["resource"]["subtype"][0]["code"] for e in log["entry"] if e["resource"].get("subtype")}
    assert log["total"] > 10 and actions
    verdict = api.get(f"/fhir/Patient/{child['id']}/$verify-audit", mum).json()
    assert {p["name"]: p for p in verdict["parameter"]}["valid"]["valueBoolean"] is True


def _issued(api, family):
    child, ids, mum, _ = family
    la = api.la()
    task = api.post(f"/fhir/Composition/{ids['Composition']}/$propose", proposal_from_current(api, ids, lambda r: None), la).json()
    respond(api, task["id"], mum, "agree")
    assert api.post(f"/fhir/Task/{task['id']}/$issue", None, la).status_code == 200
    return ids


def test_issue_refused_without_a_response(api, family):
    _, ids, _, _ = family
    task = api.post(f"/fhir/Composition/{ids['Composition']}/$propose", proposal_from_current(api, ids, lambda r: None),
                    api.la()).json()
    response = api.post(f"/fhir/Task/{task['id']}/$issue", None, api.la())
    assert response.status_code == 409 and outcome_code(response) == "business-rule"
    assert "not responded" in response.json()["issue"][0]["diagnostics"]


def test_issue_refused_after_the_plan_moved(api, family):
    _, ids, mum, _ = family
    la = api.la()
    task = api.post(f"/fhir/Composition/{ids['Composition']}/$propose", proposal_from_current(api, ids, lambda r: None), la).json()
    respond(api, task["id"], mum, "agree")
    need = api.get(f"/fhir/Condition/{ids['Condition']}", la).json()
    need["note"] = [{"text": "edited after the proposal"}]
    assert api.put(f"/fhir/Condition/{ids['Condition']}", need, la, **{"If-Match": 'W/"1"'}).status_code == 200
    response = api.post(f"/fhir/Task/{task['id']}/$issue", None, la)
    assert response.status_code == 409 and "changed since" in response.json()["issue"][0]["diagnostics"]


def test_issue_refused_with_response_to_a_different_proposal(api, family):
    _, ids, mum, _ = family
    la = api.la()
    first = api.post(f"/fhir/Composition/{ids['Composition']}/$propose", proposal_from_current(api, ids, lambda r: None), la).json()
    second = api.post(f"/fhir/Composition/{ids['Composition']}/$propose", proposal_from_current(api, ids, lambda r: None), la).json()
    assert api.get(f"/fhir/Task/{first['id']}", la).json()["status"] == "cancelled"
    assert respond(api, first["id"], mum, "agree").status_code == 409
    response = api.post(f"/fhir/Task/{second['id']}/$issue", None, la)
    assert response.status_code == 409 and outcome_code(response) == "business-rule"


def test_a_superseded_proposal_cannot_be_issued_even_when_answered(api, family):
    """Propose, the family comments, propose again: the first is refused (409, naming the
    second), its review Task shows it was superseded, and the second issues once answered."""
    _, ids, mum, _ = family
    la = api.la()
    plan_path = f"/fhir/Composition/{ids['Composition']}"
    first = api.post(f"{plan_path}/$propose", proposal_from_current(api, ids, lambda r: None), la).json()
    assert respond(api, first["id"], mum, "comment", "please add more speech therapy").status_code == 200

    def revise(resource: dict) -> None:
        if resource["resourceType"] == "CarePlan":
            resource["description"] = "Revised after the family's comment"

    second = api.post(f"{plan_path}/$propose", proposal_from_current(api, ids, revise), la).json()
    assert second["id"] != first["id"]

    refused = api.post(f"/fhir/Task/{first['id']}/$issue", None, la)
    assert refused.status_code == 409 and outcome_code(refused) == "business-rule"
    assert f"Task/{second['id']}" in refused.json()["issue"][0]["diagnostics"]
    assert api.get(plan_path, la).json()["status"] != "final"

    shown = api.get(f"/fhir/Task/{first['id']}", mum).json()
    assert shown["status"] == "completed"  # the family's answer is kept
    assert shown["businessStatus"]["text"].startswith("superseded") and f"Task/{second['id']}" in shown["businessStatus"]["text"]

    assert respond(api, second["id"], mum, "agree").status_code == 200
    issued = api.post(f"/fhir/Task/{second['id']}/$issue", None, la)
    assert issued.status_code == 200, issued.text
    assert issued.json()["status"] == "final"
    assert api.post(f"/fhir/Task/{first['id']}/$issue", None, la).status_code == 409


def test_issue_refused_when_responder_is_not_the_decision_maker(api, family):
    _, ids, _, carer = family
    la = api.la()
    task = api.post(f"/fhir/Composition/{ids['Composition']}/$propose", proposal_from_current(api, ids, lambda r: None), la).json()
    refused = respond(api, task["id"], carer, "agree")
    assert refused.status_code in (403, 404)
    assert api.get(f"/fhir/Task/{task['id']}", la).json()["status"] == "requested"
    response = api.post(f"/fhir/Task/{task['id']}/$issue", None, la)
    assert response.status_code == 409


def test_direct_writes_to_issued_content_refused_on_every_path(api, family):
    ids = _issued(api, family)
    la = api.la()
    plan = api.get(f"/fhir/Composition/{ids['Composition']}", la).json()
    version = plan["meta"]["versionId"]
    edited = dict(plan, title="changed behind the family's back")
    put = api.put(f"/fhir/Composition/{ids['Composition']}", edited, la, **{"If-Match": f'W/"{version}"'})
    assert put.status_code == 409 and outcome_code(put) == "business-rule"
    assert "$propose" in put.json()["issue"][0]["diagnostics"]
    goal = api.get(f"/fhir/Goal/{ids['Goal']}", la).json()
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": dict(goal, description={"text": "x"}),
         "request": {"method": "PUT", "url": f"Goal/{ids['Goal']}", "ifMatch": f'W/"{goal["meta"]["versionId"]}"'}}]}
    assert api.post("/fhir", transaction, la).status_code == 409
    batch = copy.deepcopy(transaction)
    batch["type"] = "batch"
    assert api.post("/fhir", batch, la).json()["entry"][0]["response"]["status"] == "409"
    new_need = need(plan["subject"]["reference"])
    assert api.post("/fhir/Condition", new_need, la).status_code == 409
    assert api.get(f"/fhir/Composition/{ids['Composition']}", la).json()["meta"]["versionId"] == version


def test_respond_needs_a_valid_answer(api, family):
    _, ids, mum, _ = family
    task = api.post(f"/fhir/Composition/{ids['Composition']}/$propose", proposal_from_current(api, ids, lambda r: None),
                    api.la()).json()
    assert respond(api, task["id"], mum, "maybe").status_code == 400
    assert respond(api, task["id"], mum, "disagree").status_code == 400  # needs the family's reasons
    assert api.get(f"/fhir/Task/{task['id']}", api.la()).json()["status"] == "requested"


def test_other_family_cannot_respond(api, family):
    _, ids, _, _ = family
    other_child = api.new_child()
    stranger = api.post("/fhir/RelatedPerson", parent(other_child["id"], "Kim"), api.la()).json()
    token = api.token("parent", None, fhir_user=f"RelatedPerson/{stranger['id']}")
    task = api.post(f"/fhir/Composition/{ids['Composition']}/$propose", proposal_from_current(api, ids, lambda r: None),
                    api.la()).json()
    assert respond(api, task["id"], token, "agree").status_code == 404


def test_annual_review_decision_deadline_and_overdue_search(api, family):
    """$issue opens the review clock (CFA 2014 s44(1)); holding the meeting opens the decision
    clock, due 4 weeks after it (reg 20(10)), searchable by `due`. A client cannot write one."""
    from datetime import date, timedelta

    child, ids, mum, _ = family
    la = api.la()
    task = api.post(f"/fhir/Composition/{ids['Composition']}/$propose", proposal_from_current(api, ids, lambda r: None),
                    la).json()
    assert respond(api, task["id"], mum, "agree").status_code == 200
    assert api.post(f"/fhir/Task/{task['id']}/$issue", None, la).status_code == 200
    code = "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-task-code"
    review = api.get(f"/fhir/Task?patient={child['id']}&code={code}|review-due&status=requested", la).json()
    assert review["total"] == 1
    today = api.services.records.clock().date()
    meeting = {"resourceType": "Parameters", "parameter": [
        {"name": "date", "valueDate": today.isoformat()},
        {"name": "adviceCirculated", "valueDate": (today - timedelta(weeks=2)).isoformat()}]}
    held = api.post(f"/fhir/Task/{review['entry'][0]['resource']['id']}/$complete-step", meeting, la)
    assert held.status_code == 200, held.text
    due = today + timedelta(weeks=4)
    decision = api.get(f"/fhir/Task?code=annual-review&status=requested&patient={child['id']}", la).json()["entry"][0]
    assert decision["resource"]["restriction"]["period"]["end"] == due.isoformat()
    query = f"/fhir/Task?code=annual-review&status=requested&patient={child['id']}&due=lt"
    assert [e["resource"]["id"] for e in api.get(query + (due + timedelta(days=1)).isoformat(), la).json()["entry"]] == [
        decision["resource"]["id"]]
    assert api.get(query + due.isoformat(), la).json()["total"] == 0
    forged = {"resourceType": "Task", "status": "requested", "intent": "order",
              "code": {"coding": [{"system": code, "code": "annual-review"}]},
              "for": {"reference": f"Patient/{child['id']}"}, "requester": {"reference": "Organization/la-866"},
              "restriction": {"period": {"start": "2026-09-07", "end": date(2027, 1, 1).isoformat()}}}
    assert api.post("/fhir/Task", forged, la).status_code == 409


def test_overdue_parental_reviews_are_searchable(api, family):
    _, ids, _, _ = family
    la = api.la()
    task = api.post(f"/fhir/Composition/{ids['Composition']}/$propose", proposal_from_current(api, ids, lambda r: None), la).json()
    window_end = task["restriction"]["period"]["end"]
    late = api.get(f"/fhir/Task?code=parental-review&status=requested&due=lt{window_end}", la).json()
    assert task["id"] not in [e["resource"]["id"] for e in late["entry"]]
    from datetime import date, timedelta
    after = (date.fromisoformat(window_end) + timedelta(days=1)).isoformat()
    later = api.get(f"/fhir/Task?code=parental-review&status=requested&due=lt{after}&_count=100", la).json()
    assert task["id"] in [e["resource"]["id"] for e in later["entry"]]
