"""The consent engine: pure decision and redaction logic, no Flask, no Mongo, no I/O.

It answers HAPI FHIR's three consent questions as pure functions:
- may this operation start: `decide(actor, action, record, grants, now)`;
- may the caller see this resource: `may_see(resource, decision)`;
- what should the caller see of it: `redact(resource, decision)` and
  `redact_bundle_entries(resources, decision)`.
SMART scopes are checked by the API before the engine is asked (consent.scopes).
"""

from consent.engine import (
                            decide,
                            decision_makers,
                            handover_date,
                            is_custodian,
                            is_family,
                            is_former_custodian,
)
from consent.model import Actor, Decision, Grant, RecordState, grant_problems, parse_grant
from consent.redaction import may_see, redact, redact_bundle_entries, visible_sections
from consent.sections import section_of

__all__ = [
    "Actor", "Decision", "Grant", "RecordState", "decide", "decision_makers", "grant_problems",
    "handover_date", "is_custodian", "is_family", "is_former_custodian", "may_see",
    "parse_grant", "redact", "redact_bundle_entries", "section_of", "visible_sections",
]
