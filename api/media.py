"""Binary upload and download: raw bytes streamed to and from GridFS, with HTTP range requests.

`application/fhir+json` bodies and Accept headers get FHIR JSON Binary resources (through the
REST blueprint for writes); any other content type is the file itself.
"""

from __future__ import annotations

from flask import Blueprint, Response, request, stream_with_context

from api.context import services, store
from api.http import FHIR_JSON, fhir_response, if_match, json_body, version_headers, write_response
from ehcp_record.errors import FhirError

bp = Blueprint("media", __name__, url_prefix="/fhir")
_JSON_TYPES = ("application/fhir+json", "application/json")


def _wants_json() -> bool:
    best = request.accept_mimetypes.best_match([FHIR_JSON, "application/json", "*/*"])
    return best in _JSON_TYPES and "*/*" not in (request.headers.get("Accept") or "*/*")


@bp.post("/Binary")
def upload() -> Response:
    if request.mimetype in _JSON_TYPES:
        version, shown, created = store().create(json_body(), "Binary", request.headers.get("If-None-Exist"))
        return write_response(version, created, shown)
    version, created = services().media.upload(store(), request.mimetype, request.headers.get("X-Security-Context"),
                                               request.stream)
    return write_response(version, created, version.resource)


@bp.put("/Binary/<binary_id>")
def replace(binary_id: str) -> Response:
    if request.mimetype in _JSON_TYPES:
        version, shown, created = store().update(json_body(), "Binary", binary_id, if_match())
        return write_response(version, created, shown)
    version, created = services().media.upload(store(), request.mimetype, request.headers.get("X-Security-Context"),
                                               request.stream, binary_id, if_match())
    return write_response(version, created, version.resource)


@bp.get("/Binary/<binary_id>")
@bp.get("/Binary/<binary_id>/_history/<vid>")
def download(binary_id: str, vid: str | None = None) -> Response:
    media_service = services().media
    version, shown = media_service.fetch(store(), binary_id, vid)
    media = store().media_of(version)
    if _wants_json() or media is None:
        return fhir_response(media_service.inline(store(), shown, media), 200, version_headers(version))
    return _file_response(version, media)


def _file_response(version, media: dict) -> Response:
    size = media["size"]
    start, end, status = 0, size, 200
    if request.range is not None:
        if request.range.units != "bytes" or len(request.range.ranges) != 1:
            raise FhirError(416, "not-supported", "send a single byte range, e.g. Range: bytes=0-1023")
        bounds = request.range.range_for_length(size)
        if bounds is None:
            response = Response(status=416)
            response.headers["Content-Range"] = f"bytes */{size}"
            return response
        start, end = bounds
        status = 206
    body = stream_with_context(services().media.stream(store(), media, start, end))
    response = Response(body, status=status, mimetype=version.resource.get("contentType"), direct_passthrough=True)
    response.headers.update(version_headers(version))
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["Content-Length"] = str(end - start)
    response.headers["X-Content-SHA256"] = media["sha256"]
    if status == 206:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return response
