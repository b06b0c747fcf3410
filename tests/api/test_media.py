"""Binary media on GridFS: streamed upload and download, content sniffing, ranges, consent."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.support import outcome_code

SECTION = "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-section"
MP4_HEAD = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"


@pytest.fixture(scope="module")
def album(api):
    child = api.new_child()
    document = {"resourceType": "DocumentReference", "status": "current", "docStatus": "preliminary", "subject": {"reference": f"Patient/{child['id']}"},
                "category": [{"coding": [{"system": SECTION, "code": "A"}]}],
                "content": [{"attachment": {"contentType": "video/mp4", "title": "Sam at the park"}}]}
    created = api.post("/fhir/DocumentReference", document, api.la())
    assert created.status_code == 201, created.text
    return child, created.json()


def _upload(api, data: bytes, content_type: str, context: str, token: str | None = None, **extra):
    headers = {"Authorization": f"Bearer {token or api.la()}", "Content-Type": content_type, "X-Security-Context": context}
    headers.update(extra)
    return api.session.post(api.base + "/fhir/Binary", data=data, headers=headers, timeout=120)


def test_twenty_mib_video_round_trip_and_range(api, album):
    _, document = album
    video = MP4_HEAD + os.urandom(20 * 1024 * 1024)
    created = _upload(api, video, "video/mp4", f"DocumentReference/{document['id']}")
    assert created.status_code == 201, created.text
    binary = created.json()
    assert binary["contentType"] == "video/mp4" and "data" not in binary
    url = f"{api.base}/fhir/Binary/{binary['id']}"
    headers = {"Authorization": f"Bearer {api.la()}", "Accept": "video/mp4"}
    whole = api.session.get(url, headers=headers, timeout=120)
    assert whole.status_code == 200 and whole.headers["Content-Type"] == "video/mp4"
    assert hashlib.sha256(whole.content).hexdigest() == hashlib.sha256(video).hexdigest()
    assert whole.headers["Accept-Ranges"] == "bytes"
    part = api.session.get(url, headers={**headers, "Range": "bytes=1048576-1049599"}, timeout=60)
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 1048576-1049599/{len(video)}"
    assert part.content == video[1048576:1049600]
    tail = api.session.get(url, headers={**headers, "Range": "bytes=-100"}, timeout=60)
    assert tail.status_code == 206 and tail.content == video[-100:]
    beyond = api.session.get(url, headers={**headers, "Range": f"bytes={len(video) + 10}-"}, timeout=60)
    assert beyond.status_code == 416


def test_content_must_match_declared_type(api, album):
    _, document = album
    response = _upload(api, b"MZ\x90\x00 this is an executable", "image/png", f"DocumentReference/{document['id']}")
    assert response.status_code == 422 and outcome_code(response) == "invalid"
    script = _upload(api, b"<script>alert(1)</script>", "text/html", f"DocumentReference/{document['id']}")
    assert script.status_code == 415


def test_upload_needs_a_document_it_belongs_to(api, album):
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
    assert _upload(api, png, "image/png", "").status_code == 400
    assert _upload(api, png, "image/png", "DocumentReference/nope").status_code == 422


def test_upload_limit(api, album):
    _, document = album
    media = api.services.media
    original, media.limit = media.limit, 1024 * 1024
    try:
        response = _upload(api, MP4_HEAD + b"\x00" * (2 * 1024 * 1024), "video/mp4", f"DocumentReference/{document['id']}")
    finally:
        media.limit = original
    assert response.status_code == 413


def test_binary_versions_keep_their_bytes(api, album):
    _, document = album
    first = b"%PDF-1.7 first report"
    created = _upload(api, first, "application/pdf", f"DocumentReference/{document['id']}").json()
    second = b"%PDF-1.7 second report, revised"
    headers = {"Authorization": f"Bearer {api.la()}", "Content-Type": "application/pdf",
               "X-Security-Context": f"DocumentReference/{document['id']}", "If-Match": 'W/"1"'}
    updated = api.session.put(f"{api.base}/fhir/Binary/{created['id']}", data=second, headers=headers)
    assert updated.status_code == 200 and updated.headers["ETag"] == 'W/"2"'
    get = lambda path: api.session.get(api.base + path, headers={"Authorization": f"Bearer {api.la()}", "Accept": "application/pdf"})
    assert get(f"/fhir/Binary/{created['id']}").content == second
    assert get(f"/fhir/Binary/{created['id']}/_history/1").content == first
    as_json = api.get(f"/fhir/Binary/{created['id']}", api.la())
    assert as_json.json()["resourceType"] == "Binary" and as_json.json()["data"]


def test_download_follows_the_documents_section_consent(api, album):
    _, document = album
    png = b"\x89PNG\r\n\x1a\n" + b"\x01" * 64
    created = _upload(api, png, "image/png", f"DocumentReference/{document['id']}").json()
    school = api.token("school", "Organization/school-1")
    response = api.session.get(f"{api.base}/fhir/Binary/{created['id']}", headers={"Authorization": f"Bearer {school}"})
    assert response.status_code == 404 and response.content.find(b"PNG") == -1
