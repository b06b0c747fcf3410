"""The project's one canonical base URL and the URLs built on it.

Every CodeSystem, ValueSet, StructureDefinition, NamingSystem and OperationDefinition this
project defines lives at `<base>/<resourceType>/<id>` (profiles/README.md). The base itself is
defined once, in `consent.codes.BASE`, because the consent package is the bottom layer and may
import nothing from `ehcp_record`; this module re-exports it for everything else.
"""

from __future__ import annotations

from consent.codes import BASE as CANONICAL_BASE


def canonical(resource_type: str, name: str) -> str:
    """`<base>/<resourceType>/<name>`, e.g. canonical("NamingSystem", "upn")."""
    return f"{CANONICAL_BASE}/{resource_type}/{name}"


def code_system(name: str) -> str:
    return canonical("CodeSystem", name)


def value_set(name: str) -> str:
    return canonical("ValueSet", name)


def structure_definition(name: str) -> str:
    return canonical("StructureDefinition", name)


def naming_system(name: str) -> str:
    return canonical("NamingSystem", name)


def operation_definition(name: str) -> str:
    return canonical("OperationDefinition", name)


__all__ = ["CANONICAL_BASE", "canonical", "code_system", "value_set", "structure_definition",
           "naming_system", "operation_definition"]
