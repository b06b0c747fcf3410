"""openapi.yaml is the HTTP contract (DESIGN.md layout): valid OpenAPI, and the same route table
as the Flask app in both directions, so neither can drift without a failing test.

Routes are compared by shape: every path parameter (`{type}` in the spec, `<resource_type>` in
Flask) becomes `{}`, so parameter names may differ but the structure may not.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from openapi_spec_validator import validate

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
IGNORED_FLASK_METHODS = {"HEAD", "OPTIONS"}
#: Our published definitions (profiles/) are open too, so their canonical URLs resolve for anyone.
CONFORMANCE_PATHS = {f"/fhir/{t}{suffix}" for t in ("StructureDefinition", "ValueSet", "CodeSystem", "SearchParameter",
                                                    "OperationDefinition", "CompartmentDefinition", "Measure")
                     for suffix in ("", "/{id}")}
OPEN_PATHS = {"/healthz", "/readyz", "/fhir/metadata", "/fhir/.well-known/smart-configuration"} | CONFORMANCE_PATHS
#: The authorization server (no bearer token: OAuth client authentication or the sign-in
#: session cookie) and the OAuth protocol endpoints whose errors are RFC 6749 §5.2 JSON.
SIGN_IN_PATHS = {"/oauth/authorize", "/oauth/token", "/oauth/revoke", "/oauth/introspect", "/oauth/jwks",
                 "/oauth/.well-known/openid-configuration", "/oauth/sign-in", "/oauth/sign-in/provider/{id}",
                 "/oauth/sign-in/callback", "/oauth/sign-out", "/oauth/account/links", "/oauth/account/links/{id}",
                 "/oauth/account/approvals/{client_id}",
                 # the inclusion dashboard (api/analytics.py): the same sign-in session cookie
                 "/dashboard", "/dashboard/reports", "/dashboard/static/{name}"}
OAUTH_ERROR_PATHS = {"/oauth/authorize", "/oauth/token", "/oauth/revoke", "/oauth/introspect",
                     "/oauth/sign-in/provider/{id}", "/oauth/sign-in/callback"}
#: Authenticated by the sending deployment's Ed25519 signature, not a bearer token.
SIGNED_PATHS = {"/fhir/$receive-transfer"}
#: API.md "Errors" and the brief: every one of these must be documented with an OperationOutcome.
ERROR_STATUSES = ("400", "401", "403", "404", "405", "409", "412", "413", "414", "415", "422", "428", "500")
SEARCH_QUERY_PARAMETERS = (
    "_count", "_offset", "_sort", "_include", "_id", "_lastUpdated", "_summary", "patient", "subject",
    "identifier", "status", "category", "code", "owner", "focus", "actor", "agent", "date", "due",
)
#: API.md "EHCP operations" (plus $validate and Binary): written exactly as the Flask rules will be.
EHCP_OPERATION_ROUTES = (
    ("/fhir/Composition/{}/$document", "GET"),
    ("/fhir/Composition/{}/_history/{}/$document", "GET"),
    ("/fhir/Composition/{}/$diff", "GET"),
    ("/fhir/Composition/{}/$propose", "POST"),
    ("/fhir/Task/{}/$respond", "POST"),
    ("/fhir/Task/{}/$proposal", "GET"),
    ("/fhir/Task/{}/$issue", "POST"),
    ("/fhir/Patient/{}/$transfer", "POST"),
    ("/fhir/Patient/{}/$erase", "POST"),
    ("/fhir/Task/{}/$accept", "POST"),
    ("/fhir/$receive-transfer", "POST"),
    ("/fhir/Patient/{}/$access-log", "GET"),
    ("/fhir/Patient/{}/$verify-audit", "GET"),
    ("/fhir/Patient/{}/$everything", "GET"),
    ("/fhir/{}/$validate", "POST"),
    ("/fhir/Binary", "POST"),
    ("/fhir/Binary/{}", "GET"),
)


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))


def spec_shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def flask_shape(rule: str) -> str:
    return re.sub(r"<[^>]*>", "{}", rule)


def spec_routes(spec: dict) -> set[tuple[str, str]]:
    return {(spec_shape(path), method.upper())
            for path, item in spec["paths"].items() for method in item if method in HTTP_METHODS}


def flask_routes(app) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in (rule.methods or set()) - IGNORED_FLASK_METHODS:
            routes.add((flask_shape(rule.rule), method))
    return routes


def operations(spec: dict):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, item, operation


def resolve(spec: dict, node: dict) -> dict:
    while isinstance(node, dict) and "$ref" in node:
        target = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def parameter_names(spec: dict, item: dict, operation: dict, location: str) -> set[str]:
    params = [resolve(spec, p) for p in item.get("parameters", []) + operation.get("parameters", [])]
    return {p["name"] for p in params if p["in"] == location}


def _describe(routes: set[tuple[str, str]]) -> str:
    return "\n".join(f"  {method} {path}" for path, method in sorted(routes)) or "  (none)"


def test_spec_is_valid_openapi(spec):
    validate(spec)
    assert spec["openapi"].startswith("3.")


def test_spec_and_flask_have_the_same_routes(api, spec):
    documented, served = spec_routes(spec), flask_routes(api.app)
    not_served = documented - served
    not_documented = served - documented
    assert not not_served and not not_documented, (
        "openapi.yaml and the Flask URL map disagree.\n"
        f"In openapi.yaml but not served by Flask ({len(not_served)}):\n{_describe(not_served)}\n"
        f"Served by Flask but not in openapi.yaml ({len(not_documented)}):\n{_describe(not_documented)}"
    )


def test_spec_documents_every_api_md_route(spec):
    documented = spec_routes(spec)
    core = {("/healthz", "GET"), ("/readyz", "GET"), ("/fhir/metadata", "GET"),
            ("/fhir/.well-known/smart-configuration", "GET"), ("/fhir", "POST"), ("/fhir/{}", "GET"),
            ("/fhir/{}", "POST"), ("/fhir/{}/_search", "POST"), ("/fhir/{}/{}", "GET"), ("/fhir/{}/{}", "PUT"),
            ("/fhir/{}/{}", "DELETE"), ("/fhir/{}/{}/_history", "GET"), ("/fhir/{}/{}/_history/{}", "GET")}
    missing = (core | set(EHCP_OPERATION_ROUTES)) - documented
    assert not missing, f"openapi.yaml lacks:\n{_describe(missing)}"


def test_every_error_status_is_an_operation_outcome(spec):
    seen: set[str] = set()
    wrong = []
    for path, method, _, operation in operations(spec):
        for status, response in operation["responses"].items():
            if not status.startswith(("4", "5")) or (path == "/readyz" and status == "503"):
                continue
            seen.add(status)
            content = resolve(spec, response).get("content", {})
            if path in OAUTH_ERROR_PATHS and status in ("400", "401", "502") and "application/json" in content:
                if resolve(spec, content["application/json"]["schema"]) is not spec["components"]["schemas"]["OAuthError"]:
                    wrong.append(f"{method.upper()} {path} {status} (not an OAuth error)")
                continue
            schema = resolve(spec, content.get("application/fhir+json", {}).get("schema", {}))
            if schema is not resolve(spec, {"$ref": "#/components/schemas/OperationOutcome"}):
                wrong.append(f"{method.upper()} {path} {status}")
    assert not wrong, f"error responses without an OperationOutcome body: {wrong}"
    assert set(ERROR_STATUSES) <= seen, f"never documented: {sorted(set(ERROR_STATUSES) - seen)}"
    outcome = spec["components"]["schemas"]["OperationOutcome"]
    issue = outcome["properties"]["issue"]["items"]
    assert {"severity", "code"} <= set(issue["required"]) and "diagnostics" in issue["properties"]


def test_search_documents_the_api_md_parameters(spec):
    item = spec["paths"]["/fhir/{type}"]
    names = parameter_names(spec, item, item["get"], "query")
    missing = set(SEARCH_QUERY_PARAMETERS) - names
    assert not missing, f"GET /fhir/{{type}} does not document {sorted(missing)}"


def test_search_documents_every_capability_statement_parameter(api, spec):
    statement = api.get("/fhir/metadata").json()
    served = {p["name"] for r in statement["rest"][0]["resource"] for p in r.get("searchParam", [])}
    item = spec["paths"]["/fhir/{type}"]
    missing = served - parameter_names(spec, item, item["get"], "query")
    assert not missing, f"search parameters in the CapabilityStatement but not in openapi.yaml: {sorted(missing)}"


def test_capability_statement_operations_are_documented(api, spec):
    statement = api.get("/fhir/metadata").json()
    rest = statement["rest"][0]
    names = {op["name"] for op in rest.get("operation", [])}
    names |= {op["name"] for r in rest["resource"] for op in r.get("operation", [])}
    paths = " ".join(spec["paths"])
    missing = {name for name in names if f"${name}" not in paths}
    assert not missing, f"operations in the CapabilityStatement with no route in openapi.yaml: {sorted(missing)}"


def test_write_headers_are_documented(spec):
    create = spec["paths"]["/fhir/{type}"]["post"]
    update = spec["paths"]["/fhir/{type}/{id}"]["put"]
    transaction = spec["paths"]["/fhir"]["post"]
    assert {"If-None-Exist", "Prefer"} <= parameter_names(spec, spec["paths"]["/fhir/{type}"], create, "header")
    assert {"If-Match", "Prefer"} <= parameter_names(spec, spec["paths"]["/fhir/{type}/{id}"], update, "header")
    assert "Prefer" in parameter_names(spec, spec["paths"]["/fhir"], transaction, "header")
    assert {"201", "412"} <= set(create["responses"]) and {"200", "412", "428"} <= set(update["responses"])
    assert {"ETag", "Location"} <= set(resolve(spec, create["responses"]["201"])["headers"])


def test_fhir_json_request_bodies(spec):
    for path, method, _, operation in operations(spec):
        body = resolve(spec, operation.get("requestBody", {}))
        if not body or path.endswith("/_search") or path.startswith("/oauth/"):
            continue
        assert "application/fhir+json" in body["content"], f"{method.upper()} {path} does not take FHIR JSON"


def test_bearer_jwt_everywhere_except_open_endpoints(spec):
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    assert spec["security"] == [{"bearerAuth": []}]
    for path, method, _, operation in operations(spec):
        if path in OPEN_PATHS or path in SIGN_IN_PATHS:
            assert operation.get("security") == [], f"{method.upper()} {path} should need no token"
        elif path in SIGNED_PATHS:
            assert operation.get("security") == [{"transferSignature": []}], f"{method.upper()} {path}"
            assert spec["components"]["securitySchemes"]["transferSignature"]["name"] == "X-EHCP-Signature"
            assert "403" in operation["responses"], f"{method.upper()} {path} does not document 403"
        else:
            assert "security" not in operation, f"{method.upper()} {path} must inherit bearerAuth"
            assert "401" in operation["responses"], f"{method.upper()} {path} does not document 401"


def test_every_database_route_documents_503_with_retry_after(spec):
    """Database trouble is 503 + Retry-After (README, robustness): every
    operation that can reach MongoDB (those that document a 500) documents that answer too."""
    missing = [f"{method.upper()} {path}" for path, method, _, operation in operations(spec)
               if "500" in operation.get("responses", {}) and "503" not in operation["responses"]]
    assert not missing, missing
    unavailable = spec["components"]["responses"]["ServiceUnavailable"]
    assert "Retry-After" in unavailable["headers"]
    assert unavailable["content"]["application/fhir+json"]["schema"]["$ref"].endswith("/OperationOutcome")
