"""Subscriptions: notifications follow consent exactly like reads do (issue 4's last path)."""

from __future__ import annotations

import json
import time

import pytest
import responses

from tests.consent_support import grant, load_issued_example
SECTION = "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-section"


def advice(child: str, section: str = "K") -> dict:
    """Advice a professional appends after issue (section K) or the family's own view (A)."""
    return {"resourceType": "DocumentReference", "status": "current", "docStatus": "final",
            "subject": {"reference": f"Patient/{child}"},
            "category": [{"coding": [{"system": SECTION, "code": section}]}],
            "content": [{"attachment": {"contentType": "text/plain", "data": "QWR2aWNl", "title": "Advice"}}]}

HOOK = "https://hooks.school-1.example/ehcp"


@pytest.fixture()
def world(api):
    record = load_issued_example(api)
    child = record["Patient"][0]["id"]
    mum = f"RelatedPerson/{record['RelatedPerson'][0]['id']}"
    consent = api.post("/fhir/Consent", grant(child, mum, "Organization/school-1", ["K"]), record["parent_token"]).json()
    return record, child, consent


def _subscription(child: str, payload: bool = True) -> dict:
    channel = {"type": "rest-hook", "endpoint": HOOK, "header": ["Authorization: Bearer hook-secret"]}
    if payload:
        channel["payload"] = "application/fhir+json"
    return {"resourceType": "Subscription", "status": "requested", "reason": "school SENCo alerts",
            "criteria": f"DocumentReference?patient={child}", "channel": channel}


def _calls(wanted: int, seconds: float = 5.0) -> list:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        hooks = [c for c in responses.calls if c.request.url.startswith(HOOK)]
        if len(hooks) >= wanted:
            return hooks
        time.sleep(0.05)
    return [c for c in responses.calls if c.request.url.startswith(HOOK)]


@responses.activate
def test_notifications_follow_consent_and_revocation(api, world):
    record, child, consent = world
    responses.add_passthru(api.base)
    responses.add(responses.POST, HOOK, status=200)
    school = api.token("school", "Organization/school-1")
    created = api.post("/fhir/Subscription", _subscription(child), school)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "active"

    report = api.post("/fhir/DocumentReference", advice(child, "K"), api.la()).json()
    hooks = _calls(1)
    assert len(hooks) == 1
    sent = json.loads(hooks[0].request.body)
    assert sent["id"] == report["id"] and hooks[0].request.headers["Authorization"] == "Bearer hook-secret"

    api.post("/fhir/DocumentReference", advice(child, "A"), api.la())  # school has no consent for A
    time.sleep(0.5)
    assert len(_calls(2, 0.5)) == 1

    revoked = dict(consent, status="inactive")
    assert api.put(f"/fhir/Consent/{consent['id']}", revoked, record["parent_token"], **{"If-Match": 'W/"1"'}).status_code == 200
    api.post("/fhir/DocumentReference", advice(child, "K"), api.la())
    time.sleep(0.5)
    assert len(_calls(2, 0.5)) == 1  # revocation stops notifications from the next change


@responses.activate
def test_empty_payload_carries_no_data(api, world):
    _, child, _ = world
    responses.add_passthru(api.base)
    responses.add(responses.POST, HOOK, status=200)
    school = api.token("school", "Organization/school-1")
    assert api.post("/fhir/Subscription", _subscription(child, payload=False), school).status_code == 201
    api.post("/fhir/DocumentReference", advice(child, "K"), api.la())
    hooks = _calls(1)
    assert len(hooks) == 1 and not hooks[0].request.body


def test_subscriptions_belong_to_their_owner(api, world):
    _, child, _ = world
    school = api.token("school", "Organization/school-1")
    created = api.post("/fhir/Subscription", _subscription(child), school).json()
    other = api.token("school", "Organization/school-2")
    assert api.get(f"/fhir/Subscription/{created['id']}", other).status_code == 404
    assert api.get("/fhir/Subscription", other).json()["total"] == 0
    assert api.get(f"/fhir/Subscription/{created['id']}", school).status_code == 200
    changed = dict(created, reason="taken over")
    assert api.put(f"/fhir/Subscription/{created['id']}", changed, other, **{"If-Match": 'W/"1"'}).status_code == 403


@pytest.mark.parametrize("change, words", [
    ({"criteria": "DocumentReference?colour=blue"}, "criteria"),
    ({"channel": {"type": "rest-hook", "endpoint": "http://hooks.example/x"}}, "https"),
    ({"channel": {"type": "email", "endpoint": "mailto:x@example.org"}}, "rest-hook"),
])
def test_bad_subscriptions_are_refused(api, world, change, words):
    _, child, _ = world
    body = dict(_subscription(child), **change)
    response = api.post("/fhir/Subscription", body, api.token("school", "Organization/school-1"))
    assert response.status_code == 422 and words in response.json()["issue"][0]["diagnostics"]


@responses.activate
def test_a_subscriber_switches_off_and_an_end_date_ends_it(api, world):
    """R4 Subscription lifecycle: `off` is kept (not re-activated) and nothing is sent; `end`
    in the past stops deliveries; `error` is the server's to set."""
    record, child, consent = world
    responses.add_passthru(api.base)
    responses.add(responses.POST, HOOK, status=200)
    school = api.token("school", "Organization/school-1")
    created = api.post("/fhir/Subscription", _subscription(child), school).json()
    off = api.put(f"/fhir/Subscription/{created['id']}", dict(created, status="off"), school, **{"If-Match": 'W/"1"'})
    assert off.status_code == 200 and off.json()["status"] == "off"
    assert api.get(f"/fhir/Subscription/{created['id']}", school).json()["status"] == "off"
    ended = api.post("/fhir/Subscription", dict(_subscription(child), end="2020-01-01T00:00:00Z"), school).json()
    assert ended["status"] == "active"
    time.sleep(0.3)  # the subscriptions cache follows a change stream
    api.post("/fhir/DocumentReference", advice(child, "K"), api.la())
    time.sleep(0.8)
    assert _calls(1, 0.5) == []
    refused = api.post("/fhir/Subscription", dict(_subscription(child), status="error"), school)
    assert refused.status_code == 422 and "server" in refused.text


@responses.activate
def test_an_endpoint_that_keeps_failing_puts_the_subscription_in_error_until_its_owner_resumes_it(api, world):
    """R4 Subscription.status `error`: after three failed notifications in a row the server stops
    sending and says why (`Subscription.error`); the owner sets it back to `requested` and
    notifications resume. A failure in between successes does not count towards it."""
    from ehcp_record.notifications.subscriptions import FAILURES_BEFORE_ERROR

    record, child, consent = world
    responses.add_passthru(api.base)
    failing = responses.add(responses.POST, HOOK, status=500)
    school = api.token("school", "Organization/school-1")
    created = api.post("/fhir/Subscription", _subscription(child), school).json()
    url = f"/fhir/Subscription/{created['id']}"
    time.sleep(0.3)  # the subscriptions cache follows a change stream
    for n in range(1, FAILURES_BEFORE_ERROR + 1):
        api.post("/fhir/DocumentReference", advice(child, "K"), api.la())
        assert len(_calls(n)) == n
    deadline = time.monotonic() + 5
    while api.get(url, school).json()["status"] != "error" and time.monotonic() < deadline:
        time.sleep(0.1)
    stopped = api.get(url, school).json()
    assert stopped["status"] == "error", stopped
    assert stopped["error"] == "3 notifications in a row failed; the last: the endpoint answered HTTP 500"
    assert stopped["meta"]["versionId"] == "2"
    # nothing more is sent while it is in error
    api.post("/fhir/DocumentReference", advice(child, "K"), api.la())
    time.sleep(0.8)
    assert len(_calls(FAILURES_BEFORE_ERROR + 1, 0.3)) == FAILURES_BEFORE_ERROR
    # the owner fixes the endpoint and switches it back on
    responses.replace(responses.POST, HOOK, status=200)
    resumed = api.put(url, dict(stopped, status="requested"), school, **{"If-Match": 'W/"2"'})
    assert resumed.status_code == 200 and resumed.json()["status"] == "active", resumed.text
    assert "error" not in resumed.json()
    time.sleep(0.3)
    api.post("/fhir/DocumentReference", advice(child, "K"), api.la())
    assert len(_calls(FAILURES_BEFORE_ERROR + 1)) == FAILURES_BEFORE_ERROR + 1
    assert failing.call_count == FAILURES_BEFORE_ERROR
