"""The EHCP plan model through the API: the synthetic example plan, and each rule biting."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from ehcp_record.fhir.model import parse_resource
from tests.e2e.test_statutory_process import respond
from tests.consent_support import example_for_a_new_child
from tests.support import outcome_code, references_in

EXAMPLE = Path(__file__).resolve().parents[2] / "profiles" / "examples" / "plan-bundle.json"


def example_bundle() -> dict:
    """The shipped example, as shipped (a draft: only $issue makes a plan final)."""
    return json.loads(EXAMPLE.read_text())


@pytest.fixture(scope="module")
def example_plan(api):
    response = api.post("/fhir", example_bundle(), api.la())
    assert response.status_code == 200, response.text
    created = {}
    for entry in response.json()["entry"]:
        resource = entry["resource"]
        created.setdefault(resource["resourceType"], []).append(resource)
    return created


def _validate(api, resource: dict) -> list[dict]:
    response = api.post(f"/fhir/{resource['resourceType']}/$validate", resource, api.la())
    assert response.status_code == 200, response.text
    return [i for i in response.json()["issue"] if i["severity"] == "error"]


def test_example_plan_validates_clean(api, example_plan):
    plan = example_plan["Composition"][0]
    assert _validate(api, plan) == []
    for resource_type in ("Patient", "Condition", "Goal", "CarePlan", "DocumentReference", "RelatedPerson"):
        for resource in example_plan[resource_type]:
            assert _validate(api, resource) == [], resource["id"]


def test_example_plan_issues_and_renders_a_valid_document(api, example_plan):
    plan = example_plan["Composition"][0]
    parent = example_plan["RelatedPerson"][0]
    entries = [{"resource": {k: v for k, v in plan.items() if k != "meta"},
                "request": {"method": "PUT", "url": f"Composition/{plan['id']}"}}]
    task = api.post(f"/fhir/Composition/{plan['id']}/$propose", {"resourceType": "Bundle", "type": "transaction",
                                                                  "entry": entries}, api.la())
    assert task.status_code == 201, task.text
    token = api.token("parent", None, fhir_user=f"RelatedPerson/{parent['id']}")
    assert respond(api, task.json()["id"], token, "agree").status_code == 200
    assert api.post(f"/fhir/Task/{task.json()['id']}/$issue", None, api.la()).status_code == 200
    document = api.get(f"/fhir/Composition/{plan['id']}/$document", api.la()).json()
    parse_resource(document, "Bundle")  # valid FHIR R4, every entry too
    assert document["entry"][0]["resource"]["resourceType"] == "Composition"
    keys = {"/".join(e["fullUrl"].split("/")[-2:]) for e in document["entry"]}
    assert len(keys) == len(document["entry"])
    types = [e["resource"]["resourceType"] for e in document["entry"]]
    assert types.count("Condition") >= 3 and types.count("Goal") >= 4 and types.count("CarePlan") >= 6
    for entry in document["entry"]:
        for reference in references_in(entry["resource"]):
            assert reference in keys, reference


def _plan_variant(example_plan, change) -> dict:
    plan = copy.deepcopy(example_plan["Composition"][0])
    change(plan)
    return plan


def test_missing_section_is_named(api, example_plan):
    plan = _plan_variant(example_plan, lambda p: p.update(section=[s for s in p["section"] if s["code"]["coding"][0]["code"] != "K"]))
    errors = _validate(api, plan)
    assert any("missing: K" in e["diagnostics"] for e in errors), errors


def test_provision_with_no_outcome(api, example_plan):
    provision = copy.deepcopy(example_plan["CarePlan"][0])
    provision.pop("goal", None)
    for activity in provision["activity"]:
        activity["detail"].pop("goal", None)
    errors = _validate(api, provision)
    assert any("outcome" in e["diagnostics"].lower() for e in errors), errors


def test_outcome_with_no_need(api, example_plan):
    outcome = copy.deepcopy(example_plan["Goal"][0])
    outcome.pop("addresses")
    errors = _validate(api, outcome)
    assert any(e["expression"] == ["Goal.addresses"] for e in errors), errors


def test_unquantified_provision(api, example_plan):
    provision = copy.deepcopy(example_plan["CarePlan"][0])
    detail = provision["activity"][0]["detail"]
    detail.pop("scheduledTiming", None)
    detail["scheduledString"] = "regular speech therapy as required"
    errors = _validate(api, provision)
    assert any("frequency" in e["diagnostics"].lower() or "quantif" in e["diagnostics"].lower() for e in errors), errors
    stored = api.put(f"/fhir/CarePlan/{provision['id']}", provision, api.la(), **{"If-Match": 'W/"1"'})
    assert stored.status_code == 422


def test_unknown_need_code(api, example_plan):
    need = copy.deepcopy(next(c for c in example_plan["Condition"] if c["category"][0]["coding"][0]["code"] == "B"))
    need["code"]["coding"][0]["code"] = "XYZ"
    errors = _validate(api, need)
    assert any(e["code"] == "code-invalid" for e in errors), errors
    assert api.post("/fhir/Condition", {k: v for k, v in need.items() if k not in ("id", "meta")}, api.la()).status_code == 422


@pytest.mark.parametrize("system, value, words", [
    ("https://fhir.nhs.uk/Id/nhs-number", "9000000008", "modulus"),
    ("https://fhir.nhs.uk/Id/nhs-number", "12345", "10 digits"),
    ("http://ehcp-record.example.org/fhir/NamingSystem/upn", "A801200005001", "check"),
])
def test_bad_identifiers(api, example_plan, system, value, words):
    child = copy.deepcopy(example_plan["Patient"][0])
    child["identifier"] = [{"system": system, "value": value}]
    errors = _validate(api, child)
    assert any(words in e["diagnostics"].lower() for e in errors), errors
    created = api.post("/fhir/Patient", {k: v for k, v in child.items() if k not in ("id", "meta")}, api.la())
    assert created.status_code == 422 and outcome_code(created) == "value"


def test_issue_refused_when_golden_thread_breaks(api):
    bundle = example_for_a_new_child()  # another child, not the example's (already issued)
    loaded = api.post("/fhir", bundle, api.la())
    assert loaded.status_code == 200, loaded.text
    response = loaded.json()
    plan = next(e["resource"] for e in response["entry"] if e["resource"]["resourceType"] == "Composition")
    provision = next(e["resource"] for e in response["entry"] if e["resource"]["resourceType"] == "CarePlan")
    orphan = {k: v for k, v in provision.items() if k != "meta"}
    orphan.pop("goal", None)
    for activity in orphan["activity"]:
        activity["detail"].pop("goal", None)
    proposal = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": orphan, "request": {"method": "PUT", "url": f"CarePlan/{orphan['id']}"}}]}
    refused = api.post(f"/fhir/Composition/{plan['id']}/$propose", proposal, api.la())
    assert refused.status_code in (409, 422), refused.text
    assert "outcome" in json.dumps(refused.json()).lower()


def test_draft_may_be_incomplete_but_validate_lists_what_is_missing(api, example_plan):
    child = api.new_child()  # the example child already has an issued plan
    draft = {"resourceType": "Composition", "status": "preliminary", "subject": {"reference": f"Patient/{child['id']}"},
             "type": {"coding": [{"system": "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-document-type", "code": "ehcp"}]},
             "date": "2026-11-22", "author": [{"reference": example_plan["Composition"][0]["author"][0]["reference"]}],
             "title": "Draft EHCP", "section": []}
    assert api.post("/fhir/Composition", draft, api.la()).status_code == 201
    errors = _validate(api, draft)
    assert any("missing" in e["diagnostics"] for e in errors)
