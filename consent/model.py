"""The consent engine's inputs and output: who asks, about which record, under which grants.

Everything here is a frozen value so a decision can be cached, logged and compared; scopes are
not modelled (the API checks SMART scopes before it asks the engine anything).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from consent import codes
from consent.clock import parse_bound, parse_date
from consent.references import reference_of

# Consent.status, FHIR R4 (https://hl7.org/fhir/R4/valueset-consent-state-codes.html).
CONSENT_STATUSES = ("draft", "proposed", "active", "rejected", "inactive", "entered-in-error")
GRANTOR_TYPES = ("RelatedPerson", "Patient", "Organization")
# Provision elements that narrow a permit. Ignoring one would grant more than the family
# agreed to, so a Consent carrying any of them is refused rather than half-understood.
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

    `problems` holds what grant_problems() found; a grant with problems is never used, so a
    malformed stored Consent denies instead of crashing a read path.
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
    return reference_of(performers[0]) if performers else None


def _recipient(actor: Mapping) -> tuple[str | None, str | None]:
    """(organisation ref, role code) named by one provision.actor."""
    reference = _dict(actor.get("reference"))
    ref = reference_of(reference)
    if ref and ref.startswith("Organization/"):
        return ref, None
    identifier = _dict(reference.get("identifier"))
    if identifier.get("system") == codes.ACTOR_ROLE_SYSTEM and isinstance(identifier.get("value"), str):
        return None, identifier["value"]
    return None, None


def _bound(period: Mapping, key: str) -> datetime | None:
    text = period.get(key)
    return None if text is None else parse_bound(text, end=(key == "end"))


def parse_grant(consent: Mapping) -> Grant:
    """Reduce a FHIR R4 Consent to a Grant, never raising: what cannot be read stays unused."""
    problems = tuple(grant_problems(consent))
    provision = _dict(consent.get("provision"))
    actors = _list(provision.get("actor"))
    org, role = _recipient(_dict(actors[0])) if actors else (None, None)
    period = _dict(provision.get("period"))
    try:
        start, end = _bound(period, "start"), _bound(period, "end")
    except ValueError:
        start = end = None
    grantor = _grantor(consent)
    lapse = _lapse_date(consent)
    confirmed = _extension(consent, codes.EXT_CONFIRMED_BY)
    has_source = bool(consent.get("sourceAttachment") or consent.get("sourceReference"))
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
        confirmed_by=reference_of(confirmed.get("valueReference")) if confirmed else None,
        lapse_date=lapse,
        recorded_by_la=has_source and bool(grantor and grantor.startswith("Organization/")),
        patient=reference_of(consent.get("patient")),
        problems=problems,
    )


def _lapse_date(consent: Mapping) -> date | None:
    ext = _extension(consent, codes.EXT_LAPSE_DATE)
    try:
        return parse_date(ext.get("valueDate")) if ext else None
    except ValueError:
        return None


# ---------------------------------------------------------------- refusing a Consent

def is_sharing_grant(consent: Mapping) -> bool:
    """Does this Consent speak the EHCP sharing vocabulary (sections or actions coded with our
    systems)? A plain R4 Consent (research opt-in, advance directive...) is kept as a record but
    grants nothing here, since `parse_grant` finds problems with it and `decide` skips it."""
    provision = _dict(consent.get("provision"))
    sections = any(c.get("system") == codes.SECTION_SYSTEM for c in _codings(provision.get("code")))
    actions = any(c.get("system") == codes.CONSENT_ACTION_SYSTEM for c in _codings(provision.get("action")))
    return sections or actions


def grant_problems(consent: Mapping) -> list[str]:
    """Plain-English reasons the server must refuse this Consent; empty when it is usable.

    Shape checks of FHIR itself (Consent.scope, category) belong to the FHIR model validator;
    these are the rules of EHCP sharing: one recipient, named sections, known actions, a sane
    period, and nothing the engine would have to ignore.
    """
    if not isinstance(consent, Mapping) or consent.get("resourceType") != "Consent":
        return ["this is not a Consent resource"]
    problems: list[str] = []
    problems += _status_problems(consent)
    problems += _party_problems(consent)
    provision = consent.get("provision")
    if not isinstance(provision, Mapping):
        return problems + ["the consent has no provision saying what is permitted"]
    problems += _type_problems(provision)
    problems += _actor_problems(provision)
    problems += _action_problems(provision)
    problems += _section_problems(provision)
    problems += _period_problems(provision)
    problems += _extension_problems(consent)
    return problems


def _status_problems(consent: Mapping) -> list[str]:
    status = consent.get("status")
    if status not in CONSENT_STATUSES:
        return [f"consent status '{status}' is not one of {', '.join(CONSENT_STATUSES)}"]
    return []


def _party_problems(consent: Mapping) -> list[str]:
    problems = []
    patient = reference_of(consent.get("patient"))
    if not patient or not patient.startswith("Patient/"):
        problems.append("the consent must name the child or young person it is about (patient)")
    performers = _list(consent.get("performer"))
    grantor = _grantor(consent)
    if not grantor:
        problems.append("the consent must say who gave it (performer)")
    elif grantor.split("/")[0] not in GRANTOR_TYPES:
        problems.append(f"the consent was given by {grantor}; it must be a parent (RelatedPerson), "
                        "the young person (Patient) or the local authority recording a paper form")
    elif grantor.startswith("Organization/") and not (
            consent.get("sourceAttachment") or consent.get("sourceReference")):
        problems.append("a consent recorded by an organisation must attach the signed form "
                        "(sourceAttachment or sourceReference)")
    if len(performers) > 1:
        problems.append("the consent names more than one performer; give one consent per person")
    return problems


def _type_problems(provision: Mapping) -> list[str]:
    problems = []
    kind = provision.get("type")
    if kind == "deny":
        problems.append("provision type deny is not supported: sharing is denied unless "
                        "permitted, so revoke the permit consent instead (status inactive)")
    elif kind != "permit":
        problems.append("provision.type must be permit")
    for name in NARROWING_ELEMENTS:
        if provision.get(name):
            problems.append(f"provision.{name} is not supported: consent is given per plan "
                            "section, recipient, action and period")
    return problems


def _actor_problems(provision: Mapping) -> list[str]:
    actors = _list(provision.get("actor"))
    if not actors:
        return ["the consent names no recipient (provision.actor)"]
    if len(actors) > 1:
        return [f"the consent names {len(actors)} recipients; give one consent per recipient"]
    org, role = _recipient(_dict(actors[0]))
    if org:
        return []
    if role is None:
        return ["the recipient must be an Organization reference or a role identifier "
                f"from {codes.ACTOR_ROLE_SYSTEM}"]
    if role not in codes.ACTOR_ROLES:
        return [f"unknown recipient role '{role}'"]
    if role not in codes.GRANTABLE_ROLES:
        return [f"the role '{role}' cannot be named in a consent"]
    return []


def _action_problems(provision: Mapping) -> list[str]:
    codings = _codings(provision.get("action"))
    if not codings:
        return ["the consent names no action (read or contribute)"]
    problems = []
    for coding in codings:
        if coding.get("system") != codes.CONSENT_ACTION_SYSTEM:
            problems.append(f"action coding system '{coding.get('system')}' is not "
                            f"{codes.CONSENT_ACTION_SYSTEM}")
        elif coding.get("code") not in codes.CONSENT_ACTIONS:
            problems.append(f"unknown action '{coding.get('code')}' (use read or contribute)")
    return problems


def _section_problems(provision: Mapping) -> list[str]:
    codings = _codings(provision.get("code"))
    if not codings:
        return ["the consent names no plan sections (provision.code)"]
    problems = []
    for coding in codings:
        if coding.get("system") != codes.SECTION_SYSTEM:
            problems.append(f"section coding system '{coding.get('system')}' is not "
                            f"{codes.SECTION_SYSTEM}")
        elif coding.get("code") not in codes.ALL_SECTIONS:
            problems.append(f"unknown plan section '{coding.get('code')}' "
                            f"(sections are {' '.join(codes.SECTIONS)})")
    return problems


def _period_problems(provision: Mapping) -> list[str]:
    period = provision.get("period")
    if period is None:
        return []
    if not isinstance(period, Mapping):
        return ["provision.period must be a Period"]
    try:
        start, end = _bound(period, "start"), _bound(period, "end")
    except ValueError as exc:
        return [f"provision.period: {exc}"]
    if start and end and end < start:
        return [f"the consent period ends ({period['end']}) before it starts ({period['start']})"]
    return []


def _extension_problems(consent: Mapping) -> list[str]:
    problems = []
    confirmed = _extension(consent, codes.EXT_CONFIRMED_BY)
    if confirmed is not None:
        ref = reference_of(confirmed.get("valueReference"))
        if not ref or not ref.startswith("Patient/"):
            problems.append("confirmed-by must reference the young person (a Patient)")
    lapse = _extension(consent, codes.EXT_LAPSE_DATE)
    if lapse is not None:
        try:
            parse_date(lapse.get("valueDate"))
        except ValueError as exc:
            problems.append(f"lapse-date: {exc}")
    return problems


__all__ = ["Actor", "RecordState", "Grant", "Decision", "parse_grant", "grant_problems",
           "CONSENT_STATUSES"]
