"""Parse and check incoming FHIR JSON against the FHIR R4 (4.0.1) definitions.

The structure is checked by `ehcp_record.fhir.structure` with the JSON Schema generated from the
HL7 R4 StructureDefinitions (profiles/r4); the R4 official examples go through unchanged
(tests/api/test_official_examples.py). The client's JSON is kept as sent once it has passed, so
a resource reads back exactly as written, apart from `meta`.
"""

from __future__ import annotations

import json
from typing import Any

from consent.references import literal_key, ref_key  # noqa: F401 (ref_key re-exported)
from ehcp_record.errors import FhirError, invalid, too_costly
from ehcp_record.fhir import structure

#: The types this server stores (API.md "Resource interactions"). AuditEvent is rendered from
#: the audit chain, never written by clients.
STORED_TYPES: tuple[str, ...] = (
    "Patient", "RelatedPerson", "Organization", "Practitioner", "PractitionerRole",
    "Composition", "Condition", "Goal", "CarePlan", "DocumentReference", "Binary",
    "Consent", "Task", "Provenance", "Subscription",
)
#: Communication: decision notices (CFA 2014 s51), written by the server's named method
#: `ScopedStore.prepare_decision_notice`; clients read and search them.
READ_ONLY_TYPES: tuple[str, ...] = ("AuditEvent", "Communication")
SERVED_TYPES: tuple[str, ...] = STORED_TYPES + READ_ONLY_TYPES
#: Structural problems reported at most per resource (each its own OperationOutcome issue).
_MAX_ERRORS = 5
#: Deepest JSON nesting (objects and arrays) accepted anywhere: MongoDB refuses documents nested
#: 100 deep, and no real resource comes near 64.
MAX_JSON_DEPTH = 64


def require_served_type(resource_type: str) -> None:
    if resource_type not in SERVED_TYPES:
        raise FhirError(404, "not-supported", f"resource type '{resource_type}' is not served here")


def parse_resource(body: Any, expected_type: str | None = None) -> dict:
    """Return the resource dict if it is a structurally valid R4 resource, else raise 400."""
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object holding one FHIR resource", "structure")
    resource_type = body.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise invalid("the resource has no resourceType", "required", ["resourceType"])
    if expected_type is not None and resource_type != expected_type:
        raise invalid(
            f"resourceType '{resource_type}' does not match the URL's type '{expected_type}'",
            "invalid", ["resourceType"],
        )
    if not is_resource_type(resource_type):
        raise invalid(f"'{resource_type}' is not a FHIR R4 resource type", "not-supported")
    check_nesting(body, resource_type)
    found = structure.problems(body, _MAX_ERRORS)
    if found:
        raise _structure_error(found)
    return body


def is_resource_type(name: str) -> bool:
    """True for a concrete FHIR R4 resource type (not a datatype, not Resource/DomainResource)."""
    return name in structure.resource_types()


def check_nesting(value: Any, path: str = "", limit: int = MAX_JSON_DEPTH, resource_types: bool = True) -> None:
    """Refuse JSON nested deeper than `limit` and, below the root, any `resourceType` that is not
    a resource type (Bundle entries, `contained`, Parameters): 400 naming the element, before
    the structure check (which checks each nested resource as its own type) or the database
    (depth) sees it."""
    stack: list[tuple[Any, str, int]] = [(value, path, 1)]
    while stack:
        item, where, depth = stack.pop()
        if depth > limit:
            error = too_costly(f"JSON nested more than {limit} levels deep is refused")
            error.expression = [where] if where else []
            raise error
        if isinstance(item, dict):
            if resource_types and item is not value and "resourceType" in item:
                nested = item["resourceType"]
                if not isinstance(nested, str) or not is_resource_type(nested):
                    shown = nested if isinstance(nested, str) else json.dumps(nested)[:40]
                    raise invalid(f"{where}: '{shown[:64]}' is not a FHIR R4 resource type", "structure",
                                  [where])
            stack.extend((v, f"{where}.{k}" if where else str(k), depth + 1)
                         for k, v in item.items() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(item) if isinstance(v, (dict, list)))


def _structure_error(found: list[structure.Problem]) -> FhirError:
    """One OperationOutcome issue per problem, each in plain English with the FHIRPath of the
    element at fault (R4 OperationOutcome.issue.expression), so a parent app can show the
    diagnostics as they are and a developer can find every typo in one round trip."""
    first, rest = found[0], found[1:]
    error = invalid(first.message, "structure", [first.expression])
    error.extra_issues = [{"severity": "error", "code": "structure", "diagnostics": p.message, "expression": [p.expression]}
                          for p in rest]
    return error


def literal_references(value: object) -> list[str]:
    """Every literal reference (Type/id, absolute or versioned) anywhere in a resource, in
    document order, without duplicates; contained (#) and urn: references are left out."""
    found: list[str] = []
    stack: list = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            reference = item.get("reference")
            if literal_key(reference):
                found.append(reference)
            stack.extend(reversed([v for k, v in item.items() if k != "reference"]))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return list(dict.fromkeys(found))
