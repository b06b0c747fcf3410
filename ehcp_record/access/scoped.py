"""The caller-scoped store: the only door to a child's record.

Like Medplum's per-request `Repository`, one `ScopedStore` is made for each request from the
authenticated caller (`RecordStore.for_caller`). Routes, Bundles, operations, documents, media,
transfers, subscriptions and the audit log receive it and nothing else: the raw repository is
private to this module. Inside it, once, for every path: the scope check, launch-patient
confinement, the consent decision (cached per record for the request), redaction, the
hidden-equals-missing answer, the read audit (one batch per response) and the refusal audit
(every refusal, one entry naming the reason).

Writes come in two kinds. A client write (`prepare`, `prepare_put`, `prepare_transaction`)
is validated, authorised (`write_rules`) and checked against the parental-input gate. The
server's own writes are named methods, each with its own decision and audit action:
`prepare_proposed_content` and `prepare_issued_plan` ($issue, SEND Regulations 2014 regs 13
and 22), `record_parental_response` ($respond), `prepare_transfer_update` and
`commit_custody_move` (reg 15), `import_transfer` ($receive-transfer), `erase_record` ($erase,
the end of retention), the legal hold, and `delete_subscription` (its owner's FHIR delete).
There is no flag that switches a check off. The store below encrypts and decrypts; nothing
here knows of keys (an erased record answers 410).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator, Protocol

from consent import redaction
from consent.model import Decision
from consent.sections import binary_section, section_of
from ehcp_record.access import write_rules
from ehcp_record.access.caller import Caller
from ehcp_record.access.compartment import Compartment
from ehcp_record.access.policy import Refusal, RequestAccess, denied, hidden
from ehcp_record.audit import chain as audit_chain
from ehcp_record.audit import entries as audit
from ehcp_record.errors import (FhirError, conflict, deleted_by_owner, forbidden, invalid, not_found, precondition_failed,
                                precondition_required, too_costly, unprocessable)
from ehcp_record.fhir.dates import has_passed, instant
from ehcp_record.fhir.identifiers import (NHS_NUMBER_SYSTEM, identifier_problems, la_by_number, nhs_number_taken,
                                          nhs_numbers)
from ehcp_record.fhir.model import STORED_TYPES, parse_resource, ref_key
from ehcp_record.fhir.names import display_name
from ehcp_record.fhir.search import (MAX_CHAIN_MATCHES, MAX_REVINCLUDE, Criterion, SearchQuery, SearchRegistry,
                                     parse_search, patient_filter as _patient_filter_of)
from ehcp_record.store.media import MediaStore
from ehcp_record.store.repository import Repository
from ehcp_record.store.versions import AuditAppend, RecordContext, Version, VersionWrite, utc_now
from ehcp_record.store.transfers import TransferStore
from ehcp_record.store.versions import ImportedRecord
from ehcp_record.workflow import statutory

_ID_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.")


class WriteGate(Protocol):
    """Checks a direct write against the parental-input gate (issued plans change only by $issue)."""

    def check_direct_write(self, write: VersionWrite, current_of_type: Callable[[str, str], list[Version]],
                           read: Callable[[str, str], Version | None]) -> None: ...


class SubscriptionHooks(Protocol):
    def prepare_subscription(self, store: "ScopedStore", resource: dict, current: Version | None) -> dict: ...

    def after_commit(self, store: "RecordStore", versions: list[Version]) -> None: ...


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
class RecordStore:
    """What lives as long as the app: the repository and the rules. Hands out scoped stores."""

    repo: Repository
    registry: SearchRegistry
    compartment: Compartment
    validator: ResourceValidator | None = None
    gate: WriteGate | None = None
    clock: Callable[[], datetime] = utc_now
    subscriptions: SubscriptionHooks | None = None
    media: MediaStore | None = None
    transfers: TransferStore | None = None

    def for_caller(self, caller: Caller) -> "ScopedStore":
        return ScopedStore(self, caller)

    def for_received_transfer(self, caller: Caller, record: str) -> "ScopedStore":
        """$receive-transfer: the destination LA taking in a record whose signature, sender and
        chain were verified; it may write that record's arrival (Task completed, notice)."""
        store = ScopedStore(self, caller)
        store._arrivals.add(record)
        return store

    @property
    def signing_key(self):
        return self.repo.signing_key

    def ping(self) -> bool:
        return self.repo.ping()

    @property
    def warnings(self) -> list[str]:
        """Start-up checks of the database that did not pass (shown by /readyz)."""
        return list(self.repo.warnings)

    def close(self) -> None:
        """For tools that built their own services (`ehcp-record sen2`): close the connection."""
        self.repo.close()

    def probe_when_no_primary(self) -> None:
        from ehcp_record.store import health

        health.probe_when_no_primary(self.repo.client)

    def receipt_of(self, transfer_id: str) -> dict | None:
        """$receive-transfer idempotency: the receipt of a transfer already taken in (who sent
        which bytes, and the signed acknowledgement), read before any caller exists."""
        return self.transfers.received_ack(transfer_id) if self.transfers is not None else None

    def active_subscriptions(self, resource_types: set[str]) -> list[Version]:
        """The notifier's own question (no caller: it then asks as each subscriber)."""
        return self.repo.active_subscriptions(resource_types)

    def current_subscription(self, subscription_id: str) -> Version | None:
        """The notifier's own read of a subscription it delivers for (no caller, no audit);
        None once its owner deleted it."""
        version = self.repo.read("Subscription", subscription_id)
        return None if version is None or version.deleted else version

    def note_delivery(self, subscription: Version, delivered: bool) -> int:
        """The notifier's tally: how many notifications in a row have now failed."""
        return self.repo.note_delivery(subscription.type, subscription.id, delivered)


def audited(method: Callable) -> Callable:
    """Every refusal raised inside a public method is written to the audit once, then raised."""

    @functools.wraps(method)
    def wrapper(self: "ScopedStore", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Refusal as refusal:
            self.settle(refusal, method.__name__)
            raise

    return wrapper


class ScopedStore:
    """One caller's view of the record store for one request."""

    def __init__(self, shared: RecordStore, caller: Caller) -> None:
        self._shared = shared
        self._repo = shared.repo
        self.caller = caller
        self.registry = shared.registry
        self.clock = shared.clock
        self.validator = shared.validator
        self.access = RequestAccess(shared.repo, caller, shared.clock)
        self._arrivals: set[str] = set()  # records this request takes custody of (reg 15)
        self._instant: datetime | None = None  # one transaction's shared lastUpdated

    @property
    def signing_key(self):
        return self._repo.signing_key

    # --- audit ----------------------------------------------------------------------------

    def _audit_refusal(self, refusal: Refusal, action: str) -> None:
        entry = audit.refusal(self.caller, action, refusal.record, self.clock(), refusal.reason, refusal.target)
        self._repo.append_audit([entry])

    def _audit_permits(self, action: str, shown: list[Version], decision: Decision | None = None,
                       reason: str = "") -> None:
        consent_ids = decision.consent_ids if decision else ()
        self._repo.append_audit(audit.for_versions(self.caller, action, shown, self.clock(), consent_ids, reason))

    def audit_record(self, record: str | None, action: str, reason: str,
                     resources: list[tuple[str, str | None]] = (), consent_ids: tuple[str, ...] = (),
                     checkpoint: bool = False, outcome: str = "permit") -> None:
        """An audit entry for something an operation did in a record it was allowed into."""
        body = audit.body(self.caller, action, outcome, self.clock(), reason, list(resources), consent_ids)
        self._repo.append_audit([AuditAppend(audit.chain_of(record), body, checkpoint=checkpoint)])

    # --- single reads ---------------------------------------------------------------------

    @audited
    def read(self, resource_type: str, resource_id: str) -> tuple[Version, dict]:
        context = self._repo.read_in_context(resource_type, resource_id)
        label = f"{resource_type}/{resource_id}"
        version, shown, decision = self._visible_or_404(resource_type, context.version, label, context)
        self._audit_permits("read", [version], decision)
        return version, shown

    @audited
    def vread(self, resource_type: str, resource_id: str, vid: str) -> tuple[Version, dict]:
        label = f"{resource_type}/{resource_id}/_history/{vid[:12]}"
        if not vid.isdigit() or len(vid) > 9:
            self.access.require_scope(resource_type, "r")
            raise not_found(label)
        context = self._repo.read_in_context(resource_type, resource_id, int(vid))
        version, shown, decision = self._visible_or_404(resource_type, context.version, label, context)
        self._audit_permits("vread", [version], decision)
        return version, shown

    @audited
    def history(self, resource_type: str, resource_id: str, offset: int, count: int
                ) -> tuple[int, list[tuple[Version, dict]]]:
        context = self._repo.read_in_context(resource_type, resource_id)
        self._visible_or_404(resource_type, context.version, f"{resource_type}/{resource_id}", context, deleted=True)
        total, versions = self._repo.history_of(resource_type, resource_id, offset, count)
        shown = self._shown(versions)
        self._audit_permits("history", [v for v, _ in shown])
        return total, shown

    @audited
    def history_search(self, resource_type: str | None, since: datetime | None, offset: int, count: int
                       ) -> tuple[int, list[tuple[Version, dict]]]:
        """Type (`/fhir/Condition/_history`) or system (`/fhir/_history`) history: the versions
        of what this caller may search, each shown as it may see it now."""
        if resource_type:
            self.access.require_scope(resource_type, "s")
            types = [resource_type]
        else:  # Subscriptions are their owner's alone, so never in the system-wide history
            types = [t for t in STORED_TYPES if t != "Subscription" and self.access.scope_allows(t, "s")]
        total, versions = self._repo.history_search(types, self.access.search_visibility(()), since, offset, count)
        shown = self._shown(versions)
        self._audit_permits("history", [v for v, _ in shown])
        return total, shown

    def _visible_or_404(self, resource_type: str, version: Version | None, label: str, context: Any = None,
                        deleted: bool = False) -> tuple[Version, dict, Decision | None]:
        """The one check of a single resource: scope, launch patient, consent. A hidden
        resource is answered exactly as a missing one (and the refusal is audited). A deleted
        one (a Subscription's delete marker) is 410 Gone to whoever could see it (R4 http
        §3.1.0.7), unless `deleted` (its history, which shows the delete)."""
        record = version.record if version else None
        self.access.require_scope(resource_type, "r", record, label)
        if version is None:
            raise not_found(label)
        if record is not None and context is not None:
            self.access.prime(record, context.state, context.consents)
        self.access.confine_to_launch_patient(resource_type, "r", record, label)
        shown, decision = self.access.visible(version)
        if shown is None:
            reason = decision.reasons[0] if decision and decision.reasons else "not visible to this caller"
            raise hidden(label, record, reason)
        if version.deleted and not deleted:
            raise deleted_by_owner(label)
        return version, shown, decision

    def _shown(self, versions: list[Version]) -> list[tuple[Version, dict]]:
        self.access.prefetch([v.record for v in versions if v.record])
        shown = []
        for version in versions:
            visible, _ = self.access.visible(version)
            if visible is not None:
                shown.append((version, visible))
        return shown

    # --- searches -------------------------------------------------------------------------

    @audited
    def search(self, resource_type: str, pairs: list[tuple[str, str]], strict: bool = True) -> SearchResult:
        self.access.require_scope(resource_type, "s")
        query = parse_search(self.registry, resource_type, pairs, strict)
        self._resolve_chains(query)
        total, found, matches = self._matches(query)
        versions = [c.version for c in found if c.version is not None]
        included = self._included(query, versions) + self._revincluded(query, versions)
        self._audit_permits("search", [v for v, _ in matches + included])
        return SearchResult(total, [m for _, m in matches], [r for _, r in included], query)

    def _matches(self, query: SearchQuery) -> tuple[int, list[RecordContext], list[tuple[Version, dict]]]:
        """The page as the caller may see it, and the total.

        First one aggregate over a superset (custody, family, the records whose consents name
        the caller: `search_candidates`), each match then decided with the state and consents
        fetched with it. That is exact when the first page is not full (every candidate was seen and
        decided). A full first page, and any later page at once, is asked with the exact
        filter instead (the records seen through a consent or the family link decided first),
        so paging and `total` count only what the caller may see.
        """
        if query.summary_count or query.count == 0:  # a count alone needs the exact filter
            return self._repo.search_in_context(query, self.access.search_visibility(query.patient_filter)) + ([],)
        if query.offset == 0:  # a later page is asked exactly at once: the superset's would not do
            found = self._repo.search_in_context(query, self.access.search_candidates(query.patient_filter))[1]
            for context in found:  # the superset's page came with each record's consents
                if context.version is not None and context.version.record:
                    self.access.prime(context.version.record, context.state, context.consents)
            matches = self._shown([c.version for c in found if c.version is not None])
            if len(found) < query.count:
                return len(matches), found, matches
        total, found = self._repo.search_in_context(query, self.access.search_visibility(query.patient_filter))
        versions = [c.version for c in found if c.version is not None]
        self.access.prime_states({v.record: c.state for v, c in zip(versions, found) if v.record})
        return total, found, self._shown(versions)

    def compartment_search(self, patient_id: str, resource_type: str, pairs: list[tuple[str, str]],
                           strict: bool = True) -> SearchResult:
        """`GET /fhir/Patient/{id}/Condition`: a search of that type within the child's record,
        by the CompartmentDefinition's parameter (a hidden child's compartment is simply empty)."""
        param = self._shared.compartment.param_of(resource_type)
        if param is None:
            raise invalid(f"{resource_type} is not in a child's record compartment", "not-supported")
        named = ("_id", patient_id) if param == "{def}" else (param, f"Patient/{patient_id}")
        return self.search(resource_type, [named] + pairs, strict)

    def _resolve_chains(self, query: SearchQuery) -> None:
        """Chained and _has parameters (one level): the inner search runs with this caller's
        own visibility, so a resource they may not see can neither match nor be hinted at."""
        for chain in query.chains:
            shown = [v for inner_type in chain.inner_types if self.access.scope_allows(inner_type, "s")
                     for v in self._chain_matches(inner_type, chain.inner_pairs)]
            if chain.inner_param is None:
                values = tuple(f"{v.type}/{v.id}" for v in shown)
                query.criteria.append(Criterion(chain.field, "reference", values))
            else:
                param = self.registry.get(chain.inner_types[0], chain.inner_param)
                refs = {ref_key(r.get("reference", "")) for v in shown for r in param.evaluate(v.resource)
                        if isinstance(r, dict) and r.get("reference", "").startswith(query.resource_type + "/")}
                query.criteria.append(Criterion("_id", "id", tuple(sorted(r.split("/", 1)[1] for r in refs))))
        query.patient_filter = query.patient_filter or _patient_filter_of(query)

    def _chain_matches(self, inner_type: str, pairs: tuple[tuple[str, str], ...]) -> list[Version]:
        inner = parse_search(self.registry, inner_type, list(pairs) + [("_count", str(MAX_CHAIN_MATCHES))])
        total, versions = self._repo.search(inner, self.access.search_visibility(inner.patient_filter))
        if total > MAX_CHAIN_MATCHES:
            raise too_costly(f"the chained search matched more than {MAX_CHAIN_MATCHES} {inner_type} resources; "
                             "narrow it")
        return [v for v, _ in self._shown(versions)]

    def _included(self, query: SearchQuery, versions: list[Version]) -> list[tuple[Version, dict]]:
        refs: list[str] = []
        for include in query.includes:
            if include.reverse:
                continue
            param = self.registry.get(include.source_type, include.param)
            for version in versions:
                for ref in (param.evaluate(version.resource) if param else []):
                    target = ref.get("reference", "") if isinstance(ref, dict) else ""
                    if "/" in target and (include.target_type is None or target.startswith(include.target_type + "/")):
                        refs.append(ref_key(target))
        own = {f"{v.type}/{v.id}" for v in versions}
        wanted = [r for r in dict.fromkeys(refs) if r not in own]
        found = self._repo.read_many(wanted)
        allowed = [found[r] for r in wanted if r in found and self.access.scope_allows(found[r].type, "r")]
        return self._shown(allowed)

    def _revincluded(self, query: SearchQuery, versions: list[Version]) -> list[tuple[Version, dict]]:
        """_revinclude (R4 search §3.1.1.5.5): the resources that point at the matches, found by a
        search of their own type with this caller's visibility and shown as any match is."""
        refs = tuple(f"{v.type}/{v.id}" for v in versions)
        out: list[tuple[Version, dict]] = []
        seen = set(refs)
        for include in query.includes:
            if not include.reverse or not refs or not self.access.scope_allows(include.source_type, "s"):
                continue
            pointing = [v for v in refs if include.target_type is None or v.startswith(include.target_type + "/")]
            inner = SearchQuery(include.source_type, [Criterion(f"idx.{include.param}", "reference", tuple(pointing))],
                                count=MAX_REVINCLUDE)
            inner.patient_filter = _patient_filter_of(inner)
            _, found = self._repo.search(inner, self.access.search_visibility(inner.patient_filter))
            for version, shown in self._shown([v for v in found if f"{v.type}/{v.id}" not in seen]):
                seen.add(f"{version.type}/{version.id}")
                out.append((version, shown))
        return out

    def conditional_match(self, resource_type: str, criteria: str, candidate: dict | None = None
                          ) -> tuple[Version, dict] | None:
        """If-None-Exist: a match is only what this caller may see, returned as they may see it
        (FHIR R4 http.html#ccreate); the caller needs create and read scopes for the type."""
        self.access.require_scope(resource_type, "c")
        self.access.require_scope(resource_type, "r")
        pairs = _parse_query_string(criteria)
        query = parse_search(self.registry, resource_type, pairs + [("_count", "2")])
        total, versions = self._repo.search(query, self.access.search_visibility(query.patient_filter))
        if total > 1:
            raise precondition_failed(f"If-None-Exist matched {total} {resource_type} resources; it must match at most one")
        shown = self._shown(versions)
        if not shown:
            return None
        match = shown[0][0]
        # A match is answered only to a caller who could have made the create: otherwise the
        # same refusal as for no match, so If-None-Exist is never a way to read or to probe.
        write_rules.authorize_write(self.access, dict(candidate or match.resource, id=match.id), match.record,
                                    True, False)
        self._audit_permits("read", [match], reason="conditional create matched an existing resource")
        return shown[0]

    # --- client writes --------------------------------------------------------------------

    @audited
    def create(self, body: object, resource_type: str, if_none_exist: str | None = None
               ) -> tuple[Version, dict, bool]:
        resource = parse_resource(body, resource_type)
        if if_none_exist:
            existing = self.conditional_match(resource_type, if_none_exist, resource)
            if existing is not None:
                return existing[0], existing[1], False
        try:
            prepared = self.prepare(resource, str(uuid.uuid4()), expected=None)
            self.commit([prepared])
        except FhirError as error:
            # Two conditional creates of one child at once: both found nothing, one committed.
            # The other answers as if it had come second (R4 http §3.1.0.8: 200, the match).
            existing = self.conditional_match(resource_type, if_none_exist, resource) \
                if if_none_exist and error.code == "duplicate" else None
            if existing is None:
                raise
            return existing[0], existing[1], False
        return version_of(prepared.write), prepared.write.resource, True

    @audited
    def update(self, body: object, resource_type: str, resource_id: str, if_match: int | None
               ) -> tuple[Version, dict, bool]:
        resource = parse_resource(body, resource_type)
        if resource.get("id") != resource_id:
            raise invalid(f"the resource id '{resource.get('id')}' does not match the URL id '{resource_id}'",
                          "invalid", [f"{resource_type}.id"])
        prepared = self.prepare_put(resource, resource_id, if_match)
        self.commit([prepared])
        return version_of(prepared.write), prepared.write.resource, prepared.created

    @audited
    def conditional_update(self, body: object, resource_type: str, criteria: list[tuple[str, str]],
                           if_match: int | None) -> tuple[Version, dict, bool]:
        """PUT /fhir/Type?criteria (R4 http §3.1.0.4.3): no match creates, one match updates that
        resource (If-Match still required: versioned-update), several are 412. Only what this
        caller may see can match, so the answer never reveals a hidden resource."""
        resource = parse_resource(body, resource_type)
        self.access.require_scope(resource_type, "u")
        query = parse_search(self.registry, resource_type, criteria + [("_count", "2")])
        total, versions = self._repo.search(query, self.access.search_visibility(query.patient_filter))
        shown = self._shown(versions)
        if total > 1 or len(shown) > 1:
            raise precondition_failed(f"the conditional update matched {total} {resource_type} resources; "
                                      "it must match at most one")
        if not shown:
            if "id" in resource:
                return self.update(resource, resource_type, resource["id"], if_match)
            return self.create(resource, resource_type)
        match = shown[0][0]
        if resource.get("id", match.id) != match.id:
            raise invalid(f"the resource id '{resource.get('id')}' is not the matched {resource_type}/{match.id}",
                          "invalid", [f"{resource_type}.id"])
        return self.update(dict(resource, id=match.id), resource_type, match.id, if_match)

    def prepare_put(self, resource: dict, resource_id: str, if_match: int | None,
                    pending: dict[str, str | None] | None = None, extra: dict | None = None) -> PreparedWrite:
        """PUT: update with a mandatory If-Match, or create at a client-chosen id. A resource
        the caller may not read is treated as missing, so no version or existence leaks."""
        resource_type = resource["resourceType"]
        label = f"{resource_type}/{resource_id}"
        current = self._repo.read(resource_type, resource_id)
        if current is not None and not self._may_see(current):
            if if_match is not None:
                raise hidden(label, current.record, "update of a resource the caller may not see")
            self._authorize_as_if_new(resource, resource_id, pending or {})
            raise hidden(label, current.record, "update of a resource the caller may not see")
        if current is None:
            if if_match is not None:
                raise not_found(label)
            return self.prepare(resource, resource_id, expected=None, pending=pending, extra=extra)
        if current.deleted:  # its history stays; a new subscription is a new resource (POST)
            if self.access.visible(current)[0] is None:
                raise forbidden("only the caller who created a subscription may change it")
            raise deleted_by_owner(label)
        if if_match is None:
            raise precondition_required(
                f"this server needs versioned updates: send If-Match: W/\"{current.vid}\", the current ETag of "
                f"{resource_type}/{resource_id} (R4 http §3.1.0.4.2, versioned-update)")
        return self.prepare(resource, resource_id, expected=if_match, current=current, pending=pending, extra=extra)

    def _may_see(self, version: Version) -> bool:
        if version.type == "Subscription":
            return True  # owner-only: refused with 403 by the subscription rules
        if version.record is not None:
            self.access.prefetch([version.record])
        return self.access.visible(version)[0] is not None

    def _authorize_as_if_new(self, resource: dict, resource_id: str, pending: dict[str, str | None]) -> None:
        """The refusal a create at a fresh id would get (so hidden answers as missing does)."""
        candidate = dict(resource, id=resource_id)
        record = self._shared.compartment.record_of(candidate, lambda ref: self._record_lookup(ref, pending))
        write_rules.authorize_write(self.access, candidate, record, True, False)

    def prepare(self, resource: dict, resource_id: str, expected: int | None, current: Version | None = None,
                pending: dict[str, str | None] | None = None, extra: dict | None = None) -> PreparedWrite:
        """A client write: validated, authorised and gated; nothing is stored yet."""
        return self._prepare(resource, resource_id, expected, current, pending, extra, gated=True)

    def prepare_transaction(self, entries: list[dict]):
        """Every version of one transaction carries one instant (R4 http §3.1.0.11: a
        transaction is one change), so a draft plan written first in its Bundle is not older
        than the needs it cites and renders whole as of its own version."""
        from ehcp_record.operations import bundles

        self._instant = self.clock()
        try:
            return bundles.prepare_transaction(self, entries, self.prepare, self.prepare_put)
        finally:
            self._instant = None

    @audited
    def process_bundle(self, body: object) -> dict:
        """`POST /fhir` with a transaction or batch Bundle (FHIR R4 http.html#transaction)."""
        from ehcp_record.operations import bundles

        return bundles.process(self, body)

    def settle(self, refusal: Refusal, action: str = "request") -> None:
        """Audit a refusal once, whoever sees it first: a store method as it leaves, or the
        API's error handler for one raised by an operation outside the store's methods."""
        if not refusal.audited:
            refusal.audited = True
            self._audit_refusal(refusal, action)

    def _prepare(self, resource: dict, resource_id: str, expected: int | None, current: Version | None,
                 pending: dict[str, str | None] | None, extra: dict | None, gated: bool,
                 decision: write_rules.WriteDecision | None = None) -> PreparedWrite:
        """Validate, authorise (unless a named privileged path decided already) and build."""
        resource_type = resource["resourceType"]
        if resource_type not in STORED_TYPES and decision is None:  # named writes decide for themselves
            raise FhirError(405, "not-supported", f"{resource_type} is written by the server, not by clients")
        _check_id(resource_id)
        if resource_type == "Patient" and resource_id == audit.DIRECTORY_CHAIN:
            raise invalid(f"'{resource_id}' is reserved")
        resource = copy.deepcopy(resource)
        resource["id"] = resource_id
        _check_identifiers(resource)
        self._one_record_per_nhs_number(resource)
        if expected is not None and current is not None and current.vid != expected:
            raise precondition_failed(f"{resource_type}/{resource_id} is at version {current.vid}, not {expected}")
        pending = pending or {}
        record = self._shared.compartment.record_of(resource, lambda ref: self._record_lookup(ref, pending))
        if resource_type == "Binary" and "_section" not in resource:
            resource["_section"] = self._section_of_security_context(resource)
        if current is not None:
            write_rules.check_record_unchanged(resource_type, current.record, record)
        new_record = record is not None and pending.get(f"Patient/{record}") == record
        if decision is None:
            decision = write_rules.authorize_write(self.access, resource, record, current is None, new_record,
                                                   lambda ref: self._record_lookup(ref, pending))
            _refuse_client_clock(resource, current)
        if resource_type == "Subscription" and self._shared.subscriptions is not None:
            # R4 Subscription lifecycle: the server activates what it accepts ("requested"),
            # and a subscriber switches it off with status "off" (kept, and nothing is sent);
            # "error" is the server's to set; one whose `end` has passed is off already.
            if resource.get("status") == "error":
                raise unprocessable("Subscription.status 'error' is set by the server; send 'off' or 'requested'",
                                    "value", ["Subscription.status"])
            switched_off = resource.get("status") == "off" or has_passed(resource.get("end"), self.clock())
            resource["status"] = "off" if switched_off else "active"
            resource.pop("error", None)  # the server's to say; an owner's write starts afresh
            extra = {**(extra or {}), **self._shared.subscriptions.prepare_subscription(self, resource, current)}
        if self.validator is not None:
            self.validator.check(resource)
        write = self._build(resource, record, expected, current, new_record)
        write.extra.update(extra or {})
        if gated and self._shared.gate is not None:
            self._shared.gate.check_direct_write(write, self._repo.current_of_type, self._repo.read)
        change = write_rules.record_changes(resource, record, current is None, self.caller) if record else None
        return PreparedWrite(write, change, decision.operation, decision.consent_ids, current is None, self.caller)

    def _build(self, resource: dict, record: str | None, expected: int | None, current: Version | None,
               new_record: bool) -> VersionWrite:
        vid = (current.vid + 1) if current is not None else 1
        now = self._instant or self.clock()
        resource["meta"] = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
        resource["meta"].update({"versionId": str(vid), "lastUpdated": instant(now)})
        section = resource.pop("_section", None) or section_of(resource)
        return VersionWrite(
            type=resource["resourceType"], id=resource["id"], vid=vid, updated=now, resource=resource,
            record=record, section=section, index=self.registry.index(resource),
            hash=audit_chain.content_hash(resource), expected=expected if current is not None else None,
            extra=_extra_fields(resource), custodian=self._custodian_of(resource, record, current, new_record),
        )

    def _one_record_per_nhs_number(self, resource: dict) -> None:
        """A child has one record: a second Patient with the same NHS number is refused (409).
        This early check gives the answer before anything is prepared; the unique index on the
        stored number (`Repository.ensure_indexes`) is what holds when two writes race."""
        for value in nhs_numbers(resource):
            others = [i for i in self._repo.ids_with_identifier("Patient", f"{NHS_NUMBER_SYSTEM}|{value}")
                      if i != resource["id"]]
            if others:
                raise nhs_number_taken([value])

    def _custodian_of(self, resource: dict, record: str | None, current: Version | None, new_record: bool) -> str | None:
        """The LA a version is searchable by through custody (kept in step by custody moves)."""
        if record is None:
            return None
        if new_record or record in self._arrivals or (resource["resourceType"] == "Patient" and current is None):
            return self.caller.actor.organization
        state = self.access.state(record)
        return state.custodian if state is not None and not state.transferred_out else None

    def _section_of_security_context(self, binary: dict) -> str:
        """A Binary is shown to whoever may see its document's section; with no sectioned
        document as its context it is the family's and the custodian's only."""
        target = (binary.get("securityContext") or {}).get("reference", "")
        resource_type, _, resource_id = ref_key(target).partition("/")
        version = self._repo.read(resource_type, resource_id) if resource_type and resource_id else None
        return binary_section(version.section if version else None)

    def _record_lookup(self, reference: str, pending: dict[str, str | None]) -> str | None:
        """The record a referenced resource belongs to, seeing earlier entries of a Bundle."""
        if reference in pending:
            return pending[reference]
        resource_type, _, resource_id = reference.partition("/")
        if resource_type == "Patient":
            # A child's record the caller may not know of is answered as one that does not exist.
            record = resource_id if self._repo.read("Patient", resource_id) else None
            return record if record is None or self._reachable(record) else None
        version = self._repo.read(resource_type, resource_id)
        if version is None or version.record is None:
            return None if version is None else version.record
        if self.access.decide("write", version.record).permit or self.view(version) is not None:
            return version.record
        return None  # a resource the caller may not see is answered as a reference to nothing

    def _reachable(self, record: str) -> bool:
        """May the caller know this record exists (read it or contribute to it)? A reference
        into a record they may not know is answered as a reference to nothing."""
        if record in self._arrivals:
            return True
        return any(self.access.decide(operation, record).permit for operation in ("read", "contribute"))

    @audited
    def commit(self, prepared: list[PreparedWrite], extra_audit: list[AuditAppend] | None = None,
               record_updates: list[tuple[str, dict]] | None = None,
               custody: tuple[str, str | None] | None = None) -> None:
        """One transaction for all the versions, their custody changes and audit entries."""
        now = self.clock()
        updates = [(p.write.record, p.record_change) for p in prepared if p.record_change and p.write.record]
        updates += list(record_updates or [])
        audits = [p.audit_entry(now) for p in prepared] + list(extra_audit or [])
        if custody is not None:
            for p in prepared:
                if p.write.record == custody[0]:
                    p.write.custodian = custody[1]
        self._repo.commit([p.write for p in prepared], audits, updates, custody)
        if self._shared.subscriptions is not None:
            self._shared.subscriptions.after_commit(self._shared, [version_of(p.write) for p in prepared])

    # --- operations: resources and records they are allowed into ---------------------------

    @audited
    def resource(self, resource_type: str, resource_id: str, purpose: str = "read", vid: str | None = None,
                 label: str | None = None) -> tuple[Version, Decision]:
        """A resource for an operation, checked for `purpose` (read, write, respond, transfer,
        audit-log) on its record. Hidden and missing answer alike; a caller who may read the
        resource but not do `purpose` gets 403. The resource comes back unredacted only to an
        operation: anything shown to the caller goes through `view` or `view_all`."""
        label = label or f"{resource_type}/{resource_id}" + (f"/_history/{vid}" if vid else "")
        if vid is not None and (not vid.isdigit() or len(vid) > 9):
            self.access.require_scope(resource_type, "r")
            raise not_found(label)
        context = self._repo.read_in_context(resource_type, resource_id, int(vid) if vid else None)
        version, _, decision = self._visible_or_404(resource_type, context.version, label, context)
        if purpose != "read":
            if version.record is None:
                raise denied(f"{label} is not part of a child's record", None, label)
            decision = self.access.require(purpose, version.record, label)
        return version, decision  # type: ignore[return-value]

    @audited
    def delete_subscription(self, subscription_id: str, if_match: int | None) -> tuple[Version, bool]:
        """`DELETE /fhir/Subscription/{id}` (R4 http §3.1.0.7) by its owner: the store keeps
        its history and makes a delete marker its current version, so read answers 410, vread
        of earlier versions and `_history` still work for the owner, search and notifications
        no longer find it. Anyone else is answered exactly as for a missing one (and the
        refusal is audited); a repeat delete changes nothing (R4: "no effect"). Audited as
        `delete`. `If-Match`, when sent, must name the current version. Returns the delete
        marker and whether this request deleted it."""
        label = f"Subscription/{subscription_id}"
        self.access.require_scope("Subscription", "d", None, label)
        current = self._repo.read("Subscription", subscription_id)
        if current is None:
            raise not_found(label)
        if self.access.visible(current)[0] is None:
            raise hidden(label, None, "delete of a subscription the caller does not own")
        if current.deleted:
            return current, False
        if if_match is not None and if_match != current.vid:
            raise precondition_failed(f"{label} is at version {current.vid}, not {if_match}")
        at = self.clock()
        body = audit.body(self.caller, "delete", "permit", at, "deleted by its owner; no more notifications",
                          [(f"{label}/_history/{current.vid + 1}", None)])
        return self._repo.delete_subscription(current, at, AuditAppend(audit.chain_of(None), body)), True

    def prepare_subscription_error(self, subscription: Version, reason: str) -> PreparedWrite:
        """The server turns a subscription whose notifications keep failing to `error`, saying
        why in `Subscription.error` (R4 Subscription.status: "the server has an error executing
        the notification"); nothing more is sent until its owner sets it back to `requested`.
        Only the notifier calls this, on a subscription it delivers for; the owner is kept."""
        return self._subscription_status(subscription, "subscription-error", status="error", error=reason)

    def prepare_subscription_ended(self, subscription: Version) -> PreparedWrite:
        """The server turns a subscription off once its `end` has passed (R4 Subscription.end:
        "the time for the server to turn the subscription off"). Only the notifier calls this,
        on the first change it would have notified after the end; the owner is kept."""
        return self._subscription_status(subscription, "subscription-ended", status="off")

    def _subscription_status(self, subscription: Version, operation: str, **change: str) -> PreparedWrite:
        resource = {k: v for k, v in subscription.resource.items() if k != "meta"}
        resource.update(change)
        write = self._build(resource, None, subscription.vid, subscription, False)
        write.extra.update(owner=subscription.owner, owner_actor=subscription.owner_actor)
        return PreparedWrite(write, None, operation, (), False, self.caller)

    def notification_view(self, resource_type: str, pairs: list[tuple[str, str]], version: Version) -> dict | None:
        """Subscriptions: the changed resource as this subscriber may see it, when it matches
        their criteria and their consent at this moment; None (nothing is sent) otherwise."""
        query = parse_search(self.registry, resource_type, pairs + [("_id", version.id), ("_count", "1")])
        visibility = self.access.search_visibility(query.patient_filter or (version.record or "",))
        total, _ = self._repo.search(query, visibility)
        return self.view(version) if total else None

    def shown_lookup(self, resource_type: str, resource_id: str) -> dict | None:
        """A referenced resource as the caller may see it, or None (for $validate's thread
        check, which reports what is missing, not what is there)."""
        version = self._repo.read(resource_type, resource_id)
        return self.view(version) if version is not None else None

    def view(self, version: Version) -> dict | None:
        return self.access.visible(version)[0]

    def display_names(self, references: list[str]) -> dict[str, str]:
        """The names behind references ("Organization/la-916" -> its name) that this caller
        may see: the directory's for anyone, a person in a record only for whoever may read
        that person (a name the caller could not read is simply not given)."""
        wanted = sorted({r for r in references if isinstance(r, str) and "/" in r})
        names = {}
        for reference, version in self._repo.read_many(wanted).items():
            shown = self.view(version)
            name = display_name(shown) if shown is not None else None
            if name:
                names[reference] = name
        for reference in wanted:  # an LA missing from the directory still has its DfE name
            authority = la_by_number(reference.removeprefix("Organization/la-")) \
                if reference.startswith("Organization/la-") and reference not in names else None
            if authority is not None:
                names[reference] = authority.name
        return names

    def view_all(self, resources: list[dict], decision: Decision) -> list[dict]:
        """Resources shown together ($document): hidden ones dropped, references to them too,
        including those of a type the token's scopes do not cover (as `_include` and
        `$everything` apply them)."""
        out_of_scope = [f"{r['resourceType']}/{r['id']}" for r in resources
                        if not self.access.scope_allows(r["resourceType"], "r")]
        return redaction.redact_bundle_entries(resources, decision, also_hidden=out_of_scope)

    @audited
    def open_record(self, record: str, purpose: str, label: str | None = None,
                    scope_type: str = "Patient") -> "RecordScope":
        """A record an operation works on, once the caller is allowed `purpose` in it."""
        label = label or f"Patient/{record}"
        interaction = "r" if purpose in ("read", "audit-log") else "u"
        exists = self.access.state(record) is not None
        self.access.require_scope(scope_type, interaction, record if exists else None, label)
        self.access.confine_to_launch_patient(scope_type, interaction, record, label)
        if not exists:
            raise not_found(label)
        decision = self.access.require(purpose, record, label)
        return RecordScope(self, record, purpose, decision)

    @audited
    def everything(self, patient_id: str, limit: int) -> list[tuple[Version, dict]]:
        """`$everything`: every current resource of the record as this caller may see it."""
        scope = self.open_record(patient_id, "read")
        versions = [v for v in self._repo.current_of_record(patient_id)[:limit]
                    if self.access.scope_allows(v.type, "r")]
        shown = self._shown(versions)
        if not any(version.type == "Patient" for version, _ in shown):
            raise hidden(f"Patient/{patient_id}", patient_id, "sees nothing of the child")
        self._audit_permits("export", [v for v, _ in shown], scope.decision, "$everything")
        return shown

    # --- end of retention: erasure (crypto-shredding) ---------------------------------------

    @audited
    def erase_record(self, patient_id: str, reason: str) -> dict:
        """`$erase`: the custodian LA ends the record. Every version, document and medium of it
        answers 410 Gone from now on, on every path, and nothing else changes; the audit chain
        keeps, in clear, who erased it, when and why (the store destroys the record's key).
        Refused under a legal hold (409). Returns who, when and why."""
        scope = self.open_record(patient_id, "erase")
        at = self.clock()
        erasure = {"at": instant(at), "by": self.caller.audit_agent(), "reason": reason}
        body = audit.body(self.caller, "erase", "permit", at, reason, [(f"Patient/{patient_id}", None)],
                          scope.decision.consent_ids)
        self._repo.erase_record(patient_id, erasure, AuditAppend(audit.chain_of(patient_id), body, checkpoint=True))
        return erasure

    @audited
    def place_legal_hold(self, patient_id: str, reason: str) -> None:
        """A legal hold (litigation, an inquiry, a complaint) blocks erasure until lifted."""
        self.open_record(patient_id, "erase")
        self._repo.place_legal_hold(patient_id, {"at": instant(self.clock()), "by": self.caller.audit_agent(),
                                                 "reason": reason})
        self.audit_record(patient_id, "legal-hold", reason, [(f"Patient/{patient_id}", None)])

    @audited
    def lift_legal_hold(self, patient_id: str, reason: str) -> None:
        self.open_record(patient_id, "erase")
        self._repo.lift_legal_hold(patient_id)
        self.audit_record(patient_id, "legal-hold-lifted", reason, [(f"Patient/{patient_id}", None)])

    @audited
    def retention_candidates(self) -> list[dict]:
        """The custody states (birth date, legal hold) of the records this LA holds: the
        retention rule (workflow/retention.py) picks the due ones. The custodian's own list only."""
        actor = self.caller.actor
        if actor.role != "la" or not actor.organization:
            raise denied("only a local authority lists its records due for erasure", None, None)
        return self._repo.retention_candidates(actor.organization)

    # --- plan documents (rendered by plan.documents, kept here) ---------------------------

    def stored_document(self, plan: Version) -> bytes | None:
        return self._repo.stored_document(_document_key(plan))

    def keep_document(self, plan: Version, data: bytes) -> bytes:
        return self._repo.store_document(_document_key(plan), plan.record or "", data, hashlib.sha256(data).hexdigest())

    def as_of(self, references: list[str], plan: Version) -> list[tuple[str, dict]]:
        """Each referenced resource (same record, or the directory) as it stood at `plan`'s
        version: one query for the current versions, history only for those changed since.
        Unredacted: for rendering the signed document, which callers see through `view_all`."""
        current = self._repo.read_many([ref_key(r) for r in references if "/_history/" not in r])
        found = []
        for reference in references:
            version = self._version_for(reference, plan, current)
            if version is not None and version.record in (None, plan.record):
                found.append((reference, version.resource))
        return found

    def _version_for(self, reference: str, plan: Version, current: dict[str, Version]) -> Version | None:
        key = ref_key(reference)
        resource_type, _, resource_id = key.partition("/")
        pinned = reference.split("/_history/")
        if len(pinned) == 2 and pinned[1].isdigit():
            return self._repo.read_version(resource_type, resource_id, int(pinned[1]))
        latest = current.get(key)
        if latest is not None and latest.updated <= plan.updated:
            return latest
        return self._repo.version_at(resource_type, resource_id, plan.updated)

    # --- named privileged writes ------------------------------------------------------------

    def prepare_proposed_content(self, entries: list[dict]):
        """The content of a proposal ($propose) or of an answered one ($issue): validated and
        authorised as the custodian's write, not gated, because it reaches an issued plan only
        through `prepare_issued_plan` after the family's response (regs 13 and 22)."""
        from ehcp_record.operations import bundles

        def prepare(resource, resource_id, expected, current=None, pending=None, extra=None):
            return self._prepare(resource, resource_id, expected, current, pending, extra, gated=False)

        def prepare_put(resource, resource_id, if_match, pending=None, extra=None):
            current = self._repo.read(resource["resourceType"], resource_id)
            if current is not None and if_match is None:
                if_match = current.vid
            if current is None and if_match is not None:
                raise not_found(f"{resource['resourceType']}/{resource_id}")
            return prepare(resource, resource_id, if_match if current else None, current, pending, extra)

        return bundles.prepare_transaction(self, entries, prepare, prepare_put)

    def prepare_issued_plan(self, content: dict, plan_id: str) -> PreparedWrite:
        """$issue: the plan made final or amended, by the custodian, past the gate."""
        current = self._repo.read("Composition", plan_id)
        decision = self.access.require("write", current.record if current else "", f"Composition/{plan_id}")
        prepared = self._prepare(content, plan_id, current.vid if current else None, current, None, None,
                                 gated=False, decision=write_rules.WriteDecision("issue", decision.consent_ids))
        return prepared

    def prepare_server_task(self, task: dict, current: Version | None, operation: str, purpose: str,
                            pending: dict[str, str | None] | None = None) -> PreparedWrite:
        """A Task the server writes for a statutory step the caller may take (`purpose`:
        respond, transfer, or arrival: the new custodian's Tasks on a transfer this request
        accepted or received): audited under `operation`, never gated."""
        record = current.record if current is not None else (task.get("for") or {}).get("reference", "").removeprefix("Patient/")
        if purpose == "arrival":
            if record not in self._arrivals:
                raise denied("only the destination local authority, on accepting a transfer, writes its arrival", record)
            decision = write_rules.WriteDecision(operation)
        else:
            decision = write_rules.WriteDecision(operation, self.access.require(purpose, record).consent_ids)
        return self._prepare(task, task["id"], current.vid if current else None, current, pending, None,
                             gated=False, decision=decision)

    def prepare_clock(self, task: dict, current: Version | None, operation: str = "clock") -> PreparedWrite:
        """A statutory clock Task (SEND Regulations 2014 regs 5-31, CFA 2014 ss44-45) opened,
        completed, excepted or closed by the custodian LA's operation ($request-advice,
        $clock-exception, $complete-step, $phase-transfer, $cease, $issue). The custodian's `write`
        decides, audited as `operation`; a clock never becomes another kind of Task, nor the
        reverse, and clients cannot write clocks at all (`_refuse_client_clock`)."""
        if not statutory.is_clock_task(task) or (current is not None and not statutory.is_clock_task(current.resource)):
            raise ValueError("prepare_clock writes statutory clock Tasks only")
        record = _task_record(task, current)
        decision = self.access.require("write", record, f"Task/{task.get('id')}")
        return self._prepare(task, task["id"], current.vid if current else None, current, None, None, gated=False,
                             decision=write_rules.WriteDecision(operation, decision.consent_ids))

    def prepare_assessment_request(self, task: dict) -> PreparedWrite:
        """A request for an EHC needs assessment and the clocks it opens (CFA 2014 s36(1): made
        by the child's parent, the young person, or a person acting on behalf of a school or
        post-16 institution; or recorded from paper by the custodian LA). New Tasks only; who
        may decides by role: the LA its `write`, the family their `respond` (the decision-maker),
        a school its `contribute` consent. Audited as `assessment-request`."""
        if not statutory.is_clock_task(task) or statutory.clock_code(task) not in (None, "assessment-decision", "final-plan"):
            raise ValueError("a request writes the request Task and its first two clocks only")
        record = _task_record(task, None)
        label = f"Patient/{record}"
        self.access.require_scope("Task", "c", record, label)
        purpose = REQUEST_PURPOSES.get(self.caller.actor.role or "")
        if purpose is None:
            raise denied("a request for an EHC needs assessment comes from the child's parent, the young person, "
                         "a school or college, or the local authority (CFA 2014 s36(1))", record, label)
        decision = self.access.require(purpose, record, label)
        return self._prepare(task, task["id"], None, None, None, None, gated=False,
                             decision=write_rules.WriteDecision("assessment-request", decision.consent_ids))

    def prepare_decision_notice(self, notice: dict) -> PreparedWrite:
        """A decision notice (Communication) for a decision of the custodian LA with a right of
        appeal (CFA 2014 s51; SEND Regulations 2014 regs 5(3), 10(3), 31(3)). Clients cannot
        write Communications; the custodian's `write` decides, audited as `notice`."""
        if notice.get("resourceType") != "Communication":
            raise ValueError("a decision notice is a Communication")
        record = str((notice.get("subject") or {}).get("reference", "")).removeprefix("Patient/")
        decision = self.access.require("write", record, f"Patient/{record}")
        return self._prepare(notice, notice["id"], None, None, None, None, gated=False,
                             decision=write_rules.WriteDecision("notice", decision.consent_ids))

    def prepare_notice_receipt(self, notice: dict, current: Version, operation: str, purpose: str) -> PreparedWrite:
        """A receipt on a decision notice: delivered or read, by the decision-maker (`respond`),
        or a mediation certificate, by them or the custodian (`write`); audited as `operation`."""
        if current.type != "Communication" or notice.get("id") != current.id or purpose not in ("respond", "write"):
            raise ValueError("a receipt updates the decision notice it is for")
        decision = self.access.require(purpose, current.record or "", f"Communication/{current.id}")
        return self._prepare(notice, current.id, current.vid, current, None, None, gated=False,
                             decision=write_rules.WriteDecision(operation, decision.consent_ids))

    def prepare_outcome_progress(self, goal: dict, current: Version) -> PreparedWrite:
        """Progress towards an outcome recorded at a review (SEND Regulations 2014 reg 20(5)):
        only `Goal.achievementStatus` and a new dated, attributed `Goal.note` change, so this is
        not a change to the plan's content and needs no proposal; anything else is refused.
        The custodian's `write` decides, audited as `progress`."""
        if current.type != "Goal" or goal.get("id") != current.id:
            raise ValueError("progress is recorded on the Goal it is about")
        before = {k: v for k, v in current.resource.items() if k not in ("meta", "achievementStatus", "note")}
        after = {k: v for k, v in goal.items() if k not in ("meta", "achievementStatus", "note")}
        notes_before = current.resource.get("note", []) or []
        if before != after or (goal.get("note", []) or [])[:len(notes_before)] != notes_before:
            raise invalid("recording progress changes only achievementStatus and adds a note; "
                          "change an outcome through $propose")
        decision = self.access.require("write", current.record or "", f"Goal/{current.id}")
        return self._prepare(goal, current.id, current.vid, current, None, None, gated=False,
                             decision=write_rules.WriteDecision("progress", decision.consent_ids))

    @audited
    def transfer_for_destination(self, task_id: str, is_transfer: Callable[[dict], bool]) -> Version:
        """$accept: the transfer Task, for the destination LA only (before custody moves it
        cannot read the record; everyone else is answered as if the Task did not exist)."""
        label = f"Task/{task_id}"
        task = self._repo.read("Task", task_id)
        if task is None or task.record is None:
            raise not_found(label)
        destination = (task.resource.get("owner") or {}).get("reference")
        actor = self.caller.actor
        if not is_transfer(task.resource) or actor.role != "la" or actor.organization != destination:
            if self._may_see(task):
                raise not_found(label)  # seen, but not a transfer to this caller
            raise hidden(label, task.record, "only the destination local authority may accept a transfer")
        self.access.require_scope("Task", "u", task.record, label)
        self._arrivals.add(task.record)
        return task

    def custody_state(self, record: str):
        return self.access.state(record)

    @audited
    def commit_custody_move(self, prepared: list[PreparedWrite], record: str, new_custodian: str | None,
                            record_update: list[dict] | dict, audit_body: dict) -> None:
        """Custody moves (reg 15): the versions, the records document, every current document's
        searchable custodian and a checkpointed audit entry, in one transaction."""
        self.commit(prepared, [AuditAppend(audit.chain_of(record), audit_body, checkpoint=True)],
                    record_updates=[(record, record_update)], custody=(record, new_custodian))

    def import_transfer(self, imported: ImportedRecord) -> None:
        """$receive-transfer: the signed record of another deployment, checked by the caller."""
        assert self._shared.transfers is not None
        self._shared.transfers.import_record(imported)

    # --- transfer storage (the custodian's own transfer) ------------------------------------

    def transfer_storage(self, record: str) -> "TransferStorage":
        self.access.require("transfer", record)
        assert self._shared.transfers is not None
        return TransferStorage(self._shared.transfers, self._repo, self._shared.media, record)

    def record_tasks_for_destination(self, transfer: Version) -> list[Version]:
        """$accept: the record's open Tasks the new LA closes or re-times (an assessment stops,
        reg 15(4)(b); the review clock is re-timed, reg 15(5))."""
        return self._repo.current_of_type(transfer.record or "", "Task")

    # --- media (GridFS) ----------------------------------------------------------------------

    @property
    def media_store(self) -> MediaStore:
        assert self._shared.media is not None
        return self._shared.media

    def media_of(self, version: Version) -> dict | None:
        """The stored file of a Binary version the caller was already shown (read/vread)."""
        return self._repo.media_info(version.type, version.id, version.vid)


@dataclass
class RecordScope:
    """A record an operation was allowed into for one purpose; unredacted, for the rules."""

    store: ScopedStore
    record: str
    purpose: str
    decision: Decision

    def current(self) -> list[Version]:
        return self.store._repo.current_of_record(self.record)

    def current_of_type(self, resource_type: str) -> list[Version]:
        return self.store._repo.current_of_type(self.record, resource_type)

    def versions(self) -> Iterator[Version]:
        return self.store._repo.versions_of_record(self.record)

    def read(self, resource_type: str, resource_id: str) -> Version | None:
        version = self.store._repo.read(resource_type, resource_id)
        return version if version is not None and version.record in (self.record, None) else None

    def state(self):
        return self.store.access.state(self.record)

    def audit_entries(self, **query: Any) -> tuple[int, list[dict]]:
        return self.store._repo.audit_search(self.record, **query)

    def verify(self, keys: dict, held_head: str | None = None):
        """The whole record checked (versions, current documents, stored documents, chain);
        `held_head` is a signed head token the family kept (400 when it is not one)."""
        from ehcp_record.audit import verify as audit_verify

        held = None
        if held_head:
            try:
                held = audit_verify.parse_head_token(held_head, self.record, keys)
            except audit_verify.HeadError as exc:
                raise invalid(str(exc)) from None
        return audit_verify.verify_record(self.store._repo, self.record, keys, held)

    def latest_head(self) -> dict | None:
        """The newest signed head of this record's chain (anchor log, else the chain)."""
        from ehcp_record.audit import verify as audit_verify

        return audit_verify.latest_head(self.store._repo, self.record)


@dataclass
class TransferStorage:
    """The custodian's own transfer of one record: what the signed Bundle is built from, and
    the bookkeeping of bundles sent. Handed out only after the `transfer` decision."""

    transfers: TransferStore
    repo: Repository
    media: MediaStore | None
    record: str

    def _own(self, record: str) -> str:
        if record != self.record:
            raise ValueError("transfer storage is for one record")
        return record

    def outbound(self, key: str) -> bytes | None:
        return self.repo.outbound_transfer(key)

    def keep_outbound(self, key: str, body: bytes) -> bytes:
        return self.repo.keep_outbound_transfer(key, body, self.record)

    def sent(self, transfer_id: str) -> dict[str, str]:
        return self.transfers.sent(transfer_id)

    def note_sent(self, transfer_id: str, sha256: str, key: str) -> None:
        self.transfers.note_sent(transfer_id, sha256, key)

    def version_count(self, record: str, excluding: str) -> int:
        return self.transfers.version_count(self._own(record), excluding)

    def export_chain(self, record: str, body: dict) -> list[dict]:
        return self.transfers.export_chain(self._own(record), body)

    def record_state(self, record: str) -> dict | None:
        return self.repo.record_state(self._own(record))

    def documents_of_record(self, record: str) -> dict[str, bytes]:
        return self.repo.documents_of_record(self._own(record))

    def current_of_record(self, record: str) -> list[Version]:
        return self.repo.current_of_record(self._own(record))

    def read_many(self, refs: list[str]) -> dict[str, Version]:
        return {k: v for k, v in self.repo.read_many(refs).items() if v.record in (None, self.record)}

    def media_info(self, resource_type: str, resource_id: str, vid: int) -> dict | None:
        return self.repo.media_info(resource_type, resource_id, vid)

    def read_media(self, file_id: Any) -> bytes:
        assert self.media is not None
        return self.media.read_all(file_id)


#: Who may make a request for an EHC needs assessment, and the decision that lets them (CFA 2014
#: s36(1)): the decision-maker (parent with parental responsibility, or the young person), a
#: school or post-16 institution the family lets contribute, or the custodian LA recording one.
REQUEST_PURPOSES = {"parent": "respond", "young-person": "respond", "school": "contribute", "la": "write"}


def _task_record(task: dict, current: Version | None) -> str:
    if current is not None:
        return current.record or ""
    return str((task.get("for") or {}).get("reference", "")).removeprefix("Patient/")


def _refuse_client_clock(resource: dict, current: Version | None) -> None:
    """A plain create or update never writes a Task the server alone writes (a statutory clock, a
    transfer), nor turns a Task into or out of one: their due dates come from the regulations, set
    by the operations that run the timeline (`statutory.client_write_refusal` names them). The
    parental-review Task an LA may still write itself carries only the due dates the regulations
    give, and keeps them (`statutory.client_task_problem`)."""
    if resource["resourceType"] != "Task":
        return
    refusal = statutory.client_write_refusal(resource, current.resource if current is not None else None)
    if refusal is not None:
        raise conflict(refusal, "business-rule")
    problem = statutory.client_task_problem(resource, current.resource if current is not None else None)
    if problem is not None:
        raise unprocessable(problem, "business-rule", ["Task.restriction.period"])


def version_of(write: VersionWrite) -> Version:
    return Version(write.type, write.id, write.vid, write.updated, write.resource, write.record,
                   write.section, write.hash)


def _document_key(plan: Version) -> str:
    return f"Composition/{plan.id}/{plan.vid}"


def _extra_fields(resource: dict) -> dict:
    """Denormalised fields some queries need (who a consent names), computed once at write."""
    if resource["resourceType"] != "Consent":
        return {}
    from consent.model import parse_grant
    grant = parse_grant(resource)
    recipients = [r for r in (grant.recipient_org, f"role:{grant.recipient_role}" if grant.recipient_role else None) if r]
    return {"recipients": recipients}


def _check_identifiers(resource: dict) -> None:
    problems = identifier_problems(resource)
    if problems:
        path, reason = problems[0]
        raise unprocessable(reason, "value", [path])


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

