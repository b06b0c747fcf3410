"""The Flask application factory (Flask tutorial shape): settings -> services -> blueprints."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any, Mapping

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from api.auth import TokenVerifier
from api.context import current_store, request_id
from api.context import services as request_services
from api.http import FHIR_JSON, error_response
from ehcp_record.config import Settings, load_settings
from ehcp_record.errors import FhirError, issue_code_for_status, outcome_of, unavailable
from ehcp_record.fhir.conformance import SERVED_TYPES as SERVED_CONFORMANCE_TYPES
from ehcp_record.store import health
from ehcp_record.wiring import build_services

log = logging.getLogger("ehcp_record.api")
#: Requests that legitimately outlast the per-request database deadline: streamed media and
#: deliveries between deployments (their single operations are still bounded by the client).
_NO_DEADLINE = frozenset({"media.upload", "media.replace", "media.download", "operations.transfer",
                          "operations.receive_transfer"})


def create_app(test_config: Mapping[str, Any] | None = None, settings: Settings | None = None) -> Flask:
    settings = settings or load_settings(test_config)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_binary_bytes
    services = build_services(settings)
    services.verifier = TokenVerifier(settings, identity=services.identity)
    app.extensions["ehcp"] = services
    _register_blueprints(app)
    _init_authorization_server(app)
    _init_cors(app, settings)
    _register_errors(app)
    app.before_request(_check_limits)
    app.before_request(_guard_database)
    app.teardown_request(_end_database_deadline)
    app.after_request(_common_headers)
    app.after_request(_errors_as_outcomes)
    if settings.analytics_refresh_seconds and settings.env != "test" and services.analytics is not None:
        services.analytics.extract.refresh_in_background(settings.analytics_refresh_seconds, log.warning)
    return app


#: Our conformance resources have read-only routes of their own (api/conformance.py).
_CONFORMANCE = "|".join(SERVED_CONFORMANCE_TYPES)


class _ResourceTypeConverter(BaseConverter):
    """A FHIR resource type in a URL: so /fhir/metadata or /fhir/$receive-transfer never match
    the generic /fhir/<type> rules (a wrong method there is 405 with Allow, not a 404), nor do
    the conformance types served read-only by their own routes."""

    regex = rf"(?!(?:{_CONFORMANCE})(?![A-Za-z]))[A-Z][A-Za-z]{{0,63}}"


class _JsonResourceTypeConverter(_ResourceTypeConverter):
    """A resource type other than Binary, whose raw-media routes are its own (so PUT
    /fhir/Binary, which conditional update would otherwise answer, stays 405)."""

    regex = rf"(?!(?:Binary|{_CONFORMANCE})(?![A-Za-z]))[A-Z][A-Za-z]{{0,63}}"


class _LogicalIdConverter(BaseConverter):
    """A path segment that is not a FHIR keyword (`_search`, `$validate`): so those never match
    /fhir/<type>/<id>. Any other malformed id still reaches the view and its 400."""

    regex = r"(?![_$])[^/]+"


def _init_authorization_server(app: Flask) -> None:
    from api import oauth

    oauth.init_app(app)


def _init_cors(app: Flask, settings: Settings) -> None:
    """Browser apps on the configured origins only (none by default): preflight answered, the
    headers a FHIR client reads exposed (versioning and create need ETag and Location)."""
    if not settings.cors_origins:
        return
    from flask_cors import CORS

    CORS(app, origins=list(settings.cors_origins), supports_credentials=False, max_age=600,
         expose_headers=["ETag", "Location", "Content-Location", "Last-Modified", "X-Request-ID"],
         allow_headers=["Authorization", "Content-Type", "Accept", "If-Match", "If-None-Exist", "If-None-Match",
                        "Prefer", "X-Request-ID", "X-Security-Context"],
         methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"])


def _register_blueprints(app: Flask) -> None:
    from api import analytics, conformance, media, oauth, open_endpoints, operations, rest

    app.url_map.converters["fhir_type"] = _ResourceTypeConverter
    app.url_map.converters["fhir_json_type"] = _JsonResourceTypeConverter
    app.url_map.converters["fhir_id"] = _LogicalIdConverter
    app.register_blueprint(open_endpoints.bp)
    app.register_blueprint(oauth.bp)
    app.register_blueprint(conformance.bp)
    app.register_blueprint(operations.bp)
    app.register_blueprint(analytics.bp)
    app.register_blueprint(media.bp)
    app.register_blueprint(rest.bp)


def _check_limits() -> None:
    limit = request_settings().max_query_bytes
    if len(request.query_string) > limit:
        raise FhirError(414, "too-costly", f"the query string is longer than {limit // 1024} KiB")


def _guard_database() -> None:
    """Fail fast (503) while the driver knows of no primary, and bound the time one request may
    spend on the database (a transaction's retries included) by `db_request_timeout`."""
    if request.endpoint is None or request.blueprint in ("open", "conformance"):
        return
    request_services().records.probe_when_no_primary()
    if request.endpoint not in _NO_DEADLINE:
        deadline = health.request_deadline(request_settings().db_request_timeout)
        deadline.__enter__()
        g.database_deadline = deadline


def _end_database_deadline(_: BaseException | None) -> None:
    deadline = g.pop("database_deadline", None)
    if deadline is not None:
        deadline.__exit__(None, None, None)


def request_settings() -> Settings:
    from flask import current_app

    return current_app.extensions["ehcp"].settings


def _common_headers(response: Response) -> Response:
    response.headers["X-Request-ID"] = request_id()
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _errors_as_outcomes(response: Response) -> Response:
    """Every error answers an OperationOutcome, even one a view built bare (e.g. a 416)."""
    if response.status_code < 400 or response.mimetype in (FHIR_JSON, "application/json"):
        return response
    status = response.status_code
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    message = f"{status} {phrase}"
    if status == 416 and response.headers.get("Content-Range"):
        message += f": the range is outside the content ({response.headers['Content-Range']})"
    response.direct_passthrough = False
    response.set_data(json.dumps(outcome_of(FhirError(status, issue_code_for_status(status), message))))
    response.headers["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
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
        allow = {k: v for k, v in error.get_headers() if k == "Allow"}  # a 405 names what is allowed (RFC 9110)
        return error_response(FhirError(status, issue_code_for_status(status), message, headers=allow))

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        if health.database_unavailable(error):
            log.warning("database unavailable in request %s: %s", request_id(), error)
            return error_response(unavailable())
        log.exception("unhandled error in request %s", request_id())
        return error_response(FhirError(500, "exception", f"internal error; quote request id {request_id()}"))
