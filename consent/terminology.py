"""Codes read from the ValueSets and CodeSystems shipped in `profiles/`, the one copy of them.

Which plan sections each resource type may carry (need B C D, provision F G H1 H2, advice A K)
and the sections themselves are terminology data, used by the profile validator for bindings
and by the consent engine for sectioning. The consent package may import nothing of the
service, so it reads the JSON itself: stdlib only, read once at first use. Only what the EHCP
ValueSets use is understood (concept lists, whole CodeSystems, imported ValueSets); anything
else raises, so a ValueSet the engine cannot read stops it loading instead of sharing wrongly.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"


class TerminologyError(ValueError):
    """A shipped ValueSet or CodeSystem cannot be read here."""


def _read(kind: str, name: str) -> dict:
    path = PROFILES_DIR / kind / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise TerminologyError(f"{kind}/{name} cannot be read from {PROFILES_DIR}: {error}") from error


def _tail(url: str) -> str:
    return url.split("|")[0].rstrip("/").rsplit("/", 1)[-1]


def _flatten(concepts: list) -> list[str]:
    codes: list[str] = []
    for concept in concepts:
        codes.append(concept["code"])
        codes += _flatten(concept.get("concept", []))
    return codes


@lru_cache(maxsize=None)
def code_system_codes(name: str) -> tuple[str, ...]:
    """Every code of the shipped CodeSystem `name`, in the order it defines them."""
    resource = _read("CodeSystem", name)
    if resource.get("content") != "complete":
        raise TerminologyError(f"CodeSystem/{name} does not list its codes (content is not complete)")
    return tuple(_flatten(resource.get("concept", [])))


@lru_cache(maxsize=None)
def value_set_codes(name: str, system: str) -> tuple[str, ...]:
    """The codes of `system` that the shipped ValueSet `name` includes (after excludes), in order."""
    compose = _read("ValueSet", name).get("compose", {})

    def expand(part: dict) -> list[str]:
        if part.get("filter"):
            raise TerminologyError(f"ValueSet/{name} uses a filter, which is not supported")
        found: list[str] = []
        for imported in part.get("valueSet", []):
            found += value_set_codes(_tail(imported), system)
        if part.get("system") == system:
            found += ([c["code"] for c in part["concept"]] if part.get("concept")
                      else list(code_system_codes(_tail(system))))
        return found

    included = [code for part in compose.get("include", []) for code in expand(part)]
    excluded = {code for part in compose.get("exclude", []) for code in expand(part)}
    return tuple(dict.fromkeys(code for code in included if code not in excluded))


__all__ = ["PROFILES_DIR", "TerminologyError", "code_system_codes", "value_set_codes"]
