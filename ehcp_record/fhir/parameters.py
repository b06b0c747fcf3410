"""The one reader of FHIR `Parameters` bodies (operation inputs such as $respond and $transfer).

`read_parameters(body, ...)` returns `{name: value}`: the `value[x]` of any type (a
valueReference is the Reference object as sent), the `resource` of a resource parameter, or the
`part`s of a multi-part parameter read the same way. Every refusal is a 400 OperationOutcome
(`ehcp_record.errors.invalid`) naming the parameter: missing, given twice, of the wrong type,
unknown (when the operation lists its parameters), or carrying no value.
https://hl7.org/fhir/R4/parameters.html
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ehcp_record.errors import invalid
from ehcp_record.fhir.model import parse_resource

#: What a parameter's type is called when it is not a value[x]: "resource" or "part".
RESOURCE = "resource"
PART = "part"
#: FHIR R4 primitive types, named with a lower-case first letter (the value[x] suffix is not).
PRIMITIVES = frozenset({
    "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id", "instant",
    "integer", "markdown", "oid", "positiveInt", "string", "time", "unsignedInt", "uri", "url", "uuid",
})


def read_parameters(body: object, types: Mapping[str, str | Iterable[str]] | None = None, *,
                    required: Iterable[str] = (), repeating: Iterable[str] = (),
                    strict: bool = False, check_structure: bool = True) -> dict[str, Any]:
    """Read a Parameters resource into `{name: value}`.

    - `types`: the FHIR type(s) each named parameter may have, by FHIR type name ("date",
      "code", "string", "Reference", "CodeableConcept") or RESOURCE / PART.
      A parameter of any other type is refused; names not listed may have any type.
    - `required`: names that must be present.
    - `repeating`: names that may be given more than once; their value is always a list
      (empty when absent). Any other name given twice is refused.
    - `strict`: refuse names not in `types` (an operation with a fixed signature).
    - `check_structure`: check the body's R4 structure first (off for `part`s, already
      checked as part of their Parameters).
    """
    if check_structure:
        parse_resource(body, "Parameters")
    elif not isinstance(body, Mapping):
        raise invalid("the body must be a FHIR Parameters resource", "structure")
    allowed = {name: _type_set(kind) for name, kind in (types or {}).items()}
    many = set(repeating)
    values: dict[str, Any] = {name: [] for name in many}
    listed = body.get("parameter") or []
    if not isinstance(listed, list):
        raise invalid("Parameters.parameter must be a list", "structure", ["Parameters.parameter"])
    for position, parameter in enumerate(listed):
        where = f"Parameters.parameter[{position}]"
        name, kind, value = _one(parameter, where)
        if strict and name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise invalid(f"parameter '{name}' is not known here (parameters: {known})", "not-supported", [where])
        if name in allowed and kind not in allowed[name]:
            raise invalid(f"parameter '{name}' must be {_describe(allowed[name])}, not {_describe({kind})}",
                          "value", [where])
        if kind == PART:
            value = read_parameters({"parameter": value}, None, check_structure=False)
        if name in many:
            values[name].append(value)
        elif name in values:
            raise invalid(f"parameter '{name}' is given more than once; give it once", "structure", [where])
        else:
            values[name] = value
    for name in required:
        if name not in values or (name in many and not values[name]):
            wanted = f" ({_describe(allowed[name])})" if name in allowed else ""
            raise invalid(f"parameter '{name}'{wanted} is required", "required", ["Parameters.parameter"])
    return values


def _one(parameter: Any, where: str) -> tuple[str, str, Any]:
    """(name, type, value) of one Parameters.parameter."""
    if not isinstance(parameter, Mapping):
        raise invalid("each parameter must be an object with a name", "structure", [where])
    name = parameter.get("name")
    if not isinstance(name, str) or not name:
        raise invalid("a parameter has no name", "required", [f"{where}.name"])
    found = [(key, value) for key, value in parameter.items()
             if key == RESOURCE or key == PART or (key.startswith("value") and key[5:6].isupper())]
    if len(found) != 1:
        what = "no value" if not found else f"{len(found)} values ({', '.join(k for k, _ in found)})"
        raise invalid(f"parameter '{name}' has {what}; give exactly one value[x], resource or part",
                      "structure", [where])
    key, value = found[0]
    return name, _type_of(key), value


def _type_of(key: str) -> str:
    """The FHIR type a parameter key names: "valueDate" -> "date", "valueReference" -> "Reference"."""
    if key in (RESOURCE, PART):
        return key
    suffix = key[5:]
    primitive = suffix[0].lower() + suffix[1:]
    return primitive if primitive in PRIMITIVES else suffix


def _type_set(kind: str | Iterable[str]) -> frozenset[str]:
    return frozenset({kind} if isinstance(kind, str) else kind)


def _describe(kinds: Iterable[str]) -> str:
    def one(kind: str) -> str:
        if kind in (RESOURCE, PART):
            return f"a {kind}"
        return f"a {kind} (value{kind[0].upper()}{kind[1:]})"
    return " or ".join(one(k) for k in sorted(kinds))


def parameters(**values: Any) -> dict:
    """Build a Parameters resource: parameters(valid=("boolean", True), note=("string", "x")).

    Each keyword is a parameter name; its value is (type, value) with the type as in `types`
    above, or a list of such pairs for a repeated parameter.
    """
    listed = []
    for name, given in values.items():
        for kind, value in (given if isinstance(given, list) else [given]):
            if kind == PART:
                listed.append({"name": name, "part": parameters(**value)["parameter"]})
            elif kind == RESOURCE:
                listed.append({"name": name, "resource": value})
            else:
                listed.append({"name": name, f"value{kind[0].upper()}{kind[1:]}": value})
    return {"resourceType": "Parameters", "parameter": listed}


__all__ = ["read_parameters", "parameters", "RESOURCE", "PART"]
