"""The one reference normaliser: how two FHIR references are compared throughout the project.

Lives in the consent package because it is the bottom layer (it imports nothing of the
service); `ehcp_record.fhir.model` re-exports `ref_key`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def ref_key(reference: str) -> str:
    """A reference reduced to the form it is compared by: "Type/id" (or "#id", "urn:...").

    Absolute URLs and version-specific references ("Condition/1/_history/2") reach the same
    resource as "Condition/1", so they compare equal; a bare id stays as it is.
    """
    if reference.startswith(("#", "urn:")):
        return reference
    path = reference.split("/_history/")[0].rstrip("/")
    parts = path.split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else path


def literal_key(reference: Any) -> str | None:
    """"Type/id" of a literal reference to a resource on a server, else None (contained "#id",
    "urn:" and bare ids name no Type/id)."""
    if not isinstance(reference, str) or reference.startswith(("#", "urn:")):
        return None
    key = ref_key(reference)
    return key if "/" in key else None


def reference_of(value: Any) -> str | None:
    """The `reference` string of a Reference object, or None when it has none."""
    reference = value.get("reference") if isinstance(value, Mapping) else None
    return reference if isinstance(reference, str) and reference else None


__all__ = ["ref_key", "literal_key", "reference_of"]
