"""`Patient/{id}/$everything`: the whole record, as far as the caller may see it.

Like Medplum's `patienteverything.ts`, no access logic here: the scoped store decides, redacts
and audits; this module only orders the result (the Patient first).
"""

from __future__ import annotations

from dataclasses import dataclass

from ehcp_record.access.scoped import ScopedStore

MAX_RESOURCES = 5000


@dataclass
class EverythingService:
    def everything(self, store: ScopedStore, patient_id: str) -> list[dict]:
        shown = store.everything(patient_id, MAX_RESOURCES)
        shown.sort(key=lambda item: (item[0].type != "Patient", item[0].type, item[0].id))
        return [resource for _, resource in shown]
