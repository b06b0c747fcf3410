"""The sections each type may carry are read from the shipped ValueSets, once (consent.terminology)."""

from __future__ import annotations

import pytest

from consent import codes, sections
from consent.terminology import TerminologyError, code_system_codes, value_set_codes
from ehcp_record.fhir.canonical import value_set
from ehcp_record.fhir.validator import default_validator


@pytest.mark.parametrize("name, resource_type", [
    ("ehcp-need-section", "Condition"),
    ("ehcp-provision-section", "CarePlan"),
    ("ehcp-provision-section", "ServiceRequest"),
    ("ehcp-advice-section", "DocumentReference"),
])
def test_sectioning_uses_the_value_set_the_validator_binds(name, resource_type):
    expanded = default_validator().terminology.value_set(value_set(name)).members[codes.SECTION_SYSTEM]
    allowed, default = sections._CATEGORISED[resource_type]
    assert allowed == expanded == frozenset(value_set_codes(name, codes.SECTION_SYSTEM))
    assert default in allowed
    for code in codes.SECTIONS:
        resource = {"resourceType": resource_type,
                    "category": [{"coding": [{"system": codes.SECTION_SYSTEM, "code": code}]}]}
        assert sections.section_of(resource) == (code if code in expanded else default)


def test_sections_come_from_the_code_system():
    assert codes.SECTIONS == ("A", "B", "C", "D", "E", "F", "G", "H1", "H2", "I", "J", "K")
    assert default_validator().terminology.value_set(value_set("ehcp-section")).members[codes.SECTION_SYSTEM] \
        == codes.ALL_SECTIONS
    assert value_set_codes("ehcp-section", codes.SECTION_SYSTEM) == codes.SECTIONS  # whole CodeSystem include


def test_codes_named_in_python_exist_in_the_shipped_code_systems():
    assert set(codes.CONSENT_ACTIONS) == set(code_system_codes("ehcp-consent-action"))
    assert set(codes.ACTOR_ROLES) == set(code_system_codes("ehcp-actor-role"))
    assert codes.FAMILY_CONTRIBUTE_SECTIONS <= codes.ALL_SECTIONS


def test_unreadable_terminology_is_an_error():
    with pytest.raises(TerminologyError):
        value_set_codes("no-such-value-set", codes.SECTION_SYSTEM)
