"""Property: no response contains a section, resource or count the consent engine did not permit.

Hypothesis draws random consents (sections, actions, periods, status) for a fresh organisation,
the parent grants them over HTTP, and every read path is compared with the engine's decision.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consent import engine
from ehcp_record.access.policy import record_state_of
from consent.model import Actor, parse_grant
from tests.consent_support import SECTIONS, composition_sections, grant, load_issued_example, section_of

SECTIONED = ("Condition", "Goal", "CarePlan", "DocumentReference")
periods = st.sampled_from(["active", "expired", "future"])
grants_strategy = st.lists(
    st.tuples(st.sets(st.sampled_from(SECTIONS), min_size=1, max_size=5),
              st.sets(st.sampled_from(["read", "contribute"]), min_size=1),
              periods, st.sampled_from(["active", "inactive"])),
    max_size=3,
)


@pytest.fixture(scope="module")
def record(api):
    return load_issued_example(api)


def _period(kind: str) -> tuple[date, date]:
    today = date.today()
    return {"active": (today - timedelta(days=5), today + timedelta(days=30)),
            "expired": (today - timedelta(days=60), today - timedelta(days=2)),
            "future": (today + timedelta(days=3), today + timedelta(days=60))}[kind]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=grants_strategy, role=st.sampled_from(["school", "health", "social-care"]))
def test_no_response_exceeds_the_engines_decision(api, record, drawn, role):
    child = record["Patient"][0]["id"]
    grantor = f"RelatedPerson/{record['RelatedPerson'][0]['id']}"
    organization = f"Organization/prop-{uuid.uuid4().hex[:10]}"
    stored = []
    for sections, actions, period, status in drawn:
        start, end = _period(period)
        body = grant(child, grantor, organization, sorted(sections), sorted(actions), start, end, status, role=role)
        response = api.post("/fhir/Consent", body, record["parent_token"])
        assert response.status_code == 201, response.text
        stored.append(response.json())
    token = api.token(role, organization)
    state = record_state_of(child, api.services.repo.record_state(child))
    actor = Actor(role=role, sub=organization, organization=organization)
    decision = engine.decide(actor, "read", state, [parse_grant(c) for c in stored], datetime.now(timezone.utc))
    allowed = decision.sections if decision.permit else frozenset()

    for resource_type in SECTIONED:
        bundle = api.get(f"/fhir/{resource_type}?patient={child}&_count=100", token).json()
        seen = {section_of(e["resource"]) for e in bundle.get("entry", [])}
        assert seen <= allowed
        assert bundle["total"] == sum(1 for r in record[resource_type] if section_of(r) in allowed)
        for resource in record[resource_type][:2]:
            status = api.get(f"/fhir/{resource_type}/{resource['id']}", token).status_code
            assert status == (200 if section_of(resource) in allowed else 404)
    document = api.get(f"/fhir/Composition/{record['Composition'][0]['id']}/$document", token)
    if allowed:
        assert composition_sections(document.json()["entry"][0]["resource"]) <= allowed
    else:
        assert document.status_code == 404
