"""The CapabilityStatement, generated from what the server really implements.

Search parameters come from the registry loaded from profiles/SearchParameter; operations from
the operation table the operations blueprint registers; so the statement cannot drift from
the code.
"""

from __future__ import annotations

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
            "security": _security(),
            "resource": [_resource(services, t) for t in STORED_TYPES + READ_ONLY_TYPES],
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
            "operation": [{"name": name, "definition": definition} for name, rtype, definition in OPERATIONS if rtype is None],
        }],
    }


def _security() -> dict:
    return {
        "cors": False,
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                 "code": "SMART-on-FHIR"}]}],
        "description": "Bearer JWTs from trusted issuers; SMART v2 scopes narrowed by role, organisation, "
                       "custody and the family's consent.",
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
