"""Our conformance resources (StructureDefinition, ValueSet, CodeSystem, SearchParameter,
OperationDefinition, CompartmentDefinition): read and search, no token needed, so every
canonical URL in profiles/ resolves here (ehcp_record/fhir/conformance.py)."""

from __future__ import annotations

from flask import Blueprint, Response

from api.context import services
from api.http import base_url, fhir_response, query_pairs, require_json_accepted, strict_handling
from ehcp_record.fhir import bundles
from ehcp_record.fhir.conformance import SERVED_TYPES

bp = Blueprint("conformance", __name__, url_prefix="/fhir")


def _read(resource_type: str, resource_id: str) -> Response:
    require_json_accepted()
    resource = services().conformance.read(resource_type, resource_id)
    return fhir_response(resource, 200, {"ETag": f'W/"{resource.get("version", "1")}"',
                                         "Cache-Control": "public, max-age=3600"})


def _search(resource_type: str) -> Response:
    require_json_accepted()
    pairs = query_pairs()
    found = services().conformance.search(resource_type, pairs, strict_handling())
    entries = [bundles.entry(r, base_url(), "match") for r in found]
    links = [bundles.link("self", f"{base_url()}/{resource_type}")]
    return fhir_response(bundles.searchset(entries, len(entries), links))


for _type in SERVED_TYPES:
    bp.add_url_rule(f"/{_type}/<fhir_id:resource_id>", f"read_{_type}", lambda resource_id, t=_type: _read(t, resource_id),
                    methods=["GET"])
    bp.add_url_rule(f"/{_type}", f"search_{_type}", lambda t=_type: _search(t), methods=["GET"])
