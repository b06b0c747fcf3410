"""The consent engine's inputs and output: who asks, about which record, under which grants.

Everything here is a frozen value so a decision can be cached, logged and compared; scopes are
not modelled (the API checks SMART scopes before it asks the engine anything).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from consent import codes, evidence
from consent.clock import parse_bound, parse_date
from consent.references import reference_of

# Provision elements that narrow a permit. Ignoring one would grant more than the family
# agreed to, so a Consent carrying any of them is unusable rather than half-understood. (On
# write the ehcp-consent profile refuses them, max 0; this is how the reader fails closed.)
NARROWING_ELEMENTS = ("data", "class", "securityLabel", "purpose", "dataPeriod", "provision")


@dataclass(frozen=True)
class Actor:
    """The authenticated caller, from the bearer token (API.md "Authentication")."""

    role: str
    sub: str
    fhir_user: str | None = None
    organization: str | None = None
    patient: str | None = None


@dataclass(frozen=True)
class RecordState:
    """What the engine needs to know about one child's record (one compartment)."""

    record_id: str
    custodian: str | None
    birth_date: date | None
    parents: frozenset[str] = frozenset()
    lacks_capacity: bool = False
    representative: str | None = None
    transferred_out: bool = False
    former_custodians: frozenset[str] = frozenset()

    @property
    def patient_ref(self) -> str:
        return f"Patient/{self.record_id}"


@dataclass(frozen=True)
class Grant:
    """One FHIR Consent reduced to the permit it expresses.

    `grantor` is the performer, always the decision-maker who gave it. `recorded_by` is who
    wrote it into the record (consent.evidence); `recorded_by_la` says an organisation (the
    LA) did, from the family's signed form or verbal statement: it records, it does not decide,
    so the grant holds exactly when the grantor does. `problems` holds what
    parse_grant() could not use; a grant with problems is never used, so a malformed stored
    Consent denies instead of crashing a read path.
    """

    id: str
    status: str
    grantor: str | None
    recipient_org: str | None
    recipient_role: str | None
    sections: frozenset[str]
    actions: frozenset[str]
    start: datetime | None
    end: datetime | None
    confirmed_by: str | None = None
    lapse_date: date | None = None
    recorded_by_la: bool = False
    recorded_by: str | None = None
    patient: str | None = None
    problems: tuple[str, ...] = ()

    @property
    def recipient(self) -> str:
        """The recipient in words, for reasons."""
        return self.recipient_org or f"every {self.recipient_role}"


@dataclass(frozen=True)
class Decision:
    """The engine's answer. `sections` is what may be read (or contributed to) when permitted."""

    permit: bool
    sections: frozenset[str] = frozenset()
    reasons: tuple[str, ...] = ()
    consent_ids: tuple[str, ...] = ()
    basis: str = "none"

    @property
    def reason(self) -> str:
        """One plain-English line for an OperationOutcome diagnostics or an audit entry."""
        return "; ".join(self.reasons)


# ---------------------------------------------------------------- reading a Consent dict

def _dict(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _codings(concepts: Any) -> list[Mapping]:
    return [_dict(c) for concept in _list(concepts) for c in _list(_dict(concept).get("coding"))]


def _extension(consent: Mapping, url: str) -> Mapping | None:
    for ext in _list(consent.get("extension")):
        if _dict(ext).get("url") == url:
            return _dict(ext)
    return None


def _grantor(consent: Mapping) -> str | None:
    performers = _list(consent.get("performer"))
    return reference_of(performers[0]) if len(performers) == 1 else None


def _recipient(actors: list) -> tuple[str | None, str | None]:
    """(organisation ref, role code) named by the one provision.actor; (None, None) when there
    is not exactly one, so an ambiguous consent names nobody."""
    if len(actors) != 1:
        return None, None
    reference = _dict(_dict(actors[0]).get("reference"))
    ref = reference_of(reference)
    if ref and ref.startswith("Organization/"):
        return ref, None
    identifier = _dict(reference.get("identifier"))
    if identifier.get("system") == codes.ACTOR_ROLE_SYSTEM and identifier.get("value") in codes.ACTOR_ROLES:
        return None, identifier["value"]
    return None, None


def _bound(period: Mapping, key: str) -> datetime | None:
    text = period.get(key)
    return None if text is None else parse_bound(text, end=(key == "end"))


def parse_grant(consent: Mapping) -> Grant:
    """Reduce a FHIR R4 Consent to a Grant, never raising: what cannot be read stays unused.

    The rules a sharing Consent must meet are the ehcp-consent profile's, applied once, on
    write, by the profile validator. This only reads, and fails closed: what it reads
    incompletely grants nothing (no sections, actions or single recipient), and content it
    would have to ignore to use the grant at all makes the grant unusable (`problems`).
    """
    provision = _dict(consent.get("provision")) if isinstance(consent, Mapping) else {}
    org, role = _recipient(_list(provision.get("actor")))
    period = _dict(provision.get("period"))
    try:
        start, end = _bound(period, "start"), _bound(period, "end")
    except ValueError:
        start = end = None
    consent = consent if isinstance(consent, Mapping) else {}
    grantor = _grantor(consent)
    confirmed = _extension(consent, codes.EXT_CONFIRMED_BY)
    confirmed_by = reference_of(confirmed.get("valueReference")) if confirmed else None
    recorder = evidence.recorded_by(consent)
    return Grant(
        id=str(consent.get("id") or ""),
        status=str(consent.get("status") or ""),
        grantor=grantor,
        recipient_org=org,
        recipient_role=role,
        sections=frozenset(c.get("code") for c in _codings(provision.get("code"))
                           if c.get("system") == codes.SECTION_SYSTEM
                           and c.get("code") in codes.ALL_SECTIONS),
        actions=frozenset(c.get("code") for c in _codings(provision.get("action"))
                          if c.get("system") == codes.CONSENT_ACTION_SYSTEM
                          and c.get("code") in codes.CONSENT_ACTIONS),
        start=start,
        end=end,
        confirmed_by=confirmed_by if confirmed_by and confirmed_by.startswith("Patient/") else None,
        lapse_date=_lapse_date(consent),
        recorded_by_la=bool(recorder and recorder.startswith("Organization/")),
        recorded_by=recorder,
        patient=reference_of(consent.get("patient")),
        problems=tuple(grant_problems(consent) + _unusable(consent)),
    )


def _lapse_date(consent: Mapping) -> date | None:
    ext = _extension(consent, codes.EXT_LAPSE_DATE)
    try:
        return parse_date(ext.get("valueDate")) if ext else None
    except ValueError:
        return None


def _unusable(consent: Mapping) -> list[str]:
    """What the reader would have to ignore, and so grant more than the family agreed to: a
    permit that is not one, a narrowing element, a period or lapse date it cannot read, no
    child named, a consent recorded for someone else without evidence of their decision (the
    one rule of consent.evidence, which the write path also applies). Not profile rules (the
    profile states those, with the messages clients see):
    this keeps a Consent that never met the profile (stored before a rule existed, garbage)
    from being used."""
    if not isinstance(consent, Mapping) or consent.get("resourceType") != "Consent":
        return []
    provision = _dict(consent.get("provision"))
    cannot = []
    if provision.get("type") != "permit":
        cannot.append("it is not a permit (provision.type)")
    cannot += [f"provision.{name} would narrow it" for name in NARROWING_ELEMENTS if provision.get(name)]
    period = provision.get("period")
    try:
        if period is not None:
            _bound(_dict(period), "start"), _bound(_dict(period), "end")
            if not isinstance(period, Mapping):
                raise ValueError("not a Period")
    except ValueError:
        cannot.append("its period cannot be read")
    lapse = _extension(consent, codes.EXT_LAPSE_DATE)
    if lapse is not None and _lapse_date(consent) is None:
        cannot.append("its lapse date cannot be read")
    confirmed = _extension(consent, codes.EXT_CONFIRMED_BY)
    if confirmed is not None and not (reference_of(confirmed.get("valueReference")) or "").startswith("Patient/"):
        cannot.append("its confirmation is not by the young person")
    if not reference_of(consent.get("patient")):
        cannot.append("it names no child or young person")
    missing = evidence.missing_evidence(consent)
    if missing:
        cannot.append(missing)
    return [f"the consent cannot be used as read: {reason}" for reason in cannot]


# ---------------------------------------------------------------- refusing a Consent

def is_sharing_grant(consent: Mapping) -> bool:
    """Does this Consent speak the EHCP sharing vocabulary (sections or actions coded with our
    systems)? Such a Consent is checked against the ehcp-consent profile (its applies-when
    condition states the same test in FHIRPath). A plain R4 Consent (research opt-in, advance
    directive...) is kept as a record but grants nothing here."""
    provision = _dict(consent.get("provision"))
    sections = any(c.get("system") == codes.SECTION_SYSTEM for c in _codings(provision.get("code")))
    actions = any(c.get("system") == codes.CONSENT_ACTION_SYSTEM for c in _codings(provision.get("action")))
    return sections or actions


def grant_problems(consent: Mapping) -> list[str]:
    """Plain-English reasons a Consent the family gives cannot be a sharing grant; empty when
    it can.

    Only the rules that are not profile data live here. Everything a sharing Consent must say
    (one recipient, known roles, sections and actions, a permit with a sane period, the
    decision-maker as performer...) is the ehcp-consent
    profile's, applied once by the profile validator on every write and by $validate. What the
    profile cannot say is which Consents it applies to when the family writes: a family's
    consent is always a sharing grant, so one that speaks none of its vocabulary is refused.
    """
    if not isinstance(consent, Mapping) or consent.get("resourceType") != "Consent":
        return ["this is not a Consent resource"]
    if not is_sharing_grant(consent):
        return ["the consent names no plan sections (provision.code, " + codes.SECTION_SYSTEM
                + ") and no action (provision.action, read or contribute), so it shares nothing"]
    return []


__all__ = ["Actor", "RecordState", "Grant", "Decision", "parse_grant", "grant_problems",
           "is_sharing_grant"]
