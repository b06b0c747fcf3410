"""SMART App Launch 2 scopes a client may be granted: its registration is the ceiling.

Clinical scopes (`patient/*.rs`, `system/Consent.rs`) are covered by a registered scope of the
same context whose type is `*` or the same type and whose interactions include all requested
(SMART v2 §"Scopes for requesting clinical data"); any other scope word (`openid`, `fhirUser`,
`launch/patient`, `offline_access`) must be registered as written.
"""

from __future__ import annotations

from consent.scopes import Scope, parse_scopes

#: Scope words this server understands beyond clinical scopes (SMART v2 §"Scopes for requesting
#: context data" and §"Scopes for requesting identity data", §"offline_access").
CONTEXT_SCOPES = ("openid", "fhirUser", "launch/patient", "offline_access", "online_access")


def words(scope: str | None) -> list[str]:
    return [w for w in (scope or "").split() if w]


def _clinical(word: str) -> Scope | None:
    parsed = parse_scopes(word).scopes
    return parsed[0] if parsed else None


def covered(word: str, registered: list[str]) -> bool:
    """True when the registration allows this one requested scope word."""
    if word in registered:
        return True
    wanted = _clinical(word)
    if wanted is None:
        return False
    for allowed in filter(None, (_clinical(r) for r in registered)):
        if (allowed.context == wanted.context and allowed.resource_type in ("*", wanted.resource_type)
                and wanted.interactions <= allowed.interactions):
            return True
    return False


def beyond(requested: str | None, registered: str) -> list[str]:
    """The requested scope words the registration does not allow (empty: all allowed)."""
    allowed = words(registered)
    return [w for w in words(requested) if not covered(w, allowed)]


def understood(word: str) -> bool:
    return word in CONTEXT_SCOPES or _clinical(word) is not None


#: SMART v2 interactions (§"Scopes for requesting clinical data"), in the order people read them.
_VERBS = (("c", "add"), ("r", "read"), ("u", "change"), ("d", "delete"), ("s", "search"))
_TYPES = {"*": "everything in the record", "Composition": "the plan", "Patient": "the child's details",
          "Condition": "the needs", "Goal": "the outcomes", "CarePlan": "the provision",
          "DocumentReference": "documents", "Binary": "attached files", "Consent": "sharing decisions",
          "RelatedPerson": "family members' details", "Task": "tasks and deadlines",
          "Communication": "notices and letters", "QuestionnaireResponse": "contributions and views"}
_CONTEXT = {"openid": "confirm that it is you who signed in",
            "fhirUser": "know who you are in this record (for example, the child's parent)",
            "launch/patient": "know which child's record you chose",
            "offline_access": "keep working when you are not using it, until its access is revoked",
            "online_access": "keep working while you are using it"}


def describe(word: str) -> str:
    """A scope word in plain English for the consent screen (SMART v2 scope syntax)."""
    if word in _CONTEXT:
        return _CONTEXT[word]
    wanted = _clinical(word)
    if wanted is None:
        return f"use the permission “{word}”"
    verbs = [name for code, name in _VERBS if code in wanted.interactions]
    said = ", ".join(verbs[:-1]) + (" and " if len(verbs) > 1 else "") + verbs[-1] if verbs else "use"
    what = _TYPES.get(wanted.resource_type, f"{wanted.resource_type} entries")
    return f"{said} {what}"
