"""The FHIR REST interactions (API.md "Resource interactions"): thin mapping onto the service."""

from __future__ import annotations

from flask import Blueprint, Response

from api.context import caller, services, store
from api.http import bundle_link, fhir_response, if_match, json_body, query_pairs, version_headers, write_response
from ehcp_record.errors import FhirError, not_supported
from ehcp_record.fhir import bundles
from ehcp_record.fhir.model import require_served_type
from ehcp_record.fhir.search import DEFAULT_COUNT, MAX_COUNT, MAX_OFFSET

bp = Blueprint("fhir_rest", __name__, url_prefix="/fhir")


@bp.post("")
def transaction_or_batch() -> Response:
    return fhir_response(store().process_bundle(json_body()))


@bp.get("/<fhir_type:resource_type>")
@bp.post("/<fhir_type:resource_type>/_search")
def search(resource_type: str) -> Response:
    require_served_type(resource_type)
    _limit_search_form()
    if resource_type == "AuditEvent":
        return _audit_search()
    result = store().search(resource_type, query_pairs())
    return fhir_response(_searchset(resource_type, result))


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
    links = bundles.paging_links(_search_url("AuditEvent"), pairs, rest, offset, count, total)
    return fhir_response(bundles.searchset([_entry(e, "match") for e in events], total, links))


def _searchset(resource_type: str, result) -> dict:
    query = result.query
    links = bundles.paging_links(_search_url(resource_type), query.echo, query.without_paging(),
                                 query.offset, query.count, result.total)
    entries = [_entry(r, "match") for r in result.matches] + [_entry(r, "include") for r in result.included]
    return bundles.searchset(entries, result.total, links)


def _search_url(resource_type: str):
    """Renders a search link on the host the client called (Bundle.link must be absolute)."""
    return lambda pairs: bundle_link(f"/fhir/{resource_type}", pairs)


def _base_url() -> str:
    """This server's /fhir as the client reached it: the base of every fullUrl we answer with."""
    return bundle_link("/fhir", [])


def _entry(resource: dict, mode: str) -> dict:
    return bundles.entry(resource, _base_url(), mode)


@bp.post("/<fhir_type:resource_type>")
def create(resource_type: str) -> Response:
    require_served_type(resource_type)
    from flask import request
    version, shown, created = store().create(json_body(), resource_type, request.headers.get("If-None-Exist"))
    return write_response(version, created, shown)


@bp.get("/<fhir_type:resource_type>/<fhir_id:resource_id>")
def read(resource_type: str, resource_id: str) -> Response:
    require_served_type(resource_type)
    if resource_type == "AuditEvent":
        return fhir_response(services().audit_log.read(store(), resource_id))
    version, shown = store().read(resource_type, resource_id)
    return fhir_response(shown, 200, version_headers(version))


@bp.put("/<fhir_type:resource_type>/<fhir_id:resource_id>")
def update(resource_type: str, resource_id: str) -> Response:
    require_served_type(resource_type)
    version, shown, created = store().update(json_body(), resource_type, resource_id, if_match())
    return write_response(version, created, shown)


@bp.delete("/<fhir_type:resource_type>/<fhir_id:resource_id>")
def delete(resource_type: str, resource_id: str) -> Response:
    require_served_type(resource_type)
    caller()  # authenticated first, as everywhere else: 401 without a valid token
    error = not_supported("statutory records are never deleted through the API", 405)
    error.headers["Allow"] = "GET, PUT"
    raise error


@bp.delete("/Binary/<fhir_id:resource_id>")
def delete_binary(resource_id: str) -> Response:
    return delete("Binary", resource_id)


@bp.get("/<fhir_type:resource_type>/<fhir_id:resource_id>/_history")
def history(resource_type: str, resource_id: str) -> Response:
    require_served_type(resource_type)
    from flask import request
    count = min(_int_arg(request.args.get("_count"), DEFAULT_COUNT), MAX_COUNT)
    offset = _int_arg(request.args.get("_offset"), 0)
    if offset > MAX_OFFSET:
        raise FhirError(400, "too-costly", f"_offset beyond {MAX_OFFSET}")
    total, versions = store().history(resource_type, resource_id, offset, count)
    entries = [bundles.history_entry(shown, _base_url(), resource_type, resource_id, v.vid,
                                     shown.get("meta", {}).get("lastUpdated")) for v, shown in versions]
    return fhir_response(bundles.history(entries, total))


@bp.get("/<fhir_type:resource_type>/<fhir_id:resource_id>/_history/<vid>")
def vread(resource_type: str, resource_id: str, vid: str) -> Response:
    require_served_type(resource_type)
    version, shown = store().vread(resource_type, resource_id, vid)
    return fhir_response(shown, 200, version_headers(version))


def _int_arg(value: str | None, default: int) -> int:
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 6:  # "²" is a digit to str.isdigit
        raise FhirError(400, "invalid", f"'{value[:20]}' is not a whole number")
    return int(value)
