"""Parse and check incoming FHIR JSON with the fhir.resources R4B models.

R4B's models accept R4 JSON for every type served here (the R4 official examples prove it in
tests/api/test_official_examples.py); we keep the client's JSON as sent once it has parsed, so a
resource reads back exactly as written, apart from `meta`.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from consent.references import literal_key, ref_key  # noqa: F401 (ref_key re-exported)
from ehcp_record.errors import FhirError, invalid

#: The types this server stores (API.md "Resource interactions"). AuditEvent is rendered from
#: the audit chain, never written by clients.
STORED_TYPES: tuple[str, ...] = (
    "Patient", "RelatedPerson", "Organization", "Practitioner", "PractitionerRole",
    "Composition", "Condition", "Goal", "CarePlan", "DocumentReference", "Binary",
    "Consent", "Task", "Provenance", "Subscription",
)
READ_ONLY_TYPES: tuple[str, ...] = ("AuditEvent",)
SERVED_TYPES: tuple[str, ...] = STORED_TYPES + READ_ONLY_TYPES
_MAX_ERRORS = 5


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
    try:
        model = get_fhir_model_class(resource_type)
    except (ValueError, KeyError):
        raise invalid(f"'{resource_type}' is not a FHIR R4 resource type", "not-supported") from None
    try:
        model.model_validate(body)
    except ValidationError as exc:
        raise _structure_error(resource_type, exc) from None
    except (ValueError, TypeError) as exc:
        raise invalid(f"{resource_type} is not valid FHIR: {exc}", "structure") from None
    return body


def _structure_error(resource_type: str, exc: ValidationError) -> FhirError:
    errors = exc.errors()
    paths = [_element_path(resource_type, e.get("loc", ())) for e in errors[:_MAX_ERRORS]]
    first = errors[0] if errors else {"msg": "invalid"}
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return invalid(f"{paths[0] if paths else resource_type}: {message}{more}", "structure", paths)


def _element_path(resource_type: str, loc: tuple) -> str:
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("__root__",):
            path += f".{part}"
    return path


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
