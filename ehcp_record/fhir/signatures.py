"""Operation inputs read as their OperationDefinitions declare them.

Each EHCP operation is defined once, in `profiles/OperationDefinition/<code>.json` (served to
clients, listed in the CapabilityStatement). Its `in` parameters are also what the server
accepts: `read_inputs(body, code)` hands the one Parameters reader (`fhir.parameters`) each
parameter's type, whether it is required (`min` 1) and whether it repeats (`max` "*"), and
refuses any name the definition does not list. So the published signature and the enforced one
cannot drift apart.

R4 OperationDefinition.parameter: `type` is one FHIR type; a parameter that may take several
carries the `operationdefinition-allowed-type` extension (one valueUri per further type); a
parameter with `part`s is a multi-part one; a resource type means a `resource` parameter.
https://hl7.org/fhir/R4/operationdefinition.html
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ehcp_record.fhir.parameters import PART, PRIMITIVES, RESOURCE, read_parameters

DEFINITIONS_DIR = Path(__file__).resolve().parents[2] / "profiles" / "OperationDefinition"
ALLOWED_TYPE = "http://hl7.org/fhir/StructureDefinition/operationdefinition-allowed-type"
#: R4 complex datatypes an operation input may carry as value[x] (anything else capitalised is a
#: resource type, sent as `resource`).
DATATYPES = frozenset({
    "Address", "Age", "Annotation", "Attachment", "CodeableConcept", "Coding", "ContactPoint", "Count",
    "Distance", "Duration", "HumanName", "Identifier", "Money", "Period", "Quantity", "Range", "Ratio",
    "Reference", "SampledData", "Signature", "Timing",
})


@dataclass(frozen=True)
class Signature:
    """What an operation accepts: each input's type(s), which are required, which repeat."""

    code: str
    types: dict[str, tuple[str, ...]]
    required: tuple[str, ...]
    repeating: tuple[str, ...]


def signature_of(definition: dict) -> Signature:
    """The inputs of one OperationDefinition (its `in` parameters)."""
    types: dict[str, tuple[str, ...]] = {}
    required, repeating = [], []
    for parameter in definition.get("parameter", []):
        if parameter.get("use") != "in":
            continue
        name = parameter["name"]
        types[name] = _reader_types(parameter)
        if int(parameter.get("min", 0)) >= 1:
            required.append(name)
        if parameter.get("max") == "*":
            repeating.append(name)
    return Signature(definition["code"], types, tuple(required), tuple(repeating))


def _reader_types(parameter: dict) -> tuple[str, ...]:
    if parameter.get("part"):
        return (PART,)
    declared = [parameter.get("type", "")] + [e["valueUri"] for e in parameter.get("extension", [])
                                                if e.get("url") == ALLOWED_TYPE]
    return tuple(dict.fromkeys(t if t in PRIMITIVES or t in DATATYPES else RESOURCE for t in declared if t))


@lru_cache(maxsize=None)
def signature(code: str) -> Signature:
    """The signature of the operation `code`, from profiles/ (read once per process)."""
    path = DEFINITIONS_DIR / f"{code}.json"
    return signature_of(json.loads(path.read_text(encoding="utf-8")))


def read_inputs(body: object, code: str, *, also_required: tuple[str, ...] = ()) -> dict[str, Any]:
    """`body` (a Parameters resource) read as operation `code` declares; `also_required` names
    inputs the definition leaves optional that this caller must give (e.g. an LA recording a
    request for assessment must say when it was received)."""
    found = signature(code)
    return read_parameters(body, found.types, required=found.required + also_required,
                           repeating=found.repeating, strict=True)
