"""SMART App Launch v2 scopes: what a token's `scope` claim lets its holder attempt at all.

Scopes are the outer fence; the consent decision narrows further (a `system/*.rs` token still
needs the organisation's consent). Syntax per SMART v2 §"Scopes for requesting clinical data":
`<context>/<resourceType|*>.<c?r?u?d?s?>`, with the v1 forms `.read` and `.write` accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

INTERACTIONS = "cruds"
_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.(read|write|\*|c?r?u?d?s?)$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}


@dataclass(frozen=True)
class Scope:
    context: str  # patient | user | system
    resource_type: str  # a type or "*"
    interactions: frozenset[str]

    def covers(self, resource_type: str, interaction: str) -> bool:
        return interaction in self.interactions and self.resource_type in ("*", resource_type)


@dataclass(frozen=True)
class ScopeSet:
    scopes: tuple[Scope, ...]

    def allows(self, resource_type: str, interaction: str) -> bool:
        return any(s.covers(resource_type, interaction) for s in self.scopes)

    def contexts_allowing(self, resource_type: str, interaction: str) -> frozenset[str]:
        """`patient` alone means the token is confined to its launch patient's record."""
        return frozenset(s.context for s in self.scopes if s.covers(resource_type, interaction))

    def patient_only(self, resource_type: str, interaction: str) -> bool:
        return self.contexts_allowing(resource_type, interaction) == frozenset({"patient"})


def parse_scopes(claim: str | list[str] | None) -> ScopeSet:
    """Parse the `scope` claim; unknown or narrowed (`?param=`) scopes grant nothing."""
    if claim is None:
        return ScopeSet(())
    words = claim.split() if isinstance(claim, str) else [w for w in claim if isinstance(w, str)]
    return ScopeSet(tuple(scope for word in words if (scope := _parse_one(word)) is not None))


def _parse_one(word: str) -> Scope | None:
    match = _SCOPE.match(word)
    if not match:
        return None
    context, resource_type, permissions = match.groups()
    letters = _V1.get(permissions, permissions)
    if not letters:
        return None
    return Scope(context, resource_type, frozenset(letters))
