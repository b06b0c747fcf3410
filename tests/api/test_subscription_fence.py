"""Subscriptions cannot point the server at internal addresses (issue 16, "outbound requests
fenced"): refused when saved, with an OperationOutcome naming the reason and no socket opened;
refused again when delivered if the name has since moved to an internal address; a redirect
from an allowed subscriber is not followed. The server allows 127.0.0.1 only (tests/conftest.py).
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import TEST_NAMES
from tests import net_support

SECTION = "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-section"
hook = net_support.hook  # the 127.0.0.1 subscriber (module fixture)

REFUSED = [
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
    ("http://10.0.0.1/", "10.0.0.1 is a private address"),
    ("https://10.0.0.1/hook", "10.0.0.1 is a private address"),
    ("http://[::ffff:10.0.0.1]/", "IPv4-in-IPv6 form of 10.0.0.1, a private address"),
    ("http://167772161/", "resolves to 10.0.0.1 is a private address"),
    ("http://012.0.0.1/", "resolves to 10.0.0.1 is a private address"),
    ("https://hooks.internal.test/ehcp", "hooks.internal.test resolves to 10.1.2.3 is a private address"),
    ("http://[fe80::1]/", "link-local"),
]


@pytest.fixture()
def outside_connections(monkeypatch) -> list:
    """Any socket connection except to 127.0.0.1 fails the test (and is recorded)."""
    seen: list = []
    original = socket.socket.connect

    def checked(self, address):  # noqa: ANN001
        if address[0] != "127.0.0.1":
            seen.append(address)
            raise AssertionError(f"a socket was opened to {address}")
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", checked)
    return seen



@pytest.fixture(scope="module")
def child(api) -> str:
    return api.new_child()["id"]


def advice(child: str, section: str = "K") -> dict:
    return {"resourceType": "DocumentReference", "status": "current", "docStatus": "final",
            "subject": {"reference": f"Patient/{child}"},
            "category": [{"coding": [{"system": SECTION, "code": section}]}],
            "content": [{"attachment": {"contentType": "text/plain", "data": "QWR2aWNl", "title": "Advice"}}]}


def _subscription(child: str, endpoint: str) -> dict:
    return {"resourceType": "Subscription", "status": "requested", "reason": "LA alerts",
            "criteria": f"DocumentReference?patient={child}", "channel": {"type": "rest-hook", "endpoint": endpoint}}


def _notify_outcomes(api, subscription_id: str, wanted: int, seconds: float = 5.0) -> list[str]:
    """The `notify` audit entries' outcomes for one subscription (every delivery is audited)."""
    deadline = time.monotonic() + seconds
    while True:
        repo = api.services.repo  # the reason is sealed at rest: open each entry as the store does
        entries = (repo.seal.entry_out(e) for e in repo.db.audit.find({"body.action": "notify"}))
        found = [e["body"]["outcome"] for e in entries if e["body"].get("reason") == f"Subscription/{subscription_id}"]
        if len(found) >= wanted or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.mark.parametrize("endpoint, reason", REFUSED)
def test_an_internal_endpoint_is_refused_when_saved(api, child, monkeypatch, outside_connections, endpoint, reason):
    monkeypatch.setitem(TEST_NAMES, "hooks.internal.test", ["10.1.2.3"])
    response = api.post("/fhir/Subscription", _subscription(child, endpoint), api.la())
    assert response.status_code == 422, response.text
    issue = response.json()["issue"][0]
    assert response.json()["resourceType"] == "OperationOutcome" and issue["code"] == "value"
    assert issue["diagnostics"].startswith("channel.endpoint is refused: ") and reason in issue["diagnostics"]
    assert issue["expression"] == ["Subscription.channel.endpoint"]
    assert outside_connections == []


def test_changing_an_endpoint_to_an_internal_address_is_refused_and_changes_nothing(api, child, hook, outside_connections):
    endpoint = f"http://127.0.0.1:{hook.server_port}/ok"
    created = api.post("/fhir/Subscription", _subscription(child, endpoint), api.la())
    assert created.status_code == 201, created.text
    body = created.json()
    changed = dict(body, channel={"type": "rest-hook", "endpoint": "http://169.254.169.254/"})
    refused = api.put(f"/fhir/Subscription/{body['id']}", changed, api.la(), **{"If-Match": 'W/"1"'})
    assert refused.status_code == 422 and "cloud metadata" in refused.json()["issue"][0]["diagnostics"]
    kept = api.get(f"/fhir/Subscription/{body['id']}", api.la()).json()
    assert kept["meta"]["versionId"] == "1" and kept["channel"]["endpoint"] == endpoint
    api.put(f"/fhir/Subscription/{body['id']}", dict(kept, status="off"), api.la(), **{"If-Match": 'W/"1"'})
    assert outside_connections == []


def test_delivery_to_an_allowed_subscriber_works_and_its_redirect_is_not_followed(api, hook, outside_connections):
    child = api.new_child()["id"]
    ok = api.post("/fhir/Subscription", _subscription(child, f"http://127.0.0.1:{hook.server_port}/ok"), api.la()).json()
    moved = api.post("/fhir/Subscription", _subscription(child, f"http://127.0.0.1:{hook.server_port}/redirect"),
                     api.la()).json()
    time.sleep(0.3)  # the subscriptions cache follows a change stream
    assert api.post("/fhir/DocumentReference", advice(child, "K"), api.la()).status_code == 201
    assert _notify_outcomes(api, ok["id"], 1) == ["permit"]
    assert _notify_outcomes(api, moved["id"], 1) == ["error"]  # the 302 is the answer; 10.0.0.1 is never asked
    assert hook.hits.count("/ok") >= 1 and hook.hits.count("/redirect") >= 1
    assert outside_connections == []


def test_a_name_that_moves_to_an_internal_address_is_refused_when_delivered(api, hook, monkeypatch, outside_connections):
    """DNS rebinding: accepted when saved (the name did not resolve then), refused when the
    delivery's connection finds it at 10.0.0.1; nothing is sent, the attempt is audited."""
    child = api.new_child()["id"]
    created = api.post("/fhir/Subscription", _subscription(child, f"http://rebind.test:{hook.server_port}/ok"), api.la())
    assert created.status_code == 422 and "https" in created.text  # plain http is for loopback only
    created = api.post("/fhir/Subscription", _subscription(child, "https://rebind.test/ok"), api.la())
    assert created.status_code == 201, created.text
    monkeypatch.setitem(TEST_NAMES, "rebind.test", ["10.0.0.1"])
    time.sleep(0.3)
    assert api.post("/fhir/DocumentReference", advice(child, "K"), api.la()).status_code == 201
    assert _notify_outcomes(api, created.json()["id"], 1) == ["error"]
    assert outside_connections == []
