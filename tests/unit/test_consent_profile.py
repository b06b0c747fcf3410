"""Each consent rule is enforced once: by the ehcp-consent profile on write, with one issue per
problem, and not again in consent.model; a stored Consent that breaks a rule still grants nothing
it does not say."""

from __future__ import annotations

import copy
from datetime import date, datetime, timezone

import pytest

from consent import codes
from consent.engine import decide
from consent.model import Actor, RecordState, grant_problems, parse_grant
from ehcp_record.fhir.validator import default_validator
from tests.unit.test_consent_model import consent, recorded_by

UTC = timezone.utc
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
RECORD = RecordState("child-1", "Organization/la-866", date(2015, 3, 10), frozenset({"RelatedPerson/mum"}))
SCHOOL = Actor("school", "s-school", organization="Organization/school-1")
SCOPE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]}
ROLE = codes.ACTOR_ROLE_SYSTEM


def sharing(**change) -> dict:
    """A valid consent (see test_consent_model.consent) that also meets the profile."""
    return consent(**{"scope": copy.deepcopy(SCOPE), **copy.deepcopy(change)})


def errors(body: dict) -> list:
    return [i for i in default_validator().validate(body) if i.severity == "error"]


def role_actor(role: str) -> dict:
    return {"reference": {"identifier": {"system": ROLE, "value": role}}}


# (change, what the one issue says, whether a stored copy must grant nothing)
CASES = [
    ({"provision": {"code": []}}, "Consent.provision.code is required", True),
    ({"provision": {"code": [{"coding": [{"system": codes.SECTION_SYSTEM, "code": "Z"}]}]}},
     "must use a code from ValueSet", True),
    ({"provision": {"code": [{"coding": [{"system": "http://other", "code": "B"}]}]}},
     "must use a code from ValueSet", True),
    ({"provision": {"actor": []}}, "Consent.provision.actor is required", True),
    ({"provision": {"actor": [{"reference": {"reference": "Organization/school-1"}},
                              {"reference": {"reference": "Organization/b"}}]}},
     "one consent per recipient", True),
    ({"provision": {"actor": [{"reference": {"reference": "Practitioner/p"}}]}},
     "refers to a Practitioner, but profile EHCP sharing consent allows only Organization", True),
    ({"provision": {"actor": [{"reference": {"display": "the school"}}]}},
     "an Organization reference or a role identifier", True),
    ({"provision": {"actor": [role_actor("plumber")]}}, "unknown recipient role 'plumber'", True),
    ({"provision": {"actor": [role_actor("auditor")]}}, "the role 'auditor' cannot be named in a consent", True),
    ({"provision": {"action": []}}, "Consent.provision.action is required", True),
    ({"provision": {"action": [{"coding": [{"system": codes.CONSENT_ACTION_SYSTEM, "code": "delete"}]}]}},
     "must use a code from ValueSet", True),
    ({"provision": {"period": {"start": "2026-05-01", "end": "2026-01-01"}}},
     "ends (2026-01-01) before it starts (2026-05-01)", True),
    ({"provision": {"period": None}}, "Consent.provision.period is required", False),
    ({"provision": {"type": "deny"}}, "revoke the permit consent (status inactive) instead", True),
    ({"provision": {"type": None}}, "Consent.provision.type is required", True),
    ({"provision": {"data": [{"meaning": "instance", "reference": {"reference": "Goal/g"}}]}},
     "Consent.provision.data appears too often", True),
    ({"provision": {"provision": [{"type": "deny"}]}}, "Consent.provision.provision appears too often", True),
    ({"provision": {"purpose": [{"system": "http://x", "code": "y"}]}}, "not by purposes of use", True),
    ({"status": "revoked"}, "consent status 'revoked' is not one of", True),
    ({"patient": None}, "Consent.patient is required", True),
    ({"performer": []}, "Consent.performer is required", True),
    ({"performer": [{"reference": "RelatedPerson/mum"}, {"reference": "RelatedPerson/dad"}]},
     "Consent.performer appears too often", True),
    ({"performer": [{"reference": "Practitioner/p"}]}, "allows only Patient, RelatedPerson", True),
    # the LA records a paper consent; it is not the performer
    ({"performer": [{"reference": "Organization/la-866"}],
      "sourceAttachment": {"contentType": "application/pdf", "url": "Binary/form-1"}},
     "refers to a Organization, but profile EHCP sharing consent allows only Patient, RelatedPerson", True),
    ({"scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]}},
     "Consent.scope must be", False),
    ({"extension": [{"url": codes.EXT_LAPSE_DATE, "valueDate": "2026-09"}]},
     "lapse-date 2026-09 must be a full date", True),
    ({"extension": [{"url": codes.EXT_CONFIRMED_BY, "valueReference": {"reference": "RelatedPerson/dad"}}]},
     "confirmed-by extension references the young person", True),
]


def test_the_valid_consent_meets_the_profile_and_is_used():
    assert errors(sharing()) == [] and grant_problems(sharing()) == []
    grant = parse_grant(sharing())
    assert grant.problems == () and decide(SCHOOL, "read", RECORD, [grant], NOW).permit


@pytest.mark.parametrize("change, expected, unusable", CASES)
def test_each_rule_is_one_issue_from_the_profile_and_not_checked_again(change, expected, unusable):
    body = sharing(**{k: v for k, v in change.items() if v is not None or k == "provision"})
    for key, value in change.items():
        if value is None:
            body.pop(key, None)
    for key, value in (change.get("provision") or {}).items():
        if value is None:
            body["provision"].pop(key, None)
    found = errors(body)
    assert len(found) == 1, [i.message for i in found]
    assert expected in found[0].message, found[0].message
    assert grant_problems(body) == []  # the profile's rule, not consent.model's
    grant = parse_grant(body)
    actor = SCHOOL
    if grant.recipient_role:
        actor = Actor(grant.recipient_role, "s")
    if unusable:  # a stored copy that never met the profile shares nothing
        assert not decide(actor, "read", RECORD, [grant], NOW).sections


def test_an_la_recording_a_paper_consent_names_the_parent_as_performer():
    paper = sharing(organization=[{"reference": "Organization/la-866"}],
                    extension=[recorded_by("Organization/la-866")],
                    sourceAttachment={"contentType": "application/pdf", "url": "Binary/form-1"})
    assert errors(paper) == []
    grant = parse_grant(paper)
    assert grant.recorded_by_la and grant.grantor == "RelatedPerson/mum"
    assert decide(SCHOOL, "read", RECORD, [grant], NOW).permit


def test_the_evidence_rule_is_consent_evidence_s_not_the_profile_s():
    # recorded by the LA with no form and no statement: the profile has nothing to say (the
    # rule is consent.evidence's, applied by the write path and by parse_grant), and a stored
    # copy grants nothing
    bare = sharing(organization=[{"reference": "Organization/la-866"}],
                   extension=[recorded_by("Organization/la-866")])
    assert errors(bare) == [] and grant_problems(bare) == []
    grant = parse_grant(bare)
    assert grant.problems and "carries no evidence" in grant.problems[0]
    decision = decide(SCHOOL, "read", RECORD, [grant], NOW)
    assert not decision.permit and "recorded by Organization/la-866" in decision.reason


def test_a_family_consent_outside_the_sharing_vocabulary_is_refused_once():
    plain = sharing()
    plain["provision"] = {"type": "permit", "period": {"start": "2026-01-01"}}
    assert errors(plain) == []  # the ehcp-consent profile applies to sharing consents only
    assert len(grant_problems(plain)) == 1 and "shares nothing" in grant_problems(plain)[0]


def test_an_unreadable_period_is_refused_by_the_r4_model_and_a_stored_copy_is_unusable():
    from ehcp_record.errors import FhirError, outcome_of
    from ehcp_record.fhir.model import parse_resource

    body = sharing(provision={"period": {"start": "1 May"}})
    with pytest.raises(FhirError) as refused:
        parse_resource(body, "Consent")
    at_fault = [e for issue in outcome_of(refused.value)["issue"] for e in issue.get("expression", [])]
    assert refused.value.status == 400 and "Consent.provision.period.start" in at_fault  # one issue per problem
    grant = parse_grant(body)
    assert grant.problems and not decide(SCHOOL, "read", RECORD, [grant], NOW).permit
