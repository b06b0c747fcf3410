"""What a person reads where the record holds a reference: an organisation's or a person's name.

A family reading its access log or a notice expects "Local authority 916", not
"Organization/la-916". The name comes from the resource itself, never from the caller:
Organization.name, or a person's HumanName (R4 datatypes §2.24.0.5: `text` when given, else the
given names and family name of the `usual` or first `official` name).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_PEOPLE = ("Patient", "RelatedPerson", "Practitioner")


def display_name(resource: Mapping[str, Any]) -> str | None:
    """The name to show for `resource`, or None when it has none a person could read."""
    kind = resource.get("resourceType")
    if kind == "Organization":
        name = resource.get("name")
        return name.strip() or None if isinstance(name, str) else None
    if kind in _PEOPLE:
        return _human_name(resource.get("name"))
    return None


def _human_name(names: Any) -> str | None:
    if not isinstance(names, list):
        return None
    usable = [n for n in names if isinstance(n, Mapping)]
    chosen = next((n for n in usable if n.get("use") == "usual"), None) or \
        next((n for n in usable if n.get("use") in (None, "official")), None)
    if chosen is None:
        return None
    if isinstance(chosen.get("text"), str) and chosen["text"].strip():
        return chosen["text"].strip()
    given = [g for g in chosen.get("given") or [] if isinstance(g, str)]
    family = chosen.get("family") if isinstance(chosen.get("family"), str) else ""
    text = " ".join([*given, family]).strip()
    return text or None
