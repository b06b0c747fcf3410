"""Builders for a small but complete plan used by the statutory-process scenarios."""

from __future__ import annotations

BASE = "http://ehcp-record.example.org/fhir"
SECTION = f"{BASE}/CodeSystem/ehcp-section"
RELATIONSHIP = f"{BASE}/CodeSystem/ehcp-relationship"


def section_concept(code: str) -> dict:
    return {"coding": [{"system": SECTION, "code": code}]}


def _text_section(code: str, text: str) -> dict:
    return {"title": code, "code": section_concept(code),
            "text": {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{text}</div>'}}


def parent(child_id: str, name: str, responsibility: bool = True) -> dict:
    code = "parental-responsibility" if responsibility else "has-care"
    return {"resourceType": "RelatedPerson", "patient": {"reference": f"Patient/{child_id}"},
            "relationship": [{"coding": [{"system": RELATIONSHIP, "code": code}]}],
            "name": [{"family": "Example", "given": [name]}]}


def draft_plan_bundle(child_id: str) -> dict:
    """Need (B) -> outcome (E) -> provision (F), and a preliminary Composition citing them."""
    need, goal, provision, plan = (f"urn:uuid:0000000{n}-0000-4000-8000-000000000000" for n in range(1, 5))
    subject = {"reference": f"Patient/{child_id}"}
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": need, "request": {"method": "POST", "url": "Condition"}, "resource": {
            "resourceType": "Condition", "subject": subject, "category": [section_concept("B")],
            "code": {"coding": [{"system": f"{BASE}/CodeSystem/sen-primary-need", "code": "SLCN"}]}}},
        {"fullUrl": goal, "request": {"method": "POST", "url": "Goal"}, "resource": {
            "resourceType": "Goal", "lifecycleStatus": "active", "subject": subject,
            "category": [section_concept("E")], "description": {"text": "Sam will use 3-word sentences in class"},
            "addresses": [{"reference": need}], "target": [{"dueDate": "2027-07-20"}]}},
        {"fullUrl": provision, "request": {"method": "POST", "url": "CarePlan"}, "resource": {
            "resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": subject,
            "category": [section_concept("F")], "goal": [{"reference": goal}],
            "activity": [{"detail": {"status": "scheduled", "description": "Speech and language therapy, 1:1",
                                     "scheduledString": "30 minutes, 3 times a week", "goal": [{"reference": goal}],
                                     "performer": [{"display": "Speech and language therapist, NHS trust"}]}}]}},
        {"fullUrl": plan, "request": {"method": "POST", "url": "Composition"}, "resource": {
            "resourceType": "Composition", "status": "preliminary", "subject": subject, "date": "2026-11-01",
            "type": {"coding": [{"system": f"{BASE}/CodeSystem/ehcp-document-type", "code": "ehcp"}]},
            "author": [{"reference": "Organization/la-866"}], "title": "Education, Health and Care Plan",
            "section": [
                _text_section("A", "Sam loves trains and wants to be a driver."),
                {"title": "B", "code": section_concept("B"), "entry": [{"reference": need}]},
                _text_section("C", "No health needs related to SEN."),
                _text_section("D", "No social care needs."),
                {"title": "E", "code": section_concept("E"), "entry": [{"reference": goal}]},
                {"title": "F", "code": section_concept("F"), "entry": [{"reference": provision}]},
                _text_section("G", "None."), _text_section("H1", "None."), _text_section("H2", "None."),
                _text_section("I", "Mainstream primary school."), _text_section("J", "No personal budget requested."),
                _text_section("K", "Advice is appended."),
            ]}},
    ]}


def ids_by_type(transaction_response: dict) -> dict[str, str]:
    found = {}
    for entry in transaction_response["entry"]:
        resource_type, resource_id = entry["response"]["location"].split("/")[:2]
        found[resource_type] = resource_id
    return found
