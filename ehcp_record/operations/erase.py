"""`Patient/{id}/$erase`: the custodian LA ends a record at the end of its retention.

Crypto-shredding (docs/encryption.md): the scoped store decides (custodian only), the store
destroys the record's data key, and from then on every version, document and medium answers
410 Gone. The reason is required and kept, in clear, in the audit chain with who and when, so
it must say why (the retention schedule, a court order), not repeat the child's details.
"""

from __future__ import annotations

from dataclasses import dataclass

from ehcp_record.access.scoped import ScopedStore
from ehcp_record.errors import invalid
from ehcp_record.fhir.parameters import parameters, read_parameters
from ehcp_record.workflow.retention import due_records

MAX_REASON = 500


@dataclass
class ErasureService:
    retention_years: int = 6

    def erase(self, store: ScopedStore, patient_id: str, body: object) -> dict:
        store.open_record(patient_id, "erase")  # who may erase is decided before the body is read
        reason = _reason(body)
        erasure = store.erase_record(patient_id, reason)
        return parameters(record=("reference", {"reference": f"Patient/{patient_id}"}),
                          erased=("instant", erasure["at"]), reason=("string", reason))

    def due(self, store: ScopedStore, today) -> list:
        """The caller LA's records whose retention has ended (the daily job's list)."""
        return due_records(store.retention_candidates(), self.retention_years, today)


def _reason(body: object) -> str:
    values = read_parameters(body, {"reason": "string"}, required=["reason"], strict=True)
    reason = str(values["reason"]).strip()
    if not reason or len(reason) > MAX_REASON:
        raise invalid(f"reason must be 1 to {MAX_REASON} characters", "invalid", ["Parameters.parameter"])
    return reason
