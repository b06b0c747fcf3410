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
    assert ended["status"] == "off"  # its end has passed: the server turned it off at once
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


@responses.activate
def test_an_end_date_passing_stops_notifications_and_turns_it_off(api, world):
    """R4 Subscription.end, "the time for the server to turn the subscription off": notified
    before it, nothing after it, and the first change after it stores `off` (version 2)."""
    from datetime import datetime, timedelta, timezone

    _, child, _ = world
    responses.add_passthru(api.base)
    responses.add(responses.POST, HOOK, status=200)
    school = api.token("school", "Organization/school-1")
    end = datetime.now(timezone.utc) + timedelta(seconds=2)
    created = api.post("/fhir/Subscription", dict(_subscription(child), end=end.isoformat(timespec="seconds")),
                       school).json()
    assert created["status"] == "active"
    time.sleep(0.3)  # the subscriptions cache follows a change stream
    api.post("/fhir/DocumentReference", advice(child, "K"), api.la())
    assert len(_calls(1)) == 1
    time.sleep(max(0.0, (end - datetime.now(timezone.utc)).total_seconds()) + 1.1)
    api.post("/fhir/DocumentReference", advice(child, "K"), api.la())
    url = f"/fhir/Subscription/{created['id']}"
    deadline = time.monotonic() + 5
    while api.get(url, school).json()["status"] != "off" and time.monotonic() < deadline:
        time.sleep(0.1)
    now = api.get(url, school).json()
    assert now["status"] == "off" and now["meta"]["versionId"] == "2"
    assert len(_calls(2, 0.5)) == 1


def _audit(api, **query) -> list[dict]:
    """The directory chain's entries (Subscriptions are no child's record)."""
    clauses = {"record": "ehcp-directory", **{f"body.{k}": v for k, v in query.items()}}
    return list(api.services.repo.audit.find(clauses))


@responses.activate
def test_the_owner_deletes_a_subscription_and_keeps_its_history(api, world):
    """FHIR R4 delete (http §3.1.0.7): 200, then read is 410, earlier versions stay readable,
    `_history` shows the DELETE, search no longer finds it and nothing more is delivered."""
    record, child, _ = world
    responses.add_passthru(api.base)
    responses.add(responses.POST, HOOK, status=200)
    school = api.token("school", "Organization/school-1")
    created = api.post("/fhir/Subscription", _subscription(child), school).json()
    url = f"/fhir/Subscription/{created['id']}"
    changed = api.put(url, dict(created, reason="SENCo alerts, renamed"), school, **{"If-Match": 'W/"1"'})
    assert changed.status_code == 200
    time.sleep(0.3)  # the subscriptions cache follows a change stream
    api.post("/fhir/DocumentReference", advice(child, "K"), api.la())
    assert len(_calls(1)) == 1  # it notifies while it exists

    stale = api.session.delete(api.base + url, headers=api.headers(school, **{"If-Match": 'W/"1"'}))
    assert stale.status_code == 412
    deleted = api.delete(url, school)
    assert deleted.status_code == 200, deleted.text
    assert deleted.headers["ETag"] == 'W/"3"' and "deleted" in deleted.json()["issue"][0]["diagnostics"]

    gone = api.get(url, school)
    assert gone.status_code == 410 and gone.json()["issue"][0]["code"] == "deleted"
    assert api.get(f"{url}/_history/1", school).json()["reason"] == "school SENCo alerts"
    assert api.get(f"{url}/_history/2", school).json()["reason"] == "SENCo alerts, renamed"
    assert api.get(f"{url}/_history/3", school).status_code == 410
    history = api.get(f"{url}/_history", school).json()
    assert history["total"] == 3
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT", "POST"]
    assert "resource" not in history["entry"][0] and history["entry"][0]["request"]["url"] == f"Subscription/{created['id']}"
    by_type = api.get("/fhir/Subscription/_history", school).json()
    assert any(e["request"]["method"] == "DELETE" and e["fullUrl"].endswith(url) for e in by_type["entry"])
    assert api.get(f"/fhir/Subscription?_id={created['id']}", school).json()["total"] == 0
    assert created["id"] not in api.get("/fhir/Subscription", school).text
    resurrect = api.put(url, dict(created, reason="again"), school, **{"If-Match": 'W/"3"'})
    assert resurrect.status_code == 410

    again = api.delete(url, school)
    assert again.status_code == 200 and "already deleted" in again.json()["issue"][0]["diagnostics"]
    assert api.get(f"{url}/_history", school).json()["total"] == 3  # a repeat delete changes nothing
    assert len(_audit(api, action="delete", outcome="permit", **{"resources.ref": f"{url[6:]}/_history/3"})) == 1

    api.post("/fhir/DocumentReference", advice(child, "K"), api.la())
    time.sleep(0.8)
    assert len(_calls(2, 0.5)) == 1  # nothing is delivered to a deleted subscription


def test_only_its_owner_deletes_a_subscription_anyone_else_gets_the_404_of_a_missing_one(api, world):
    """Hidden equals missing (access/scoped.py): another family's parent deleting a parent's
    subscription gets exactly the 404 of an id that does not exist, the refusal is audited
    once, and the subscription is unchanged."""
    from tests.e2e.plan_builders import parent

    record, child, _ = world
    mum = record["parent_token"]
    created = api.post("/fhir/Subscription", dict(_subscription(child), reason="mum's alerts"), mum)
    assert created.status_code == 201, created.text
    subscription = created.json()["id"]
    other_child = api.new_child()
    stranger = api.post("/fhir/RelatedPerson", parent(other_child["id"], "Kim"), api.la()).json()
    other_parent = api.token("parent", None, fhir_user=f"RelatedPerson/{stranger['id']}")

    refused = api.delete(f"/fhir/Subscription/{subscription}", other_parent)
    missing = api.delete("/fhir/Subscription/no-such-subscription", other_parent)
    assert refused.status_code == missing.status_code == 404
    assert refused.json() == {**missing.json(), "issue": [dict(missing.json()["issue"][0], diagnostics=(
        missing.json()["issue"][0]["diagnostics"].replace("no-such-subscription", subscription)))]}
    denials = _audit(api, outcome="deny", **{"resources.ref": f"Subscription/{subscription}"})
    assert len(denials) == 1 and denials[0]["body"]["agent"]["fhirUser"] == f"RelatedPerson/{stranger['id']}"
    mine = api.get(f"/fhir/Subscription/{subscription}", mum)
    assert mine.status_code == 200 and mine.json()["meta"]["versionId"] == "1"


def test_delete_is_for_subscriptions_only_and_never_conditional(api, world):
    _, child, _ = world
    school = api.token("school", "Organization/school-1")
    refused = api.delete(f"/fhir/Patient/{child}", api.la())
    assert refused.status_code == 405 and "never deleted" in refused.json()["issue"][0]["diagnostics"]
    conditional = api.delete("/fhir/Subscription?status=active", school)
    assert conditional.status_code == 405
    assert "DELETE /fhir/Subscription/{id}" in conditional.json()["issue"][0]["diagnostics"]
    assert api.delete("/fhir/Condition?code=x", api.la()).status_code == 405
    assert api.get(f"/fhir/Subscription?status=active", school).status_code == 200  # nothing was deleted
    capability = api.get("/fhir/metadata").json()
    interactions = {r["type"]: {i["code"] for i in r["interaction"]} for r in capability["rest"][0]["resource"]}
    assert "delete" in interactions["Subscription"]
    assert [t for t, codes in interactions.items() if "delete" in codes] == ["Subscription"]


def test_another_process_forgets_a_deleted_subscription(api, world):
    """Every API process keeps the active subscriptions in memory, kept in step by a change
    stream (store/subscriptions.py): a second cache on the same database, as another process
    holds, drops the subscription within moments of its delete."""
    from ehcp_record.store.subscriptions import SubscriptionCache

    _, child, _ = world
    school = api.token("school", "Organization/school-1")
    created = api.post("/fhir/Subscription", _subscription(child), school).json()
    repo = api.services.repo
    elsewhere = SubscriptionCache(repo.current, repo._version)
    try:
        def known() -> bool:
            return created["id"] in {v.id for v in elsewhere.active({"DocumentReference"})}

        assert known()
        time.sleep(0.5)  # its change stream is open and loaded
        assert api.delete(f"/fhir/Subscription/{created['id']}", school).status_code == 200
        deadline = time.monotonic() + 5
        while known() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not known()
    finally:
        elsewhere.close()
