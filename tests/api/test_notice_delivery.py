"""A decision notice reaches the family's app through its Subscription (FHIR R4 rest-hook), and
the app's receipt is recorded: the Ombudsman's case 21 019 072 was a parent who never learned
that a decision was online. The notice comes from `$issue` (SEND Regulations 2014 reg 14(2) for
the finalised plan, reg 22(3) for an amended one), in the same transaction as the plan."""

from __future__ import annotations

import json
from datetime import date

import responses

from tests.consent_support import grant, load_issued_example
from tests.e2e.test_statutory_process import proposal_from_current, respond

BASE = "http://ehcp-record.example.org/fhir"
APP = "https://app.family.example/ehcp-notices"
SCHOOL_HOOK = "https://hooks.school-1.example/ehcp"


def _subscribe(api, child: str, endpoint: str, token: str) -> None:
    subscription = {"resourceType": "Subscription", "status": "requested", "reason": "decision notices",
                    "criteria": f"Communication?patient={child}",
                    "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"}}
    created = api.post("/fhir/Subscription", subscription, token)
    assert created.status_code == 201, created.text


def _hooks(url: str) -> list:
    return [c for c in responses.calls if c.request.url.startswith(url)]


@responses.activate
def test_the_issued_amendment_notice_reaches_the_family_s_subscription_and_nobody_else(api):
    responses.add_passthru(api.base)
    responses.add(responses.POST, APP, status=200)
    responses.add(responses.POST, SCHOOL_HOOK, status=200)
    record = load_issued_example(api)
    child, mum = record["Patient"][0]["id"], record["parent_token"]
    mum_ref = f"RelatedPerson/{record['RelatedPerson'][0]['id']}"
    school = api.token("school", "Organization/school-1")
    assert api.post("/fhir/Consent", grant(child, mum_ref, "Organization/school-1", ["K"]), mum).status_code == 201
    _subscribe(api, child, APP, mum)
    _subscribe(api, child, SCHOOL_HOOK, school)  # a school with advice consent: notices are the family's

    ids = {resource_type: found[0]["id"] for resource_type, found in record.items() if isinstance(found, list) and found}

    def amend(resource: dict) -> None:
        if resource["resourceType"] == "Goal":
            resource["description"]["text"] = "Holds a short conversation with a peer"
    proposal = api.post(f"/fhir/Composition/{ids['Composition']}/$propose",
                        proposal_from_current(api, ids, amend), api.la())
    assert proposal.status_code == 201, proposal.text
    assert respond(api, proposal.json()["id"], mum, "agree").status_code == 200
    issued = api.post(f"/fhir/Task/{proposal.json()['id']}/$issue", None, api.la())
    assert issued.status_code == 200, issued.text

    delivered = [json.loads(c.request.body) for c in _calls_to(APP, 1)]
    notices = [n for n in delivered if n.get("resourceType") == "Communication"]
    assert len(notices) == 1, delivered
    notice = notices[0]
    assert notice["category"][0]["coding"][0]["code"] == "plan-amended"
    assert notice["about"] == [{"reference": f"Composition/{ids['Composition']}/_history/"
                                             f"{issued.json()['meta']['versionId']}"}]
    assert {"reference": mum_ref} in notice["recipient"]  # every parent with parental responsibility
    deadline = next(e["valueDate"] for e in notice["extension"] if e["url"].endswith("ehcp-appeal-deadline"))
    assert date.fromisoformat(deadline).strftime("%-d %B %Y") in notice["payload"][2]["contentString"]
    assert _hooks(SCHOOL_HOOK) == []

    # the app records that it got it: the delivered receipt, with the server's time
    event = {"resourceType": "Parameters", "parameter": [
        {"name": "notice", "valueReference": {"reference": f"Communication/{notice['id']}"}},
        {"name": "kind", "valueCode": "delivered"}]}
    received = api.post(f"/fhir/Patient/{child}/$notice-event", event, mum)
    assert received.status_code == 200 and received.json()["received"]


def _calls_to(url: str, wanted: int) -> list:
    """The rest-hook calls to `url` (at least `wanted`, waiting up to 5 s for the notifier)."""
    import time

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(_hooks(url)) < wanted:
        time.sleep(0.05)
    return _hooks(url)
