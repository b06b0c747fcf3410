"""Parse and check incoming FHIR JSON with the fhir.resources R4B models.

R4B's models accept R4 JSON for every type served here (the R4 official examples prove it in
tests/api/test_official_examples.py); we keep the client's JSON as sent once it has parsed, so a
resource reads back exactly as written, apart from `meta`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from consent.references import literal_key, ref_key  # noqa: F401 (ref_key re-exported)
from ehcp_record.errors import FhirError, invalid, too_costly

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
_MAX_ERRORS = 5
#: Deepest JSON nesting (objects and arrays) accepted anywhere: MongoDB refuses documents nested
#: 100 deep, and no real resource comes near 64.
MAX_JSON_DEPTH = 64
_ABSTRACT_TYPES = frozenset({"Resource", "DomainResource"})


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
    try:
        get_fhir_model_class(resource_type).model_validate(body)
    except ValidationError as exc:
        raise _structure_error(resource_type, exc) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise invalid(f"{resource_type} is not valid FHIR: {exc}", "structure") from None
    return body


@lru_cache(maxsize=512)
def is_resource_type(name: str) -> bool:
    """True for a concrete FHIR resource type the models know (not a datatype, not abstract)."""
    if name in _ABSTRACT_TYPES:
        return False
    try:
        return bool(get_fhir_model_class(name).has_resource_base())
    except (ValueError, KeyError, AttributeError, TypeError):
        return False


def check_nesting(value: Any, path: str = "", limit: int = MAX_JSON_DEPTH, resource_types: bool = True) -> None:
    """Refuse JSON nested deeper than `limit` and, below the root, any `resourceType` that is not
    a resource type (Bundle entries, `contained`, Parameters): 400 naming the element, before
    the models (which fail on those with KeyError) or the database (depth) see it."""
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


def _structure_error(resource_type: str, exc: ValidationError) -> FhirError:
    """One OperationOutcome issue per problem, each in plain English with the FHIRPath of the
    element at fault (R4 OperationOutcome.issue.expression), so a parent app can show the
    diagnostics as they are and a developer can find every typo in one round trip."""
    problems = [(_element_path(resource_type, e.get("loc", ())), _plain(e)) for e in exc.errors()[:_MAX_ERRORS]]
    if not problems:
        return invalid(f"{resource_type} is not valid FHIR R4", "structure")
    (path, message), rest = problems[0], problems[1:]
    error = invalid(f"{path}: {message}", "structure", [path])
    error.extra_issues = [{"severity": "error", "code": "structure", "diagnostics": f"{p}: {m}", "expression": [p]}
                          for p, m in rest]
    return error


#: The R4 primitive a fhir.resources regex error is about, in the words a person would use.
_PRIMITIVE_WORDS = {
    "Date": "a date written YYYY, YYYY-MM or YYYY-MM-DD (e.g. 2015-03-14)",
    "DateTime": "a date, or a date and time with a time zone (e.g. 2025-04-01T09:30:00Z)",
    "Instant": "a date and time with seconds and a time zone (e.g. 2025-04-01T09:30:00Z)",
    "Time": "a time written hh:mm:ss",
}
_TYPE_WORDS = {"list_type": "a list [...]", "string_type": "text in quotes", "int_type": "a whole number",
               "int_parsing": "a whole number", "bool_type": "true or false", "bool_parsing": "true or false",
               "dict_type": "an object {...}", "model_type": "an object {...}", "float_type": "a number",
               "decimal_type": "a number", "decimal_parsing": "a number"}


def _plain(error: dict) -> str:
    """A pydantic error about FHIR JSON, said as FHIR: which element, what was wrong, what fits."""
    kind = error.get("type", "")
    shown = json.dumps(error.get("input"), ensure_ascii=False)[:60]
    if kind == "extra_forbidden":
        return "this element is not part of FHIR R4 here; check its spelling and where it is placed"
    if kind == "missing":
        return "this element is required and is missing"
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}, not {shown}"
    if kind == "string_pattern_mismatch":
        return f"{shown} is not a valid value for this element (FHIR ids are 1 to 64 letters, digits, '-' and '.')" \
            if str(error.get("loc", ("",))[-1]) == "id" else f"{shown} is not in the form this element takes"
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    primitive = message.split(" value string does not match", 1)[0] if "value string does not match" in message else ""
    if primitive in _PRIMITIVE_WORDS:
        return f"{shown} is not {_PRIMITIVE_WORDS[primitive]}"
    return f"{shown} is not valid here: {message[:120]}"


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
