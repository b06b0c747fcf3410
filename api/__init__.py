"""The Flask application factory (Flask tutorial shape): settings -> services -> blueprints."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from api.auth import TokenVerifier
from api.context import current_store, request_id
from api.http import error_response
from ehcp_record.config import Settings, load_settings
from ehcp_record.errors import FhirError
from ehcp_record.wiring import build_services

log = logging.getLogger("ehcp_record.api")
_HTTP_CODES = {404: "not-found", 405: "not-supported", 413: "too-costly", 414: "too-costly", 415: "not-supported"}


def create_app(test_config: Mapping[str, Any] | None = None, settings: Settings | None = None) -> Flask:
    settings = settings or load_settings(test_config)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_binary_bytes
    services = build_services(settings)
    services.verifier = TokenVerifier(settings)
    app.extensions["ehcp"] = services
    _register_blueprints(app)
    _register_errors(app)
    app.before_request(_check_limits)
    app.after_request(_common_headers)
    return app


def _register_blueprints(app: Flask) -> None:
    from api import media, open_endpoints, operations, rest

    app.register_blueprint(open_endpoints.bp)
    app.register_blueprint(operations.bp)
    app.register_blueprint(media.bp)
    app.register_blueprint(rest.bp)


def _check_limits() -> None:
    limit = request_settings().max_query_bytes
    if len(request.query_string) > limit:
        raise FhirError(414, "too-costly", f"the query string is longer than {limit // 1024} KiB")


def request_settings() -> Settings:
    from flask import current_app

    return current_app.extensions["ehcp"].settings


def _common_headers(response: Response) -> Response:
    response.headers["X-Request-ID"] = request_id()
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _register_errors(app: Flask) -> None:
    @app.errorhandler(FhirError)
    def _fhir_error(error: FhirError) -> Response:
        from ehcp_record.access.policy import Refusal

        scoped = current_store()
        if isinstance(error, Refusal) and scoped is not None:
            scoped.settle(error)  # refused outside a store method: audited once, here
        return error_response(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        message = {404: "no such endpoint", 405: "that method is not allowed on this endpoint",
                   413: "the request body is too large"}.get(status, error.description or error.name)
        return error_response(FhirError(status, _HTTP_CODES.get(status, "invalid" if status < 500 else "exception"), message))

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error in request %s", request_id())
        return error_response(FhirError(500, "exception", f"internal error; quote request id {request_id()}"))
