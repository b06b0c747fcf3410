"""The access policy: the one place every read and write path asks who may do what.

Like Medplum's AccessPolicy applied inside the repository and HAPI's IConsentService asked on
every path, no endpoint can forget the check: the record service calls this module for reads,
vreads, history, searches (results, totals, includes), operations and writes. Decisions come
from the pure engine in `consent/`; this module only gathers what the engine needs (custody
state, consents) from the repository.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Callable, Iterator

from consent import engine, redaction
from consent.model import Decision, Grant, RecordState, parse_grant
from ehcp_record.access.caller import Caller, owner_key
from ehcp_record.errors import FhirError, forbidden, not_found
from ehcp_record.store.repository import Repository, Version, Visibility

Clock = Callable[[], datetime]
_INTERACTION_WORDS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class AccessPolicy:
    repo: Repository
    clock: Clock = _utc_now

    # --- scopes (the outer fence) -------------------------------------------------------

    def require_scope(self, caller: Caller, resource_type: str, interaction: str) -> None:
        if not caller.scopes.allows(resource_type, interaction):
            raise forbidden(
                f"the token's scopes do not allow {_INTERACTION_WORDS.get(interaction, interaction)} of {resource_type}"
            )

    def confine_to_launch_patient(self, caller: Caller, resource_type: str, interaction: str, record: str | None) -> None:
        """A `patient/` scope reaches only the token's own patient's record (SMART v2)."""
        if record is None or not caller.scopes.patient_only(resource_type, interaction):
            return
        if caller.actor.patient not in (record, f"Patient/{record}"):
            raise not_found(f"{resource_type} in that record")

    # --- record state and decisions -----------------------------------------------------

    def record_state(self, record: str) -> RecordState | None:
        doc = self.repo.record_state(record)
        if doc is None:
            return None
        birth = doc.get("birth_date")
        return RecordState(
            record_id=record, custodian=doc.get("custodian"),
            birth_date=date.fromisoformat(birth) if birth else None,
            parents=frozenset(doc.get("parents", ())), lacks_capacity=bool(doc.get("lacks_capacity")),
            representative=doc.get("representative"), transferred_out=bool(doc.get("transferred_out")),
            former_custodians=frozenset(doc.get("former_custodians", ())),
        )

    def grants(self, record: str) -> list[Grant]:
        return [parse_grant(v.resource) for v in self.repo.consents_of_record(record)]

    def _lazy_grants(self, record: str) -> Iterator[Grant]:
        """The record's consents, read from the database only if the engine asks for them."""
        yield from self.grants(record)

    def decide(self, caller: Caller, operation: str, record: str) -> Decision:
        """The engine's decision for this caller, operation and record, at this instant."""
        state = self.record_state(record)
        if state is None:
            return Decision(permit=False, reasons=("the record does not exist",))
        return engine.decide(caller.actor, operation, state, self._lazy_grants(record), self.clock())

    def require(self, caller: Caller, operation: str, record: str, hide: bool = True) -> Decision:
        """Permit or raise: 404 when the caller may not know the record exists, else 403."""
        decision = self.decide(caller, operation, record)
        if decision.permit:
            return decision
        if hide and not self.decide(caller, "read", record).permit:
            raise not_found("the record")
        raise FhirError(403, "forbidden", _first_reason(decision, operation))

    # --- reads --------------------------------------------------------------------------

    def visible(self, caller: Caller, version: Version) -> tuple[dict | None, Decision | None]:
        """The resource as this caller may see it (redacted), or None when hidden."""
        if version.type == "Subscription":
            mine = version.owner is not None and version.owner == owner_key(caller)
            return (version.resource if mine else None), None
        if version.record is None:
            return version.resource, None
        decision = self.decide(caller, "read", version.record)
        if not decision.permit:
            return None, decision
        shown = redaction.redact(version.resource, decision, section=version.section)
        if shown is not None and version.type == "Consent":
            shown = self._flag_for_confirmation(shown, version.record)
        return shown, decision

    def _flag_for_confirmation(self, consent: dict, record: str) -> dict:
        """After the 16+ handover, the family's view of a parent's consent says it needs the
        young person's confirmation (the view only; the stored version is unchanged)."""
        state = self.record_state(record)
        flag = engine.confirmation_flag(parse_grant(consent), state, self.clock().date()) if state else None
        if flag is None:
            return consent
        meta = dict(consent.get("meta") or {})
        meta["tag"] = [t for t in meta.get("tag", []) if t.get("code") != flag["code"]] + [flag]
        return dict(consent, meta=meta)

    def search_visibility(self, caller: Caller, records: tuple[str, ...]) -> Visibility:
        """Per-record section lists, so the database counts only what the caller may see."""
        actor = caller.actor
        candidates = list(records) if records else self._candidate_records(caller)
        per_record: dict[str, frozenset[str] | None] = {}
        for record in candidates:
            decision = self.decide(caller, "read", record)
            if decision.permit:
                per_record[record] = redaction.visible_sections(decision)
        if caller.scopes.patient_only("Patient", "s") and actor.patient:
            own = actor.patient.removeprefix("Patient/")
            per_record = {r: s for r, s in per_record.items() if r == own}
        return Visibility(everything=False, per_record=per_record, directory=True, owner=owner_key(caller))

    def _candidate_records(self, caller: Caller) -> list[str]:
        actor = caller.actor
        found: set[str] = set()
        if actor.organization:
            found.update(self.repo.records_in_custody_of(actor.organization))
        if actor.fhir_user:
            found.update(self.repo.records_of_parent(actor.fhir_user))
            if actor.fhir_user.startswith("Patient/"):
                found.add(actor.fhir_user.removeprefix("Patient/"))
        if actor.patient:
            found.add(actor.patient.removeprefix("Patient/"))
        recipients = [f"role:{actor.role}"] + ([actor.organization] if actor.organization else [])
        found.update(v.record for v in self.repo.consents_naming(recipients) if v.record)
        return sorted(found)


def _first_reason(decision: Decision, operation: str) -> str:
    if decision.reasons:
        return decision.reasons[0]
    return f"you may not {operation} in this record"
