"""profiles/ as data: every file parses, sits under the canonical base, is a valid FHIR R4 resource
(the server's structure check, from the HL7 R4 definitions in profiles/r4), and the terminology
and examples hang together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stdnum.gb import upn as stdnum_upn

from ehcp_record.fhir.model import parse_resource
from ehcp_record.fhir.validator import CANONICAL_BASE, DEFAULT_PROFILES_DIR, default_validator

PROFILES = DEFAULT_PROFILES_DIR
ALL_FILES = sorted(PROFILES.rglob("*.json"))
#: profiles/snapshots holds generated snapshot elements (not resources), checked by tests/clients;
#: profiles/r4 the generated R4 JSON Schema (tests/unit/test_r4_structure.py).
CONFORMANCE_FILES = [p for p in ALL_FILES if not {"examples", "snapshots", "r4"} & set(p.relative_to(PROFILES).parts)]
EXAMPLE_FILES = [p for p in ALL_FILES if "examples" in p.relative_to(PROFILES).parts]


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def check_r4(resource: dict) -> None:
    parse_resource(resource, resource["resourceType"])


def of_type(resource_type: str) -> dict[str, dict]:
    return {p.stem: load(p) for p in (PROFILES / resource_type).glob("*.json")}


def test_the_layout_is_there():
    for folder in ("StructureDefinition", "CodeSystem", "ValueSet", "examples"):
        assert list((PROFILES / folder).glob("*.json")), folder


@pytest.mark.parametrize("path", CONFORMANCE_FILES, ids=lambda p: str(p.relative_to(PROFILES)))
def test_conformance_resource_is_valid_and_under_the_base(path):
    resource = load(path)
    assert resource["resourceType"] == path.parent.name
    assert resource["id"] == path.stem
    assert resource["url"] == f"{CANONICAL_BASE}/{resource['resourceType']}/{resource['id']}"
    check_r4(resource)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_is_valid_r4(path):
    check_r4(load(path))  # a Bundle's entries are checked as resources of their own type


def test_section_code_system_is_a_to_k_with_definitions():
    section = of_type("CodeSystem")["ehcp-section"]
    assert [c["code"] for c in section["concept"]] == ["A", "B", "C", "D", "E", "F", "G", "H1", "H2", "I", "J", "K"]
    assert all(c["display"] and "reg 12" in c["definition"] for c in section["concept"])


def test_sen_primary_need_codes():
    codes = [c["code"] for c in of_type("CodeSystem")["sen-primary-need"]["concept"]]
    assert codes == ["SPLD", "MLD", "SLD", "PMLD", "SEMH", "SLCN", "HI", "VI", "MSI", "PD", "ASD", "OTH", "NSA"]


def test_every_code_system_has_a_value_set_composing_it():
    value_sets = of_type("ValueSet")
    for cs_id, code_system in of_type("CodeSystem").items():
        assert code_system["valueSet"] == f"{CANONICAL_BASE}/ValueSet/{cs_id}"
        includes = value_sets[cs_id]["compose"]["include"]
        assert includes == [{"system": code_system["url"]}]
        assert code_system["content"] == "complete" and code_system["count"] == len(code_system["concept"])


def test_every_referenced_value_set_and_profile_is_shipped():
    value_sets = {vs["url"] for vs in of_type("ValueSet").values()}
    profiles = {sd["url"] for sd in of_type("StructureDefinition").values()}
    for sd in of_type("StructureDefinition").values():
        for element in sd["differential"]["element"]:
            assert element["id"].split(".")[0] == sd["type"]
            if "binding" in element:
                assert element["binding"]["valueSet"] in value_sets, element["id"]
            for target in (t for typ in element.get("type", []) for t in typ.get("targetProfile", [])):
                assert target in profiles or target.startswith("http://hl7.org/fhir/StructureDefinition/"), target


def test_constraint_keys_are_unique_and_have_plain_english():
    keys = [c["key"] for sd in of_type("StructureDefinition").values()
            for e in sd["differential"]["element"] for c in e.get("constraint", [])]
    assert len(keys) == len(set(keys))
    for sd in of_type("StructureDefinition").values():
        for constraint in (c for e in sd["differential"]["element"] for c in e.get("constraint", [])):
            assert constraint["severity"] in ("error", "warning") and len(constraint["human"]) > 20


def test_one_default_profile_per_type_unless_a_condition_chooses():
    validator = default_validator()
    by_type: dict[str, list] = {}
    for profile in validator.profiles.values():
        if profile.is_default:
            by_type.setdefault(profile.type, []).append(profile)
    for profiles in by_type.values():
        assert len(profiles) == 1 or all(p.applies_when is not None for p in profiles)


def test_example_plan_validates_clean_as_a_whole_plan():
    from ehcp_record.plan.golden_thread import validate_plan

    assert validate_plan(load(PROFILES / "examples" / "plan-bundle.json")) == []


def test_example_plan_content():
    bundle = load(PROFILES / "examples" / "plan-bundle.json")
    assert bundle["type"] == "transaction"
    assert all(e["fullUrl"].startswith("urn:uuid:") for e in bundle["entry"])
    resources = [e["resource"] for e in bundle["entry"]]
    child = next(r for r in resources if r["resourceType"] == "Patient")
    identifiers = {i["system"]: i["value"] for i in child["identifier"]}
    assert identifiers["https://fhir.nhs.uk/Id/nhs-number"] == "9000000009"
    assert stdnum_upn.is_valid(identifiers[f"{CANONICAL_BASE}/NamingSystem/upn"])
    assert child["birthDate"] == "2015-03-14"
    counts = {t: sum(r["resourceType"] == t for r in resources) for t in
              ("RelatedPerson", "Organization", "Condition", "Goal", "CarePlan", "DocumentReference", "Composition")}
    assert counts["RelatedPerson"] == 2 and counts["Organization"] == 3 and counts["Composition"] == 1
    assert counts["Condition"] >= 3 and counts["Goal"] >= 4 and counts["CarePlan"] >= 6 and counts["DocumentReference"] >= 3
    plan = next(r for r in resources if r["resourceType"] == "Composition")
    section_codes = [s["code"]["coding"][0]["code"] for s in plan["section"]]
    assert section_codes == ["A", "B", "C", "D", "E", "F", "G", "H1", "H2", "I", "J", "K"]
    la = next(r for r in resources if r.get("id") == "la-866")
    assert {"system": f"{CANONICAL_BASE}/NamingSystem/dfe-la-number", "value": "866"} in la["identifier"]
