"""The examples in profiles/examples/ post verbatim, in the order a new user would try them.

On a fresh server: the custodian LA posts the plan Bundle (a draft, as only `$issue` makes a
plan final) exactly as shipped; the mother it names posts the school consent exactly as
shipped; the LA posts the parental-review Task example and, once the plan is issued, the
`$transfer` Parameters (the transfer Task example is what `$transfer` answers; posting it is
refused). Nothing is edited on the way, so an example that drifts from what the server accepts
fails here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "profiles" / "examples"


def example(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def plan(api):
    bundle = example("plan-bundle.json")
    response = api.post("/fhir", bundle, api.la())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert len(answer["entry"]) == len(bundle["entry"])
    return answer


def test_plan_bundle_posts_verbatim(api, plan):
    assert all(e["response"]["status"].startswith(("200", "201")) for e in plan["entry"])
    composition = plan["entry"][0]["resource"]
    assert composition["resourceType"] == "Composition" and composition["status"] == "preliminary"
    assert api.get("/fhir/Patient/jamie-morgan", api.la()).status_code == 200


def test_draft_document_holds_every_cited_resource(api, plan):
    """The Composition is the first entry of its transaction: it must still render whole."""
    composition = plan["entry"][0]["resource"]
    document = api.get(f"/fhir/Composition/{composition['id']}/$document", api.la()).json()
    cited = {r["reference"] for s in composition["section"] for r in s.get("entry", [])}
    rendered = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in document["entry"]}
    assert cited <= rendered
    assert len(document["entry"]) >= 23


def test_transaction_writes_share_one_instant(plan):
    stamps = {e["resource"]["meta"]["lastUpdated"] for e in plan["entry"]}
    assert len(stamps) == 1


def test_consent_example_posts_verbatim_as_the_mother(api, plan):
    mum = api.token("parent", None, fhir_user="RelatedPerson/rachel-morgan")
    response = api.post("/fhir/Consent", example("consent-school.json"), mum)
    assert response.status_code == 201, response.text
    school = response.json()["provision"]["actor"][0]["reference"]["reference"]
    shared = api.get("/fhir/Condition?patient=jamie-morgan", api.token("school", school)).json()
    assert shared["total"] >= 1


def test_parental_review_task_example_posts_verbatim(api, plan):
    response = api.post("/fhir/Task", example("parental-review-task.json"), api.la())
    assert response.status_code == 201, response.text
    validated = api.post("/fhir/Task/$validate", example("parental-review-task.json"), api.la()).json()
    assert [i for i in validated["issue"] if i["severity"] == "error"] == []


def test_transfer_example_is_what_transfer_answers_and_transfer_request_posts_verbatim(api, plan):
    """transfer-task.json shows the Task `$transfer` writes: it validates, but a client may not
    post it (the server sets reg 15(2)'s due dates; 409 naming $transfer). transfer-request.json
    is what the LA posts instead, once the plan is issued."""
    refused = api.post("/fhir/Task", example("transfer-task.json"), api.la())
    assert refused.status_code == 409 and "$transfer" in refused.json()["issue"][0]["diagnostics"]
    validated = api.post("/fhir/Task/$validate", example("transfer-task.json"), api.la()).json()
    assert [i for i in validated["issue"] if i["severity"] == "error"] == []
    composition = plan["entry"][0]["resource"]
    current = api.get(f"/fhir/Composition/{composition['id']}", api.la()).json()
    current.pop("meta")
    proposal = api.post(f"/fhir/Composition/{composition['id']}/$propose", {"resourceType": "Bundle", "type": "transaction",
                        "entry": [{"resource": current, "request": {"method": "PUT", "url": f"Composition/{current['id']}"}}]},
                        api.la())
    assert proposal.status_code == 201, proposal.text
    mum = api.token("parent", None, fhir_user="RelatedPerson/rachel-morgan")
    answer = {"resourceType": "Parameters", "parameter": [{"name": "response", "valueCode": "agree"}]}
    assert api.post(f"/fhir/Task/{proposal.json()['id']}/$respond", answer, mum).status_code == 200
    assert api.post(f"/fhir/Task/{proposal.json()['id']}/$issue", None, api.la()).status_code == 200
    started = api.post("/fhir/Patient/jamie-morgan/$transfer", example("transfer-request.json"), api.la())
    assert started.status_code == 201, started.text
    task = started.json()
    assert task["owner"]["reference"] == "Organization/la-916" and task["restriction"]["period"]["end"] == "2025-09-01"
