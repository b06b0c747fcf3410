"""The one audit writer: what goes into a record's hash chain for each action.

Every action is recorded (DESIGN.md "Audit"): reads, searches (each resource returned, in the
chain of the record it came from), writes, consent decisions, refusals, transfers and exports.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Iterable

from ehcp_record.access.caller import Caller
from ehcp_record.fhir.dates import instant
from ehcp_record.store.versions import AuditAppend, Version

#: A valid FHIR id (AuditEvent ids are "<chain>-<seq>"); reserved, so no child's record can take it.
DIRECTORY_CHAIN = "ehcp-directory"


def chain_of(record: str | None) -> str:
    """Directory resources (Organization, Practitioner) share one chain of their own."""
    return record or DIRECTORY_CHAIN


def body(caller: Caller | None, action: str, outcome: str, at: datetime, reason: str = "",
         resources: Iterable[tuple[str, str | None]] = (), consent_ids: Iterable[str] = (),
         **details: object) -> dict:
    entry = {
        "at": instant(at), "action": action, "outcome": outcome, "reason": reason,
        "agent": caller.audit_agent() if caller else {"sub": "ehcp-record", "role": "system"},
        "source": caller.audit_source() if caller else {},
        "resources": [{"ref": ref, "sha256": digest} for ref, digest in resources],
        "consent": sorted(set(consent_ids)),
    }
    entry.update({k: v for k, v in details.items() if v is not None})
    return entry


def version_ref(version: Version) -> tuple[str, str]:
    return f"{version.type}/{version.id}/_history/{version.vid}", version.hash


def for_versions(caller: Caller, action: str, versions: Iterable[Version], at: datetime,
                 consent_ids: Iterable[str] = (), reason: str = "") -> list[AuditAppend]:
    """One entry per record touched, listing that record's versions (searches span records)."""
    grouped: dict[str, list[Version]] = defaultdict(list)
    for version in versions:
        grouped[chain_of(version.record)].append(version)
    return [
        AuditAppend(chain, body(caller, action, "permit", at, reason, [version_ref(v) for v in group], consent_ids))
        for chain, group in grouped.items()
    ]


def refusal(caller: Caller, action: str, record: str | None, at: datetime, reason: str,
            target: str | None = None, consent_ids: Iterable[str] = ()) -> AuditAppend:
    resources = [(target, None)] if target else []
    return AuditAppend(chain_of(record), body(caller, action, "deny", at, reason, resources, consent_ids))
