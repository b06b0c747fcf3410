"""The official HL7 FHIR R4 (4.0.1) examples go through the server unchanged.

The structure check is FHIR R4 itself (profiles/r4, generated from the HL7 R4 definitions); the
official R4 examples prove it accepts R4 JSON for the types served here, and a resource reads back
exactly as written apart from `meta`.
For each example (tests/fixtures/r4-examples, sources in SOURCES.md): create it as the
custodian LA -> 201 with Location and ETag W/"1"; read it back equal to what was sent; update
it with If-Match W/"1" -> 200 and W/"2"; vread version 1 still equal to the original.

The server keeps every resource of a child in that child's record, so the example's record
reference (subject / patient / for / target) is rewritten to a Patient created for the test;
every other reference is sent as published. Directory types (Organization, Practitioner,
PractitionerRole) belong to no record and are sent as they are. `id` is removed so the server
assigns one.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "r4-examples"
#: Top-level elements that name the child's record (profiles/CompartmentDefinition); rewritten.
RECORD_REFERENCES = ("subject", "patient", "for", "target")
EXAMPLES = (
    "patient-example.json",
    "relatedperson-example-f001-sarah.json",
    "organization-example-gastro.json",
    "practitioner-example-f001-evdb.json",
    "practitionerrole-example.json",
    "composition-example-mixed.json",
    "condition-example.json",
    "goal-example.json",
    "careplan-example.json",
    "documentreference-example.json",
    "consent-example.json",
    "task-example1.json",
    "provenance-example-sig.json",
)
DIRECTORY_TYPES = {"Organization", "Practitioner", "PractitionerRole"}
#: Small change for the update step: Resource.language is valid on every resource type.
CHANGED_LANGUAGE = "en-GB"


def load_example(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def point_at_child(resource: dict, child_id: str) -> dict:
    """The example with its record references (and only those) pointing at the test's child."""
    body = copy.deepcopy(resource)
    for element in RECORD_REFERENCES:
        value = body.get(element)
        for reference in (value if isinstance(value, list) else [value]):
            if isinstance(reference, dict) and "reference" in reference:
                reference["reference"] = f"Patient/{child_id}"
    return body


def without_server_fields(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


def prepare(api, example: dict) -> dict:
    """What the test sends: the example without `id`, its record references on a new child."""
    body = {k: v for k, v in example.items() if k != "id"}
    if body["resourceType"] in DIRECTORY_TYPES or body["resourceType"] == "Patient":
        return body
    return point_at_child(body, api.new_child()["id"])


def describe(response) -> str:
    return f"{response.request.method} {response.url} -> {response.status_code}: {response.text[:2000]}"


def test_fixtures_are_the_r4_examples():
    names = {p.name for p in FIXTURES.glob("*.json")}
    assert names == set(EXAMPLES)
    sources = (FIXTURES / "SOURCES.md").read_text(encoding="utf-8")
    for name in EXAMPLES:
        example = load_example(name)
        assert example["id"] and example["resourceType"], name
        assert name in sources, f"{name} has no source in SOURCES.md"


def test_rewriting_touches_only_record_references():
    task = load_example("task-example1.json")
    body = point_at_child(task, "child-1")
    assert body["for"] == {"reference": "Patient/child-1", "display": "Peter James Chalmers"}
    assert body["owner"] == task["owner"] and body["requester"] == task["requester"]
    provenance = point_at_child(load_example("provenance-example-sig.json"), "child-1")
    assert provenance["target"] == [{"reference": "Patient/child-1"}]
    assert provenance["signature"][0]["who"] == {"reference": "Practitioner/xcda-author"}


@pytest.mark.parametrize("name", EXAMPLES)
def test_official_example_round_trips(api, name):
    example = load_example(name)
    resource_type = example["resourceType"]
    token = api.la()
    sent = prepare(api, example)

    created = api.post(f"/fhir/{resource_type}", sent, token)
    assert created.status_code == 201, describe(created)
    new_id = created.json()["id"]
    assert re.search(rf"/fhir/{resource_type}/{re.escape(new_id)}/_history/1$", created.headers["Location"])
    assert created.headers["ETag"] == 'W/"1"'

    path = f"/fhir/{resource_type}/{new_id}"
    read = api.get(path, token)
    assert read.status_code == 200, describe(read)
    assert without_server_fields(read.json()) == without_server_fields(sent)
    assert read.json()["meta"]["versionId"] == "1"

    changed = dict(sent, id=new_id, language=CHANGED_LANGUAGE)
    updated = api.put(path, changed, token, **{"If-Match": 'W/"1"'})
    assert updated.status_code == 200, describe(updated)
    assert updated.headers["ETag"] == 'W/"2"'
    assert api.get(path, token).json()["language"] == CHANGED_LANGUAGE

    first = api.get(f"{path}/_history/1", token)
    assert first.status_code == 200, describe(first)
    assert without_server_fields(first.json()) == without_server_fields(sent)
    assert first.json()["meta"]["versionId"] == "1"
