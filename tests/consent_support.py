"""Builders for consent tests: sharing grants and a fully sectioned, issued record."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

from consent.engine import handover_date
from tests.e2e.test_statutory_process import respond
from tests.support import nhs_number

BASE = "http://ehcp-record.example.org/fhir"
SECTIONS = ("A", "B", "C", "D", "E", "F", "G", "H1", "H2", "I", "J", "K")
EXAMPLE = Path(__file__).resolve().parents[1] / "profiles" / "examples" / "plan-bundle.json"


def grant(child_id: str, grantor: str, recipient: str, sections, actions=("read",), start: date | None = None,
          end: date | None = None, status: str = "active", role: str = "school") -> dict:
    start = start or date.today() - timedelta(days=1)
    end = end or date.today() + timedelta(days=365)
    return {
        "resourceType": "Consent", "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{child_id}"}, "dateTime": f"{start.isoformat()}T09:00:00Z",
        "performer": [{"reference": grantor}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {
            "type": "permit", "period": {"start": start.isoformat(), "end": end.isoformat()},
            "actor": [{"role": {"coding": [{"system": f"{BASE}/CodeSystem/ehcp-actor-role", "code": role}]},
                       "reference": {"reference": recipient}}],
            "action": [{"coding": [{"system": f"{BASE}/CodeSystem/ehcp-consent-action", "code": a}]} for a in actions],
            "code": [{"coding": [{"system": f"{BASE}/CodeSystem/ehcp-section", "code": s}]} for s in sections],
        },
    }


def example_for_a_new_child() -> dict:
    """The shipped example plan Bundle made another child's: every entry a POST (server ids, no
    ifNoneExist), and the child with an NHS number of its own (one record per NHS number)."""
    bundle = json.loads(EXAMPLE.read_text())
    for entry in bundle["entry"]:
        resource = entry["resource"]
        entry["request"] = {"method": "POST", "url": resource["resourceType"]}
        if resource["resourceType"] == "Patient":
            resource["identifier"] = [i if "nhs-number" not in i["system"] else dict(i, value=nhs_number())
                                      for i in resource["identifier"]]
    return bundle


def load_issued_example(api, birth_date: str | None = None) -> dict:
    """The synthetic example plan as a new child's issued plan; returns resources by type."""
    bundle = example_for_a_new_child()
    for entry in bundle["entry"]:
        if birth_date and entry["resource"]["resourceType"] == "Patient":
            entry["resource"]["birthDate"] = birth_date
    response = api.post("/fhir", bundle, api.la())
    assert response.status_code == 200, response.text
    created: dict[str, list[dict]] = {}
    for entry in response.json()["entry"]:
        created.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    plan = created["Composition"][0]
    mum = created["RelatedPerson"][0]
    parent_token = api.token("parent", None, fhir_user=f"RelatedPerson/{mum['id']}")
    proposal = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {k: v for k, v in plan.items() if k != "meta"}, "request": {"method": "PUT", "url": f"Composition/{plan['id']}"}}]}
    task = api.post(f"/fhir/Composition/{plan['id']}/$propose", proposal, api.la()).json()
    child = created["Patient"][0]
    decides = parent_token
    if date.today() >= handover_date(date.fromisoformat(child["birthDate"])):
        decides = api.token("young-person", None, fhir_user=f"Patient/{child['id']}")
        assert task["owner"]["reference"] == f"Patient/{child['id']}"
    assert respond(api, task["id"], decides, "agree").status_code == 200
    assert api.post(f"/fhir/Task/{task['id']}/$issue", None, api.la()).status_code == 200
    created["parent_token"] = parent_token  # type: ignore[assignment]
    return created


def section_of(resource: dict) -> str | None:
    """The plan section a resource sits in, read from its own coding (outcomes are E)."""
    if resource.get("resourceType") == "Goal":
        return "E"
    for concept in resource.get("category", []) or []:
        for coding in concept.get("coding", []):
            if coding.get("system") == f"{BASE}/CodeSystem/ehcp-section":
                return coding["code"]
    return None


def composition_sections(composition: dict) -> set[str]:
    return {c["code"] for s in composition.get("section", []) for c in s.get("code", {}).get("coding", [])}
