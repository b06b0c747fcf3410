"""The FHIR REST interactions (API.md "Resource interactions"): thin mapping onto the service."""

from __future__ import annotations

from flask import Blueprint, Response

from api.context import caller, services, store
from api.http import (base_url, bundle_link, fhir_response, if_match, json_body, not_modified, query_pairs,
                      require_json_accepted, strict_handling, version_headers, write_response)
from ehcp_record.errors import FhirError, invalid, not_supported
from ehcp_record.fhir import bundles
from ehcp_record.fhir.dates import DateFormatError, instant, parse_range
from ehcp_record.fhir.model import require_served_type
from ehcp_record.fhir.search import DEFAULT_COUNT, MAX_COUNT, MAX_OFFSET
from ehcp_record.fhir.summary import shape

bp = Blueprint("fhir_rest", __name__, url_prefix="/fhir")


@bp.post("")
@bp.post("/")  # the base with a trailing slash, as fhir-kit-client and others post it
def transaction_or_batch() -> Response:
    return fhir_response(store().process_bundle(json_body()))


@bp.get("/<fhir_type:resource_type>")
@bp.post("/<fhir_type:resource_type>/_search")
def search(resource_type: str) -> Response:
    require_served_type(resource_type)
    require_json_accepted()
    _limit_search_form()
    if resource_type == "AuditEvent":
        return _audit_search()
    result = store().search(resource_type, query_pairs(), strict_handling())
    return fhir_response(_searchset(f"/{resource_type}", result))


@bp.get("/Patient/<fhir_id:patient_id>/<fhir_type:resource_type>")
def compartment_search(patient_id: str, resource_type: str) -> Response:
    """Compartment search (R4 http §3.1.0.8.2): `Patient/{id}/Condition` is a Condition search
    within that child's record."""
    require_served_type(resource_type)
    require_json_accepted()
    result = store().compartment_search(patient_id, resource_type, query_pairs(), strict_handling())
    return fhir_response(_searchset(f"/Patient/{patient_id}/{resource_type}", result))


@bp.get("/Binary")
def search_binary() -> Response:
    """Binary's own path also serves search (so OPTIONS there names GET as well as upload's POST)."""
    return search("Binary")


def _limit_search_form() -> None:
    """A POST _search form body is a query string by another road: the same 8 KiB limit."""
    from flask import request

    if request.method != "POST":
        return
    limit = services().settings.max_query_bytes
    too_long = FhirError(413, "too-costly", f"the search parameters are longer than {limit // 1024} KiB")
    if request.content_length is not None and request.content_length > limit:
        raise too_long
    request.max_content_length = limit + 1  # a chunked body: read one byte past the limit at most
    if len(request.get_data(cache=True)) > limit:  # cached: the form is parsed from these bytes
        raise too_long


def _audit_search() -> Response:
    """AuditEvents are paged like every other search (the same self/next/previous links)."""
    pairs = query_pairs()
    total, events, offset, count = services().audit_log.search(store(), pairs)
    rest = [(k, v) for k, v in pairs if k not in ("_count", "_offset")]
    links = bundles.paging_links(_search_url("/AuditEvent"), pairs, rest, offset, count, total)
    return fhir_response(bundles.searchset([_entry(e, "match") for e in events], total, links))


def _searchset(path: str, result) -> dict:
    query = result.query
    links = bundles.paging_links(_search_url(path), query.echo, query.without_paging(),
                                 query.offset, query.count, result.total)
    shaped = [shape(r, query.summary, query.elements) for r in result.matches]
    entries = [_entry(r, "match") for r in shaped] + [_entry(r, "include") for r in result.included]
    return bundles.searchset(entries, result.total, links)


def _search_url(path: str):
    """Renders a search link below the configured base (Bundle.link must be absolute)."""
    return lambda pairs: bundle_link(path, pairs)


def _base_url() -> str:
    """This server's FHIR base: the base of every fullUrl we answer with."""
    return base_url()


def _entry(resource: dict, mode: str) -> dict:
    return bundles.entry(resource, _base_url(), mode)


@bp.post("/<fhir_type:resource_type>")
def create(resource_type: str) -> Response:
    """Create; conditional when If-None-Exist is sent or, as fhirpy's `get_or_create()` does,
    when the search is in the query string (`POST /fhir/Patient?identifier=...`)."""
    require_served_type(resource_type)
    from flask import request
    criteria = request.headers.get("If-None-Exist") or request.query_string.decode("utf-8", "replace") or None
    version, shown, created = store().create(json_body(), resource_type, criteria)
    return write_response(version, created, shown)


@bp.get("/<fhir_type:resource_type>/<fhir_id:resource_id>")
def read(resource_type: str, resource_id: str) -> Response:
    require_served_type(resource_type)
    require_json_accepted()
    if resource_type == "AuditEvent":
        return fhir_response(services().audit_log.read(store(), resource_id))
    version, shown = store().read(resource_type, resource_id)
    return not_modified(version) or fhir_response(shown, 200, version_headers(version))


@bp.get("/<fhir_type:resource_type>/<fhir_id:resource_id>/$meta")
def meta(resource_type: str, resource_id: str) -> Response:
    """$meta (R4 resource-operation-meta): the resource's meta as a Parameters resource."""
    require_served_type(resource_type)
    require_json_accepted()
    _, shown = store().read(resource_type, resource_id)
    return fhir_response({"resourceType": "Parameters",
                          "parameter": [{"name": "return", "valueMeta": shown.get("meta", {})}]})


@bp.put("/<fhir_type:resource_type>/<fhir_id:resource_id>")
def update(resource_type: str, resource_id: str) -> Response:
    require_served_type(resource_type)
    version, shown, created = store().update(json_body(), resource_type, resource_id, if_match())
    return write_response(version, created, shown)


@bp.put("/<fhir_json_type:resource_type>")
def conditional_update(resource_type: str) -> Response:
    """PUT /fhir/Type?criteria (R4 http §3.1.0.4.3)."""
    require_served_type(resource_type)
    pairs = query_pairs()
    if not pairs:
        raise invalid(f"PUT /fhir/{resource_type} needs search criteria (or PUT /fhir/{resource_type}/{{id}})")
    version, shown, created = store().conditional_update(json_body(), resource_type, pairs, if_match())
    return write_response(version, created, shown)


@bp.delete("/<fhir_type:resource_type>/<fhir_id:resource_id>")
def delete(resource_type: str, resource_id: str) -> Response:
    """FHIR delete (R4 http §3.1.0.7) of a Subscription, by its owner; every other type is 405,
    since statutory records are never deleted through the API (erasure is `$erase`)."""
    require_served_type(resource_type)
    caller()  # authenticated first, as everywhere else: 401 without a valid token
    if resource_type != "Subscription":
        error = not_supported("statutory records are never deleted through the API; only a Subscription is "
                              "deleted, by its owner", 405)
        error.headers["Allow"] = "GET, PUT"
        raise error
    marker, now = store().delete_subscription(resource_id, if_match())
    said = "deleted: no more notifications are sent to it" if now else "was already deleted"
    outcome = {"resourceType": "OperationOutcome", "issue": [{
        "severity": "information", "code": "informational", "diagnostics": f"Subscription/{resource_id} {said}"}]}
    return fhir_response(outcome, 200, {"ETag": f'W/"{marker.vid}"'})


@bp.delete("/<fhir_type:resource_type>")
def conditional_delete(resource_type: str) -> Response:
    """Conditional delete (R4 http §3.1.0.7.1) is not supported: 405 saying what is."""
    require_served_type(resource_type)
    caller()
    to_do = ("delete a Subscription by its id: DELETE /fhir/Subscription/{id}" if resource_type == "Subscription"
             else "statutory records are never deleted through the API")
    error = not_supported(f"conditional delete is not supported; {to_do}", 405)
    error.headers["Allow"] = "GET, POST, PUT"
    raise error


@bp.delete("/Binary")
def conditional_delete_binary() -> Response:
    """Binary's own path (its upload and search live there too) answers conditional delete alike."""
    return conditional_delete("Binary")


@bp.delete("/Binary/<fhir_id:resource_id>")
def delete_binary(resource_id: str) -> Response:
    return delete("Binary", resource_id)


@bp.get("/<fhir_type:resource_type>/<fhir_id:resource_id>/_history")
def history(resource_type: str, resource_id: str) -> Response:
    require_served_type(resource_type)
    require_json_accepted()
    offset, count = _history_paging()
    total, versions = store().history(resource_type, resource_id, offset, count)
    return fhir_response(_history_bundle(f"/{resource_type}/{resource_id}/_history", versions, total, offset, count))


@bp.get("/<fhir_type:resource_type>/_history")
def type_history(resource_type: str) -> Response:
    """History of every resource of one type the caller may search (R4 http §3.1.0.11)."""
    require_served_type(resource_type)
    require_json_accepted()
    offset, count = _history_paging()
    total, versions = store().history_search(resource_type, _since(), offset, count)
    return fhir_response(_history_bundle(f"/{resource_type}/_history", versions, total, offset, count))


@bp.get("/_history")
def system_history() -> Response:
    """History of everything the caller may search (R4 http §3.1.0.11)."""
    require_json_accepted()
    offset, count = _history_paging()
    total, versions = store().history_search(None, _since(), offset, count)
    return fhir_response(_history_bundle("/_history", versions, total, offset, count))


def _history_paging() -> tuple[int, int]:
    from flask import request
    count = min(_int_arg(request.args.get("_count"), DEFAULT_COUNT), MAX_COUNT)
    offset = _int_arg(request.args.get("_offset"), 0)
    if offset > MAX_OFFSET:
        raise FhirError(400, "too-costly", f"_offset beyond {MAX_OFFSET}")
    return offset, count


def _since():
    from flask import request
    value = request.args.get("_since")
    if value is None:
        return None
    try:
        return parse_range(value)[0]
    except DateFormatError as exc:
        raise invalid(f"_since: {exc}") from None


def _history_bundle(path: str, versions: list, total: int, offset: int, count: int) -> dict:
    from flask import request
    entries = [bundles.history_entry(None if v.deleted else shown, _base_url(), v.type, v.id, v.vid,
                                     instant(v.updated) if v.deleted else shown.get("meta", {}).get("lastUpdated"))
               for v, shown in versions]
    bundle = bundles.history(entries, total)
    pairs = [(k, v) for k, v in request.args.items(multi=True) if k in ("_since",)]
    bundle["link"] = bundles.paging_links(_search_url(path), pairs + [("_count", str(count)), ("_offset", str(offset))],
                                          pairs, offset, count, total)
    return bundle


@bp.get("/<fhir_type:resource_type>/<fhir_id:resource_id>/_history/<vid>")
def vread(resource_type: str, resource_id: str, vid: str) -> Response:
    require_served_type(resource_type)
    require_json_accepted()
    version, shown = store().vread(resource_type, resource_id, vid)
    return not_modified(version) or fhir_response(shown, 200, version_headers(version))


def _int_arg(value: str | None, default: int) -> int:
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 6:  # "²" is a digit to str.isdigit
        raise FhirError(400, "invalid", f"'{value[:20]}' is not a whole number")
    return int(value)
