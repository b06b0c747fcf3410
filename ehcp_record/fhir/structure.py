"""FHIR R4 (4.0.1) structure: a resource checked against the JSON Schema generated from the HL7
R4 StructureDefinitions (profiles/r4, made by profiles/r4/generate.py; see its README).

What is checked is what R4's JSON rules (http://hl7.org/fhir/R4/json.html) and the definitions
say: element names (with the `_element` siblings of primitives), types, choice elements `[x]`
(one type at a time), arrays against single values, the primitive regexes, real calendar dates,
min-1 elements. A resource inside a resource (`contained`, Bundle.entry.resource,
Parameters.parameter.resource, Bundle.entry.response.outcome) is checked against its own type's
definition. Every problem becomes one sentence in FHIR's words with the FHIRPath of the element
at fault (OperationOutcome.issue.expression), never the validator's own wording.
"""

from __future__ import annotations

import calendar
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema_rs

R4_DIR = Path(__file__).resolve().parents[2] / "profiles" / "r4"
SCHEMA_FILE = R4_DIR / "fhir-r4.schema.json"
SUMMARY_FILE = R4_DIR / "summary-elements.json"
_SLOT = "ResourceSlot"
_FULL_DATE = re.compile(r"(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])")

#: What a valid value of each R4 primitive looks like, for a person (datatypes.html).
_PRIMITIVE_WORDS = {
    "date": "YYYY, YYYY-MM or YYYY-MM-DD, e.g. 2015-03-14",
    "dateTime": "a date, or a date and time with a time zone, e.g. 2025-04-01T09:30:00Z",
    "instant": "a date and time with seconds and a time zone, e.g. 2025-04-01T09:30:00Z",
    "time": "hh:mm:ss, e.g. 09:30:00",
    "id": "1 to 64 letters, digits, '-' and '.'",
    "code": "text without leading, trailing or double spaces",
    "string": "text of at least one character",
    "markdown": "text of at least one character",
    "uri": "a URI without spaces",
    "url": "a URL without spaces",
    "canonical": "a canonical URL without spaces",
    "oid": "urn:oid: followed by numbers and dots",
    "uuid": "urn:uuid: followed by a UUID",
    "base64Binary": "base64 text",
    "integer": "a whole number from -2147483648 to 2147483647",
    "positiveInt": "a whole number from 1 to 2147483647",
    "unsignedInt": "a whole number from 0 to 2147483647",
    "decimal": "a number",
    "boolean": "true or false",
}
_JSON_WORDS = {"array": "a list [...]", "object": "an object {...}", "string": "text in quotes",
               "integer": "a whole number", "number": "a number", "boolean": "true or false", "null": "null"}


@dataclass(frozen=True)
class Problem:
    """One structural problem: the FHIRPath of the element at fault and a sentence about it."""

    expression: str
    message: str


def real_calendar_date(value: object) -> bool:
    """R4 datatypes.html: "Dates SHALL be valid dates" (no 30 February), which a regex cannot
    say; the format `fhir-date` (and -dateTime, -instant) asks this of the leading YYYY-MM-DD.
    Text that does not even look like a date is the pattern's to report."""
    match = _FULL_DATE.match(value) if isinstance(value, str) else None
    if match is None:
        return True
    year, month, day = (int(part) for part in match.groups())
    return day <= calendar.monthrange(year, month)[1]


_FORMATS = {"fhir-date": real_calendar_date, "fhir-dateTime": real_calendar_date, "fhir-instant": real_calendar_date}


@lru_cache(maxsize=1)
def _definitions() -> dict[str, dict]:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))["definitions"]


@lru_cache(maxsize=1)
def resource_types() -> frozenset[str]:
    """Every concrete FHIR R4 resource type (not a datatype, not Resource or DomainResource)."""
    return frozenset(name for name, schema in _definitions().items() if schema.get("x-resource"))


@lru_cache(maxsize=1)
def summary_elements_by_type() -> dict[str, frozenset[str]]:
    """The top-level elements R4 marks isSummary, by resource type (for `_summary=true`)."""
    data = json.loads(SUMMARY_FILE.read_text(encoding="utf-8"))
    return {name: frozenset(elements) for name, elements in data.items()}


@lru_cache(maxsize=None)
def _resource_elements() -> frozenset[str]:
    """The names of elements whose type is Resource (contained, resource, outcome)."""
    slot = f"#/definitions/{_SLOT}"
    return frozenset(name for schema in _definitions().values() for name, prop in schema.get("properties", {}).items()
                     if (prop.get("items") or prop).get("$ref") == slot)


@lru_cache(maxsize=None)
def _validator(resource_type: str) -> jsonschema_rs.Draft7Validator:
    """The compiled check of one resource type, over just the definitions it reaches (compiling
    all 3,000 at once takes minutes; one type's ~80 take ~20 ms, once per process)."""
    definitions = _definitions()
    reached, todo = {resource_type}, [resource_type]
    while todo:
        for name in _refs(definitions[todo.pop()]):
            if name not in reached:
                reached.add(name)
                todo.append(name)
    schema = {"$ref": f"#/definitions/{resource_type}", "definitions": {n: definitions[n] for n in reached}}
    return jsonschema_rs.Draft7Validator(schema, formats=_FORMATS, validate_formats=True)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"].rsplit("/", 1)[1]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def problems(resource: dict, limit: int) -> list[Problem]:
    """Up to `limit` structural problems of a resource and of every resource inside it, in the
    order found; [] when it is valid R4. Nested resource types must be known R4 types (the
    caller refuses others first, see model.check_nesting)."""
    found: dict[str, Problem] = {}
    for where, item in _resources_within(resource, resource["resourceType"]):
        validator = _validator(item["resourceType"])
        if validator.is_valid(item):
            continue
        for problem in _translate(validator.iter_errors(item), where, item):
            found.setdefault(problem.expression, problem)  # one problem per element
            if len(found) >= limit:
                return list(found.values())
    return list(found.values())


def _resources_within(resource: dict, where: str) -> Iterator[tuple[str, dict]]:
    """The resource and each resource held in an element of type Resource, with its FHIRPath."""
    yield where, resource
    names = _resource_elements()
    stack: list[tuple[Any, str, bool]] = [(v, f"{where}.{k}", k in names) for k, v in reversed(resource.items())]
    while stack:
        item, path, in_slot = stack.pop()
        if isinstance(item, list):
            stack.extend((v, f"{path}[{i}]", in_slot) for i, v in reversed(list(enumerate(item))))
        elif isinstance(item, dict):
            if in_slot and isinstance(item.get("resourceType"), str) and item["resourceType"] in resource_types():
                yield from _resources_within(item, path)
                continue
            stack.extend((v, f"{path}.{k}", k in names) for k, v in reversed(item.items()))


def _translate(errors: Iterator[jsonschema_rs.ValidationError], where: str, resource: dict) -> Iterator[Problem]:
    errors = list(errors)
    # a choice given with a type it does not take is one problem, not also "value[x] is missing"
    choices_said = {(_fhirpath(where, e.instance_path), _unknown(_fhirpath(where, e.instance_path), name,
                                                                 list(e.schema_path)[:-1])[1])
                    for e in errors if e.kind.name == "additionalProperties" for name in e.kind.unexpected}
    for error in errors:
        at = _fhirpath(where, error.instance_path)
        schema_path = list(error.schema_path)
        kind = error.kind.name
        if kind == "additionalProperties":
            for name in error.kind.unexpected:
                yield _unknown(at, name, schema_path[:-1])[0]
        elif kind == "required":
            yield _missing(f"{at}.{error.kind.property}")
        elif kind == "anyOf" and _annotation(schema_path[:-1], "x-required"):
            element = _annotation(schema_path[:-1], "x-required").rsplit(".", 1)[1]
            if (at, element) not in choices_said:
                yield _missing(f"{at}.{element}")
        elif kind == "propertyNames" and "dependencies" in schema_path:
            choice = _annotation(schema_path[:schema_path.index("dependencies") + 2], "x-choice")
            element = choice.rsplit(".", 1)[1]
            if (at, element) not in choices_said:
                choices_said.add((at, element))
                given = _given(resource, error.instance_path, element[:-3])
                yield Problem(f"{at}.{element}", f"{at}.{element}: only one of {', '.join(given)} may be given "
                                                 f"(a choice element takes one type)")
        else:
            yield _value_problem(at, kind, schema_path, error)


def _unknown(at: str, name: str, definition_path: list) -> tuple[Problem, str]:
    """An element name the definition has not: a misspelling, or a choice element with a type
    it does not take in R4 (`valueCodeableReference`, an R4B type). Returns the choice too."""
    owner = _annotation(definition_path, "x-fhir")
    choices = _annotation(definition_path, "x-choices") or {}
    for stem, choice in choices.items():
        if name.startswith(stem) and name[len(stem):][:1].isupper():
            element = choice.rsplit(".", 1)[1]
            return Problem(f"{at}.{name}", f"{at}.{name}: {name[len(stem):]} is not one of the types {choice} "
                                           "takes in FHIR R4"), element
    return Problem(f"{at}.{name}", f"{at}.{name} is not an element of {owner} in FHIR R4 "
                                   "(check its spelling and where it is placed)"), ""


def _missing(path: str) -> Problem:
    return Problem(path, f"{path}: this element is required and is missing")


def _value_problem(at: str, kind: str, schema_path: list, error: jsonschema_rs.ValidationError) -> Problem:
    shown = json.dumps(error.instance, ensure_ascii=False)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    primitive = _annotation(schema_path[:2], "x-type")
    if kind == "type":
        expected = [t for t in error.kind.types if t != "null"]
        what = _PRIMITIVE_WORDS.get(primitive) if primitive else None
        if what is None:
            what = " or ".join(_JSON_WORDS.get(t, t) for t in expected)
            owner = _annotation(schema_path[:2], "x-fhir")
            if expected == ["object"] and owner:
                what += f" (a {owner})"
        return Problem(at, f"{at}: must be {what}, not {shown}")
    if primitive:
        reason = "is not a real calendar date" if kind == "format" else f"is not a valid {primitive}"
        return Problem(at, f"{at}: {shown} {reason} ({_PRIMITIVE_WORDS.get(primitive, 'see the R4 datatypes')})")
    return Problem(at, f"{at}: {shown} is not valid FHIR R4 here")


def _annotation(schema_path: list, key: str) -> Any:
    """An `x-` annotation of the schema node at this path of the generated schema."""
    node: Any = {"definitions": _definitions()}
    for part in schema_path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return ""
    return node.get(key, "") if isinstance(node, dict) else ""


def _given(resource: dict, instance_path: list, stem: str) -> list[str]:
    node: Any = resource
    for part in instance_path:
        node = node[part]
    return [name for name in node if name.startswith(stem) and name[len(stem):][:1].isupper()]


def _fhirpath(where: str, instance_path: list) -> str:
    return where + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in instance_path)
