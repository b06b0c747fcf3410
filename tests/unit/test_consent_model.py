"""Reading FHIR Consents into grants, and refusing the ones the engine cannot honour."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from consent import codes
from consent.clock import parse_bound, parse_date, uk_date, uk_midnight
from consent.evidence import EXT_RECORDED_BY
from consent.model import grant_problems, parse_grant

UTC = timezone.utc


def recorded_by(reference: str) -> dict:
    """The extension the server stamps on every Consent write (consent.evidence)."""
    return {"url": EXT_RECORDED_BY, "valueReference": {"reference": reference}}


def consent(**over) -> dict:
    """A valid parent's consent for school-1 to read B and E, 2026-01-01..2026-05-01, written
    by the parent herself (so it needs no evidence)."""
    body = {
        "resourceType": "Consent", "id": "c1", "status": "active",
        "extension": [recorded_by("RelatedPerson/mum")],
        "patient": {"reference": "Patient/child-1"},
        "performer": [{"reference": "RelatedPerson/mum"}],
        "provision": {
            "type": "permit",
            "period": {"start": "2026-01-01", "end": "2026-05-01"},
            "actor": [{"reference": {"reference": "Organization/school-1"}}],
            "action": [{"coding": [{"system": codes.CONSENT_ACTION_SYSTEM, "code": "read"}]}],
            "code": [{"coding": [{"system": codes.SECTION_SYSTEM, "code": "B"},
                                 {"system": codes.SECTION_SYSTEM, "code": "E"}]}],
        },
    }
    provision = over.pop("provision", {})
    body.update(over)
    body["provision"].update(provision)
    return body


def test_valid_consent_parses_to_grant():
    grant = parse_grant(consent())
    assert grant.id == "c1" and grant.status == "active"
    assert grant.grantor == "RelatedPerson/mum"
    assert grant.recipient_org == "Organization/school-1" and grant.recipient_role is None
    assert grant.sections == {"B", "E"} and grant.actions == {"read"}
    assert grant.patient == "Patient/child-1"
    assert grant.problems == () and not grant.recorded_by_la
    assert grant_problems(consent()) == []


def test_period_end_date_covers_the_whole_uk_day():
    grant = parse_grant(consent())
    assert grant.start == datetime(2026, 1, 1, tzinfo=UTC)  # GMT in winter
    # 1 May is in summer time: the day ends at 23:00 UTC.
    assert grant.end == datetime(2026, 5, 1, 22, 59, 59, 999999, tzinfo=UTC)


def test_role_wide_recipient():
    role_actor = {"reference": {"identifier": {"system": codes.ACTOR_ROLE_SYSTEM, "value": "health"}}}
    grant = parse_grant(consent(provision={"actor": [role_actor]}))
    assert grant.recipient_role == "health" and grant.recipient_org is None
    assert grant_problems(consent(provision={"actor": [role_actor]})) == []


def test_extensions_and_paper_consent():
    # the LA records the parent's decision from the signed form: the parent is the performer,
    # the LA is the recorder (consent.evidence), the form the evidence
    body = consent(
        organization=[{"reference": "Organization/la-866"}],
        sourceAttachment={"contentType": "application/pdf", "url": "Binary/form-1"},
        extension=[
            recorded_by("Organization/la-866"),
            {"url": codes.EXT_CONFIRMED_BY, "valueReference": {"reference": "Patient/child-1"}},
            {"url": codes.EXT_LAPSE_DATE, "valueDate": "2026-09-10"},
        ],
    )
    grant = parse_grant(body)
    assert grant.recorded_by_la and grant.grantor == "RelatedPerson/mum"
    assert grant.confirmed_by == "Patient/child-1"
    assert grant.lapse_date == date(2026, 9, 10)
    assert grant_problems(body) == [] and grant.problems == ()


def test_source_without_organisation_is_not_paper_consent():
    body = consent(sourceReference={"reference": "DocumentReference/d1"})
    assert not parse_grant(body).recorded_by_la


def test_no_provision_and_wrong_type():
    body = consent()
    del body["provision"]
    assert grant_problems(body) == ["the consent names no plan sections (provision.code, " + codes.SECTION_SYSTEM
                                    + ") and no action (provision.action, read or contribute), so it shares nothing"]
    assert grant_problems({"resourceType": "Task"}) == ["this is not a Consent resource"]


@pytest.mark.parametrize("garbage", [
    {}, {"resourceType": "Consent"}, {"resourceType": "Consent", "provision": []},
    {"resourceType": "Consent", "provision": {"actor": "x", "code": [1, None], "period": "p"}},
    {"resourceType": "Consent", "performer": "x", "extension": [None, 3]},
    "not even a mapping", None,
])
def test_parse_grant_never_raises(garbage):
    grant = parse_grant(garbage)
    assert grant.problems and not grant.sections - codes.ALL_SECTIONS


def test_clock_uses_uk_civil_time():
    # BST 2026: 29 Mar 01:00 UTC to 25 Oct 01:00 UTC.
    assert uk_date(datetime(2026, 7, 1, 23, 30, tzinfo=UTC)) == date(2026, 7, 2)
    assert uk_date(datetime(2026, 12, 1, 23, 30, tzinfo=UTC)) == date(2026, 12, 1)
    assert uk_date(datetime(2026, 3, 29, 0, 59, tzinfo=UTC)) == date(2026, 3, 29)
    assert uk_midnight(date(2026, 3, 29)) == datetime(2026, 3, 29, tzinfo=UTC)
    assert uk_midnight(date(2026, 3, 30)) == datetime(2026, 3, 29, 23, tzinfo=UTC)
    assert uk_midnight(date(2026, 10, 25)) == datetime(2026, 10, 24, 23, tzinfo=UTC)
    assert uk_midnight(date(2026, 10, 26)) == datetime(2026, 10, 26, tzinfo=UTC)


def test_parse_bound_partial_dates_and_instants():
    assert parse_bound("2026", end=True) == datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert parse_bound("2026-02", end=True) == datetime(2026, 2, 28, 23, 59, 59, 999999, tzinfo=UTC)
    assert parse_bound("2026-06-01T10:00:00+01:00", end=False) == datetime(2026, 6, 1, 9, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_bound("2026-02-30", end=False)
    with pytest.raises(ValueError):
        parse_bound("2026-06-01T10:00:00", end=False)  # a time needs a zone


def test_one_fhir_date_grammar():
    from ehcp_record.fhir import dates

    assert dates.parse_date is parse_date and dates.parse_bound is parse_bound
    assert parse_date("2026-09-01") == date(2026, 9, 1)
    for text in ("20260901", "2026-W36-2", "2026-09", "2026-02-30", "2026-09-01T00:00:00Z", None):
        with pytest.raises(ValueError):
            parse_date(text)
    with pytest.raises(ValueError):
        parse_bound("2026-06-01T10:00Z", end=False)  # a dateTime has seconds
    assert dates.parse_range("2026-06-01T10:00Z")[0] == datetime(2026, 6, 1, 10, tzinfo=UTC)  # a search value may not
