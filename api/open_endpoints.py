"""Endpoints that need no token: the CapabilityStatement, SMART discovery, health checks."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.capability import capability_statement
from api.context import services
from api.http import fhir_response
from api.oauth_server import ASSERTION_ALGORITHMS
from ehcp_record.config import Settings
from ehcp_record.identity.keys import ALGORITHM

bp = Blueprint("open", __name__)


@bp.get("/fhir/metadata")
def metadata() -> Response:
    return fhir_response(capability_statement(services()))


@bp.get("/fhir/.well-known/smart-configuration")
def smart_configuration() -> Response:
    """SMART App Launch 2 §"Metadata": only what this server really does is listed."""
    return jsonify(smart_metadata(services().settings))


def smart_metadata(settings: Settings) -> dict:
    oauth = settings.oauth_issuer
    return {
        "issuer": oauth,
        "jwks_uri": f"{oauth}/jwks",
        "authorization_endpoint": f"{oauth}/authorize",
        "token_endpoint": f"{oauth}/token",
        "revocation_endpoint": f"{oauth}/revoke",
        "introspection_endpoint": f"{oauth}/introspect",
        "token_endpoint_auth_methods_supported": ["none", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "scopes_supported": ["openid", "fhirUser", "launch/patient", "offline_access", "online_access",
                             "patient/*.rs", "patient/*.cruds", "user/*.rs", "user/*.cruds",
                             "system/*.rs", "system/*.cruds"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "capabilities": ["launch-standalone", "authorize-post", "client-public", "client-confidential-asymmetric",
                         "context-standalone-patient", "permission-offline", "permission-online",
                         "permission-patient", "permission-user", "permission-v2", "sso-openid-connect"],
        "trusted_issuers": [i.iss for i in settings.trusted_issuers],
        "identity_providers": [p.issuer for p in settings.identity_providers],
    }


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "up"})


@bp.get("/readyz")
def readyz() -> Response:
    records = services().records
    ready = records.ping()
    body: dict = {"status": "ready" if ready else "database unreachable"}
    if records.warnings:  # ready, but an operator must act (e.g. duplicate NHS numbers)
        body["warnings"] = records.warnings
    response = jsonify(body)
    response.status_code = 200 if ready else 503
    return response
