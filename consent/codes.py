"""Canonical URLs and codes the consent engine reads from FHIR resources.

Everything lives under the one project base (docs: API.md "Canonical URLs"). Sections follow
SEND Regulations 2014, reg 12 (each section "must be separately identified").
"""

from __future__ import annotations

from consent.terminology import code_system_codes, value_set_codes

BASE = "http://ehcp-record.example.org/fhir"

SECTION_SYSTEM = BASE + "/CodeSystem/ehcp-section"
# The sections, in plan order, from profiles/CodeSystem/ehcp-section.json.
SECTIONS: tuple[str, ...] = code_system_codes("ehcp-section")
ALL_SECTIONS: frozenset[str] = frozenset(SECTIONS)
# The sections each kind of plan content may be filed under, from the shipped ValueSets.
NEED_SECTIONS: frozenset[str] = frozenset(value_set_codes("ehcp-need-section", SECTION_SYSTEM))
PROVISION_SECTIONS: frozenset[str] = frozenset(value_set_codes("ehcp-provision-section", SECTION_SYSTEM))
ADVICE_SECTIONS: frozenset[str] = frozenset(value_set_codes("ehcp-advice-section", SECTION_SYSTEM))

CONSENT_ACTION_SYSTEM = BASE + "/CodeSystem/ehcp-consent-action"
ACTION_READ = "read"
ACTION_CONTRIBUTE = "contribute"
CONSENT_ACTIONS: tuple[str, ...] = (ACTION_READ, ACTION_CONTRIBUTE)

ACTOR_ROLE_SYSTEM = BASE + "/CodeSystem/ehcp-actor-role"
ROLE_PARENT = "parent"
ROLE_YOUNG_PERSON = "young-person"
ROLE_LA = "la"
ROLE_SCHOOL = "school"
ROLE_HEALTH = "health"
ROLE_SOCIAL_CARE = "social-care"
ROLE_AUDITOR = "auditor"
ROLE_SYSTEM = "system"
ACTOR_ROLES: tuple[str, ...] = (
    ROLE_PARENT, ROLE_YOUNG_PERSON, ROLE_LA, ROLE_SCHOOL, ROLE_HEALTH, ROLE_SOCIAL_CARE,
    ROLE_AUDITOR, ROLE_SYSTEM,
)
# Which roles a Consent may name as a role-wide recipient is profile data:
# profiles/ValueSet/ehcp-grantable-role.json, applied by the ehcp-consent profile.

EXT_CONFIRMED_BY = BASE + "/StructureDefinition/ehcp-consent-confirmed-by"
EXT_LAPSE_DATE = BASE + "/StructureDefinition/ehcp-consent-lapse-date"

# A DocumentReference of this type (LOINC 59284-0 "Patient Consent") holds a family's signed
# consent form, the evidence for a consent someone else recorded (consent.evidence): it is
# governance, seen by the family and the custodian only, never filed under a plan section.
CONSENT_FORM_TYPE = ("http://loinc.org", "59284-0")

# Operations decide() answers, in the order HAPI's IConsentService asks about them.
OP_READ = "read"
OP_CONTRIBUTE = "contribute"
OP_WRITE = "write"
OP_MANAGE_CONSENT = "manage-consent"
OP_RESPOND = "respond"
OP_TRANSFER = "transfer"
OP_AUDIT_LOG = "audit-log"
OP_ERASE = "erase"  # crypto-shred the record at the end of retention (docs/encryption.md)
OPERATIONS: tuple[str, ...] = (
    OP_READ, OP_CONTRIBUTE, OP_WRITE, OP_MANAGE_CONSENT, OP_RESPOND, OP_TRANSFER, OP_AUDIT_LOG, OP_ERASE,
)

# Sections the family may contribute to directly: their own views (A) and advice or
# information they supply (K). SEND Code of Practice 9.22-9.23, 9.46.
FAMILY_CONTRIBUTE_SECTIONS: frozenset[str] = frozenset({"A", "K"})

# HL7 v3 ObservationValue "REDACTED": the security label FHIR uses to say content was removed
# (https://hl7.org/fhir/R4/security-labels.html).
REDACTED_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
REDACTED_CODE = "REDACTED"

# Grace period after the handover in which a parent's consent still holds (days).
PARENT_CONSENT_GRACE_DAYS = 28

#: Extensions on an issued Composition that are the family's own: their recorded response to
#: the proposal (agree / disagree / comment, their words, the mediation and appeal text). Only
#: the family and the custodian LA see them, whatever sections a consent shares.
FAMILY_ONLY_EXTENSIONS: frozenset[str] = frozenset({f"{BASE}/StructureDefinition/ehcp-family-recorded-view"})
