"""The parental-input gate: issued plan content changes only through $propose -> $respond -> $issue.

SEND Regulations 2014 reg 13 (draft plan sent to the parent/young person, at least 15 days to
comment) and reg 22 (amendments proposed with evidence, at least 15 days to respond). A direct
write to an issued plan's content, by anyone and through any write path (PUT, POST, transaction,
batch, conditional), is refused here; `$issue` is the only caller allowed past.
"""

from __future__ import annotations

from dataclasses import dataclass

from ehcp_record.errors import business_rule
from ehcp_record.repository import Repository, VersionWrite

ISSUED_STATUSES = frozenset({"final", "amended"})
#: Resource types that make up a plan's content (DESIGN.md "FHIR mapping of the plan").
PLAN_CONTENT_TYPES = frozenset({"Composition", "Condition", "Goal", "CarePlan"})


@dataclass
class ParentalInputGate:
    repo: Repository

    def check_direct_write(self, write: VersionWrite) -> None:
        if write.record is None:
            return
        if write.type in PLAN_CONTENT_TYPES and self.record_has_issued_plan(write.record):
            raise _refusal(write.type)
        if write.type == "DocumentReference" and self._cited_by_issued_plan(write):
            raise _refusal(write.type)

    def record_has_issued_plan(self, record: str) -> bool:
        return any(is_issued(v.resource) for v in self.repo.current_of_type(record, "Composition"))

    def _cited_by_issued_plan(self, write: VersionWrite) -> bool:
        target = f"DocumentReference/{write.id}"
        for version in self.repo.current_of_type(write.record or "", "Composition"):
            if is_issued(version.resource) and target in section_entries(version.resource):
                return True
        return False


def is_issued(composition: dict) -> bool:
    return composition.get("status") in ISSUED_STATUSES


def section_entries(composition: dict) -> set[str]:
    """Every resource a plan's sections cite, nested sections included."""
    found: set[str] = set()
    stack = list(composition.get("section", []) or [])
    while stack:
        section = stack.pop()
        for entry in section.get("entry", []) or []:
            reference = entry.get("reference", "")
            found.add("/".join(reference.split("/_history/")[0].split("/")[-2:]))
        stack.extend(section.get("section", []) or [])
    return found


def _refusal(resource_type: str):
    return business_rule(
        f"this {resource_type} is part of an issued plan: changes go through $propose, the family's "
        "response and $issue (SEND Regulations 2014 reg 22)"
    )
