"""`POST /fhir` with a transaction (all or nothing) or batch (each entry on its own) Bundle.

FHIR R4 http.html §3.1.0.11: a transaction's entries succeed or fail together; `urn:uuid:`
fullUrls are replaced by the ids the server assigns, everywhere they are referenced; POST
entries honour `ifNoneExist`, PUT entries `ifMatch`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qsl

from typing import TYPE_CHECKING, Callable

from ehcp_record.errors import FhirError, invalid, not_supported, outcome_of
from ehcp_record.fhir import bundles
from ehcp_record.fhir.dates import instant
from ehcp_record.fhir.model import STORED_TYPES, parse_resource
from ehcp_record.store.versions import Version

if TYPE_CHECKING:
    from ehcp_record.access.scoped import PreparedWrite, ScopedStore

#: How an entry is prepared: the store's client write, or its named path for proposed content.
Prepare = Callable[..., "PreparedWrite"]

MAX_ENTRIES = 500
# Entries whose record follows another resource in the same Bundle are prepared last.
_ORDER = {"Patient": 0, "Organization": 1, "Practitioner": 1, "PractitionerRole": 2, "RelatedPerson": 3,
          "Binary": 8, "Provenance": 9}


@dataclass
class EntryPlan:
    index: int
    method: str
    resource_type: str
    resource_id: str | None
    resource: dict | None
    full_url: str | None
    if_match: int | None
    if_none_exist: str | None
    url: str


def process(store: "ScopedStore", body: object) -> dict:
    bundle = parse_resource(body, "Bundle")
    kind = bundle.get("type")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):  # FHIR JSON has no nulls; `"entry": null` is not an empty Bundle
        raise invalid("Bundle.entry must be an array of entries", "structure", ["Bundle.entry"])
    if kind not in ("transaction", "batch"):
        raise invalid("POST /fhir takes a Bundle of type 'transaction' or 'batch'", "invalid", ["Bundle.type"])
    if "total" in bundle:  # bdl-1 (and the parser would read `"total": false` as 0)
        raise invalid("Bundle.total is only for search and history Bundles (bdl-1)", "invariant", ["Bundle.total"])
    if len(entries) > MAX_ENTRIES:
        raise FhirError(413, "too-costly", f"a Bundle may hold at most {MAX_ENTRIES} entries")
    if kind == "transaction":
        return _transaction(store, entries)
    return _batch(store, entries)


def _plan(entries: list[dict]) -> list[EntryPlan]:
    plans = [_plan_entry(i, e) for i, e in enumerate(entries)]
    seen: set[str] = set()
    for plan in plans:
        key = f"{plan.resource_type}/{plan.resource_id}" if plan.resource_id else None
        if key and plan.method == "PUT":
            if key in seen:
                raise invalid(f"{key} appears twice in the transaction", "invalid", [f"Bundle.entry[{plan.index}]"])
            seen.add(key)
    return plans


def _plan_entry(index: int, entry: dict) -> EntryPlan:
    request = entry.get("request") or {}
    method, url = request.get("method"), request.get("url")
    where = [f"Bundle.entry[{index}].request"]
    if method not in ("POST", "PUT", "GET", "DELETE", "PATCH", "HEAD") or not isinstance(url, str):
        raise invalid(f"entry {index} needs request.method and request.url", "required", where)
    if method in ("DELETE", "PATCH", "HEAD"):
        raise not_supported(f"entry {index}: {method} is not supported (statutory records are never deleted)", 405)
    path = url.split("?", 1)[0].strip("/").split("/")
    resource_type = path[0]
    resource = entry.get("resource")
    if method in ("POST", "PUT"):
        if not isinstance(resource, dict):
            raise invalid(f"entry {index} ({method}) has no resource", "required", [f"Bundle.entry[{index}].resource"])
        if resource.get("resourceType") != resource_type:
            raise invalid(f"entry {index}: the resource type does not match request.url '{url}'", "invalid", where)
    if method == "PUT" and len(path) != 2:
        raise invalid(f"entry {index}: PUT needs request.url 'Type/id'", "invalid", where)
    return EntryPlan(index, method, resource_type, path[1] if len(path) > 1 else None, resource,
                     entry.get("fullUrl"), _if_match(request.get("ifMatch"), index), request.get("ifNoneExist"), url)


def _if_match(value: object, index: int) -> int | None:
    if value is None:
        return None
    text = str(value).strip()
    digits = text.removeprefix("W/").strip('"')
    if not digits.isdigit():
        raise invalid(f"entry {index}: ifMatch must look like W/\"3\"", "invalid", [f"Bundle.entry[{index}].request.ifMatch"])
    return int(digits)


def _transaction(store: "ScopedStore", entries: list[dict]) -> dict:
    prepared = store.prepare_transaction(entries)
    store.commit([prepared.writes[i] for i in sorted(prepared.writes)])
    return bundles.response_bundle("transaction-response", [
        _write_entry(prepared.writes.get(p.index), prepared.existing.get(p.index)) if p.method != "GET"
        else _get_entry(store, p)
        for p in prepared.plans
    ])


@dataclass
class PreparedTransaction:
    plans: list[EntryPlan]
    writes: dict[int, "PreparedWrite"]
    existing: dict[int, tuple[Version, dict]]


def prepare_transaction(store: "ScopedStore", entries: list[dict], prepare: Prepare,
                        prepare_put: Prepare) -> PreparedTransaction:
    """Check and build every version of a transaction without storing anything.

    `prepare`/`prepare_put` are the store's: its client write, or (for `$propose` and
    `$issue`) its named path for proposed content.
    """
    plans = _plan(entries)
    for plan in plans:
        if plan.method in ("POST", "PUT"):
            plan.resource = parse_resource(plan.resource, plan.resource_type)
    ids = _assign_ids(store, plans)
    _resolve_references(plans, ids)
    prepared: dict[int, PreparedWrite] = {}
    existing: dict[int, Version] = {}
    pending: dict[str, str | None] = {}
    for plan in sorted((p for p in plans if p.method in ("POST", "PUT")), key=lambda p: _ORDER.get(p.resource_type, 5)):
        if plan.index in ids.matched:
            existing[plan.index] = ids.matched[plan.index]
            continue
        item = _prepare(plan, pending, prepare, prepare_put)
        pending[f"{item.write.type}/{item.write.id}"] = item.write.record
        prepared[plan.index] = item
    return PreparedTransaction(plans, prepared, existing)


@dataclass
class _Ids:
    by_url: dict[str, str]
    matched: dict[int, tuple[Version, dict]]


def _assign_ids(store: "ScopedStore", plans: list[EntryPlan]) -> _Ids:
    ids = _Ids({}, {})
    for plan in plans:
        if plan.method == "POST":
            match = (store.conditional_match(plan.resource_type, plan.if_none_exist, plan.resource)
                     if plan.if_none_exist else None)
            if match is not None:
                ids.matched[plan.index] = match
                plan.resource_id = match[0].id
            else:
                plan.resource_id = str(uuid.uuid4())
        if plan.full_url and plan.resource_id:
            ids.by_url[plan.full_url] = f"{plan.resource_type}/{plan.resource_id}"
    return ids


def _resolve_references(plans: list[EntryPlan], ids: _Ids) -> None:
    """Rewrite every `urn:uuid:` reference to the Type/id the server assigned."""
    for plan in plans:
        if plan.resource is None:
            continue
        text = json.dumps(plan.resource)
        if "urn:uuid:" not in text and "urn:oid:" not in text:
            continue
        plan.resource = _rewrite(plan.resource, ids.by_url, plan.index)


def _rewrite(value: object, mapping: dict[str, str], index: int) -> object:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "reference" and isinstance(item, str) and item.startswith(("urn:uuid:", "urn:oid:")):
                if item not in mapping:
                    raise invalid(f"entry {index} refers to {item}, which is not a fullUrl in this Bundle",
                                  "invalid", [f"Bundle.entry[{index}].resource"])
                out[key] = mapping[item]
            else:
                out[key] = _rewrite(item, mapping, index)
        return out
    if isinstance(value, list):
        return [_rewrite(item, mapping, index) for item in value]
    return value


def _prepare(plan: EntryPlan, pending: dict[str, str | None], prepare: Prepare, prepare_put: Prepare) -> "PreparedWrite":
    if plan.resource_type not in STORED_TYPES:
        raise not_supported(f"entry {plan.index}: {plan.resource_type} cannot be written", 405)
    assert plan.resource is not None and plan.resource_id is not None
    try:
        if plan.method == "POST":
            return prepare(plan.resource, plan.resource_id, None, pending=pending)
        return prepare_put(plan.resource, plan.resource_id, plan.if_match, pending=pending)
    except FhirError as error:
        error.diagnostics = f"entry {plan.index} ({plan.method} {plan.url}): {error.diagnostics}"
        raise


def _write_entry(prepared: "PreparedWrite | None", existing: tuple[Version, dict] | None) -> dict:
    if existing is not None:
        version, shown = existing
        return _stored_entry("200 OK", version, shown)
    assert prepared is not None
    write = prepared.write
    return _stored_entry("201 Created" if prepared.created else "200 OK", write, write.resource)


def _stored_entry(status: str, version, shown: dict) -> dict:
    """The entry answering a write: the resource as the caller sees it, and where it is stored.
    `version` is a stored Version or a VersionWrite (both have type, id, vid and updated)."""
    return bundles.entry(shown, response=bundles.version_response(
        status, version.type, version.id, version.vid, instant(version.updated)))


def _error_entry(error: FhirError) -> dict:
    """A failed entry answers with its status and OperationOutcome, and no resource."""
    return bundles.entry(response={"status": str(error.status), "outcome": outcome_of(error)})


def _get_entry(store: "ScopedStore", plan: EntryPlan) -> dict:
    try:
        if plan.resource_id and "?" not in plan.url:
            version, shown = store.read(plan.resource_type, plan.resource_id)
            return bundles.entry(shown, response={"status": "200 OK", "etag": f'W/"{version.vid}"'})
        pairs = parse_qsl(plan.url.split("?", 1)[1], keep_blank_values=True) if "?" in plan.url else []
        result = store.search(plan.resource_type, pairs)
        inner = bundles.searchset([bundles.entry(r) for r in result.matches], result.total)
        return bundles.entry(inner, response={"status": "200 OK"})
    except FhirError as error:
        return _error_entry(error)


def _batch(store: "ScopedStore", entries: list[dict]) -> dict:
    results = []
    for index, entry in enumerate(entries):
        try:
            plan = _plan_entry(index, entry)
            results.append(_batch_entry(store, plan))
        except FhirError as error:
            results.append(_error_entry(error))
    return bundles.response_bundle("batch-response", results)


def _batch_entry(store: "ScopedStore", plan: EntryPlan) -> dict:
    if plan.method == "GET":
        return _get_entry(store, plan)
    if plan.method == "POST":
        version, shown, created = store.create(plan.resource, plan.resource_type, plan.if_none_exist)
    else:
        assert plan.resource_id is not None
        version, shown, created = store.update(plan.resource, plan.resource_type, plan.resource_id, plan.if_match)
    return _stored_entry("201 Created" if created else "200 OK", version, shown)
