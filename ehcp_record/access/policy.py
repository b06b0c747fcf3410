"""The access policy for one caller during one request: scopes, launch patient, consent.

Like HAPI's IConsentService, it answers three questions (may this start, may the caller see
this resource, what should they see of it) from the pure engine in `consent/`; this module
only gathers what the engine needs. It is used by the caller-scoped store and nothing else,
so no route or operation can forget it. Decisions are cached per (record, operation) for the
request, and custody states and consents are fetched in batches: a search costs the same
few queries whatever the number of records in the caller's custody.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from consent import engine, redaction
from consent.model import Decision, Grant, RecordState, parse_grant
from ehcp_record.access.caller import Caller, owner_key
from ehcp_record.errors import FhirError
from ehcp_record.fhir.dates import parse_date
from ehcp_record.store.repository import Repository
from ehcp_record.store.versions import Version, Visibility

Clock = Callable[[], datetime]
#: Operations whose refusal says nothing at all: who looked at a record is not even known to
#: exist for those who may not see it (hidden equals missing), whatever else they may read.
_UNKNOWN_UNLESS_PERMITTED = frozenset({"read", "audit-log"})
_INTERACTION_WORDS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


class Refusal(FhirError):
    """A refusal decided by the policy: the scoped store audits it once, then it is answered.

    `record` names the chain the refusal entry goes to (None: the directory chain) and
    `reason` is what the audit says, which may be more than the caller is told.
    """

    def __init__(self, status: int, code: str, diagnostics: str, record: str | None, reason: str,
                 target: str | None = None) -> None:
        super().__init__(status, code, diagnostics)
        self.record = record
        self.reason = reason
        self.target = target
        self.audited = False


def hidden(label: str, record: str | None, reason: str) -> Refusal:
    """404 worded exactly as for a resource that does not exist (hidden equals missing)."""
    return Refusal(404, "not-found", f"{label} was not found", record, reason, label)


def denied(message: str, record: str | None, target: str | None = None) -> Refusal:
    return Refusal(403, "forbidden", message, record, message, target)


_GRANTS: dict[tuple[str, int, str], Grant] = {}
_GRANTS_MAX = 50_000


def grant_of(version: Version) -> Grant:
    """A stored Consent version as the engine's Grant. A version never changes (revoking or
    editing a consent makes a new one), so each is parsed once per process."""
    if not version.hash:
        return parse_grant(version.resource)
    key = (version.id, version.vid, version.hash)
    grant = _GRANTS.get(key)
    if grant is None:
        if len(_GRANTS) >= _GRANTS_MAX:
            _GRANTS.clear()
        grant = _GRANTS[key] = parse_grant(version.resource)
    return grant


def record_state_of(record: str, doc: dict | None) -> RecordState | None:
    if doc is None:
        return None
    birth = doc.get("birth_date")
    return RecordState(
        record_id=record, custodian=doc.get("custodian"),
        birth_date=parse_date(birth) if birth else None,
        parents=frozenset(doc.get("parents", ())), lacks_capacity=bool(doc.get("lacks_capacity")),
        representative=doc.get("representative"), transferred_out=bool(doc.get("transferred_out")),
        former_custodians=frozenset(doc.get("former_custodians", ())),
    )


@dataclass
class RequestAccess:
    """Every access decision for one caller in one request, each taken once."""

    repo: Repository
    caller: Caller
    clock: Clock
    _states: dict[str, RecordState | None] = field(default_factory=dict)
    _grants: dict[str, list[Grant]] = field(default_factory=dict)
    _decisions: dict[tuple[str, str], Decision] = field(default_factory=dict)
    _naming_grants: dict[str, list[Grant]] = field(default_factory=dict)

    # --- scopes (the outer fence) -------------------------------------------------------

    def scope_allows(self, resource_type: str, interaction: str) -> bool:
        return self.caller.scopes.allows(resource_type, interaction)

    def scope_refusal(self, resource_type: str, interaction: str, record: str | None, target: str | None) -> Refusal:
        word = _INTERACTION_WORDS.get(interaction, interaction)
        return denied(f"the token's scopes do not allow {word} of {resource_type}", record, target)

    def outside_launch_patient(self, resource_type: str, interaction: str, record: str | None) -> bool:
        """A `patient/` scope reaches only the token's own patient's record (SMART v2)."""
        if record is None or not self.caller.scopes.patient_only(resource_type, interaction):
            return False
        return self.caller.actor.patient not in (record, f"Patient/{record}")

    # --- record state and decisions -----------------------------------------------------

    def prime(self, record: str, state: dict | None, consents: list[Version]) -> None:
        """Take what a read fetched with the resource, so deciding costs no further query."""
        if record not in self._states:
            self._states[record] = record_state_of(record, state)
            self._grants[record] = [grant_of(v) for v in consents]

    def prime_states(self, states: dict[str, dict | None]) -> None:
        """Custody states a search fetched with its results (their consents load on demand)."""
        for record, doc in states.items():
            self._states.setdefault(record, record_state_of(record, doc))

    def prefetch(self, records: list[str]) -> None:
        """States of many records in one query, then the consents of those decided by consent."""
        missing = [r for r in dict.fromkeys(records) if r and r not in self._states]
        if not missing:
            return
        docs = self.repo.record_states(missing)
        for record in missing:
            self._states[record] = record_state_of(record, docs.get(record))
        by_consent = [r for r in missing if self._needs_grants(r)]
        for record in [r for r in by_consent if r in self._naming_grants]:
            self._grants[record] = self._naming_grants[record]
        unknown = [r for r in by_consent if r not in self._naming_grants]
        for record, versions in self.repo.consents_of_records(unknown).items():
            self._grants[record] = [grant_of(v) for v in versions]

    def _needs_grants(self, record: str) -> bool:
        state = self._states.get(record)
        if state is None:
            return False
        actor, today = self.caller.actor, self.clock().date()
        return not (engine.is_custodian(actor, state) or engine.is_family(actor, state, today))

    def state(self, record: str) -> RecordState | None:
        if record not in self._states:
            self._states[record] = record_state_of(record, self.repo.record_state(record))
        return self._states[record]

    def _lazy_grants(self, record: str):
        """The record's consents, read from the database only if the engine asks for them."""
        if record not in self._grants:
            self._grants[record] = [grant_of(v) for v in self.repo.consents_of_record(record)]
        yield from self._grants[record]

    def decide(self, operation: str, record: str) -> Decision:
        """The engine's decision for this caller, operation and record (once per request)."""
        key = (record, operation)
        if key not in self._decisions:
            state = self.state(record)
            if state is None:
                self._decisions[key] = Decision(permit=False, reasons=("the record does not exist",))
            else:
                self._decisions[key] = engine.decide(self.caller.actor, operation, state,
                                                     self._lazy_grants(record), self.clock())
        return self._decisions[key]

    def require(self, operation: str, record: str, label: str = "the record") -> Decision:
        """Permit, or a refusal: 404 when the caller may not know the record exists, else 403."""
        decision = self.decide(operation, record)
        if decision.permit:
            return decision
        reason = first_reason(decision, operation)
        if operation in _UNKNOWN_UNLESS_PERMITTED or not self.decide("read", record).permit:
            raise hidden(label, record, reason)
        raise denied(reason, record, label if label != "the record" else None)

    def require_scope(self, resource_type: str, interaction: str, record: str | None = None,
                      target: str | None = None) -> None:
        if not self.scope_allows(resource_type, interaction):
            raise self.scope_refusal(resource_type, interaction, record, target)

    def confine_to_launch_patient(self, resource_type: str, interaction: str, record: str | None,
                                  label: str) -> None:
        if self.outside_launch_patient(resource_type, interaction, record):
            raise hidden(label, record, "outside the token's launch patient")

    # --- reads --------------------------------------------------------------------------

    def visible(self, version: Version) -> tuple[dict | None, Decision | None]:
        """The resource as this caller may see it (redacted), or None when hidden."""
        if version.type == "Subscription":
            mine = version.owner is not None and version.owner == owner_key(self.caller)
            return (version.resource if mine else None), None
        if version.record is None:
            return version.resource, None
        if version.type == "Task" and self.addressed_to_caller(version.resource):
            return version.resource, None
        decision = self.decide("read", version.record)
        if not decision.permit:
            return None, decision
        shown = redaction.redact(version.resource, decision, section=version.section)
        if shown is not None and version.type == "Consent":
            shown = self._flag_for_confirmation(shown, version.record)
        return shown, decision

    def addressed_keys(self) -> tuple[str, ...]:
        """How a Task's `owner` names this caller: its organisation or its own fhirUser."""
        actor = self.caller.actor
        return tuple(key for key in (actor.organization, actor.fhir_user) if key)

    def addressed_to_caller(self, task: dict) -> bool:
        """A Task whose owner is the caller is theirs to act on (FHIR R4 Task.owner: who is
        responsible for doing it), so they may read it without reading the record: the
        destination LA its incoming transfer before accepting it (reg 15), a school or health
        service the request for its advice (reg 6). The rest of the record stays hidden."""
        owner = task.get("owner")
        return isinstance(owner, dict) and owner.get("reference") in self.addressed_keys()

    def _flag_for_confirmation(self, consent: dict, record: str) -> dict:
        """After the 16+ handover, the family's view of a parent's consent says it needs the
        young person's confirmation (the view only; the stored version is unchanged)."""
        state = self.state(record)
        flag = engine.confirmation_flag(parse_grant(consent), state, self.clock().date()) if state else None
        if flag is None:
            return consent
        meta = dict(consent.get("meta") or {})
        meta["tag"] = [t for t in meta.get("tag", []) if t.get("code") != flag["code"]] + [flag]
        return dict(consent, meta=meta)

    def search_visibility(self, records: tuple[str, ...]) -> Visibility:
        """An indexable filter: the caller's custody as one clause, plus the few records seen
        through the family link or a consent, each with the sections it may match."""
        candidates = list(records) if records else self._linked_records()
        self.prefetch(candidates)
        per_record: dict[str, frozenset[str] | None] = {}
        granting: dict[str, tuple[str, ...]] = {}
        for record in candidates:
            decision = self.decide("read", record)
            if decision.permit:
                per_record[record] = redaction.visible_sections(decision)
                granting[record] = tuple(f"Consent/{cid}" for cid in decision.consent_ids)
        own = self._launch_patient_record()
        if own is not None:
            per_record = {r: s for r, s in per_record.items() if r == own}
        custodian = None if records or own is not None else self._searching_custodian()
        consents = tuple(ref for record in per_record for ref in granting[record])
        return Visibility(everything=False, per_record=per_record, directory=True, owner=owner_key(self.caller),
                          custodian=custodian, consents=consents, addressed=self._addressed(records, own))

    def search_candidates(self, records: tuple[str, ...]) -> Visibility:
        """A superset of what the caller may see, with no decision taken yet: custody, the
        family's records, the records named by `patient`/`subject`, and every record whose
        Consents name the caller (`shared`, kept on each document by the store: one index,
        not a list of records). The scoped store decides each match it returns, and falls
        back to `search_visibility` when that is not exact."""
        owner = owner_key(self.caller)
        own = self._launch_patient_record()
        addressed = self._addressed(records, own)
        if own is not None:
            mine = [r for r in records if r == own] if records else [own]
            return Visibility(per_record={r: None for r in mine}, owner=owner, exact=False, addressed=addressed)
        if records:
            return Visibility(per_record={r: None for r in records}, owner=owner, exact=False, addressed=addressed)
        return Visibility(per_record={r: None for r in sorted(self._family_records())}, owner=owner,
                          custodian=self._searching_custodian(), shared_with=tuple(self.recipient_keys()),
                          exact=False, addressed=addressed)

    def _addressed(self, records: tuple[str, ...], own: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The Tasks a search may match because they are addressed to the caller: (owner keys,
        records they must belong to; empty = any), within the launch patient's record when
        the token is confined to one."""
        if own is not None:
            return self.addressed_keys(), tuple(r for r in records if r == own) if records else (own,)
        return self.addressed_keys(), tuple(records)

    def _launch_patient_record(self) -> str | None:
        """The one record a `patient/` search scope confines the caller to (SMART v2), if any."""
        actor = self.caller.actor
        if self.caller.scopes.patient_only("Patient", "s") and actor.patient:
            return actor.patient.removeprefix("Patient/")
        return None

    def _searching_custodian(self) -> str | None:
        """The LA whose custody a search may match as one indexed clause."""
        actor = self.caller.actor
        return actor.organization if actor.role == "la" and actor.organization else None

    def _family_records(self) -> set[str]:
        actor = self.caller.actor
        found: set[str] = set()
        if actor.fhir_user:
            found.update(self.repo.records_of_parent(actor.fhir_user))
            if actor.fhir_user.startswith("Patient/"):
                found.add(actor.fhir_user.removeprefix("Patient/"))
        if actor.patient:
            found.add(actor.patient.removeprefix("Patient/"))
        return found

    def recipient_keys(self) -> list[str]:
        """How a Consent names this caller as recipient (`recipients` on its stored document)."""
        actor = self.caller.actor
        return [f"role:{actor.role}"] + ([actor.organization] if actor.organization else [])

    def _linked_records(self) -> list[str]:
        """Records the caller reaches other than through custody: family links and consents."""
        found = self._family_records()
        recipients = self.recipient_keys()
        # Consents only ever permit (a deny is refused on write), so for a reader who is
        # neither family nor custodian the grants that name them are all that can decide.
        # Each version is parsed once per process (`grant_of`): only unseen ones are fetched.
        naming: dict[str, list[Grant]] = {}
        unseen: list[tuple[str, str]] = []
        for record, consent_id, vid, digest in self.repo.consents_naming(recipients):
            grant = _GRANTS.get((consent_id, vid, digest)) if digest else None
            if not record:
                continue
            if grant is None:
                unseen.append((record, f"Consent/{consent_id}"))
            else:
                naming.setdefault(record, []).append(grant)
        fetched = self.repo.read_many([ref for _, ref in unseen])
        for record, ref in unseen:
            if ref in fetched:
                naming.setdefault(record, []).append(grant_of(fetched[ref]))
        self._naming_grants.update(naming)
        found.update(naming)
        return sorted(found)


def first_reason(decision: Decision, operation: str) -> str:
    if decision.reasons:
        return decision.reasons[0]
    return f"you may not {operation} in this record"
