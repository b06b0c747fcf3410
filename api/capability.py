"""The CapabilityStatement, generated from what the server really implements.

Search parameters come from the registry loaded from profiles/SearchParameter; operations from
the operation table the operations blueprint registers; so the statement cannot drift from
the code.
"""

from __future__ import annotations

from ehcp_record.config import Settings
from ehcp_record.fhir.canonical import canonical
from ehcp_record.fhir.conformance import SERVED_TYPES
from ehcp_record.fhir.model import READ_ONLY_TYPES, STORED_TYPES
from ehcp_record.wiring import Services

#: (name, resource type or None for system level, definition canonical); filled by api.operations
OPERATIONS: list[tuple[str, str | None, str]] = []
_WRITE = ["create", "update"]
_READ = ["read", "vread", "history-instance", "history-type", "search-type"]
#: The one type a client may delete (R4 http §3.1.0.7; api/rest.py `delete`).
DELETABLE_TYPES = frozenset({"Subscription"})


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
            "resource": [_resource(services, t) for t in STORED_TYPES + READ_ONLY_TYPES]
                        + [_conformance_resource(services, t) for t in SERVED_TYPES]
                        + [_operations_only(t) for t in _operation_only_types()],
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
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
                       "server (roles from the fhirUser linked to the person, who signs in with a configured "
                       "OpenID Connect provider; third-party apps need the person's approval) or trusted issuers; "
                       "SMART v2 scopes narrowed by role, organisation, custody and the family's consent.",
    }


def _resource(services: Services, resource_type: str) -> dict:
    interactions = _READ if resource_type in READ_ONLY_TYPES else _WRITE + _READ
    if resource_type in DELETABLE_TYPES:  # by its owner; statutory records are never deleted
        interactions = interactions + ["delete"]
    entry: dict = {
        "type": resource_type,
        "interaction": [{"code": code} for code in interactions],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": resource_type not in READ_ONLY_TYPES,
        "conditionalCreate": resource_type not in READ_ONLY_TYPES,
        "conditionalUpdate": resource_type not in READ_ONLY_TYPES and resource_type != "Binary",
        "conditionalDelete": "not-supported",
        "searchInclude": _includes(services, resource_type),
        "searchRevInclude": _revincludes(services, resource_type),
        "searchParam": _search_params(services, resource_type),
    }
    profiles = _profiles_of(services, resource_type)
    if profiles:
        entry["supportedProfile"] = profiles
    if not entry["searchInclude"]:
        del entry["searchInclude"]
    if not entry["searchRevInclude"]:
        del entry["searchRevInclude"]
    operations = [{"name": n, "definition": d} for n, rtype, d in OPERATIONS if rtype == resource_type]
    if operations:
        entry["operation"] = operations
    return entry


def _operation_only_types() -> list[str]:
    """Types served only through an operation (Measure: `$evaluate-measure`, api/analytics.py)."""
    listed = set(STORED_TYPES) | set(READ_ONLY_TYPES) | set(SERVED_TYPES)
    return sorted({rtype for _, rtype, _ in OPERATIONS if rtype and rtype not in listed})


def _operations_only(resource_type: str) -> dict:
    return {"type": resource_type,
            "operation": [{"name": n, "definition": d} for n, rtype, d in OPERATIONS if rtype == resource_type]}


def _search_params(services: Services, resource_type: str) -> list[dict]:
    params = [{"name": "_id", "type": "token"}, {"name": "_lastUpdated", "type": "date"}]
    for param in sorted(services.registry.for_type(resource_type), key=lambda p: p.code):
        params.append({"name": param.code, "type": param.type,
                       "definition": canonical("SearchParameter", f"ehcp-{param.code}")})
    return params


def _profiles_of(services: Services, resource_type: str) -> list[str]:
    """Our profiles of this type (R4 CapabilityStatement.rest.resource.supportedProfile)."""
    sds = services.conformance.resources.get("StructureDefinition", {}).values()
    return sorted(sd["url"] for sd in sds if sd.get("type") == resource_type and sd.get("derivation") == "constraint")


def _includes(services: Services, resource_type: str) -> list[str]:
    return sorted(f"{resource_type}:{p.code}" for p in services.registry.for_type(resource_type) if p.type == "reference")


def _revincludes(services: Services, resource_type: str) -> list[str]:
    """`Type:param` for every reference parameter elsewhere that may point at this type."""
    found = []
    for other in STORED_TYPES + READ_ONLY_TYPES:
        for param in services.registry.for_type(other):
            if param.type == "reference" and (not param.targets or resource_type in param.targets):
                found.append(f"{other}:{param.code}")
    return sorted(set(found))


def _conformance_resource(services: Services, resource_type: str) -> dict:
    """Our definitions in profiles/, served read-only and without a token."""
    entry = {"type": resource_type, "interaction": [{"code": "read"}, {"code": "search-type"}],
             "searchParam": [{"name": n, "type": "uri" if n == "url" else "token"}
                             for n in ("_id", "url", "name", "version", "status")]}
    operations = [{"name": n, "definition": d} for n, rtype, d in OPERATIONS if rtype == resource_type]
    return entry | ({"operation": operations} if operations else {})
