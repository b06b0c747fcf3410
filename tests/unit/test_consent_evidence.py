"""A consent recorded by someone other than the one who gives it carries evidence of the decision,
or it grants nothing (consent.evidence, the rule's one place)."""

from __future__ import annotations

import copy
from datetime import date, datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from consent import codes
from consent.engine import decide
from consent.evidence import (
    EXT_RECORDED_BY,
    EXT_VERBAL_STATEMENT,
    missing_evidence,
    recorder_of,
    stamp_recorder,
)
from consent.model import Actor, RecordState, parse_grant
from tests.unit.test_consent_model import consent, recorded_by

NOW = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
RECORD = RecordState("child-1", "Organization/la-866", date(2015, 3, 10), frozenset({"RelatedPerson/mum"}))
SCHOOL = Actor("school", "s-school", organization="Organization/school-1")
LA = Actor("la", "s-la", fhir_user="Practitioner/cw", organization="Organization/la-866")
MUM = Actor("parent", "s-mum", fhir_user="RelatedPerson/mum")

SIGNED_FORM = {"sourceReference": {"reference": "DocumentReference/form-1"}}
ATTACHED_FORM = {"sourceAttachment": {"contentType": "application/pdf", "data": "JVBERi0="}}


def verbal(taken_by: dict | None = None, taken_on: str | None = "2026-02-27T10:15:00Z") -> dict:
    parts = []
    if taken_by is not None:
        parts.append({"url": "takenBy", "valueReference": taken_by})
    if taken_on is not None:
        parts.append({"url": "takenOn", "valueDateTime": taken_on})
    parts.append({"url": "statement", "valueString": "Yes, the school can see sections B and E."})
    return {"url": EXT_VERBAL_STATEMENT, "extension": parts}


def by_la(**change) -> dict:
    body = consent(**change)
    body["extension"] = [recorded_by("Organization/la-866")] + change.get("extension", [])
    return body


def reads(body: dict) -> bool:
    return decide(SCHOOL, "read", RECORD, [parse_grant(body)], NOW).permit


def test_the_giver_s_own_consent_needs_no_evidence():
    assert missing_evidence(consent()) is None and reads(consent())


def test_an_la_recorded_consent_without_evidence_grants_nothing_and_says_what_is_missing():
    body = by_la()
    reason = missing_evidence(body)
    assert reason is not None
    assert "recorded by Organization/la-866, not by RelatedPerson/mum" in reason
    assert "sourceReference" in reason and "takenBy" in reason and "takenOn" in reason
    assert not reads(body)


def test_each_kind_of_evidence_makes_it_the_family_s_decision():
    assert reads(by_la(**SIGNED_FORM))
    assert reads(by_la(**ATTACHED_FORM))
    assert reads(by_la(extension=[verbal({"reference": "Practitioner/cw"})]))
    assert reads(by_la(extension=[verbal({"display": "Sam Case-Worker, SEN team"}, "2026-02-27")]))


def test_what_is_not_evidence():
    assert not reads(by_la(sourceAttachment={"contentType": "application/pdf", "title": "Signed form"}))
    assert not reads(by_la(sourceReference={"reference": "Contract/c1"}))
    assert not reads(by_la(sourceReference={"display": "the form in the filing cabinet"}))
    assert not reads(by_la(extension=[verbal(None)]))
    assert not reads(by_la(extension=[verbal({"reference": "Practitioner/cw"}, None)]))
    assert not reads(by_la(extension=[verbal({"reference": "Practitioner/cw"}, "2026-02")]))
    assert not reads(by_la(extension=[verbal({"display": "  "})]))


def test_a_consent_that_does_not_say_who_recorded_it_grants_nothing():
    body = consent()
    body.pop("extension")
    assert "does not say who recorded it" in missing_evidence(body)
    assert not reads(body)


def test_revoking_needs_no_evidence():
    assert missing_evidence(by_la(status="inactive")) is None


def test_the_young_person_confirming_a_parent_s_consent_is_their_own_decision():
    confirmed = consent(extension=[recorded_by("Patient/child-1"),
                                   {"url": codes.EXT_CONFIRMED_BY, "valueReference": {"reference": "Patient/child-1"}}])
    assert missing_evidence(confirmed) is None


def test_the_server_stamps_the_caller_over_what_the_body_says():
    body = consent(extension=[recorded_by("RelatedPerson/mum"),
                              {"url": codes.EXT_LAPSE_DATE, "valueDate": "2026-09-10"}])
    stored = copy.deepcopy(body)
    claimed = dict(stored)  # a shallow copy, as the conditional-update path passes
    stamp_recorder(claimed, LA)
    assert stored == body  # the original's extension list is untouched
    assert [e for e in claimed["extension"] if e["url"] == EXT_RECORDED_BY] == [recorded_by("Organization/la-866")]
    assert {"url": codes.EXT_LAPSE_DATE, "valueDate": "2026-09-10"} in claimed["extension"]
    assert not reads(claimed)  # the LA claiming the parent's own write gains nothing
    assert recorder_of(MUM) == "RelatedPerson/mum"
    assert recorder_of(Actor("young-person", "s-yp", patient="Patient/child-1")) == "Patient/child-1"


RECORDERS = st.sampled_from(["RelatedPerson/mum", "RelatedPerson/dad", "Organization/la-866",
                             "Organization/school-1", "Patient/child-1", None])
EVIDENCE = st.sampled_from([{}, SIGNED_FORM, ATTACHED_FORM, {"extension": [verbal({"reference": "Practitioner/cw"})]},
                            {"sourceAttachment": {"title": "no data"}}, {"extension": [verbal(None)]}])


@settings(max_examples=300, deadline=None)
@given(recorder=RECORDERS, performer=st.sampled_from(["RelatedPerson/mum", "RelatedPerson/dad"]),
       evidence=EVIDENCE, confirmed=st.booleans())
def test_a_grant_is_used_only_when_its_giver_wrote_it_or_it_carries_evidence(recorder, performer, evidence,
                                                                             confirmed):
    body = consent(performer=[{"reference": performer}], **{k: v for k, v in evidence.items() if k != "extension"})
    extension = list(evidence.get("extension", []))
    if recorder:
        extension.append(recorded_by(recorder))
    if confirmed:
        extension.append({"url": codes.EXT_CONFIRMED_BY, "valueReference": {"reference": "Patient/child-1"}})
    body["extension"] = extension
    decision = decide(SCHOOL, "read", RECORD, [parse_grant(body)], NOW)
    has_evidence = evidence in (SIGNED_FORM, ATTACHED_FORM) or (
        evidence.get("extension") and evidence["extension"][0]["extension"][0]["url"] == "takenBy")
    own = recorder is not None and (recorder == performer or (confirmed and recorder == "Patient/child-1"))
    gives = performer in RECORD.parents  # dad has no parental responsibility here
    if decision.permit:
        assert recorder is not None and (own or has_evidence)
    assert decision.permit == (recorder is not None and (own or bool(has_evidence)) and gives)
