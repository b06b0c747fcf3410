"""The CapabilityStatement, generated from what the server really implements.

Search parameters come from the registry loaded from profiles/SearchParameter; operations from
the operation table the operations blueprint registers; so the statement cannot drift from
the code.
"""

from __future__ import annotations

from ehcp_record.config import Settings
from ehcp_record.fhir.canonical import canonical
from ehcp_record.fhir.model import READ_ONLY_TYPES, STORED_TYPES
from ehcp_record.wiring import Services

#: (name, resource type or None for system level, definition canonical); filled by api.operations
OPERATIONS: list[tuple[str, str | None, str]] = []
_WRITE = ["create", "update"]
_READ = ["read", "vread", "history-instance", "search-type"]


def capability_statement(services: Services) -> dict:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "kind": "instance",
        "software": {"name": "EHCP Record", "version": "0.1.0"},
        "implementation": {"description": "Family-held digital Education, Health and Care Plan record",
                           "url": services.settings.base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/json"],
        "rest": [{
            "mode": "server",
            "security": _security(services.settings),
            "resource": [_resource(services, t) for t in STORED_TYPES + READ_ONLY_TYPES],
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
            "operation": [{"name": name, "definition": definition} for name, rtype, definition in OPERATIONS if rtype is None],
        }],
    }


OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def _security(settings: Settings) -> dict:
    """SMART App Launch 2 §"Capability Statement": the oauth-uris extension names the
    endpoints, and `cors` says whether browser apps on other origins are allowed."""
    oauth = settings.oauth_issuer
    uris = [("authorize", "authorize"), ("token", "token"), ("revoke", "revoke"), ("introspect", "introspect")]
    return {
        "extension": [{"url": OAUTH_URIS,
                       "extension": [{"url": name, "valueUri": f"{oauth}/{path}"} for name, path in uris]}],
        "cors": bool(settings.cors_origins),
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                 "code": "SMART-on-FHIR"}]}],
        "description": "SMART App Launch 2 and Backend Services: bearer JWTs from this server's authorization "
                       "server (roles from the fhirUser linked to the person) or trusted issuers; SMART v2 scopes "
                       "narrowed by role, organisation, custody and the family's consent.",
    }


def _resource(services: Services, resource_type: str) -> dict:
    interactions = _READ if resource_type in READ_ONLY_TYPES else _WRITE + _READ
    entry: dict = {
        "type": resource_type,
        "interaction": [{"code": code} for code in interactions],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": resource_type not in READ_ONLY_TYPES,
        "conditionalCreate": resource_type not in READ_ONLY_TYPES,
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
        "searchParam": _search_params(services, resource_type),
    }
    operations = [{"name": n, "definition": d} for n, rtype, d in OPERATIONS if rtype == resource_type]
    if operations:
        entry["operation"] = operations
    return entry


def _search_params(services: Services, resource_type: str) -> list[dict]:
    params = [{"name": "_id", "type": "token"}, {"name": "_lastUpdated", "type": "date"}]
    for param in sorted(services.registry.for_type(resource_type), key=lambda p: p.code):
        params.append({"name": param.code, "type": param.type,
                       "definition": canonical("SearchParameter", f"ehcp-{param.code}")})
    return params
