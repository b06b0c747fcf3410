"""Encryption at rest (docs/encryption.md): after the example plan and a photo are stored, no
raw document of any collection and no GridFS chunk holds a name, NHS number, UPN, plan sentence
or media byte in clear; search by identifier and by name still works, with FHIR's semantics."""

from __future__ import annotations

import json
import os
import uuid

import bson
import pytest
from pymongo import MongoClient

from tests.consent_support import load_issued_example

SECTION = "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-section"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
UPN = "W866200119042"  # the example child's UPN
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def stored(api):
    record = load_issued_example(api)
    child = record["Patient"][0]
    document = {"resourceType": "DocumentReference", "status": "current", "docStatus": "preliminary",
                "subject": {"reference": f"Patient/{child['id']}"},
                "category": [{"coding": [{"system": SECTION, "code": "A"}]}],
                "content": [{"attachment": {"contentType": "image/png", "title": "Jamie at the station"}}]}
    created = api.post("/fhir/DocumentReference", document, api.la())
    assert created.status_code == 201, created.text
    photo = PNG + os.urandom(300_000)  # more than one GridFS chunk
    headers = {"Authorization": f"Bearer {api.la()}", "Content-Type": "image/png",
               "X-Security-Context": f"DocumentReference/{created.json()['id']}"}
    upload = api.session.post(api.base + "/fhir/Binary", data=photo, headers=headers, timeout=60)
    assert upload.status_code == 201, upload.text
    plan = record["Composition"][0]
    assert api.get(f"/fhir/Composition/{plan['id']}/$document", api.la()).status_code == 200  # kept, sealed
    return {"record": record, "child": child, "photo": photo, "binary": upload.json()["id"]}


def _raw_documents(api):
    """Every stored document of every collection (GridFS chunks included) as its BSON bytes."""
    db = MongoClient(api.settings.mongodb_uri)[api.settings.database]
    names = db.list_collection_names()
    assert {"current", "history", "audit", "records", "documents", "media.chunks", "keyvault"} <= set(names)
    for name in names:
        for doc in db[name].find():
            yield name, bson.encode(doc)


def test_no_personal_data_or_media_byte_is_stored_in_clear(api, stored):
    child, photo = stored["child"], stored["photo"]
    nhs = next(i["value"] for i in child["identifier"] if i["system"] == NHS)
    texts = ["Morgan", "Jamie", "Rachel", "07700 900123", nhs, UPN, "loves trains",
             "Speech, language and communication needs", "follow three-step spoken instructions",
             "Jamie at the station"]
    needles = {t.encode() for t in texts} | {t.lower().encode() for t in texts}
    needles |= {photo[i:i + 32] for i in (8, 150_000, len(photo) - 32)}
    seen, ids_seen = 0, 0
    for name, raw in _raw_documents(api):
        seen += 1
        ids_seen += child["id"].encode() in raw  # the scan does see what is kept clear (ids)
        found = [n for n in needles if n in raw]
        assert not found, f"{name} holds {found[0][:40]!r} in clear"
    assert seen > 100 and ids_seen > 20  # the whole record was scanned: versions, history, chain, chunks


def test_the_api_still_serves_what_was_stored(api, stored):
    child, photo = stored["child"], stored["photo"]
    read = api.get(f"/fhir/Patient/{child['id']}", api.la()).json()
    assert read["name"][0]["family"] == "Morgan"
    url = f"{api.base}/fhir/Binary/{stored['binary']}"
    headers = {"Authorization": f"Bearer {api.la()}", "Accept": "image/png"}
    assert api.session.get(url, headers=headers, timeout=60).content == photo
    across = api.session.get(url, headers={**headers, "Range": "bytes=261100-261200"}, timeout=60)
    assert across.status_code == 206 and across.content == photo[261100:261201]  # spans two sealed chunks
    verdict = api.get(f"/fhir/Patient/{child['id']}/$verify-audit", api.la()).json()
    assert verdict["parameter"][0]["valueBoolean"] is True, verdict


def _ids(api, query: str) -> set[str]:
    response = api.get(f"/fhir/{query}", api.la())
    assert response.status_code == 200, response.text
    return {e["resource"]["id"] for e in response.json().get("entry", [])}


def test_identifier_search_works_on_blind_tokens(api, stored):
    child = stored["child"]
    nhs = next(i["value"] for i in child["identifier"] if i["system"] == NHS)
    assert _ids(api, f"Patient?identifier={NHS}|{nhs}") == {child["id"]}
    assert child["id"] in _ids(api, f"Patient?identifier={UPN}")
    assert _ids(api, f"Patient?identifier={NHS}|{nhs[:-1]}") == set()


def test_string_search_keeps_starts_with_exact_and_contains(api, stored):
    child = stored["child"]
    mother = next(r for r in stored["record"]["RelatedPerson"] if r["name"][0]["given"] == ["Rachel"])
    assert child["id"] in _ids(api, "Patient?name=mor")                     # starts with, any case
    assert child["id"] in _ids(api, "Patient?family=MORGAN")
    assert child["id"] not in _ids(api, "Patient?name=organ")               # starts-with, not contains
    assert child["id"] in _ids(api, "Patient?name:contains=organ")
    assert child["id"] in _ids(api, "Patient?given:contains=ami")
    assert child["id"] in _ids(api, "Patient?family:exact=Morgan")
    assert child["id"] not in _ids(api, "Patient?family:exact=morgan")      # exact is case-sensitive
    assert mother["id"] in _ids(api, "RelatedPerson?given=rach")
    assert child["id"] in _ids(api, "Patient?address-postalcode=sn1")


def test_a_signed_in_persons_name_is_sealed_in_the_identity_store(api):
    """The name an identity provider gives for a person (kept on their link) is sealed at rest
    like the directory's resources, and read back as given."""
    store = api.services.identity.store
    link_id = f"link-{uuid.uuid4().hex[:8]}"
    store.add_link({"_id": link_id, "identity": "https://login.example|p-1", "fhir_user": "RelatedPerson/x",
                    "record": "r-1", "active": True, "display": "Morgan Example-Parent"})
    raw = store.links.find_one({"_id": link_id})
    assert "Morgan" not in json.dumps(raw, default=str) and isinstance(raw["display"], bytes)
    assert store.link(link_id)["display"] == "Morgan Example-Parent"
    assert [d["display"] for d in store.active_links("https://login.example|p-1")] == ["Morgan Example-Parent"]
