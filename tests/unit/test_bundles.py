"""The one Bundle builder (ehcp_record.fhir.bundles): shapes match R4 and the hand-built ones."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from hypothesis import given, strategies as st

from ehcp_record.fhir import bundles
from ehcp_record.fhir.model import parse_resource

BASE = "https://ehcp.example/fhir"
PATIENT = {"resourceType": "Patient", "id": "p1"}
GOAL = {"resourceType": "Goal", "id": "g1", "lifecycleStatus": "active", "description": {"text": "x"},
        "subject": {"reference": "Patient/p1"}}


def url(pairs):
    return f"{BASE}/Goal?{urlencode(pairs)}" if pairs else f"{BASE}/Goal"


def test_entry_shapes():
    assert bundles.entry(GOAL, BASE, "match") == {
        "fullUrl": f"{BASE}/Goal/g1", "resource": GOAL, "search": {"mode": "match"}}
    assert bundles.entry(GOAL) == {"resource": GOAL}
    assert bundles.entry(GOAL, url="urn:uuid:1") == {"fullUrl": "urn:uuid:1", "resource": GOAL}
    assert bundles.entry(response={"status": "404"}) == {"response": {"status": "404"}}
    assert bundles.full_url(BASE + "/", "Goal", "g1", 3) == f"{BASE}/Goal/g1/_history/3"
    assert bundles.full_url("", "Goal", "g1") == "Goal/g1"


def test_searchset_is_valid_r4_and_counts_matches():
    entries = [bundles.entry(GOAL, BASE, "match"), bundles.entry(PATIENT, BASE, "include")]
    bundle = bundles.searchset(entries, links=[bundles.link("self", url([]))])
    assert bundle["total"] == 1 and bundle["link"] == [{"relation": "self", "url": f"{BASE}/Goal"}]
    parse_resource(bundle, "Bundle")
    assert "link" not in bundles.searchset([], 0)


@given(offset=st.integers(0, 300), count=st.integers(0, 100), total=st.integers(0, 400))
def test_paging_links(offset, count, total):
    links = bundles.paging_links(url, [("_count", str(count))], [("status", "active")], offset, count, total)
    relations = [l["relation"] for l in links]
    assert relations[0] == "self"
    assert ("next" in relations) == (count > 0 and offset + count < total)
    assert ("previous" in relations) == (offset > 0)
    for l in links[1:]:
        assert l["url"].startswith(f"{BASE}/Goal?status=active&_count={count}&_offset=")


def test_history_entries():
    first = bundles.history_entry(GOAL, BASE, "Goal", "g1", 1, "2026-01-01T00:00:00.000Z")
    later = bundles.history_entry(GOAL, BASE, "Goal", "g1", 2, "2026-01-02T00:00:00.000Z")
    assert first["request"] == {"method": "POST", "url": "Goal"} and first["response"]["status"] == "201 Created"
    assert later["request"] == {"method": "PUT", "url": "Goal/g1"} and later["response"]["etag"] == 'W/"2"'
    parse_resource(bundles.history([later, first], 2), "Bundle")


@pytest.mark.parametrize("kind", ["transaction-response", "batch-response"])
def test_response_bundles(kind):
    response = bundles.version_response("201 Created", "Goal", "g1", 1, "2026-01-01T00:00:00.000Z")
    assert response == {"status": "201 Created", "location": "Goal/g1/_history/1", "etag": 'W/"1"',
                        "lastModified": "2026-01-01T00:00:00.000Z"}
    bundle = bundles.response_bundle(kind, [bundles.entry(GOAL, response=response)])
    assert bundle["type"] == kind and bundle["id"]
    parse_resource(bundle, "Bundle")
    with pytest.raises(ValueError):
        bundles.response_bundle("searchset", [])


def test_document_and_collection():
    doc = bundles.document("plan-1-2", {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:0"},
                           "2026-01-01T00:00:00.000Z", [bundles.entry(GOAL, BASE)], "2026-01-01T00:00:00.000Z")
    assert list(doc) == ["resourceType", "id", "meta", "identifier", "type", "timestamp", "entry"]
    parse_resource(doc, "Bundle")
    parse_resource(bundles.collection([bundles.entry(GOAL, url="Goal/g1/_history/1")], "t1", "2026-01-01T00:00:00.000Z"),
                   "Bundle")
    assert bundles.collection([]) == {"resourceType": "Bundle", "type": "collection", "entry": []}
    transfer = bundles.collection([], "t1", "2026-01-01T00:00:00.000Z", {"system": "urn:x", "value": "t1"})
    assert list(transfer) == ["resourceType", "id", "type", "timestamp", "identifier", "entry"]  # as transfer/remote.py


def test_a_history_entry_of_a_delete_has_no_resource_and_the_delete_method():
    from ehcp_record.fhir.bundles import history_entry

    deleted = history_entry(None, "https://x.example/fhir", "Subscription", "s1", 3, "2026-01-01T00:00:00Z")
    assert "resource" not in deleted and deleted["request"] == {"method": "DELETE", "url": "Subscription/s1"}
    assert deleted["response"]["etag"] == 'W/"3"'
    created = history_entry({"resourceType": "Subscription", "id": "s1"}, "https://x.example/fhir", "Subscription", "s1", 1)
    assert created["request"] == {"method": "POST", "url": "Subscription"}
