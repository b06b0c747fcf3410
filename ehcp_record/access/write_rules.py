"""Who may write what, and the custody state a write changes.

Draft plan content is the custodian LA's to edit; schools and health services contribute advice
(DocumentReference) to the sections they were given `contribute` consent for; consents are
managed by the decision-maker or recorded by the custodian LA from paper. Issued plan content
never changes through a direct write (the parental-input gate, `ehcp_record.plan.gate`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from consent import evidence
from consent.model import grant_problems, is_sharing_grant
from consent.sections import section_of
from ehcp_record.access.policy import RequestAccess, denied
from ehcp_record.access.caller import Caller
from ehcp_record.errors import unprocessable
from ehcp_record.fhir.canonical import code_system, structure_definition

DIRECTORY_WRITERS = frozenset({"la", "system"})
CONTRIBUTABLE_TYPES = frozenset({"DocumentReference", "Binary"})
# profiles/CodeSystem/ehcp-relationship: who has parental responsibility (Children Act 1989
# s3) and who represents a young person lacking capacity (CFA 2014 s80).
RELATIONSHIP_SYSTEM = code_system("ehcp-relationship")
PARENTAL_RESPONSIBILITY = "parental-responsibility"
REPRESENTATIVE = "representative"
LACKS_CAPACITY_EXTENSION = structure_definition("ehcp-lacks-capacity")


@dataclass(frozen=True)
class WriteDecision:
    operation: str
    consent_ids: tuple[str, ...] = ()


def authorize_write(access: RequestAccess, resource: dict, record: str | None,
                    creating: bool, new_record: bool = False,
                    lookup: Callable[[str], str | None] | None = None) -> WriteDecision:
    """Refuse (403/404, audited by the scoped store) unless this caller may write this resource
    into this record.

    `new_record`: the child's Patient is created earlier in the same transaction Bundle, so the
    caller is the LA opening the record and becomes its custodian when the Bundle commits.
    `lookup`: the record a "Type/id" the caller may see belongs to (None: nothing it may see),
    for a consent's signed form.
    """
    resource_type = resource["resourceType"]
    label = f"{resource_type}/{resource.get('id')}"
    access.require_scope(resource_type, "c" if creating else "u", record, label)
    access.confine_to_launch_patient(resource_type, "c" if creating else "u", record, "the record")
    caller = access.caller
    if resource_type == "Subscription":
        return WriteDecision("subscribe")  # anyone may ask to be told of what they may see
    if record is None:
        return _directory_write(caller, resource_type)
    if (resource_type == "Patient" and creating) or new_record:
        return _new_record(caller, record)
    if resource_type == "Consent":
        return _consent_write(access, resource, record, lookup)
    if resource_type in CONTRIBUTABLE_TYPES:
        return _contribution(access, resource, record)
    decision = access.require("write", record)
    return WriteDecision("write", decision.consent_ids)


def _directory_write(caller: Caller, resource_type: str) -> WriteDecision:
    if caller.actor.role not in DIRECTORY_WRITERS:
        raise denied(f"only a local authority or a system may maintain {resource_type} directory entries", None)
    return WriteDecision("write")


def _new_record(caller: Caller, record: str) -> WriteDecision:
    """A child's record is opened by the LA that will hold it (custodian)."""
    if caller.actor.role != "la" or not caller.actor.organization:
        raise denied("only a local authority (a token with role 'la' and an organization) can open a child's record",
                     None)
    return WriteDecision("write")


def _consent_write(access: RequestAccess, resource: dict, record: str,
                   lookup: Callable[[str], str | None] | None) -> WriteDecision:
    """Consents from the family are always sharing grants and must be complete; an LA may also
    keep a plain R4 Consent (e.g. a research opt-in) on the record, which grants nothing.

    A sharing consent gets the caller as its recorder (consent.evidence): the author of the
    write, never what the body claims. A sharing consent written by anyone but the one who gives it
    carries the evidence of their decision, or is refused here (and would grant nothing if
    stored some other way).
    """
    decision = access.require("manage-consent", record)
    if access.caller.actor.role not in ("parent", "young-person") and not is_sharing_grant(resource):
        return WriteDecision("manage-consent", decision.consent_ids)  # kept as written; grants nothing
    evidence.stamp_recorder(resource, access.caller.actor)
    problems = grant_problems(resource)
    if problems:
        raise unprocessable("; ".join(problems), "business-rule", ["Consent.provision"])
    missing = evidence.missing_evidence(resource)
    if missing:
        raise unprocessable(f"this consent cannot be recorded: {missing}", "business-rule",
                            list(evidence.EVIDENCE_EXPRESSIONS))
    form = evidence.signed_form_reference(resource)
    if form is not None and lookup is not None and lookup(form) != record:
        raise unprocessable(f"Consent.sourceReference points at {form}, which is not a document of this "
                            "child's record here", "invalid", ["Consent.sourceReference"])
    return WriteDecision("manage-consent", decision.consent_ids)


def _contribution(access: RequestAccess, resource: dict, record: str) -> WriteDecision:
    if access.decide("write", record).permit:
        return WriteDecision("write")
    decision = access.require("contribute", record)
    section = resource.get("_section") or section_of(resource)
    if section not in decision.sections:
        raise denied(f"your consent does not cover contributing to section {section}", record)
    return WriteDecision("contribute", decision.consent_ids)


def record_changes(resource: dict, record: str, creating: bool, caller: Caller) -> dict | None:
    """The custody-state update a write implies (Mongo update document), if any."""
    resource_type = resource["resourceType"]
    if resource_type == "Patient":
        changes: dict = {"$set": {"birth_date": resource.get("birthDate"), "lacks_capacity": _lacks_capacity(resource)}}
        if creating:
            changes["$setOnInsert"] = {"custodian": caller.actor.organization, "parents": [], "former_custodians": []}
        return changes
    if resource_type == "RelatedPerson":
        return _related_person_changes(resource)
    return None


def _lacks_capacity(patient: dict) -> bool:
    """Recorded by the LA under the Mental Capacity Act 2005 (CFA 2014 s80, Code of Practice 8.13)."""
    return any(e.get("url") == LACKS_CAPACITY_EXTENSION and e.get("valueBoolean") is True
               for e in patient.get("extension", []) or [])


def _related_person_changes(resource: dict) -> dict:
    ref = f"RelatedPerson/{resource['id']}"
    active = resource.get("active", True)
    codes = _relationship_codes(resource) if active else set()
    changes: dict = {"$addToSet": {"parents": ref}} if PARENTAL_RESPONSIBILITY in codes else {"$pull": {"parents": ref}}
    if REPRESENTATIVE in codes:
        changes["$set"] = {"representative": ref}
    return changes


def _relationship_codes(resource: dict) -> set[str]:
    return {coding.get("code") for concept in resource.get("relationship", []) or []
            for coding in concept.get("coding", []) or [] if coding.get("system") == RELATIONSHIP_SYSTEM}


def check_record_unchanged(resource_type: str, old_record: str | None, new_record: str | None) -> None:
    if old_record != new_record:
        raise unprocessable(f"a {resource_type} cannot move from one child's record to another's", "business-rule")
