"""The parental-input gate: issued plan content changes only through $propose -> $respond -> $issue.

SEND Regulations 2014 reg 13 (draft plan sent to the parent/young person, at least 15 days to
comment) and reg 22 (amendments proposed with evidence, at least 15 days to respond). A direct
write to an issued plan's content, by anyone and through any write path (PUT, POST, transaction,
batch, conditional), is refused here; `$issue` is the only caller allowed past.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ehcp_record.errors import business_rule
from ehcp_record.fhir.model import ref_key
from ehcp_record.fhir.canonical import code_system
from ehcp_record.store.versions import Version, VersionWrite

CurrentOfType = Callable[[str, str], list[Version]]
Read = Callable[[str, str], "Version | None"]

ISSUED_STATUSES = frozenset({"final", "amended"})
#: Resource types that make up a plan's content (DESIGN.md "FHIR mapping of the plan").
PLAN_CONTENT_TYPES = frozenset({"Composition", "Condition", "Goal", "CarePlan"})
#: What a plan's sections may cite (needs, outcomes, provision, advice); nothing else is gated.
CITABLE_TYPES = PLAN_CONTENT_TYPES | {"DocumentReference"}
SECTION_SYSTEM = code_system("ehcp-section")
PLAN_TYPE_SYSTEM = code_system("ehcp-document-type")


@dataclass
class ParentalInputGate:
    """Asked by the scoped store for every client write; it reads through the store's lookups."""

    def check_direct_write(self, write: VersionWrite, current_of_type: CurrentOfType, read: Read) -> None:
        """Refuse any direct write that would issue a plan or change issued plan content."""
        if write.record is None or write.type not in CITABLE_TYPES:
            return  # the child's details, parents, consents and tasks are not plan content
        if write.type == "Composition" and is_plan(write.resource):
            self._check_plan_write(write, current_of_type, read)
            return
        issued = [v.resource for v in current_of_type(write.record, "Composition")
                  if is_plan(v.resource) and is_issued(v.resource)]
        if not issued:
            return
        if f"{write.type}/{write.id}" in set().union(*(section_entries(p) for p in issued)):
            raise _refusal(write.type)
        if write.type in PLAN_CONTENT_TYPES and has_section_coding(write.resource):
            raise _refusal(write.type)

    def _check_plan_write(self, write: VersionWrite, current_of_type: CurrentOfType, read: Read) -> None:
        current = read("Composition", write.id) if write.expected is not None else None
        if current is not None and is_issued(current.resource):
            raise _refusal(write.type)
        if is_issued(write.resource):
            raise business_rule("a plan becomes final or amended only through $propose, the family's response and "
                                "$issue (SEND Regulations 2014 regs 13 and 22); write drafts as preliminary")
        if any(is_plan(v.resource) and is_issued(v.resource) and v.id != write.id
               for v in current_of_type(write.record or "", "Composition")):
            raise business_rule("this child already has an issued plan; change it through $propose and $issue")


def is_issued(composition: dict) -> bool:
    return composition.get("status") in ISSUED_STATUSES


def is_plan(composition: dict) -> bool:
    """An EHCP plan (typed as one, or sectioned with EHCP section codes), not any document."""
    typed = any(c.get("system") == PLAN_TYPE_SYSTEM for c in (composition.get("type") or {}).get("coding", []))
    return typed or any(has_section_coding({"category": [s.get("code") or {}]}) for s in composition.get("section", []) or [])


def has_section_coding(resource: dict) -> bool:
    return any(c.get("system") == SECTION_SYSTEM for concept in resource.get("category", []) or []
               for c in (concept or {}).get("coding", []) or [])


def section_entries(composition: dict) -> set[str]:
    """Every resource a plan's sections cite, nested sections included."""
    found: set[str] = set()
    stack = list(composition.get("section", []) or [])
    while stack:
        section = stack.pop()
        for entry in section.get("entry", []) or []:
            reference = entry.get("reference", "")
            found.add(ref_key(reference))
        stack.extend(section.get("section", []) or [])
    return found


def _refusal(resource_type: str):
    return business_rule(
        f"this {resource_type} is part of an issued plan: changes go through $propose, the family's "
        "response and $issue (SEND Regulations 2014 reg 22)"
    )
