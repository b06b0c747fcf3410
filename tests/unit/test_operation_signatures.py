"""Operation inputs are read as their OperationDefinitions (profiles/) declare them."""

from __future__ import annotations

import json

import pytest

import api.analytics  # noqa: F401  (registers Measure/$evaluate-measure)
from api import operations as routes
from ehcp_record.errors import FhirError
from ehcp_record.fhir.canonical import CANONICAL_BASE
from ehcp_record.fhir.parameters import PART, RESOURCE
from ehcp_record.fhir.signatures import DEFINITIONS_DIR, read_inputs, signature, signature_of

DEFINED = sorted(p.stem for p in DEFINITIONS_DIR.glob("*.json"))


def test_every_operation_the_server_offers_has_its_definition():
    """Ours are defined in profiles/; a standard one (Measure/$evaluate-measure) names HL7's."""
    ours = {name for name, _, definition in routes.OPERATIONS if definition.startswith(CANONICAL_BASE)}
    assert ours <= set(DEFINED), sorted(ours - set(DEFINED))
    standard = {definition for _, _, definition in routes.OPERATIONS if not definition.startswith(CANONICAL_BASE)}
    assert standard <= {"http://hl7.org/fhir/OperationDefinition/Measure-evaluate-measure"}


@pytest.mark.parametrize("code", DEFINED)
def test_every_definition_gives_a_signature_of_known_types(code):
    definition = json.loads((DEFINITIONS_DIR / f"{code}.json").read_text())
    found = signature_of(definition)
    assert found.code == code == definition["id"]
    declared = [p["name"] for p in definition["parameter"] if p["use"] == "in"]
    assert list(found.types) == declared
    assert all(found.types[name] for name in declared)  # every input has at least one type the reader knows


def test_the_signature_follows_min_max_part_and_allowed_types():
    step = signature("complete-step")
    assert step.required == ("date",) and step.repeating == ("progress",) and step.types["progress"] == (PART,)
    assert signature("respond").types["response"] == ("code", "string")
    assert signature("validate").types["resource"] == (RESOURCE,)
    assert set(signature("transfer").required) == {"destination", "moveDate", "notifiedDate"}


def _refusal(body, code, **kwargs) -> str:
    with pytest.raises(FhirError) as refused:
        read_inputs(body, code, **kwargs)
    assert refused.value.status == 400
    return refused.value.diagnostics


def test_reading_refuses_what_the_definition_does_not_allow():
    cease = {"resourceType": "Parameters", "parameter": [
        {"name": "consulted", "valueDate": "2026-11-01"}, {"name": "decided", "valueDate": "2026-11-20"},
        {"name": "reason", "valueCode": "moved-abroad"}]}
    assert read_inputs(cease, "cease")["reason"] == "moved-abroad"
    unknown = dict(cease, parameter=cease["parameter"] + [{"name": "colour", "valueString": "blue"}])
    assert "consulted, decided, reason, reasonText" in _refusal(unknown, "cease")
    missing = dict(cease, parameter=cease["parameter"][:2])
    assert "reason" in _refusal(missing, "cease")
    mistyped = dict(cease, parameter=[{"name": "consulted", "valueString": "last week"}] + cease["parameter"][1:])
    assert "consulted" in _refusal(mistyped, "cease")
    twice = dict(cease, parameter=cease["parameter"] + [cease["parameter"][0]])
    assert "consulted" in _refusal(twice, "cease")
    # an input the definition leaves optional that this caller must give
    assert "received" in _refusal({"resourceType": "Parameters", "parameter": []}, "request-assessment",
                                  also_required=("received",))
