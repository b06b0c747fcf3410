"""The record service: FHIR interactions with the record's rules applied on every path.

HTTP -> api (parse, authenticate) -> here (load, consent decision, custody, parental-input
gate, validation) -> repository (one transaction: version + history + audit) -> api.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Protocol

from consent.sections import section_of
from ehcp_record.audit import entries as audit
from ehcp_record.audit import chain as audit_chain
from ehcp_record.workflow import task_clocks
from ehcp_record.access import write_rules
from ehcp_record.access.policy import AccessPolicy
from ehcp_record.access.compartment import Compartment
from ehcp_record.access.caller import Caller
from ehcp_record.errors import FhirError, invalid, not_found, precondition_failed, precondition_required, unprocessable
from ehcp_record.fhir.dates import instant
from ehcp_record.fhir.model import STORED_TYPES, parse_resource, ref_key
from ehcp_record.fhir.identifiers import identifier_problems
from ehcp_record.store.repository import AuditAppend, Repository, Version, VersionWrite, utc_now
from ehcp_record.fhir.search import SearchQuery, SearchRegistry, parse_search

_ID_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.")


class WriteGate(Protocol):
    """Checks a direct write against the parental-input gate (issued plans change only by $issue)."""

    def check_direct_write(self, write: VersionWrite) -> None: ...


class SubscriptionHooks(Protocol):
    def prepare_subscription(self, caller: Caller, resource: dict, current: Version | None) -> dict: ...

    def after_commit(self, versions: list[Version]) -> None: ...


class ResourceValidator(Protocol):
    def check(self, resource: dict) -> None: ...

    def check_plan(self, composition: dict, resources: dict) -> None: ...


@dataclass
class PreparedWrite:
    write: VersionWrite
    record_change: dict | None
    operation: str
    consent_ids: tuple[str, ...]
    created: bool
    caller: Caller

    def audit_entry(self, at: datetime) -> AuditAppend:
        action = "create" if self.created else "update"
        entry = audit.body(self.caller, action, "permit", at, self.operation,
                           [audit.version_ref(version_of(self.write))], self.consent_ids)
        return AuditAppend(audit.chain_of(self.write.record), entry)


@dataclass
class SearchResult:
    total: int
    matches: list[dict]
    included: list[dict]
    query: SearchQuery


@dataclass
class RecordService:
    repo: Repository
    registry: SearchRegistry
    compartment: Compartment
    access: AccessPolicy
    validator: ResourceValidator | None = None
    gate: WriteGate | None = None
    clock: Callable[[], datetime] = utc_now
    subscriptions: SubscriptionHooks | None = None

    # --- reads --------------------------------------------------------------------------

    def read(self, caller: Caller, resource_type: str, resource_id: str) -> tuple[Version, dict]:
        return self._read_one(caller, resource_type, self.repo.read(resource_type, resource_id), "read",
                              f"{resource_type}/{resource_id}")

    def vread(self, caller: Caller, resource_type: str, resource_id: str, vid: str) -> tuple[Version, dict]:
        if not vid.isdigit() or len(vid) > 9:
            raise not_found(f"{resource_type}/{resource_id}/_history/{vid[:12]}")
        version = self.repo.read_version(resource_type, resource_id, int(vid))
        return self._read_one(caller, resource_type, version, "vread", f"{resource_type}/{resource_id}/_history/{vid}")

    def _read_one(self, caller: Caller, resource_type: str, version: Version | None, action: str,
                  label: str) -> tuple[Version, dict]:
        version, shown, consent_ids = self._visible_or_404(caller, resource_type, version, action, label)
        self.repo.append_audit(audit.for_versions(caller, action, [version], self.clock(), consent_ids))
        return version, shown

    def _visible_or_404(self, caller: Caller, resource_type: str, version: Version | None, action: str,
                        label: str) -> tuple[Version, dict, tuple[str, ...]]:
        """The one check of a single resource: scope, launch patient, consent; a refusal is
        audited and answered 404, so nobody learns that a hidden resource exists."""
        self.access.require_scope(caller, resource_type, "r")
        if version is None:
            raise not_found(label)
        self.access.confine_to_launch_patient(caller, resource_type, "r", version.record)
        shown, decision = self.access.visible(caller, version)
        consent_ids = decision.consent_ids if decision else ()
        if shown is None:
            reason = decision.reasons[0] if decision and decision.reasons else "not visible to this caller"
            self.repo.append_audit([audit.refusal(caller, action, version.record, self.clock(), reason, label, consent_ids)])
            raise not_found(label)
        return version, shown, consent_ids

    def history(self, caller: Caller, resource_type: str, resource_id: str, offset: int, count: int
                ) -> tuple[int, list[tuple[Version, dict]]]:
        label = f"{resource_type}/{resource_id}"
        self._visible_or_404(caller, resource_type, self.repo.read(resource_type, resource_id), "history", label)
        total, versions = self.repo.history_of(resource_type, resource_id, offset, count)
        shown = self._shown(caller, versions)
        self.repo.append_audit(audit.for_versions(caller, "history", [v for v, _ in shown], self.clock()))
        return total, shown

    def search(self, caller: Caller, resource_type: str, pairs: list[tuple[str, str]]) -> SearchResult:
        self.access.require_scope(caller, resource_type, "s")
        query = parse_search(self.registry, resource_type, pairs)
        visibility = self.access.search_visibility(caller, query.patient_filter)
        total, versions = self.repo.search(query, visibility)
        matches = self._shown(caller, versions)
        included = self._included(caller, query, versions)
        self.repo.append_audit(audit.for_versions(caller, "search", versions + [v for v, _ in included], self.clock()))
        return SearchResult(total, [m for _, m in matches], [r for _, r in included], query)

    def _shown(self, caller: Caller, versions: list[Version]) -> list[tuple[Version, dict]]:
        shown = []
        for version in versions:
            visible, _ = self.access.visible(caller, version)
            if visible is not None:
                shown.append((version, visible))
        return shown

    def _included(self, caller: Caller, query: SearchQuery, versions: list[Version]) -> list[tuple[Version, dict]]:
        refs: list[str] = []
        for include in query.includes:
            param = self.registry.get(include.source_type, include.param)
            for version in versions:
                for ref in (param.evaluate(version.resource) if param else []):
                    target = ref.get("reference", "") if isinstance(ref, dict) else ""
                    if "/" in target and (include.target_type is None or target.startswith(include.target_type + "/")):
                        refs.append(ref_key(target))
        own = {f"{v.type}/{v.id}" for v in versions}
        wanted = [r for r in dict.fromkeys(refs) if r not in own]
        found = self.repo.read_many(wanted)
        return self._shown(caller, [found[r] for r in wanted if r in found and self._scope_ok(caller, found[r])])

    def _scope_ok(self, caller: Caller, version: Version) -> bool:
        return caller.scopes.allows(version.type, "r")

    # --- writes -------------------------------------------------------------------------

    def create(self, caller: Caller, body: object, resource_type: str, if_none_exist: str | None = None
               ) -> tuple[Version, bool]:
        resource = parse_resource(body, resource_type)
        if if_none_exist:
            existing = self.conditional_match(caller, resource_type, if_none_exist)
            if existing is not None:
                return existing, False
        prepared = self.prepare(caller, resource, str(uuid.uuid4()), expected=None)
        self.commit([prepared])
        return version_of(prepared.write), True

    def update(self, caller: Caller, body: object, resource_type: str, resource_id: str,
               if_match: int | None) -> tuple[Version, bool]:
        resource = parse_resource(body, resource_type)
        if resource.get("id") != resource_id:
            raise invalid(f"the resource id '{resource.get('id')}' does not match the URL id '{resource_id}'",
                          "invalid", [f"{resource_type}.id"])
        prepared = self.prepare_put(caller, resource, resource_id, if_match)
        self.commit([prepared])
        return version_of(prepared.write), prepared.created

    def prepare_put(self, caller: Caller, resource: dict, resource_id: str, if_match: int | None,
                    pending: dict[str, str | None] | None = None, through_issue: bool = False,
                    extra: dict | None = None) -> PreparedWrite:
        """PUT: update with a mandatory If-Match, or create at a client-chosen id."""
        resource_type = resource["resourceType"]
        current = self.repo.read(resource_type, resource_id)
        if current is None:
            if if_match is not None:
                raise not_found(f"{resource_type}/{resource_id}")
            return self.prepare(caller, resource, resource_id, expected=None, pending=pending,
                                through_issue=through_issue, extra=extra)
        if if_match is None and through_issue:
            if_match = current.vid
        if if_match is None:
            raise precondition_required("updates need If-Match: W/\"<versionId>\" (read the resource first)")
        return self.prepare(caller, resource, resource_id, expected=if_match, current=current, pending=pending,
                            through_issue=through_issue, extra=extra)

    def conditional_match(self, caller: Caller, resource_type: str, criteria: str) -> Version | None:
        pairs = _parse_query_string(criteria)
        query = parse_search(self.registry, resource_type, pairs + [("_count", "2")])
        visibility = self.access.search_visibility(caller, query.patient_filter)
        total, versions = self.repo.search(query, visibility)
        if total > 1:
            raise precondition_failed(f"If-None-Exist matched {total} {resource_type} resources; it must match at most one")
        return versions[0] if versions else None

    def prepare(self, caller: Caller, resource: dict, resource_id: str, expected: int | None,
                current: Version | None = None, pending: dict[str, str | None] | None = None,
                through_issue: bool = False, authorized: str | None = None,
                extra: dict | None = None) -> PreparedWrite:
        """Validate, authorise and build one version; nothing is stored yet.

        Every write path (create, update, transaction, batch, operations) comes through here,
        so validation, custody, consent and the parental-input gate cannot be skipped; only
        `$issue` passes `through_issue`, after checking the family's response.
        """
        resource_type = resource["resourceType"]
        if resource_type not in STORED_TYPES:
            raise FhirError(405, "not-supported", f"{resource_type} is written by the server, not by clients")
        _check_id(resource_id)
        if resource_type == "Patient" and resource_id == audit.DIRECTORY_CHAIN:
            raise invalid(f"'{resource_id}' is reserved")
        resource = task_clocks.apply(copy.deepcopy(resource)) if resource_type == "Task" else copy.deepcopy(resource)
        resource["id"] = resource_id
        self._check_identifiers(resource)
        if expected is not None and current is not None and current.vid != expected:
            raise precondition_failed(f"{resource_type}/{resource_id} is at version {current.vid}, not {expected}")
        record = self.compartment.record_of(resource, lambda ref: self._record_lookup(ref, pending or {}))
        if resource_type == "Binary" and "_section" not in resource:
            resource["_section"] = self._section_of_security_context(resource, pending or {})
        if current is not None:
            write_rules.check_record_unchanged(resource_type, current.record, record)
        new_record = record is not None and (pending or {}).get(f"Patient/{record}") == record
        decision = (write_rules.WriteDecision(authorized) if authorized else
                    write_rules.authorize_write(self.access, caller, resource, record, current is None, new_record))
        if resource_type == "Subscription" and self.subscriptions is not None:
            resource["status"] = "active"  # R4: the server activates what it accepts
            extra = {**(extra or {}), **self.subscriptions.prepare_subscription(caller, resource, current)}
        if self.validator is not None:
            self.validator.check(resource)
        write = self._build(resource, record, expected, current)
        write.extra.update(extra or {})
        if self.gate is not None and not through_issue:
            self.gate.check_direct_write(write)
        change = write_rules.record_changes(resource, record, current is None, caller) if record else None
        return PreparedWrite(write, change, decision.operation, decision.consent_ids, current is None, caller)

    def _check_identifiers(self, resource: dict) -> None:
        problems = identifier_problems(resource)
        if problems:
            path, reason = problems[0]
            raise unprocessable(reason, "value", [path])

    def _build(self, resource: dict, record: str | None, expected: int | None, current: Version | None) -> VersionWrite:
        vid = (current.vid + 1) if current is not None else 1
        now = self.clock()
        resource["meta"] = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
        resource["meta"].update({"versionId": str(vid), "lastUpdated": instant(now)})
        section = resource.pop("_section", None) or section_of(resource)
        return VersionWrite(
            type=resource["resourceType"], id=resource["id"], vid=vid, updated=now, resource=resource,
            record=record, section=section, index=self.registry.index(resource),
            hash=audit_chain.content_hash(resource), expected=expected if current is not None else None,
            extra=_extra_fields(resource),
        )

    def _section_of_security_context(self, binary: dict, pending: dict[str, str | None]) -> str:
        """A Binary is shown to whoever may see the section of the document it belongs to."""
        target = (binary.get("securityContext") or {}).get("reference", "")
        resource_type, _, resource_id = target.partition("/")
        version = self.repo.read(resource_type, resource_id) if resource_type and resource_id else None
        return (version.section if version else None) or "governance"

    def _record_lookup(self, reference: str, pending: dict[str, str | None]) -> str | None:
        """The record a referenced resource belongs to, seeing earlier entries of a Bundle."""
        if reference in pending:
            return pending[reference]
        resource_type, _, resource_id = reference.partition("/")
        if resource_type == "Patient":
            return resource_id if self.repo.read("Patient", resource_id) else None
        version = self.repo.read(resource_type, resource_id)
        return version.record if version else None

    def commit(self, prepared: list[PreparedWrite], extra_audit: list[AuditAppend] | None = None,
               record_updates: list[tuple[str, dict]] | None = None) -> None:
        """One transaction for all the versions, their custody changes and audit entries."""
        now = self.clock()
        updates = [(p.write.record, p.record_change) for p in prepared if p.record_change and p.write.record]
        updates += list(record_updates or [])
        audits = [p.audit_entry(now) for p in prepared] + list(extra_audit or [])
        self.repo.commit([p.write for p in prepared], audits, updates)
        if self.subscriptions is not None:
            self.subscriptions.after_commit([version_of(p.write) for p in prepared])


def version_of(write: VersionWrite) -> Version:
    return Version(write.type, write.id, write.vid, write.updated, write.resource, write.record,
                   write.section, write.hash)


def _extra_fields(resource: dict) -> dict:
    """Denormalised fields some queries need (who a consent names), computed once at write."""
    if resource["resourceType"] != "Consent":
        return {}
    from consent.model import parse_grant
    grant = parse_grant(resource)
    recipients = [r for r in (grant.recipient_org, f"role:{grant.recipient_role}" if grant.recipient_role else None) if r]
    return {"recipients": recipients}


def _check_id(resource_id: str) -> None:
    """FHIR ids: [A-Za-z0-9\\-\\.]{1,64} (R4 datatypes §2.24.0.1 id)."""
    if not resource_id or len(resource_id) > 64 or not set(resource_id) <= _ID_CHARS:
        raise invalid(f"'{resource_id[:70]}' is not a valid FHIR id (letters, digits, '-' and '.', up to 64)")


def _parse_query_string(text: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl
    text = text.split("?", 1)[1] if "?" in text else text
    try:
        return parse_qsl(text, keep_blank_values=True, strict_parsing=True, max_num_fields=50)
    except ValueError:
        raise invalid("If-None-Exist must be a search query string such as identifier=system|value") from None
