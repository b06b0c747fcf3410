"""Which child's record a resource belongs to, from the CompartmentDefinition in profiles/.

The record id is the Patient id. Consent and custody are decided per record, the audit chain
is kept per record, and a resource may never move from one child's record to another's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ehcp_record.errors import unprocessable
from ehcp_record.fhir.search import SearchRegistry

RecordLookup = Callable[[str], "str | None"]


class Compartment:
    def __init__(self, params: dict[str, str], registry: SearchRegistry) -> None:
        self._params = params
        self._registry = registry

    @classmethod
    def load(cls, path: Path, registry: SearchRegistry) -> "Compartment":
        definition = json.loads(path.read_text())
        params = {r["code"]: r["param"][0] for r in definition["resource"] if r.get("param")}
        return cls(params, registry)

    def param_of(self, resource_type: str) -> str | None:
        """The search parameter that puts a resource of this type in a child's compartment
        (`{def}` for Patient itself), for compartment search (R4 http §3.1.0.8.2)."""
        return self._params.get(resource_type)

    def record_of(self, resource: dict, lookup: RecordLookup) -> str | None:
        """The record id, or None for directory resources (Organization, Practitioner...).

        `lookup` resolves "Type/id" to that resource's record, for resources that join the
        record of what they point at (Provenance, Binary).
        """
        resource_type = resource["resourceType"]
        param_code = self._params.get(resource_type)
        if param_code is None:
            return None
        if param_code == "{def}":
            return resource.get("id")
        param = self._registry.get(resource_type, param_code)
        refs = [r for r in (param.evaluate(resource) if param else []) if isinstance(r, dict)]
        targets = [r.get("reference") for r in refs if isinstance(r.get("reference"), str)]
        if not targets:
            raise unprocessable(
                f"{resource_type} must name the child it belongs to ({param_code})", "required",
                [f"{resource_type}.{param_code}"],
            )
        return self._resolve(resource_type, param_code, targets[0], lookup)

    def _resolve(self, resource_type: str, param_code: str, reference: str, lookup: RecordLookup) -> str:
        parts = reference.split("/_history/")[0].split("/")
        if len(parts) < 2:
            raise unprocessable(f"{resource_type}.{param_code} '{reference}' is not a Type/id reference")
        target = f"{parts[-2]}/{parts[-1]}"
        record = lookup(target)
        if record is None:
            raise unprocessable(
                f"{resource_type}.{param_code} points at {target}, which does not exist here", "invalid",
                [f"{resource_type}.{param_code}"],
            )
        return record
