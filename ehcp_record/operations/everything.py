"""`Patient/{id}/$everything`: the whole record, as far as the caller may see it."""

from __future__ import annotations

from dataclasses import dataclass

from consent import redaction
from ehcp_record.audit import entries as audit
from ehcp_record.access.caller import Caller
from ehcp_record.errors import not_found
from ehcp_record.access.scoped import RecordService

MAX_RESOURCES = 5000


@dataclass
class EverythingService:
    records: RecordService

    def everything(self, caller: Caller, patient_id: str) -> list[dict]:
        access = self.records.access
        access.require_scope(caller, "Patient", "r")
        access.confine_to_launch_patient(caller, "Patient", "r", patient_id)
        if self.records.repo.read("Patient", patient_id) is None:
            raise not_found(f"Patient/{patient_id}")
        decision = access.require(caller, "read", patient_id)
        versions = [v for v in self.records.repo.current_of_record(patient_id)[:MAX_RESOURCES]
                    if caller.scopes.allows(v.type, "r")]
        shown = []
        for version in versions:
            resource = redaction.redact(version.resource, decision, section=version.section)
            if resource is not None:
                shown.append((version, resource))
        if not any(version.type == "Patient" for version, _ in shown):
            raise not_found(f"Patient/{patient_id}")  # sees nothing of the child: not known to exist
        shown.sort(key=lambda item: (item[0].type != "Patient", item[0].type, item[0].id))
        self.records.repo.append_audit(
            audit.for_versions(caller, "export", [v for v, _ in shown], self.records.clock(), decision.consent_ids, "$everything"))
        return [resource for _, resource in shown]
