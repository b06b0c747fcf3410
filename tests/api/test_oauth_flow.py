"""SMART App Launch 2 through real HTTP: a parent invited by the custodian LA signs in, an app
completes the authorization code flow with PKCE S256, reads the plan with a SMART-shaped token
(`aud` = the FHIR base URL, `fhirUser`, `patient`, no `role`), rotates its refresh token,
revokes and introspects; a backend service gets a `system/*.rs` token with its own key.
"""

from __future__ import annotations

import time
from typing import Iterator

import jwt
import pytest
import requests

from tests.consent_support import grant, load_issued_example
from tests.oauth_support import (linked_family, BackendKey, backend_client, code_for, exchange, family_app, fhir_get, invite,
                                 redeem, sign_in, start_smart_server, stop, token)
from tests.support import HEALTH, Api, need

KEY = BackendKey()


@pytest.fixture(scope="module")
def smart(mongo, data_dir) -> Iterator[Api]:
    api, server = start_smart_server(mongo, data_dir, oauth_clients=[family_app(), backend_client(KEY),
                                                                        family_app("staff-app", scope="openid fhirUser user/*.rs")])
    yield api
    stop(api, server)


@pytest.fixture(scope="module")
def family(smart: Api) -> dict:
    return linked_family(smart)


def test_smart_configuration_names_every_endpoint(smart):
    config = smart.get("/fhir/.well-known/smart-configuration").json()
    issuer = smart.base + "/oauth"
    assert config["issuer"] == issuer
    assert config["authorization_endpoint"] == issuer + "/authorize"
    assert config["token_endpoint"] == issuer + "/token"
    assert config["jwks_uri"] == issuer + "/jwks"
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert {"launch-standalone", "client-public", "client-confidential-asymmetric", "context-standalone-patient",
            "permission-v2", "sso-openid-connect"} <= set(config["capabilities"])
    assert {"authorization_code", "refresh_token", "client_credentials"} == set(config["grant_types_supported"])
    keys = smart.get("/oauth/jwks").json()["keys"]
    assert [k["alg"] for k in keys] == ["ES256"] and all("d" not in k for k in keys)


def test_capability_statement_has_the_oauth_uris_extension(smart):
    security = smart.get("/fhir/metadata").json()["rest"][0]["security"]
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert security["extension"][0]["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    assert uris["authorize"] == smart.base + "/oauth/authorize" and uris["token"] == smart.base + "/oauth/token"
    assert security["cors"] is False  # no origins configured


def test_parent_launch_reads_the_plan_with_a_smart_token(smart, family):
    code, verifier = code_for(smart, family["browser"])
    response = exchange(smart, code, verifier)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["patient"] == family["child"] and body["token_type"].lower() == "bearer"
    assert body["refresh_token"] and body["id_token"]
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == smart.settings.base_url and claims["iss"] == smart.base + "/oauth"
    assert claims["fhirUser"].endswith(f"/RelatedPerson/{family['mum']}") and claims["patient"] == family["child"]
    assert "role" not in claims
    identity = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert identity["fhirUser"] == claims["fhirUser"] and identity["aud"] == "family-app"
    plan = fhir_get(smart, f"/fhir/Composition/{family['plan']}", body["access_token"])
    assert plan.status_code == 200, plan.text
    assert plan.json()["subject"]["reference"] == f"Patient/{family['child']}"
    other = load_issued_example(smart)["Patient"][0]["id"]
    assert fhir_get(smart, f"/fhir/Patient/{other}", body["access_token"]).status_code == 404


def test_refresh_rotates_and_the_old_refresh_token_is_refused(smart, family):
    code, verifier = code_for(smart, family["browser"])
    first = exchange(smart, code, verifier).json()
    second = token(smart, grant_type="refresh_token", refresh_token=first["refresh_token"], client_id="family-app")
    assert second.status_code == 200, second.text
    assert second.json()["refresh_token"] != first["refresh_token"]
    assert fhir_get(smart, f"/fhir/Composition/{family['plan']}", second.json()["access_token"]).status_code == 200
    again = token(smart, grant_type="refresh_token", refresh_token=first["refresh_token"], client_id="family-app")
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_revoked_access_token_stops_working_and_introspection_says_so(smart, family):
    code, verifier = code_for(smart, family["browser"])
    tokens = exchange(smart, code, verifier).json()
    seen = requests.post(smart.base + "/oauth/introspect", data={"token": tokens["access_token"],
                                                                   "client_id": "family-app"}, timeout=10).json()
    assert seen["active"] is True and seen["patient"] == family["child"] and seen["client_id"] == "family-app"
    revoked = requests.post(smart.base + "/oauth/revoke", data={"token": tokens["access_token"],
                                                                "client_id": "family-app"}, timeout=10)
    assert revoked.status_code == 200
    refused = fhir_get(smart, f"/fhir/Composition/{family['plan']}", tokens["access_token"])
    assert refused.status_code == 401 and "revoked" in refused.json()["issue"][0]["diagnostics"]
    after = requests.post(smart.base + "/oauth/introspect", data={"token": tokens["access_token"],
                                                                   "client_id": "family-app"}, timeout=10).json()
    assert after == {"active": False}


def test_a_role_claim_in_our_own_token_is_never_believed(smart, family):
    """The server's link decides: a token minted with our key but naming a role the link does
    not confer is still the parent (here: `la` would have opened every record of la-866)."""
    oauth = smart.app.extensions["ehcp"].oauth
    code, verifier = code_for(smart, family["browser"])
    claims = jwt.decode(exchange(smart, code, verifier).json()["access_token"], options={"verify_signature": False})
    forged = {**claims, "role": "la", "organization": "Organization/la-866", "jti": "forged-" + str(time.time())}
    from joserfc import jwt as jose_jwt

    minted = jose_jwt.encode({"alg": "ES256"}, forged, oauth.jwk)
    other = load_issued_example(smart)["Patient"][0]["id"]
    assert fhir_get(smart, f"/fhir/Patient/{other}", minted).status_code == 404


def test_backend_service_reads_what_its_organisation_is_consented_to(smart, family):
    response = token(smart, grant_type="client_credentials", scope="system/*.rs",
                     client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                     client_assertion=KEY.assertion("trust-system", smart.base + "/oauth/token"))
    assert response.status_code == 200, response.text
    access = response.json()["access_token"]
    assert "refresh_token" not in response.json()
    claims = jwt.decode(access, options={"verify_signature": False})
    assert claims["sub"] == "trust-system" and claims["scope"] == "system/*.rs"
    child = family["child"]
    assert fhir_get(smart, f"/fhir/Patient/{child}", access).status_code == 404  # no consent yet
    mum_token = smart.token("parent", None, fhir_user=f"RelatedPerson/{family['mum']}")
    consent = smart.post("/fhir/Consent", grant(child, f"RelatedPerson/{family['mum']}", HEALTH, ["C", "G"],
                                                role="health"), mum_token)
    assert consent.status_code == 201, consent.text
    assert fhir_get(smart, f"/fhir/Patient/{child}", access).status_code == 200
    needs = fhir_get(smart, f"/fhir/Condition?patient={child}", access).json()
    sections = {c["code"] for e in needs.get("entry", []) for cat in e["resource"].get("category", [])
                for c in cat.get("coding", [])}
    assert sections and sections <= {"C", "G"}, sections
    write = smart.session.post(smart.base + "/fhir/Condition", json=need(child, "C", "asthma"),
                               headers={"Authorization": f"Bearer {access}", "Content-Type": "application/fhir+json"})
    assert write.status_code == 403  # system/*.rs: read and search only


def test_public_app_may_refresh_without_client_id(smart, family):
    """The SMART JS client refreshes with the refresh token alone; the token names its client."""
    code, verifier = code_for(smart, family["browser"])
    first = exchange(smart, code, verifier).json()
    second = token(smart, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert second.status_code == 200, second.text
    unknown = token(smart, grant_type="refresh_token", refresh_token="not-a-token")
    assert unknown.status_code in (400, 401) and unknown.json()["error"] == "invalid_client"


def test_staff_linked_by_their_organisation_act_as_its_professionals(smart, family):
    """PractitionerRole -> its organisation and role, from the link; consent still decides."""
    admin = smart.token("health", HEALTH)
    role = smart.post("/fhir/PractitionerRole", {"resourceType": "PractitionerRole", "active": True,
                                                 "organization": {"reference": HEALTH}}, smart.token("system", None))
    assert role.status_code == 201, role.text
    other_admin = smart.token("health", "Organization/nhs-trust-2")
    refused = invite(smart, "", f"PractitionerRole/{role.json()['id']}", token=other_admin)
    assert refused.status_code == 422 and "works for" in refused.json()["issue"][0]["diagnostics"]
    invitation = smart.session.post(smart.base + "/oauth/invitations", json={"person": f"PractitionerRole/{role.json()['id']}"},
                                    headers={"Authorization": f"Bearer {admin}"}, timeout=10)
    assert invitation.status_code == 201, invitation.text
    nurse = sign_in(smart, "casey-professional")
    linked = redeem(smart, nurse, invitation.json()["code"]).json()
    assert (linked["role"], linked["organization"], linked["patient"]) == ("health", HEALTH, None)
    code, verifier = code_for(smart, nurse, client_id="staff-app", scope="openid fhirUser user/*.rs")
    body = exchange(smart, code, verifier, client_id="staff-app").json()
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert "patient" not in claims and "patient" not in body
    assert claims["fhirUser"].endswith(f"PractitionerRole/{role.json()['id']}")
    consented = load_issued_example(smart)
    child = consented["Patient"][0]["id"]
    mum = f"RelatedPerson/{consented['RelatedPerson'][0]['id']}"
    assert fhir_get(smart, f"/fhir/Patient/{child}", body["access_token"]).status_code == 404
    assert smart.post("/fhir/Consent", grant(child, mum, HEALTH, ["C"], role="health"),
                      smart.token("parent", None, fhir_user=mum)).status_code == 201
    assert fhir_get(smart, f"/fhir/Patient/{child}", body["access_token"]).status_code == 200


def test_removing_a_client_stops_its_tokens_on_the_next_request(smart, family):
    key = BackendKey()
    smart.services.identity.register(backend_client(key, client_id="short-lived", role="la",
                                                    organization="Organization/la-866"))
    response = token(smart, grant_type="client_credentials", scope="system/*.rs",
                     client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                     client_assertion=key.assertion("short-lived", smart.base + "/oauth/token"))
    access = response.json()["access_token"]
    assert fhir_get(smart, f"/fhir/Patient/{family['child']}", access).status_code == 200  # the custodian
    assert smart.services.identity.remove_client("short-lived")
    refused = fhir_get(smart, f"/fhir/Patient/{family['child']}", access)
    assert refused.status_code == 401 and "no longer registered" in refused.json()["issue"][0]["diagnostics"]
