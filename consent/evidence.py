"""Who recorded a consent, and the evidence a consent recorded on someone else's behalf carries.

A sharing consent is the decision of the person who gives it, the performer: the parent with
parental responsibility, or the young person from the end of compulsory school age (Children
and Families Act 2014 s67(2)-(3) and s80; SEND Code of Practice 2015, 8.9-8.13 and 9.37). The
service can vouch for that decision only when that person wrote it themselves, signed in. When
someone else wrote it into the record (the local authority typing up a paper form, or taking
the decision over the phone), the Consent must carry the evidence of the decision, or it
grants nothing. The evidence is one of:

- the signed form: `Consent.sourceReference` to a DocumentReference holding it, or
  `Consent.sourceAttachment` with the form itself (`data` or `url`). FHIR R4 Consent.source[x]
  is "the source on which this consent statement is based" (https://hl7.org/fhir/R4/consent.html);
- a recorded verbal statement: the complex extension `ehcp-consent-verbal-statement`
  (profiles/StructureDefinition/ehcp-consent-verbal-statement.json) saying who took it
  (`takenBy`, a Reference with a reference or a display) and when (`takenOn`, a dateTime to
  the day at least), optionally what was said (`statement`).

Who wrote it is the extension `ehcp-consent-recorded-by`
(profiles/StructureDefinition/ehcp-consent-recorded-by.json): the author of the write, which
the server sets on every write of a sharing Consent from the authenticated caller and never takes from the
body (`stamp_recorder`). The performer, or the young person confirming a parent's consent
(`ehcp-consent-confirmed-by`), needs no evidence for their own decision.

This module is the rule's one place. The write path refuses a Consent that breaks it (422,
`missing_evidence` says what is missing) and `consent.model.parse_grant` makes a stored
Consent that breaks it unusable, so one stored before the rule, or edited since, grants
nothing. A Consent that is not `active` grants nothing anyway and needs no evidence: revoking
a consent is never held up for want of a form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from consent import codes
from consent.clock import parse_bound
from consent.references import literal_key, reference_of

if TYPE_CHECKING:  # consent.model imports this module
    from consent.model import Actor

EXT_RECORDED_BY = codes.BASE + "/StructureDefinition/ehcp-consent-recorded-by"
EXT_VERBAL_STATEMENT = codes.BASE + "/StructureDefinition/ehcp-consent-verbal-statement"
EVIDENCE_EXPRESSIONS = ("Consent.sourceReference", "Consent.sourceAttachment",
                        f"Consent.extension('{EXT_VERBAL_STATEMENT}')")
_FAMILY = frozenset({codes.ROLE_PARENT, codes.ROLE_YOUNG_PERSON})
_HOW = ("attach the family's signed form (sourceReference to the DocumentReference holding it, "
        "or sourceAttachment with its data or url) or record their verbal statement (extension "
        f"{EXT_VERBAL_STATEMENT} with takenBy, who took it, and takenOn, when)")


def recorder_of(actor: "Actor") -> str | None:
    """The reference the recorded-by extension names for this caller: a family member by their
    own FHIR identity (fhirUser, or the young person's launch patient), anyone else by the
    organisation that answers for the write (the LA), else by their fhirUser."""
    if actor.role in _FAMILY:
        return actor.fhir_user or actor.patient
    return actor.organization or actor.fhir_user


def stamp_recorder(consent: dict, actor: "Actor") -> None:
    """Set who recorded `consent` to the caller writing it, replacing whatever the body said.

    Builds a new extension list, so a shallow copy of a stored resource passed in is changed
    without touching the stored one.
    """
    kept = [e for e in _list(consent.get("extension")) if _dict(e).get("url") != EXT_RECORDED_BY]
    recorder = recorder_of(actor)
    if recorder:
        kept.append({"url": EXT_RECORDED_BY, "valueReference": {"reference": recorder}})
    if kept:
        consent["extension"] = kept
    else:
        consent.pop("extension", None)


def recorded_by(consent: Mapping) -> str | None:
    """Who wrote this Consent into the record (the recorded-by extension), or None."""
    ext = _extension(consent, EXT_RECORDED_BY)
    return reference_of(ext.get("valueReference")) if ext else None


def missing_evidence(consent: Mapping) -> str | None:
    """Why this Consent cannot be taken as its giver's decision, in words naming what is
    missing; None when it can (not active, written by its giver, or carrying evidence)."""
    if not isinstance(consent, Mapping) or consent.get("status") != "active":
        return None
    recorder = recorded_by(consent)
    if recorder is None:
        return ("it does not say who recorded it (extension " + EXT_RECORDED_BY + ", set by the "
                "server on every write of a sharing consent), so it cannot be taken as the family's own decision")
    deciders = {_performer(consent), _confirmer(consent)} - {None}
    if recorder in deciders or has_evidence(consent):
        return None
    giver = _performer(consent) or "the decision-maker"
    return (f"it was recorded by {recorder}, not by {giver} who gave it, and carries no evidence "
            f"of {giver}'s decision: {_HOW}")


def has_evidence(consent: Mapping) -> bool:
    """The signed form (a DocumentReference, or the attached form itself) or a verbal statement
    saying who took it and when."""
    return _signed_form(consent) or verbal_statement_problem(consent) is None


def signed_form_reference(consent: Mapping) -> str | None:
    """"DocumentReference/id" of the signed form `sourceReference` names, if it names one (the
    write path checks it is a document of the same child's record)."""
    form = literal_key(reference_of(consent.get("sourceReference")))
    return form if form is not None and form.startswith("DocumentReference/") else None


def _signed_form(consent: Mapping) -> bool:
    if signed_form_reference(consent):
        return True
    attachment = _dict(consent.get("sourceAttachment"))
    return bool(attachment.get("data") or attachment.get("url"))


def verbal_statement_problem(consent: Mapping) -> str | None:
    """What the verbal-statement extension lacks (None when it says who took it and when)."""
    ext = _extension(consent, EXT_VERBAL_STATEMENT)
    if ext is None:
        return "there is no verbal statement"
    parts = {_dict(p).get("url"): _dict(p) for p in _list(ext.get("extension"))}
    taken_by = _dict(parts.get("takenBy", {}).get("valueReference"))
    if not (reference_of(taken_by) or (isinstance(taken_by.get("display"), str) and taken_by["display"].strip())):
        return "the verbal statement does not say who took it (takenBy)"
    taken_on = parts.get("takenOn", {}).get("valueDateTime")
    try:
        if not isinstance(taken_on, str) or len(taken_on) < 10:
            raise ValueError(taken_on)
        parse_bound(taken_on, end=False)
    except ValueError:
        return "the verbal statement does not say on which day it was taken (takenOn)"
    return None


def _performer(consent: Mapping) -> str | None:
    performers = _list(consent.get("performer"))
    return reference_of(performers[0]) if len(performers) == 1 else None


def _confirmer(consent: Mapping) -> str | None:
    ext = _extension(consent, codes.EXT_CONFIRMED_BY)
    return reference_of(ext.get("valueReference")) if ext else None


def _extension(consent: Mapping, url: str) -> Mapping | None:
    for ext in _list(consent.get("extension")):
        if _dict(ext).get("url") == url:
            return _dict(ext)
    return None


def _dict(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


__all__ = ["EXT_RECORDED_BY", "EXT_VERBAL_STATEMENT", "EVIDENCE_EXPRESSIONS", "recorder_of",
           "stamp_recorder", "recorded_by", "missing_evidence", "has_evidence", "signed_form_reference",
           "verbal_statement_problem"]
