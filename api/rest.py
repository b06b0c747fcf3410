"""The FHIR REST interactions (API.md "Resource interactions"): thin mapping onto the service."""

from __future__ import annotations

from flask import Blueprint, Response

from api.context import caller, services, store
from api.http import bundle_link, fhir_response, if_match, json_body, query_pairs, version_headers, write_response
from ehcp_record.errors import FhirError, not_supported
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
    pairs = query_pairs()
    total, events, offset, count = services().audit_log.search(store(), pairs)
    path = "/fhir/AuditEvent"
    links = [{"relation": "self", "url": bundle_link(path, pairs)}]
    rest = [(k, v) for k, v in pairs if k not in ("_count", "_offset")]
    if offset + count < total:
        links.append({"relation": "next", "url": bundle_link(path, rest + [("_count", str(count)), ("_offset", str(offset + count))])})
    entries = [{"fullUrl": bundle_link(f"{path}/{e['id']}", []), "resource": e, "search": {"mode": "match"}} for e in events]
    return fhir_response({"resourceType": "Bundle", "type": "searchset", "total": total, "link": links, "entry": entries})


def _searchset(resource_type: str, result) -> dict:
    query = result.query
    path = f"/fhir/{resource_type}"
    base_pairs = query.without_paging()
    links = [{"relation": "self", "url": bundle_link(path, query.echo)}]
    if query.offset + query.count < result.total and query.count:
        links.append({"relation": "next", "url": bundle_link(path, base_pairs + [
            ("_count", str(query.count)), ("_offset", str(query.offset + query.count))])})
    if query.offset > 0:
        previous = max(query.offset - query.count, 0)
        links.append({"relation": "previous", "url": bundle_link(path, base_pairs + [
            ("_count", str(query.count)), ("_offset", str(previous))])})
    entries = [_entry(r, "match") for r in result.matches] + [_entry(r, "include") for r in result.included]
    return {"resourceType": "Bundle", "type": "searchset", "total": result.total, "link": links, "entry": entries}


def _entry(resource: dict, mode: str) -> dict:
    return {"fullUrl": bundle_link(f"/fhir/{resource['resourceType']}/{resource['id']}", []),
            "resource": resource, "search": {"mode": mode}}


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
    entries = [{
        "fullUrl": bundle_link(f"/fhir/{resource_type}/{resource_id}", []), "resource": shown,
        "request": {"method": "POST" if v.vid == 1 else "PUT",
                    "url": resource_type if v.vid == 1 else f"{resource_type}/{resource_id}"},
        "response": {"status": "201 Created" if v.vid == 1 else "200 OK", "etag": f'W/"{v.vid}"',
                     "lastModified": shown.get("meta", {}).get("lastUpdated")},
    } for v, shown in versions]
    return fhir_response({"resourceType": "Bundle", "type": "history", "total": total, "entry": entries})


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
