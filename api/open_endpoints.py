"""Endpoints that need no token: the CapabilityStatement, SMART discovery, health checks."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.capability import capability_statement
from api.context import services
from api.http import fhir_response

bp = Blueprint("open", __name__)


@bp.get("/fhir/metadata")
def metadata() -> Response:
    return fhir_response(capability_statement(services()))


@bp.get("/fhir/.well-known/smart-configuration")
def smart_configuration() -> Response:
    settings = services().settings
    return jsonify({
        "issuer": settings.base_url,
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "grant_types_supported": ["client_credentials", "authorization_code"],
        "scopes_supported": ["patient/*.rs", "patient/*.cruds", "user/*.rs", "user/*.cruds", "system/*.rs", "system/*.cruds"],
        "response_types_supported": ["code"],
        "capabilities": ["client-confidential-asymmetric", "permission-v2", "context-standalone-patient"],
        "code_challenge_methods_supported": ["S256"],
        "trusted_issuers": [i.iss for i in settings.trusted_issuers],
    })


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "up"})


@bp.get("/readyz")
def readyz() -> Response:
    ready = services().records.ping()
    response = jsonify({"status": "ready" if ready else "database unreachable"})
    response.status_code = 200 if ready else 503
    return response
