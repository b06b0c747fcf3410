"""Proof under fuzzing, faults and load: inputs and failures that once answered 500 (or HTML, or
read without bound) answer a FHIR OperationOutcome with the right status.

Real HTTP, real mongod throughout; the database-outage test runs its own embedded mongod and
stops it under a running server; the gunicorn test runs `ehcp-record serve` as a subprocess.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import time
import uuid
from pathlib import Path

import jwt
import pytest
import requests
import responses
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ehcp_record.store.mongod import EmbeddedMongo
from ehcp_record.audit.signing import load_or_create_private_key, public_key_pem
from tests.conftest import start_server
from tests.support import FHIR_JSON, LA, outcome_code

DEV_ISSUER = "urn:ehcp-record:dev-issuer"
IDP = "https://idp.robust.example.nhs.uk"
JWKS_URI = f"{IDP}/.well-known/jwks.json"
MP4_HEAD = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
SECTION = "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-section"


def _assert_outcome(response: requests.Response, status: int | tuple[int, ...], code: str | None = None) -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert response.headers["Content-Type"].startswith(FHIR_JSON), response.headers
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    if code is not None:
        assert body["issue"][0]["code"] == code, body
    return body


# --- 1. unknown nested resourceType ----------------------------------------------------------

@pytest.mark.parametrize("path, body, location, shown", [
    ("/fhir", {"resourceType": "Bundle", "type": "batch", "entry": [{"resource": {"resourceType": ""}}]},
     "Bundle.entry[0].resource", "''"),
    ("/fhir", {"resourceType": "Bundle", "type": "transaction",
               "entry": [{"resource": {"resourceType": "Nonsense"}, "request": {"method": "POST", "url": "Patient"}}]},
     "Bundle.entry[0].resource", "Nonsense"),
    ("/fhir/Patient", {"resourceType": "Patient", "contained": [{"resourceType": "Nonsense", "id": "x"}]},
     "Patient.contained[0]", "Nonsense"),
    ("/fhir/Patient", {"resourceType": "Patient", "contained": [{"resourceType": "Coding", "id": "x"}]},
     "Patient.contained[0]", "Coding"),
])
def test_unknown_nested_resource_type_is_400_naming_type_and_place(api, path, body, location, shown):
    response = api.post(path, body, api.la())
    outcome = _assert_outcome(response, (400, 422))
    issue = outcome["issue"][0]
    assert shown in issue["diagnostics"] and location in issue["diagnostics"], issue
    assert issue["expression"] == [location]


# --- 2. JWT shapes that crashed the verifier ----------------------------------------------------

def _claims(**extra) -> dict:
    now = int(time.time())
    claims = {"iss": DEV_ISSUER, "aud": "ehcp-record", "sub": "officer-1", "iat": now, "exp": now + 300,
              "role": "la", "organization": LA, "scope": "user/*.cruds"}
    claims.update(extra)
    return claims


def _assert_401(response: requests.Response) -> None:
    _assert_outcome(response, 401)
    assert outcome_code(response) in ("login", "security")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("algorithm, key", [
    ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ("ES256", ec.generate_private_key(ec.SECP256R1())),
    ("EdDSA", ed25519.Ed25519PrivateKey.generate()),  # the right algorithm, another key
])
def test_dev_issuer_token_with_another_algorithm_or_key_is_401(api, algorithm, key):
    _assert_401(api.get("/fhir/Patient", jwt.encode(_claims(), key, algorithm=algorithm)))


@pytest.mark.parametrize("claims", [
    {"role": ["la"]}, {"role": {"la": True}}, {"scope": 5}, {"scope": {"user/*.rs": 1}},
    {"exp": str(int(time.time()) + 300)}, {"exp": [1]}, {"exp": True},
])
def test_validly_signed_token_with_odd_claim_types_is_401(api, claims):
    dev_key = load_or_create_private_key(api.settings.dev_key_path)
    token = jwt.encode(_claims(**claims), dev_key, algorithm="EdDSA")
    for _ in range(2):  # the second time is the verified-token cache's turn
        _assert_401(api.get("/fhir/Patient", token))


def _rsa_jwks(key, kid: str = "k1") -> dict:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return {"keys": [public]}


def _idp_token(key, algorithm: str = "RS256", kid: str = "k1", **claims) -> str:
    return jwt.encode(_claims(iss=IDP, **claims), key, algorithm=algorithm, headers={"kid": kid})


@pytest.fixture()
def idp_server(mongo, data_dir):
    client, server = start_server(mongo, data_dir, trusted_issuers=[{"iss": IDP, "jwks_uri": JWKS_URI}])
    yield client
    server.shutdown()
    client.services.repo.client.drop_database(client.services.settings.database)
    client.services.repo.close()


@responses.activate
def test_es256_token_against_an_rsa_jwks_key_is_401(idp_server):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    responses.add(responses.GET, JWKS_URI, json=_rsa_jwks(rsa_key))
    responses.add_passthru("http://127.0.0.1")
    _assert_401(idp_server.get("/fhir/Patient", _idp_token(ec.generate_private_key(ec.SECP256R1()), "ES256")))
    _assert_401(idp_server.get("/fhir/Patient", _idp_token(rsa_key, "RS256", role=["la"])))
    assert idp_server.get("/fhir/Patient", _idp_token(rsa_key)).status_code == 200


# --- 7. unknown kids do not refetch the JWKS every time ----------------------------------------

@responses.activate
def test_unknown_kids_refetch_the_jwks_at_most_once_a_minute(idp_server):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    responses.add(responses.GET, JWKS_URI, json=_rsa_jwks(rsa_key))
    responses.add_passthru("http://127.0.0.1")
    assert idp_server.get("/fhir/Patient", _idp_token(rsa_key)).status_code == 200
    for n in range(20):
        _assert_401(idp_server.get("/fhir/Patient", _idp_token(rsa_key, kid=f"junk-{n}")))
    assert len([c for c in responses.calls if c.request.url == JWKS_URI]) == 1
    # A minute on, one unknown kid may refetch once (a rotated key is picked up)...
    jwks = idp_server.services.verifier.jwks
    jwks._attempted[JWKS_URI] -= 61
    _assert_401(idp_server.get("/fhir/Patient", _idp_token(rsa_key, kid="junk-late")))
    _assert_401(idp_server.get("/fhir/Patient", _idp_token(rsa_key, kid="junk-later")))
    assert len([c for c in responses.calls if c.request.url == JWKS_URI]) == 2


# --- 3. JSON nested past MongoDB's depth --------------------------------------------------------

def _nested_extension(depth: int) -> dict:
    extension: dict = {"url": "http://example.org/leaf", "valueString": "x"}
    for _ in range(depth):
        extension = {"url": "http://example.org/level", "extension": [extension]}
    return {"resourceType": "Patient", "birthDate": "2015-03-14", "extension": [extension]}


def test_json_nested_too_deep_is_400_before_storing(api):
    before = api.services.repo.current.count_documents({})
    for depth in (89, 120, 400):
        response = api.post("/fhir/Patient", _nested_extension(depth), api.la())
        body = _assert_outcome(response, 400, "too-costly")
        assert "64 levels" in body["issue"][0]["diagnostics"]
    assert api.services.repo.current.count_documents({}) == before
    assert api.post("/fhir/Patient", _nested_extension(10), api.la()).status_code == 201


def test_deep_json_in_a_bundle_is_400(api):
    bundle = {"resourceType": "Bundle", "type": "batch",
              "entry": [{"resource": _nested_extension(89), "request": {"method": "POST", "url": "Patient"}}]}
    _assert_outcome(api.post("/fhir", bundle, api.la()), 400, "too-costly")


# --- 4. every error is an OperationOutcome --------------------------------------------------------

def test_range_not_satisfiable_is_an_operation_outcome(api):
    child = api.new_child()
    document = {"resourceType": "DocumentReference", "status": "current", "docStatus": "preliminary",
                "subject": {"reference": f"Patient/{child['id']}"},
                "category": [{"coding": [{"system": SECTION, "code": "A"}]}],
                "content": [{"attachment": {"contentType": "video/mp4", "title": "clip"}}]}
    created = api.post("/fhir/DocumentReference", document, api.la())
    assert created.status_code == 201, created.text
    data = MP4_HEAD + os.urandom(1000)
    uploaded = api.session.post(api.base + "/fhir/Binary", data=data, timeout=60, headers={
        "Authorization": f"Bearer {api.la()}", "Content-Type": "video/mp4",
        "X-Security-Context": f"DocumentReference/{created.json()['id']}"})
    assert uploaded.status_code == 201, uploaded.text
    response = api.session.get(f"{api.base}/fhir/Binary/{uploaded.json()['id']}", timeout=30, headers={
        "Authorization": f"Bearer {api.la()}", "Accept": "video/mp4", "Range": f"bytes={len(data) + 10}-"})
    _assert_outcome(response, 416)
    assert response.headers["Content-Range"] == f"bytes */{len(data)}"


@pytest.fixture(scope="module")
def gunicorn_server(mongo, tmp_path_factory):
    from tests.e2e import server_process

    data = tmp_path_factory.mktemp("gunicorn")
    server = server_process.start(data, {"EHCP_MONGODB_URI": mongo.uri, "EHCP_DATABASE": f"t_{uuid.uuid4().hex[:12]}"},
                                  workers=1)
    yield server
    server.stop()


def _raw_http(base: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /fhir/Patient?x=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431),
    (b"NOT A REQUEST LINE\r\n\r\n", 400),
])
def test_gunicorn_refusals_are_operation_outcomes(gunicorn_server, request_bytes, status):
    code, headers, body = _raw_http(gunicorn_server.base, request_bytes)
    assert code == status, body[:300]
    assert headers["content-type"].startswith(FHIR_JSON), headers
    assert int(headers["content-length"]) == len(body)
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["severity"] == "error"


# --- 6. search form bodies and $receive-transfer are bounded ------------------------------------

def test_post_search_form_body_has_the_query_limit(api):
    url = api.base + "/fhir/Patient/_search"
    headers = {"Authorization": f"Bearer {api.la()}", "Content-Type": "application/x-www-form-urlencoded"}
    big = "_id=" + "a" * (457 * 1024)
    _assert_outcome(api.session.post(url, data=big, headers=headers, timeout=30), 413, "too-costly")
    chunked = api.session.post(url, data=iter([big[i:i + 4096].encode() for i in range(0, len(big), 4096)]),
                               headers=headers, timeout=30)
    _assert_outcome(chunked, 413, "too-costly")
    assert api.session.post(url, data="_count=1", headers=headers, timeout=30).status_code == 200


@pytest.fixture(scope="module")
def receiver(mongo, data_dir, tmp_path_factory):
    peer_key = load_or_create_private_key(tmp_path_factory.mktemp("peer") / "server-signing.pem")
    trust = [{"organization": "Organization/la-916", "base_url": "http://127.0.0.1:9/fhir",
              "public_key": public_key_pem(peer_key)}]
    client, server = start_server(mongo, data_dir, organization=LA, trust_list=trust, max_transfer_bytes=64 * 1024)
    yield client, peer_key
    server.shutdown()
    client.services.repo.client.drop_database(client.services.settings.database)


def _post_headers_then_wait(base: str, headers: dict[str, str], announced: int) -> tuple[int, float]:
    """Announce a huge body, send 1 KiB of it, and time the answer (the server must not wait)."""
    host, port = base.removeprefix("http://").split(":")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /fhir/$receive-transfer HTTP/1.1\r\nHost: x\r\nContent-Type: {FHIR_JSON}\r\n"
                     f"Content-Length: {announced}\r\n{head}\r\n".encode() + b"{" * 1024)
        status = int(sock.recv(4096).split(b" ")[1])
    return status, time.monotonic() - started


def test_receive_transfer_checks_signature_and_sender_before_reading(receiver):
    client, peer_key = receiver
    from ehcp_record.audit import signing

    good_kid = signing.key_id(peer_key.public_key())
    shaped = base64.urlsafe_b64encode(b"\x01" * 64).rstrip(b"=").decode()
    for headers in ({}, {"X-EHCP-Key-Id": good_kid, "X-EHCP-Signature": "not-a-signature"},
                    {"X-EHCP-Key-Id": "0123456789abcdef", "X-EHCP-Signature": shaped}):
        status, elapsed = _post_headers_then_wait(client.base, headers, 100 * 1024 * 1024)
        assert status == 403 and elapsed < 5, (headers, status, elapsed)
    status, elapsed = _post_headers_then_wait(client.base, {"X-EHCP-Key-Id": good_kid, "X-EHCP-Signature": shaped},
                                              100 * 1024 * 1024)
    assert status == 413 and elapsed < 5
    response = requests.post(client.base + "/fhir/$receive-transfer", data=b"{}", timeout=10,
                             headers={"Content-Type": FHIR_JSON})
    _assert_outcome(response, 403, "security")


def test_receive_transfer_caps_a_chunked_body(receiver):
    client, peer_key = receiver
    from ehcp_record.audit import signing

    body = b"[" + b"0," * (100 * 1024) + b"0]"
    headers = {"Content-Type": FHIR_JSON, "X-EHCP-Key-Id": signing.key_id(peer_key.public_key()),
               "X-EHCP-Signature": signing.sign(peer_key, body)}
    response = requests.post(client.base + "/fhir/$receive-transfer", timeout=30, headers=headers,
                             data=iter([body[i:i + 8192] for i in range(0, len(body), 8192)]))
    _assert_outcome(response, 413, "too-costly")


# --- 8. X-Request-ID ------------------------------------------------------------------------

def _audit_text(api) -> str:
    """Every audit entry as the store opens it (details such as the request id are sealed at rest)."""
    repo = api.services.repo
    return json.dumps([repo.seal.entry_out(e) for e in repo.audit.find({}, {"_id": 0})], default=str)


@pytest.mark.parametrize("supplied", ["<script>alert(1)</script>", "a b", "x" * 65, "naïve", "a;DROP", "../../etc"])
def test_unsafe_request_ids_are_replaced(api, supplied):
    child = api.new_child()
    marker = f"{supplied}-{uuid.uuid4().hex[:8]}"
    sent = marker.encode("utf-8").decode("latin-1")  # the bytes as they go on the wire
    response = api.get(f"/fhir/Patient/{child['id']}", api.la(), **{"X-Request-ID": sent})
    assert response.status_code == 200
    generated = response.headers["X-Request-ID"]
    assert len(generated) == 32 and all(c in "0123456789abcdef" for c in generated), generated
    audit = _audit_text(api)
    assert generated in audit
    assert marker[-8:] not in audit


def test_safe_request_id_is_kept_and_audited(api):
    child = api.new_child()
    supplied = f"trace-{uuid.uuid4().hex[:8]}.A_b"
    response = api.get(f"/fhir/Patient/{child['id']}", api.la(), **{"X-Request-ID": supplied})
    assert response.headers["X-Request-ID"] == supplied
    assert supplied in _audit_text(api)


# --- 9. database trouble is 503, and the server recovers ---------------------------------------

def _readable_again(client, child_id: str, within: float = 60) -> requests.Response:
    """The same server answers again once the database is back (no restart)."""
    deadline = time.monotonic() + within
    while True:
        response = client.get(f"/fhir/Patient/{child_id}", client.la())
        if response.status_code == 200 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            return response
        time.sleep(0.5)


def test_database_outage_is_503_with_retry_after_then_recovers(tmp_path: Path, data_dir):
    own = EmbeddedMongo(tmp_path / "mongod").start()
    client, server = start_server(own, data_dir, db_request_timeout=5)
    try:
        child = client.new_child()
        own.stop()
        for call in (lambda: client.get(f"/fhir/Patient/{child['id']}", client.la()),
                     lambda: client.post("/fhir/Patient", {"resourceType": "Patient", "birthDate": "2014-01-01"},
                                         client.la())):
            started = time.monotonic()
            response = call()
            elapsed = time.monotonic() - started
            _assert_outcome(response, 503, "transient")
            assert int(response.headers["Retry-After"]) > 0
            assert elapsed < 10, elapsed
        own.start()
        response = _readable_again(client, child["id"])
        assert response.json()["id"] == child["id"]
        assert client.post("/fhir/Patient", {"resourceType": "Patient", "birthDate": "2014-01-01"},
                           client.la()).status_code == 201
    finally:
        server.shutdown()
        client.services.repo.close()
        own.stop()


def test_a_hung_database_is_503_soon_after_the_request_deadline(tmp_path: Path, data_dir):
    """mongod frozen (SIGSTOP): connections stay open and nothing answers, and the driver still
    believes in its primary. The request deadline (2 s here) stops the transaction's retries,
    which would otherwise run for two minutes; Repository.in_transaction then spends up to ~10 s
    more on its own (immediately failing) retries, hence the write's looser bound."""
    own = EmbeddedMongo(tmp_path / "mongod").start()
    client, server = start_server(own, data_dir, db_request_timeout=2)
    try:
        child = client.new_child()
        os.kill(own.process.pid, signal.SIGSTOP)
        for call, bound in ((lambda: client.post("/fhir/Patient", {"resourceType": "Patient", "birthDate": "2014-01-01"},
                                                 client.la()), 20),
                            (lambda: client.get(f"/fhir/Patient/{child['id']}", client.la()), 8)):
            started = time.monotonic()
            response = call()
            assert time.monotonic() - started < bound
            _assert_outcome(response, 503, "transient")
            assert response.headers.get("Retry-After")
        os.kill(own.process.pid, signal.SIGCONT)
        response = _readable_again(client, child["id"])
    finally:
        os.kill(own.process.pid, signal.SIGCONT)
        server.shutdown()
        client.services.repo.close()
        own.stop()
