"""Which part of the plan a resource belongs to, so consent can be applied per section.

The plan's sections are those of SEND Regulations 2014, reg 12 (DESIGN.md "FHIR mapping").
Resources outside the sections get a pseudo-section saying who may see them.
"""

from __future__ import annotations

from collections.abc import Mapping

from consent import codes

RECORD = "record"          # Patient, RelatedPerson: anyone permitted any section
GOVERNANCE = "governance"  # Consent, Task, Provenance, AuditEvent, Subscription: family, custodian
DIRECTORY = "directory"    # Organization, Practitioner, PractitionerRole: any authenticated reader
PLAN = "plan"              # Composition: visible when any section is, its sections filtered
PSEUDO_SECTIONS = (RECORD, GOVERNANCE, DIRECTORY, PLAN)

_FIXED = {
    "Patient": RECORD, "RelatedPerson": RECORD,
    "Consent": GOVERNANCE, "Task": GOVERNANCE, "Provenance": GOVERNANCE,
    "AuditEvent": GOVERNANCE, "Subscription": GOVERNANCE,
    "Organization": DIRECTORY, "Practitioner": DIRECTORY, "PractitionerRole": DIRECTORY,
    "Composition": PLAN,
    "Goal": "E",
}
# (allowed sections, default) for types whose section is carried in `category`. The allowed
# sections are the shipped ValueSets the profiles bind `category` to (ehcp-need-section,
# ehcp-provision-section, ehcp-advice-section); the default is where an uncategorised
# resource is filed: the first need section (B), special educational provision (F), advice (K).
_CATEGORISED: dict[str, tuple[frozenset[str], str]] = {
    "Condition": (codes.NEED_SECTIONS, "B"),
    "CarePlan": (codes.PROVISION_SECTIONS, "F"),
    "ServiceRequest": (codes.PROVISION_SECTIONS, "F"),
    "DocumentReference": (codes.ADVICE_SECTIONS, "K"),
}
if not all(default in allowed for allowed, default in _CATEGORISED.values()):
    raise ValueError("a shipped section ValueSet no longer holds the default section of its type")


def _category_sections(resource: Mapping) -> list[str]:
    categories = resource.get("category")
    if isinstance(categories, Mapping):  # tolerate a single CodeableConcept
        categories = [categories]
    found = []
    for concept in categories if isinstance(categories, list) else []:
        for coding in (concept.get("coding") if isinstance(concept, Mapping) else None) or []:
            if isinstance(coding, Mapping) and coding.get("system") == codes.SECTION_SYSTEM:
                found.append(coding.get("code"))
    return found


def section_of(resource: Mapping) -> str:
    """The section code (A..K) or pseudo-section a resource belongs to.

    The first section coding valid for the type wins; an invalid one falls back to the type's
    default (the profile validator refuses such resources on write). Binary carries no
    category, so the API sets `_section` from its DocumentReference; unknown resource types
    are "governance" so nothing new is shared by accident.
    """
    kind = resource.get("resourceType")
    if kind in _FIXED:
        return _FIXED[kind]
    if kind == "DocumentReference" and _is_consent_form(resource):
        return GOVERNANCE
    if kind in _CATEGORISED:
        allowed, default = _CATEGORISED[kind]
        return next((s for s in _category_sections(resource) if s in allowed), default)
    if kind == "Binary":
        hint = resource.get("_section")
        return hint if hint in codes.ALL_SECTIONS else "K"
    return GOVERNANCE


def _is_consent_form(document: Mapping) -> bool:
    """A family's signed consent form (type LOINC 59284-0): governance, not plan content, even
    when it also names a section."""
    kind = document.get("type")
    codings = kind.get("coding") if isinstance(kind, Mapping) else None
    if not isinstance(codings, list):
        return False
    return any(isinstance(c, Mapping) and (c.get("system"), c.get("code")) == codes.CONSENT_FORM_TYPE
               for c in codings)


def composition_section_code(section: Mapping) -> str | None:
    """The ehcp-section code of one Composition.section, or None when it carries none."""
    code = section.get("code")
    for coding in (code.get("coding") if isinstance(code, Mapping) else None) or []:
        if isinstance(coding, Mapping) and coding.get("system") == codes.SECTION_SYSTEM:
            value = coding.get("code")
            if value in codes.ALL_SECTIONS:
                return value
    return None


def binary_section(context_section: str | None) -> str:
    """The section a Binary is shown under: its document's section (A photo, K advice), or
    governance (family and custodian only) when its securityContext is not sectioned content
    (the Composition, the Patient, a RelatedPerson, a proposal), so a file never reaches
    someone just because they may see one section of the plan."""
    return context_section if context_section in codes.ALL_SECTIONS else GOVERNANCE
