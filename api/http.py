"""FHIR-over-HTTP mapping: bodies in, resources out, ETags, Prefer, limits. No rules live here."""

from __future__ import annotations

import functools
import json
from typing import Any

from flask import Response, current_app, request
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from ehcp_record.errors import FhirError, invalid, outcome_of
from ehcp_record.fhir.model import check_nesting
from ehcp_record.store.versions import Version

FHIR_JSON = "application/fhir+json"
_ACCEPTED_BODY_TYPES = ("application/fhir+json", "application/json")


def fhir_response(body: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    response = Response(text, status=status, mimetype=FHIR_JSON)
    response.headers["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def error_response(error: FhirError) -> Response:
    return fhir_response(outcome_of(error), error.status, error.headers)


def version_headers(version: Version, location: bool = False) -> dict[str, str]:
    headers = {"ETag": f'W/"{version.vid}"', "Last-Modified": _http_date(version)}
    if location:
        headers["Location"] = f"{request.script_root}/fhir/{version.type}/{version.id}/_history/{version.vid}"
    return headers


def _http_date(version: Version) -> str:
    return version.updated.strftime("%a, %d %b %Y %H:%M:%S GMT")


def json_body() -> Any:
    """The request body as JSON, after the content-type and size checks."""
    content_type = (request.mimetype or "").lower()
    if content_type not in _ACCEPTED_BODY_TYPES:
        raise FhirError(415, "not-supported", f"send {FHIR_JSON} (or application/json), not '{content_type or 'nothing'}'")
    raw = _limited_body(current_app.extensions["ehcp"].settings.max_body_bytes)
    if not raw:
        raise invalid("the request has no body", "required")
    try:
        body = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise invalid(f"the body is not valid JSON: {str(exc)[:120]}", "structure") from None
    root = body.get("resourceType") if isinstance(body, dict) else None
    check_nesting(body, root if isinstance(root, str) and root.isalpha() and len(root) <= 64 else "", resource_types=False)
    _no_null_properties(body, root if isinstance(root, str) and root.isalpha() else "")
    return body


def _no_null_properties(node: Any, where: str) -> None:
    """FHIR JSON never has a property whose value is null (nulls only pad primitive arrays)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if value is None:
                raise invalid(f"{where}.{key} is null; leave an empty property out", "structure", [f"{where}.{key}"])
            _no_null_properties(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _no_null_properties(item, f"{where}[{index}]")


def _limited_body(limit: int) -> bytes:
    """Read at most `limit` bytes, whatever Content-Length claims (chunked bodies included)."""
    if request.content_length is not None and request.content_length > limit:
        raise FhirError(413, "too-costly", f"FHIR JSON bodies are limited to {limit // 1024} KiB")
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise FhirError(413, "too-costly", f"FHIR JSON bodies are limited to {limit // 1024} KiB")
    return raw


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in FHIR JSON")


def if_match() -> int | None:
    value = request.headers.get("If-Match")
    if value is None:
        return None
    digits = value.strip().removeprefix("W/").strip('"')
    if not digits.isdigit() or len(digits) > 9:
        raise invalid("If-Match must be an ETag such as W/\"3\"", "invalid")
    return int(digits)


def preferences() -> dict[str, str]:
    """The Prefer header (RFC 7240 §2): a comma-separated list of `name[=value]`, parameters
    after `;` ignored. `return=minimal, handling=strict` is two preferences."""
    found: dict[str, str] = {}
    for item in request.headers.get("Prefer", "").split(","):
        for part in item.split(";")[:1]:
            name, _, value = part.strip().partition("=")
            if name:
                found.setdefault(name.strip().lower(), value.strip().strip('"'))
    return found


def prefer_return() -> str:
    value = preferences().get("return", "")
    return value if value in ("minimal", "representation", "OperationOutcome") else "representation"


def strict_handling() -> bool:
    """`Prefer: handling=strict` makes an unknown search parameter an error (R4 search §3.1.1.3.1)."""
    return preferences().get("handling") == "strict"


def require_json_accepted() -> None:
    """406 when the client asks (by `_format` or Accept) only for a format we do not serve."""
    from ehcp_record.fhir.search import check_format

    for value in request.args.getlist("_format"):
        check_format(value)
    if not _serves_json(request.headers.get("Accept", "")):
        raise FhirError(406, "not-supported", "only JSON is served: accept application/fhir+json")


@functools.lru_cache(maxsize=256)
def _serves_json(accept_header: str) -> bool:
    """Does this Accept header (RFC 9110 §12.5.1) take one of our JSON types? A client sends
    the same header on every request, so its parse is kept (werkzeug's is a few per cent of
    a search's CPU)."""
    accept = parse_accept_header(accept_header, MIMEAccept)
    return not accept or accept.best_match(["application/fhir+json", "application/json"]) is not None


def not_modified(version: Version) -> Response | None:
    """304 for a repeat read whose copy is current (RFC 9110 §13.1.2, §13.1.3; R4 http §3.1.0.3):
    If-None-Match wins over If-Modified-Since."""
    etag = f'W/"{version.vid}"'
    tags = request.headers.get("If-None-Match")
    if tags is not None:
        offered = {t.strip().removeprefix("W/") for t in tags.split(",")}
        fresh = "*" in offered or etag.removeprefix("W/") in offered
    elif request.if_modified_since is not None:
        fresh = version.updated.replace(microsecond=0) <= request.if_modified_since
    else:
        return None
    if not fresh:
        return None
    response = Response(status=304)
    response.headers.extend(version_headers(version))
    return response


def write_response(version: Version, created: bool, resource: dict) -> Response:
    """201/200 honouring Prefer: return=minimal | representation | OperationOutcome."""
    status = 201 if created else 200
    headers = version_headers(version, location=True)
    preference = prefer_return()
    if preference == "minimal":
        response = Response(status=status)
        response.headers.extend(headers)
        return response
    if preference == "OperationOutcome":
        outcome = {"resourceType": "OperationOutcome", "issue": [{
            "severity": "information", "code": "informational",
            "diagnostics": f"{version.type}/{version.id} {'created' if created else 'updated'} at version {version.vid}",
        }]}
        return fhir_response(outcome, status, headers)
    return fhir_response(resource, status, headers)


def query_pairs() -> list[tuple[str, str]]:
    """Search parameters from the query string, or the form body of POST _search."""
    pairs = list(request.args.items(multi=True))
    if request.method == "POST":
        if request.mimetype != "application/x-www-form-urlencoded":
            raise FhirError(415, "not-supported", "POST _search takes application/x-www-form-urlencoded")
        pairs += list(request.form.items(multi=True))
    return pairs


def base_url() -> str:
    """This server's FHIR base as configured (EHCP_BASE_URL), never the request's Host header,
    which any client may set: links and fullUrls must point at this server."""
    return current_app.extensions["ehcp"].settings.base_url.rstrip("/")


def bundle_link(path: str, pairs: list[tuple[str, str]]) -> str:
    """An absolute link below the base; `path` is relative to it ("" or "/Patient")."""
    from urllib.parse import urlencode
    base = base_url() + path
    return f"{base}?{urlencode(pairs)}" if pairs else base
