"""Authentication: dev issuer, trusted issuers via JWKS (mocked with responses), scopes."""

from __future__ import annotations

import json
import time

import jwt
import pytest
import responses
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import start_server
from tests.support import LA, outcome_code

IDP = "https://idp.example.nhs.uk"
JWKS_URI = f"{IDP}/.well-known/jwks.json"


@pytest.fixture(scope="module")
def idp_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def idp_api(mongo, data_dir):
    client, server = start_server(mongo, data_dir, trusted_issuers=[{"iss": IDP, "jwks_uri": JWKS_URI}])
    yield client
    server.shutdown()
    client.services.repo.client.drop_database(client.services.settings.database)


def _jwks(key) -> dict:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public.update({"kid": "k1", "use": "sig", "alg": "RS256"})
    return {"keys": [public]}


def _idp_token(key, **claims) -> str:
    now = int(time.time())
    body = {"iss": IDP, "aud": "ehcp-record", "sub": "officer-1", "exp": now + 300, "iat": now,
            "role": "la", "organization": LA, "scope": "user/*.cruds"}
    body.update(claims)
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})


@responses.activate
def test_trusted_issuer_token_via_jwks(idp_api, idp_key):
    responses.add(responses.GET, JWKS_URI, json=_jwks(idp_key))
    responses.add_passthru("http://127.0.0.1")
    token = _idp_token(idp_key)
    created = idp_api.post("/fhir/Patient", {"resourceType": "Patient", "birthDate": "2014-05-01"}, token)
    assert created.status_code == 201, created.text
    assert idp_api.get(f"/fhir/Patient/{created.json()['id']}", token).status_code == 200
    assert len([c for c in responses.calls if c.request.url == JWKS_URI]) == 1  # cached


@responses.activate
@pytest.mark.parametrize("claims, message", [
    ({"exp": int(time.time()) - 3600}, "expired"),
    ({"aud": "someone-else"}, "audience"),
    ({"role": "wizard"}, "role"),
    ({"role": "school", "organization": None}, "organization"),
])
def test_bad_claims_are_401(idp_api, idp_key, claims, message):
    responses.add(responses.GET, JWKS_URI, json=_jwks(idp_key))
    responses.add_passthru("http://127.0.0.1")
    body = {k: v for k, v in claims.items() if v is not None}
    token = _idp_token(idp_key, **body)
    if claims.get("organization", "x") is None:
        decoded = jwt.decode(token, options={"verify_signature": False})
        decoded.pop("organization")
        token = jwt.encode(decoded, idp_key, algorithm="RS256", headers={"kid": "k1"})
    response = idp_api.get("/fhir/Patient", token)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert message in response.json()["issue"][0]["diagnostics"]


@responses.activate
def test_token_signed_by_another_key_is_401(idp_api, idp_key):
    responses.add(responses.GET, JWKS_URI, json=_jwks(idp_key))
    responses.add_passthru("http://127.0.0.1")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    response = idp_api.get("/fhir/Patient", _idp_token(other))
    assert response.status_code == 401 and outcome_code(response) == "login"


@responses.activate
def test_jwks_unreachable_is_503_not_500(mongo, data_dir, idp_key):
    down_uri = "https://down.example.nhs.uk/jwks.json"
    responses.add(responses.GET, down_uri, status=500)
    responses.add_passthru("http://127.0.0.1")
    client, server = start_server(mongo, data_dir, trusted_issuers=[{"iss": IDP, "jwks_uri": down_uri}])
    try:
        response = client.get("/fhir/Patient", _idp_token(idp_key))
        assert response.status_code == 503 and outcome_code(response) == "exception"
        assert "try again" in response.json()["issue"][0]["diagnostics"]
    finally:
        server.shutdown()


def test_unknown_issuer_and_garbage(api):
    assert api.get("/fhir/Patient", "not.a.jwt").status_code == 401
    assert api.session.get(api.base + "/fhir/Patient", headers={"Authorization": "Basic abc"}).status_code == 401
    other = jwt.encode({"iss": "https://evil.example", "aud": "ehcp-record", "sub": "x", "exp": int(time.time()) + 60},
                       "a-secret-that-is-long-enough-for-hs256!", algorithm="HS256")
    assert api.get("/fhir/Patient", other).status_code == 401


def test_alg_none_is_refused(api):
    token = jwt.encode({"iss": "urn:ehcp-record:dev-issuer", "aud": "ehcp-record", "sub": "x",
                        "exp": int(time.time()) + 60, "role": "la", "organization": LA, "scope": "user/*.cruds"},
                       None, algorithm="none")
    assert api.get("/fhir/Patient", token).status_code == 401


def test_scopes_narrow_what_a_token_may_do(api):
    read_only = api.token("la", LA, scope="user/*.rs")
    response = api.post("/fhir/Patient", {"resourceType": "Patient"}, read_only)
    assert response.status_code == 403 and outcome_code(response) == "forbidden"
    patient_scoped = api.token("la", LA, scope="user/Patient.cruds")
    assert api.get("/fhir/Condition", patient_scoped).status_code == 403


def test_open_endpoints_need_no_token(api):
    assert api.get("/fhir/metadata").status_code == 200
    assert api.get("/fhir/.well-known/smart-configuration").status_code == 200
    assert api.get("/healthz").json()["status"] == "up"
    assert api.get("/readyz").status_code == 200


def test_every_other_endpoint_needs_a_token(api):
    for path in ("/fhir/Patient", "/fhir/Patient/x", "/fhir/Patient/x/_history", "/fhir/Patient/x/_history/1"):
        response = api.get(path)
        assert response.status_code == 401, path
    assert api.post("/fhir", {"resourceType": "Bundle", "type": "batch"}).status_code == 401
