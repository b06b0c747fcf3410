"""Every way the authorization server says no, each with the error code its specification names:
RFC 6749 §4.1.2.1 (authorization endpoint) and §5.2 (token endpoint), RFC 7636 §4.4.1 / §4.6
(PKCE), RFC 6750 §3.1 (bearer tokens at the FHIR API), SMART App Launch 2 and Backend Services.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Iterator

import pytest
import requests
from joserfc import jwt as jose_jwt

from tests.consent_support import load_issued_example
from tests.oauth_support import (linked_family, BackendKey, authorize, backend_client, code_for, exchange, family_app,
                                 fhir_get, invite, link_parent, pkce, redeem, redirect_params, sign_in,
                                 start_smart_server, stop, token)
from tests.support import OTHER_LA, Api

KEY = BackendKey()
ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class _Issuer:
    """A stand-in OpenID Connect provider on 127.0.0.1: its JWKS over HTTP, ID tokens it signs."""

    def __init__(self) -> None:
        self.key = BackendKey()
        jwks = json.dumps(self.key.jwks()).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(jwks)

            def log_message(self, *args: object) -> None:
                pass

        self.http = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.issuer = f"http://127.0.0.1:{self.http.server_port}/idp"
        self.jwks_uri = f"http://127.0.0.1:{self.http.server_port}/idp/jwks"

    def id_token(self, issuer: str | None = None, audience: str = "ehcp-record", subject: str = "nhs-login-42") -> str:
        now = int(time.time())
        claims = {"iss": issuer or self.issuer, "aud": audience, "sub": subject, "iat": now, "exp": now + 300,
                  "name": "Robin Example"}
        return jose_jwt.encode({"alg": "ES384", "kid": self.key.kid}, claims, self.key.key, algorithms=["ES384"])


@pytest.fixture(scope="module")
def idp() -> Iterator[_Issuer]:
    issuer = _Issuer()
    yield issuer
    issuer.http.shutdown()


@pytest.fixture(scope="module")
def smart(mongo, data_dir, idp) -> Iterator[Api]:
    clients = [family_app(), family_app("narrow-app", scope="launch/patient patient/Composition.rs"),
               backend_client(KEY)]
    providers = [{"issuer": idp.issuer, "client_id": "ehcp-record", "jwks_uri": idp.jwks_uri}]
    api, server = start_smart_server(mongo, data_dir, oauth_clients=clients, identity_providers=providers)
    yield api
    stop(api, server)


@pytest.fixture(scope="module")
def family(smart: Api) -> dict:
    return linked_family(smart)


# --------------------------------------------------------------------------- authorization endpoint

def test_wrong_redirect_uri_is_shown_not_redirected(smart, family):
    _, challenge = pkce()
    response = authorize(smart, family["browser"], challenge, redirect_uri="http://127.0.0.1:9/elsewhere")
    assert response.status_code == 400 and "Location" not in response.headers
    assert response.json()["error"] == "invalid_request"


def test_unknown_client_is_shown_not_redirected(smart, family):
    _, challenge = pkce()
    response = authorize(smart, family["browser"], challenge, client_id="nobody")
    assert response.status_code == 401 and "Location" not in response.headers
    assert response.json()["error"] == "invalid_client"


def test_missing_pkce_is_invalid_request(smart, family):
    params = redirect_params(authorize(smart, family["browser"], None, method=None))
    assert params["error"] == "invalid_request" and "code" not in params
    assert params["state"].startswith("st-")


def test_plain_pkce_is_invalid_request(smart, family):
    verifier, _ = pkce()
    params = redirect_params(authorize(smart, family["browser"], verifier, method="plain"))
    assert params["error"] == "invalid_request" and "S256" in params["error_description"]


def test_scope_beyond_the_registration_is_invalid_scope(smart, family):
    _, challenge = pkce()
    params = redirect_params(authorize(smart, family["browser"], challenge, client_id="narrow-app",
                                       scope="launch/patient patient/*.cruds"))
    assert params["error"] == "invalid_scope"


def test_wrong_audience_is_invalid_request(smart, family):
    _, challenge = pkce()
    params = redirect_params(authorize(smart, family["browser"], challenge, aud="http://127.0.0.1:9/fhir"))
    assert params["error"] == "invalid_request"


def test_signed_in_person_with_no_link_is_access_denied(smart):
    stranger = sign_in(smart, "jordan-parent")
    _, challenge = pkce()
    params = redirect_params(authorize(smart, stranger, challenge))
    assert params["error"] == "access_denied"


def test_not_signed_in_goes_to_the_sign_in_page(smart):
    _, challenge = pkce()
    response = authorize(smart, requests.Session(), challenge)
    assert response.status_code == 302 and response.headers["Location"].startswith("/oauth/sign-in?next=")


# --------------------------------------------------------------------------- token endpoint

def test_wrong_code_verifier_is_invalid_grant(smart, family):
    code, _ = code_for(smart, family["browser"])
    other, _ = pkce()
    response = exchange(smart, code, other)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_missing_code_verifier_is_invalid_request(smart, family):
    code, _ = code_for(smart, family["browser"])
    response = exchange(smart, code, None)
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_redirect_uri_must_match_at_the_token_endpoint(smart, family):
    code, verifier = code_for(smart, family["browser"])
    response = exchange(smart, code, verifier, redirect_uri="http://127.0.0.1:9/elsewhere")
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_reused_code_is_invalid_grant_and_revokes_what_it_gave(smart, family):
    code, verifier = code_for(smart, family["browser"])
    first = exchange(smart, code, verifier)
    assert first.status_code == 200
    assert fhir_get(smart, f"/fhir/Composition/{family['plan']}", first.json()["access_token"]).status_code == 200
    again = exchange(smart, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert fhir_get(smart, f"/fhir/Composition/{family['plan']}", first.json()["access_token"]).status_code == 401
    refresh = token(smart, grant_type="refresh_token", refresh_token=first.json()["refresh_token"],
                    client_id="family-app")
    assert refresh.json()["error"] == "invalid_grant"


def test_expired_refresh_token_is_invalid_grant(smart, family):
    code, verifier = code_for(smart, family["browser"])
    tokens = exchange(smart, code, verifier).json()
    store = smart.services.identity.store
    import hashlib

    store.refresh_tokens.update_one({"_id": hashlib.sha256(tokens["refresh_token"].encode()).hexdigest()},
                                    {"$set": {"expires_at": datetime.now(timezone.utc) - timedelta(seconds=1)}})
    response = token(smart, grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id="family-app")
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_revoked_refresh_token_is_invalid_grant(smart, family):
    code, verifier = code_for(smart, family["browser"])
    tokens = exchange(smart, code, verifier).json()
    revoked = requests.post(smart.base + "/oauth/revoke", timeout=10, data={
        "token": tokens["refresh_token"], "token_type_hint": "refresh_token", "client_id": "family-app"})
    assert revoked.status_code == 200
    response = token(smart, grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id="family-app")
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_a_refresh_token_belongs_to_its_client(smart, family):
    code, verifier = code_for(smart, family["browser"])
    tokens = exchange(smart, code, verifier).json()
    response = token(smart, grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id="narrow-app")
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_refresh_cannot_widen_the_scope(smart, family):
    code, verifier = code_for(smart, family["browser"])
    tokens = exchange(smart, code, verifier).json()
    response = token(smart, grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id="family-app",
                     scope="patient/*.cruds")
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"


# --------------------------------------------------------------------------- backend services

def _client_credentials(smart: Api, assertion: str, scope: str = "system/*.rs") -> requests.Response:
    return token(smart, grant_type="client_credentials", scope=scope, client_assertion_type=ASSERTION,
                 client_assertion=assertion)


def test_backend_scope_beyond_registration_is_invalid_scope(smart):
    response = _client_credentials(smart, KEY.assertion("trust-system", smart.base + "/oauth/token"),
                                   scope="system/*.cruds")
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"


def test_backend_assertion_replay_is_invalid_client(smart):
    assertion = KEY.assertion("trust-system", smart.base + "/oauth/token", jti="once-only")
    assert _client_credentials(smart, assertion).status_code == 200
    again = _client_credentials(smart, assertion)
    assert again.status_code in (400, 401) and again.json()["error"] == "invalid_client"


def test_backend_assertion_signed_with_another_key_is_invalid_client(smart):
    impostor = BackendKey(kid=KEY.kid)
    response = _client_credentials(smart, impostor.assertion("trust-system", smart.base + "/oauth/token"))
    assert response.json()["error"] == "invalid_client"


def test_backend_assertion_for_another_audience_is_invalid_client(smart):
    response = _client_credentials(smart, KEY.assertion("trust-system", "http://127.0.0.1:9/oauth/token"))
    assert response.json()["error"] == "invalid_client"


def test_public_client_cannot_use_client_credentials(smart):
    response = token(smart, grant_type="client_credentials", scope="system/*.rs", client_id="family-app")
    assert response.json()["error"] in ("invalid_client", "unauthorized_client")


# --------------------------------------------------------------------------- links

def test_unlinked_person_is_refused_on_the_next_request(smart):
    record = load_issued_example(smart)
    child, dad = record["Patient"][0]["id"], record["RelatedPerson"][0]["id"]
    browser = link_parent(smart, child, dad, person="jordan-parent")
    code, verifier = code_for(smart, browser)
    tokens = exchange(smart, code, verifier).json()
    plan = f"/fhir/Composition/{record['Composition'][0]['id']}"
    assert fhir_get(smart, plan, tokens["access_token"]).status_code == 200
    link_id = browser.get(smart.base + "/oauth/account/links", timeout=10).json()["links"][0]["id"]
    removed = smart.session.delete(smart.base + f"/oauth/links/{link_id}",
                                   headers={"Authorization": f"Bearer {smart.la()}"}, timeout=10)
    assert removed.status_code == 204
    refused = fhir_get(smart, plan, tokens["access_token"])
    assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    refresh = token(smart, grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id="family-app")
    assert refresh.json()["error"] == "invalid_grant"
    _, challenge = pkce()
    assert redirect_params(authorize(smart, browser, challenge))["error"] == "access_denied"


def test_invitation_is_single_use(smart):
    record = load_issued_example(smart)
    child, mum = record["Patient"][0]["id"], record["RelatedPerson"][0]["id"]
    code = invite(smart, f"Patient/{child}", f"RelatedPerson/{mum}").json()["code"]
    assert redeem(smart, sign_in(smart, "alex-parent"), code).status_code == 201
    second = redeem(smart, sign_in(smart, "jordan-parent"), code)
    assert second.status_code == 422 and second.json()["resourceType"] == "OperationOutcome"


def test_expired_invitation_is_refused(smart):
    record = load_issued_example(smart)
    child, mum = record["Patient"][0]["id"], record["RelatedPerson"][0]["id"]
    code = invite(smart, f"Patient/{child}", f"RelatedPerson/{mum}").json()["code"]
    smart.services.identity.store.invitations.update_many(
        {"record": child}, {"$set": {"expires_at": datetime.now(timezone.utc) - timedelta(seconds=1)}})
    assert redeem(smart, sign_in(smart, "alex-parent"), code).status_code == 422


def test_only_the_custodian_invites(smart):
    record = load_issued_example(smart)
    child, mum = record["Patient"][0]["id"], record["RelatedPerson"][0]["id"]
    refused = invite(smart, f"Patient/{child}", f"RelatedPerson/{mum}", token=smart.token("la", OTHER_LA))
    assert refused.status_code in (403, 404) and refused.json()["resourceType"] == "OperationOutcome"
    wrong = invite(smart, f"Patient/{child}", "Practitioner/p1")
    assert wrong.status_code == 422


def test_link_and_unlink_are_in_the_familys_access_log(smart):
    record = load_issued_example(smart)
    child, mum = record["Patient"][0]["id"], record["RelatedPerson"][0]["id"]
    browser = link_parent(smart, child, mum, person="alex-parent")
    links = browser.get(smart.base + "/oauth/account/links", timeout=10).json()
    mine = [link for link in links["links"] if link["patient"] == f"Patient/{child}"]
    assert mine and mine[0]["fhirUser"] == f"RelatedPerson/{mum}" and mine[0]["role"] == "parent"
    gone = browser.delete(smart.base + f"/oauth/account/links/{mine[0]['id']}",
                          headers={"X-CSRF-Token": links["csrf"]}, timeout=10)
    assert gone.status_code == 204
    log = smart.get(f"/fhir/Patient/{child}/$access-log", record["parent_token"]).json()
    actions = [c["code"] for e in log.get("entry", []) for c in e["resource"]["subtype"]
               if c["system"].endswith("audit-action")]
    assert {"invite", "link", "unlink"} <= set(actions), actions


def test_redeem_needs_the_forms_csrf_token(smart):
    browser = sign_in(smart, "alex-parent")
    response = browser.post(smart.base + "/oauth/account/links", data={"code": "x"}, timeout=10)
    assert response.status_code == 403


# --------------------------------------------------------------------------- federation

# The interactive federation flow and its refusals: tests/api/test_oauth_federation.py.


def test_bearer_token_from_unknown_issuer_is_invalid_token(smart, idp):
    response = fhir_get(smart, "/fhir/Patient", idp.id_token())
    assert response.status_code == 401 and 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_local_sign_in_is_off_in_production_config():
    from ehcp_record.config import ConfigError, load_settings

    kms = {"kms_providers": {"aws": {"accessKeyId": "AKIA...", "secretAccessKey": "s"}},
           "master_key": {"provider": "aws", "region": "eu-west-2", "key": "arn:aws:kms:eu-west-2:1:key/x"}}
    assert load_settings({"env": "production", **kms}, environ={}).local_sign_in is False
    with pytest.raises(ConfigError, match="local sign-in"):
        load_settings({"env": "production", "local_sign_in": True, **kms}, environ={})



def test_reusing_a_rotated_refresh_token_revokes_the_whole_grant(smart, family):
    """OAuth 2.0 Security BCP §4.14.2: a rotated refresh token presented again means one of the
    two holders is an attacker, so every token of that grant stops working."""
    links = family["browser"].get(smart.base + "/oauth/account/links", timeout=10).json()["links"]
    link = next(x["id"] for x in links if x["patient"] == f"Patient/{family['child']}")
    code, verifier = code_for(smart, family["browser"], link=link)
    first = exchange(smart, code, verifier).json()
    second = token(smart, grant_type="refresh_token", refresh_token=first["refresh_token"], client_id="family-app").json()
    plan = f"/fhir/Composition/{family['plan']}"
    assert fhir_get(smart, plan, second["access_token"]).status_code == 200
    reused = token(smart, grant_type="refresh_token", refresh_token=first["refresh_token"], client_id="family-app")
    assert reused.json()["error"] == "invalid_grant"
    assert fhir_get(smart, plan, second["access_token"]).status_code == 401
    latest = token(smart, grant_type="refresh_token", refresh_token=second["refresh_token"], client_id="family-app")
    assert latest.json()["error"] == "invalid_grant"
