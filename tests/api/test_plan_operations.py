"""$document, $diff, $everything: the plan as a document, what changed, the whole record."""

from __future__ import annotations

import json

import pytest

from ehcp_record.fhir.model import parse_resource
from tests.e2e.plan_builders import draft_plan_bundle, ids_by_type, parent
from tests.e2e.test_statutory_process import proposal_from_current, respond
from tests.support import references_in


@pytest.fixture()
def issued_plan(api):
    child = api.new_child()
    mum = api.post("/fhir/RelatedPerson", parent(child["id"], "Alex"), api.la()).json()
    ids = ids_by_type(api.post("/fhir", draft_plan_bundle(child["id"]), api.la()).json())
    mum_token = api.token("parent", None, fhir_user=f"RelatedPerson/{mum['id']}")
    task = api.post(f"/fhir/Composition/{ids['Composition']}/$propose", proposal_from_current(api, ids, lambda r: None),
                    api.la()).json()
    respond(api, task["id"], mum_token, "agree")
    assert api.post(f"/fhir/Task/{task['id']}/$issue", None, api.la()).status_code == 200
    return child, ids, mum_token


def _document(api, ids, token, vid=None):
    suffix = f"/_history/{vid}" if vid else ""
    return api.get(f"/fhir/Composition/{ids['Composition']}{suffix}/$document", token)


def test_document_is_a_valid_fhir_document(api, issued_plan):
    _, ids, _ = issued_plan
    response = _document(api, ids, api.la())
    assert response.status_code == 200
    bundle = response.json()
    parse_resource(bundle, "Bundle")  # valid FHIR R4, every entry too
    assert bundle["type"] == "document"
    assert bundle["entry"][0]["resource"]["resourceType"] == "Composition"
    full_urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(full_urls) == len(set(full_urls))
    keys = {"/".join(u.split("/")[-2:]) for u in full_urls}
    for entry in bundle["entry"]:
        for reference in references_in(entry["resource"]):
            assert reference in keys, f"{reference} does not resolve inside the document"
    assert {"Patient", "Condition", "Goal", "CarePlan"} <= {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert bundle["signature"]["data"]


def test_issued_document_is_reproduced_byte_for_byte_and_signed(api, issued_plan):
    from ehcp_record.plan.documents import verify_document

    child, ids, mum = issued_plan
    first = _document(api, ids, api.la()).content
    version = json.loads(first)["entry"][0]["resource"]["meta"]["versionId"]
    # later drafts of an amendment do not change what was issued
    amendment = api.post(f"/fhir/Composition/{ids['Composition']}/$propose",
                         proposal_from_current(api, ids, lambda r: r.update(title="Amended title") if r["resourceType"] == "Composition" else None),
                         api.la()).json()
    respond(api, amendment["id"], mum, "agree")
    api.post(f"/fhir/Task/{amendment['id']}/$issue", None, api.la())
    again = _document(api, ids, api.la(), version).content
    assert again == first
    assert verify_document(api.services.repo.signing_key.public_key(), json.loads(again))


def test_document_of_each_version_shows_that_version(api, issued_plan):
    _, ids, mum = issued_plan
    plan = api.get(f"/fhir/Composition/{ids['Composition']}", api.la()).json()
    latest = int(plan["meta"]["versionId"])
    first = _document(api, ids, api.la(), 1).json()
    assert first["entry"][0]["resource"]["status"] == "preliminary"
    assert _document(api, ids, api.la(), latest).json()["entry"][0]["resource"]["status"] == "final"
    assert _document(api, ids, api.la(), 99).status_code == 404


def test_diff_section_by_section(api, issued_plan):
    _, ids, mum = issued_plan

    def change_goal(resource):
        if resource["resourceType"] == "Goal":
            resource["description"]["text"] = "Sam will hold a conversation"
    before = int(api.get(f"/fhir/Composition/{ids['Composition']}", api.la()).json()["meta"]["versionId"])
    task = api.post(f"/fhir/Composition/{ids['Composition']}/$propose", proposal_from_current(api, ids, change_goal), api.la()).json()
    respond(api, task["id"], mum, "agree")
    api.post(f"/fhir/Task/{task['id']}/$issue", None, api.la())
    after = before + 1
    diff = api.get(f"/fhir/Composition/{ids['Composition']}/$diff?from={before}&to={after}", mum)
    assert diff.status_code == 200
    sections = {_part(p, "code"): p for p in diff.json()["parameter"] if p["name"] == "section"}
    assert _part(sections["E"], "change") == "changed"
    assert _part(sections["B"], "change") == "unchanged"
    entry = next(p for p in sections["E"]["part"] if p["name"] == "entry")
    fields = [f for f in entry["part"] if f["name"] == "field"]
    assert any(_part(f, "path") == "description.text" and _part(f, "after") == "Sam will hold a conversation" for f in fields)
    assert api.get(f"/fhir/Composition/{ids['Composition']}/$diff?from=1", api.la()).status_code == 400


def test_the_family_reads_a_proposal_and_what_it_changes_before_answering(api, issued_plan):
    """Regs 13 and 22: the family must see what a proposal changes before answering. The
    proposal reads as a plan (`Task/{id}/$proposal`), and `$diff?to=Task/{id}` says section by
    section what it would change, narrative before and after, a new outcome included."""
    child, ids, mum = issued_plan
    plan_url = f"/fhir/Composition/{ids['Composition']}"
    current = int(api.get(plan_url, api.la()).json()["meta"]["versionId"])
    new_goal = "urn:uuid:7a0e3f1c-0000-4000-8000-00000000000e"

    def change(resource):
        if resource["resourceType"] == "Composition":
            section_a = next(s for s in resource["section"] if s["title"] == "A")
            section_a["text"] = {"status": "generated",
                                 "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>Sam loves buses now.</p></div>'}
            section_e = next(s for s in resource["section"] if s["title"] == "E")
            section_e["entry"].append({"reference": new_goal})
        if resource["resourceType"] == "CarePlan":
            resource["goal"].append({"reference": new_goal})
    proposal = proposal_from_current(api, ids, change)
    proposal["entry"].insert(0, {"fullUrl": new_goal, "request": {"method": "POST", "url": "Goal"}, "resource": {
        "resourceType": "Goal", "lifecycleStatus": "active", "subject": {"reference": f"Patient/{child['id']}"},
        "category": [{"coding": [{"system": "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-section", "code": "E"}]}],
        "description": {"text": "Sam will travel to school independently"},
        "addresses": [{"reference": f"Condition/{ids['Condition']}"}], "target": [{"dueDate": "2027-07-20"}]}})
    task = api.post(f"{plan_url}/$propose", proposal, api.la()).json()

    shown = api.get(f"/fhir/Task/{task['id']}/$proposal", mum)
    assert shown.status_code == 200, shown.text
    document = shown.json()
    assert document["type"] == "document" and "signature" not in document
    resources = {f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"] for e in document["entry"]}
    composition = document["entry"][0]["resource"]
    assert "Sam loves buses now." in next(s for s in composition["section"] if s["title"] == "A")["text"]["div"]
    goals = [r["description"]["text"] for r in resources.values() if r["resourceType"] == "Goal"]
    assert sorted(goals) == ["Sam will travel to school independently", "Sam will use 3-word sentences in class"]
    new_ref = next(e["reference"] for s in composition["section"] if s["title"] == "E" for e in s["entry"]
                   if e["reference"] != f"Goal/{ids['Goal']}")
    assert new_ref in resources  # the new outcome is cited by its shown id, resolvable in the Bundle
    # the stored plan has not moved
    assert int(api.get(plan_url, api.la()).json()["meta"]["versionId"]) == current

    diff = api.get(f"{plan_url}/$diff?to=Task/{task['id']}", mum).json()
    assert {p["name"]: p.get("valueInteger") or p.get("valueReference") for p in diff["parameter"]
            if p["name"] in ("from", "to")} == {"from": current, "to": {"reference": f"Task/{task['id']}"}}
    sections = {_part(p, "code"): p for p in diff["parameter"] if p["name"] == "section"}
    narrative = next(p for p in sections["A"]["part"] if p["name"] == "narrative")
    assert _part(narrative, "before") == "Sam loves trains and wants to be a driver."
    assert _part(narrative, "after") == "Sam loves buses now."
    added = [p for p in sections["E"]["part"] if p["name"] == "entry" and _part(p, "change") == "added"]
    assert [_part(p, "summary") for p in added] == ["Sam will travel to school independently"]
    assert _part(sections["B"], "change") == "unchanged"
    # the same comparison by the custodian; nobody else may see the proposal at all
    assert api.get(f"{plan_url}/$diff?to=Task/{task['id']}", api.la()).json() == diff
    school = api.token("school", "Organization/school-1")
    assert api.get(f"/fhir/Task/{task['id']}/$proposal", school).status_code == 404
    assert api.get(f"/fhir/Task/{ids['Composition']}/$proposal", mum).status_code == 404  # not a review Task
    assert api.get(f"/fhir/Composition/{ids['Condition']}/$diff?to=Task/{task['id']}", mum).status_code == 404
    assert api.get(f"{plan_url}/$diff?from=x&to=Task/{task['id']}", mum).status_code == 400


def test_everything_returns_the_record(api, issued_plan):
    child, ids, mum = issued_plan
    bundle = api.get(f"/fhir/Patient/{child['id']}/$everything", mum).json()
    types = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert {"Patient", "Composition", "Condition", "Goal", "CarePlan", "RelatedPerson", "Task", "Provenance"} <= types
    assert bundle["total"] == len(bundle["entry"])
    assert bundle["entry"][0]["resource"]["resourceType"] == "Patient"


def test_other_family_gets_404_everywhere(api, issued_plan):
    child, ids, _ = issued_plan
    other = api.new_child()
    stranger = api.post("/fhir/RelatedPerson", parent(other["id"], "Kim"), api.la()).json()
    token = api.token("parent", None, fhir_user=f"RelatedPerson/{stranger['id']}")
    for path in (f"/fhir/Composition/{ids['Composition']}/$document", f"/fhir/Patient/{child['id']}/$everything",
                 f"/fhir/Composition/{ids['Composition']}/$diff?from=1&to=2", f"/fhir/Patient/{child['id']}",
                 f"/fhir/Condition/{ids['Condition']}"):
        assert api.get(path, token).status_code == 404, path
    assert api.get(f"/fhir/Condition?patient={child['id']}", token).json()["total"] == 0



def _part(parameter: dict, name: str):
    for part in parameter.get("part", []):
        if part["name"] == name:
            return next(v for k, v in part.items() if k.startswith("value"))
    return None
