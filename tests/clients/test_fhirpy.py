"""fhirpy 2.x (beda.software), sync client: the calls its README shows, unchanged."""

from __future__ import annotations

import pytest

fhirpy = pytest.importorskip("fhirpy")

from fhirpy.base.exceptions import OperationOutcome  # noqa: E402

from tests.clients.conftest import child_body  # noqa: E402
from tests.support import NEED_SYSTEM, SECTION_SYSTEM, unique  # noqa: E402


@pytest.fixture(scope="module")
def client(api, la_token):
    return fhirpy.SyncFHIRClient(f"{api.base}/fhir", authorization=f"Bearer {la_token}")


def _need(patient_ref: str, code: str = "SLCN") -> dict:
    return {"resourceType": "Condition", "subject": {"reference": patient_ref},
            "category": [{"coding": [{"system": SECTION_SYSTEM, "code": "B"}]}],
            "code": {"coding": [{"system": NEED_SYSTEM, "code": code}]}}


def test_capability(client):
    statement = client.execute("metadata", method="get")
    assert statement["resourceType"] == "CapabilityStatement" and statement["fhirVersion"] == "4.0.1"


def test_create_read_update_with_if_match(api, client, la_token):
    family = f"Fhirpy{unique()}"
    patient = client.resource("Patient", **child_body(family=family))
    patient.save()
    assert patient.id and patient["meta"]["versionId"] == "1"
    read = client.reference("Patient", patient.id).to_resource()
    assert read["name"][0]["family"] == family
    # versioned-update: fhirpy sends If-Match through its documented extra_headers.
    versioned = fhirpy.SyncFHIRClient(f"{api.base}/fhir", authorization=f"Bearer {la_token}",
                                      extra_headers={"If-Match": f'W/"{read["meta"]["versionId"]}"'})
    read["birthDate"] = "2015-03-15"
    updated = versioned.resource("Patient", **read.serialize())
    updated.save()
    assert updated["meta"]["versionId"] == "2"
    assert client.reference("Patient", patient.id).to_resource()["birthDate"] == "2015-03-15"


def test_update_without_if_match_names_the_etag(client):
    patient = client.resource("Patient", **child_body())
    patient.save()
    patient["birthDate"] = "2015-01-01"
    with pytest.raises(OperationOutcome) as caught:
        patient.save()
    assert 'send If-Match: W/"1"' in caught.value.resource["issue"][0]["diagnostics"]


def test_search_paging_and_count(client):
    family = f"Page{unique()}"
    for n in range(5):
        client.resource("Patient", **child_body(family=family, given=f"Child{n}")).save()
    search = client.resources("Patient").search(family=family).limit(2)
    assert search.count() == 5  # sends _totalMethod=count, which the server ignores
    assert len(search.fetch()) == 2
    assert len(search.fetch_all()) == 5  # follows the next links


def test_string_search(client):
    family = f"Zoë{unique()}"
    client.resource("Patient", **child_body(family=family, given="Élodie", postcode="SW1A 1AA")).save()
    patients = client.resources("Patient")
    assert len(patients.search(family=family.upper().replace("Ë", "E")).fetch()) == 1  # case and accents
    assert len(patients.search(family=family[:6].lower()).fetch()) == 1  # starts with
    assert len(patients.search(name=f"{family},nobody-{unique()}").fetch()) == 1
    assert len(patients.search(given="elod", family=family).fetch()) == 1
    assert len(patients.search(**{"address-postalcode": "sw1a", "family": family}).fetch()) == 1
    assert len(patients.search(**{"family:exact": family}).fetch()) == 1
    assert len(patients.search(**{"family:exact": family.lower()}).fetch()) == 0
    assert len(patients.search(**{"family:contains": family[3:]}).fetch()) == 1


def test_include_and_revinclude(client):
    patient = client.resource("Patient", **child_body(family=f"Inc{unique()}"))
    patient.save()
    need = client.resource("Condition", **_need(f"Patient/{patient.id}"))
    need.save()
    included = client.resources("Condition").search(_id=need.id).include("Condition", "subject").fetch_raw()
    assert {e["resource"]["resourceType"] for e in included["entry"]} == {"Condition", "Patient"}
    rev = client.resources("Patient").search(_id=patient.id).revinclude("Condition", "subject").fetch_raw()
    assert {(e["resource"]["resourceType"], e["search"]["mode"]) for e in rev["entry"]} == {
        ("Patient", "match"), ("Condition", "include")}


def test_chained_and_has(client):
    body = child_body(family=f"Chain{unique()}")
    nhs = body["identifier"][0]["value"]
    patient = client.resource("Patient", **body)
    patient.save()
    need = client.resource("Condition", **_need(f"Patient/{patient.id}", "ASD"))
    need.save()
    chained = client.resources("Condition").search(
        **{"subject.identifier": f"https://fhir.nhs.uk/Id/nhs-number|{nhs}"}).fetch()
    assert [c.id for c in chained] == [need.id]
    has = client.resources("Patient").search(Raw(**{"_has:Condition:subject:code": "ASD"}), _id=patient.id).fetch()
    assert [p.id for p in has] == [patient.id]


def test_conditional_create_by_identifier(client):
    body = child_body()
    nhs = body["identifier"][0]["value"]
    search = client.resources("Patient").search(identifier=f"https://fhir.nhs.uk/Id/nhs-number|{nhs}")
    first, created = search.get_or_create(client.resource("Patient", **body))
    assert created
    again, created_again = search.get_or_create(client.resource("Patient", **body))
    assert not created_again and again.id == first.id


def test_second_patient_with_same_nhs_number_is_refused(client):
    body = child_body()
    client.resource("Patient", **body).save()
    with pytest.raises(OperationOutcome) as caught:
        client.resource("Patient", **body).save()
    assert "already recorded" in str(caught.value)


def test_history_at_three_levels(api, client, la_token):
    patient = client.resource("Patient", **child_body())
    patient.save()
    instance = client.execute(f"Patient/{patient.id}/_history", method="get")
    assert instance["type"] == "history" and instance["total"] == 1
    by_type = client.execute("Patient/_history", method="get", params={"_count": "100"})
    assert patient.id in {e["resource"]["id"] for e in by_type["entry"]}
    everything = client.execute("_history", method="get", params={"_count": "100"})
    assert everything["type"] == "history" and patient.id in {e["resource"]["id"] for e in everything["entry"]}


def test_transaction_at_the_base(client):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:8d4ef0f5-7f5e-4c3a-a8a0-000000000001", "resource": child_body(),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": _need("urn:uuid:8d4ef0f5-7f5e-4c3a-a8a0-000000000001"),
         "request": {"method": "POST", "url": "Condition"}},
    ]}
    answer = client.execute("", method="post", data=bundle)
    assert answer["type"] == "transaction-response"
    assert [e["response"]["status"][:3] for e in answer["entry"]] == ["201", "201"]


def test_repeat_read_is_not_modified(client):
    """fhirpy answers None on 304: a cache check through the client's own request path."""
    patient = client.resource("Patient", **child_body())
    patient.save()
    cached = fhirpy.SyncFHIRClient(client.url, authorization=client.authorization,
                                   extra_headers={"If-None-Match": 'W/"1"'})
    assert cached.get("Patient", patient.id) is None
    stale = fhirpy.SyncFHIRClient(client.url, authorization=client.authorization,
                                  extra_headers={"If-None-Match": 'W/"0"'})
    assert stale.get("Patient", patient.id)["id"] == patient.id


from fhirpy.base.searchset import Raw  # noqa: E402


def test_an_owner_deletes_a_subscription(client):
    """fhirpy's `delete()`: 200, then the read is 410 (fhirpy's ResourceNotFound)."""
    from fhirpy.base.exceptions import ResourceNotFound

    subscription = client.resource("Subscription", status="requested", reason="LA alerts",
                                   criteria="Condition?category=B",
                                   channel={"type": "rest-hook", "endpoint": "https://hooks.la-866.example/ehcp"})
    subscription.save()
    subscription.delete()
    with pytest.raises(ResourceNotFound):
        client.reference("Subscription", subscription.id).to_resource()
    history = client.execute(f"Subscription/{subscription.id}/_history", method="get")
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
