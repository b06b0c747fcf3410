"""Our conformance resources, served as FHIR (read and search) from profiles/.

Every canonical URL in profiles/ (`<base>/StructureDefinition/ehcp-plan`, ...) must resolve on
the server that uses it, so a generic validator or a developer can fetch the definitions the
server applies. They are published definitions, not anyone's record: no token is needed and no
audit is written. StructureDefinitions are served with their snapshot, generated from the R4
base at build time (tests/clients/conformance.mjs `snapshot`) into profiles/snapshots/ and
checked against a fresh generation by tests/clients/test_conformance.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ehcp_record.errors import invalid, not_found

SERVED_TYPES = ("StructureDefinition", "ValueSet", "CodeSystem", "SearchParameter", "OperationDefinition",
                "CompartmentDefinition", "Measure")
#: Search parameters per type (R4 conformance resources' common ones), all matched exactly;
#: `url` may carry `|version` (R4 search §3.1.1.5.11 canonical references).
_COMMON = ("_id", "url", "name", "version", "status", "title")
_BY_TYPE = {"StructureDefinition": ("type", "kind", "derivation", "base"), "SearchParameter": ("code", "base", "type"),
            "OperationDefinition": ("code", "kind")}
_PAGING = ("_count", "_offset", "_format", "_summary", "_elements", "_total")


@dataclass
class ConformanceLibrary:
    """Everything of the served types under profiles/ (not the examples), by type and id."""

    resources: dict[str, dict[str, dict]] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path) -> "ConformanceLibrary":
        library = cls({t: {} for t in SERVED_TYPES})
        snapshots = _snapshots(root / "snapshots")
        for resource_type in SERVED_TYPES:
            for path in sorted((root / resource_type).glob("*.json")):
                resource = json.loads(path.read_text(encoding="utf-8"))
                if resource.get("resourceType") != resource_type:
                    continue
                if resource_type == "StructureDefinition" and resource.get("url") in snapshots:
                    resource = dict(resource, snapshot=snapshots[resource["url"]])
                library.resources[resource_type][resource["id"]] = resource
        return library

    def read(self, resource_type: str, resource_id: str) -> dict:
        found = self.resources.get(resource_type, {}).get(resource_id)
        if found is None:
            raise not_found(f"{resource_type}/{resource_id}")
        return found

    def search(self, resource_type: str, pairs: list[tuple[str, str]], strict: bool = False) -> list[dict]:
        """Exact matches on the common parameters (each comma list OR-ed, parameters AND-ed)."""
        allowed = _COMMON + _BY_TYPE.get(resource_type, ())
        found = list(self.resources.get(resource_type, {}).values())
        for name, value in pairs:
            if name in _PAGING:
                continue
            if name not in allowed:
                if strict:
                    raise invalid(f"'{name}' is not a search parameter of {resource_type} here "
                                  f"(use {', '.join(allowed)})")
                continue
            wanted = set(value.split(","))
            found = [r for r in found if _values(r, name) & wanted]
        return sorted(found, key=lambda r: r.get("url", r["id"]))

    def urls(self, resource_type: str) -> list[str]:
        return sorted(r["url"] for r in self.resources.get(resource_type, {}).values() if "url" in r)


def _values(resource: dict, name: str) -> set[str]:
    if name == "_id":
        return {resource["id"]}
    if name == "url":
        url = resource.get("url", "")
        return {url, f"{url}|{resource.get('version', '')}"}
    if name == "base":
        base = resource.get("base", resource.get("baseDefinition", []))
        return set(base) if isinstance(base, list) else {base}
    value = resource.get(name)
    return {str(value).lower() if isinstance(value, bool) else str(value)} if value is not None else set()


def _snapshots(directory: Path) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for path in sorted(directory.glob("*.snapshot.json")) if directory.is_dir() else []:
        data = json.loads(path.read_text(encoding="utf-8"))
        found[data["url"]] = data["snapshot"]
    return found
