"""`_summary` and `_elements`: a search answer with less of each resource (R4 search §3.1.1.5.7-8).

Shaping runs on what the caller may already see (after redaction), so it can only remove. Each
subsetted resource is tagged SUBSETTED (R4 §2.7.4.1, the v3 ObservationValue code) so no client
mistakes it for the whole resource and writes it back.
"""

from __future__ import annotations

from ehcp_record.fhir.structure import summary_elements_by_type

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "subsetted"}
_ALWAYS = ("resourceType", "id", "meta")


def summary_elements(resource_type: str) -> frozenset[str]:
    """The top-level elements R4 marks isSummary for this type (from the HL7 R4 definitions,
    profiles/r4/summary-elements.json)."""
    return summary_elements_by_type().get(resource_type, frozenset())


def shape(resource: dict, summary: str = "false", elements: tuple[str, ...] = ()) -> dict:
    """The resource as `_summary` (true | text | data) and `_elements` ask for."""
    if summary in ("true", "text"):
        keep = set(_ALWAYS) | ({"text"} if summary == "text" else summary_elements(resource.get("resourceType", "")))
        return _subset(resource, keep)
    if summary == "data":
        return _subset(resource, {k for k in resource if k != "text"})
    if elements:
        return _subset(resource, set(_ALWAYS) | set(elements))
    return resource


def _subset(resource: dict, keep: set[str]) -> dict:
    shaped = {k: v for k, v in resource.items() if k in keep or (k.startswith("_") and k[1:] in keep)}
    if len(shaped) == len(resource):
        return resource
    meta = dict(shaped.get("meta") or {})
    tags = list(meta.get("tag") or [])
    if not any(t.get("code") == "SUBSETTED" and t.get("system") == SUBSETTED["system"] for t in tags):
        tags.append(SUBSETTED)
    meta["tag"] = tags
    shaped["meta"] = meta
    return shaped
