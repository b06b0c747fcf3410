"""SMART on FHIR's fhirclient 4.x (smart-on-fhir/client-py): its models and FHIRServer, as the
README shows them; the bearer token and If-Match go on the requests session it exposes."""

from __future__ import annotations

import pytest

pytest.importorskip("fhirclient")

from fhirclient import client as smart_client  # noqa: E402
from fhirclient.models.bundle import Bundle  # noqa: E402
from fhirclient.models.condition import Condition  # noqa: E402
from fhirclient.models.patient import Patient  # noqa: E402
from fhirclient.models.subscription import Subscription  # noqa: E402
from fhirclient.server import FHIRNotFoundException  # noqa: E402

from tests.clients.conftest import child_body  # noqa: E402
from tests.support import NEED_SYSTEM, SECTION_SYSTEM, unique  # noqa: E402


@pytest.fixture(scope="module")
def smart(api, la_token):
    app = smart_client.FHIRClient(settings={"app_id": "ehcp-tests", "api_base": f"{api.base}/fhir/"})
    app.server.session.headers["Authorization"] = f"Bearer {la_token}"
    return app


def _create(smart, body: dict) -> Patient:
    created = Patient(Patient(body).create(smart.server))
    assert created.id
    return created


def test_capability_parses_as_an_r4_model(smart):
    statement = smart.server.capabilityStatement
    assert statement.fhirVersion == "4.0.1"
    assert {r.type for r in statement.rest[0].resource} >= {"Patient", "Condition", "Composition"}


def test_create_read_update_with_if_match(smart):
    family = f"Client{unique()}"
    created = _create(smart, child_body(family=family))
    read = Patient.read(created.id, smart.server)
    assert read.name[0].family == family and read.meta.versionId == "1"
    read.birthDate.origval = None
    read.birthDate = type(read.birthDate)("2015-03-16")
    smart.server.session.headers["If-Match"] = f'W/"{read.meta.versionId}"'
    try:
        updated = read.update(smart.server)
    finally:
        del smart.server.session.headers["If-Match"]
    assert updated["meta"]["versionId"] == "2"
    assert Patient.read(created.id, smart.server).birthDate.isostring == "2015-03-16"


def test_search_with_paging_follows_next_links(smart):
    family = f"Pages{unique()}"
    for n in range(5):
        _create(smart, child_body(family=family, given=f"C{n}"))
    search = Patient.where(struct={"family": family, "_count": "2"})
    pages = list(search.perform_iter(smart.server))
    assert len(pages) == 3 and pages[0].total == 5
    assert sum(len(p.entry or []) for p in pages) == 5


def test_string_search_and_revinclude(smart):
    family = f"Rev{unique()}"
    patient = _create(smart, child_body(family=family))
    need = {"resourceType": "Condition", "subject": {"reference": f"Patient/{patient.id}"},
            "category": [{"coding": [{"system": SECTION_SYSTEM, "code": "B"}]}],
            "code": {"coding": [{"system": NEED_SYSTEM, "code": "SLCN"}]}}
    Condition(need).create(smart.server)
    search = Patient.where(struct={"name": family.lower()})
    search.include("subject", Condition, reverse=True)
    bundle = next(iter(search.perform_iter(smart.server)))
    assert sorted(e.resource.resource_type for e in bundle.entry) == ["Condition", "Patient"]
    search = Condition.where(struct={"subject": patient.id})
    search.include("subject")
    bundle = next(iter(search.perform_iter(smart.server)))
    assert sorted(e.resource.resource_type for e in bundle.entry) == ["Condition", "Patient"]


def test_batch_at_the_base(smart):
    body = child_body()
    batch = Bundle({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": body, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": f"Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{body['identifier'][0]['value']}"}},
    ]})
    answer = Bundle(batch.create(smart.server))
    assert answer.type == "batch-response"
    assert [e.response.status[:3] for e in answer.entry] == ["201", "200"]


def test_history_and_missing(smart):
    patient = _create(smart, child_body())
    history = Bundle.read_from(f"Patient/{patient.id}/_history", smart.server)
    assert history.type == "history" and history.total == 1
    assert Bundle.read_from("Patient/_history?_count=100", smart.server).type == "history"
    assert Bundle.read_from("_history?_count=5", smart.server).type == "history"
    with pytest.raises(FHIRNotFoundException):
        Patient.read(f"missing-{unique()}", smart.server)


def test_an_owner_deletes_a_subscription(smart):
    """fhirclient's `delete(server)` on the created model; the read after it is 410 Gone."""
    import requests

    body = {"resourceType": "Subscription", "status": "requested", "reason": "LA alerts",
            "criteria": "Condition?category=B",
            "channel": {"type": "rest-hook", "endpoint": "https://hooks.la-866.example/ehcp"}}
    created = Subscription(Subscription(body).create(smart.server))
    created.delete(smart.server)
    with pytest.raises(requests.HTTPError) as caught:
        Subscription.read(created.id, smart.server)
    assert caught.value.response.status_code == 410
