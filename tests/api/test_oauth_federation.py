"""Federation, the consent screen and `jwks_uri` backend clients, end to end over real HTTP.

The OpenID Connect provider is a second instance of this very deployment on 127.0.0.1 (its own
database and signing key): the relying party sends the person there (state, nonce, PKCE S256),
the provider's own Authlib server signs them in and issues an ID token, and the relying party
validates it against the provider's JWKS before continuing the SMART authorization. A backend
service's keys are served from a small JWKS server on 127.0.0.1 that counts its fetches.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Iterator
from urllib.parse import parse_qs, urlencode, urlparse

import jwt
import pytest
import requests

from tests.consent_support import load_issued_example
from tests.oauth_support import (APP_REDIRECT, BackendKey, authorize, exchange, family_app, fhir_get, invite,
                                 linked_family, pkce, redeem, redirect_params, start_smart_server, stop, token)
from tests.support import Api

ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
THIRD_PARTY_SCOPE = "launch/patient patient/*.rs"


class _KeySite:
    """A backend service's published JWKS on 127.0.0.1: rotatable, counting fetches; `/moved`
    answers a redirect (which must not be followed)."""

    def __init__(self) -> None:
        self.keys = [BackendKey()]
        self.fetches = 0
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path == "/moved":
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{site.http.server_port}/jwks")
                    self.end_headers()
                    return
                site.fetches += 1
                body = json.dumps({"keys": [k for key in site.keys for k in key.jwks()["keys"]]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.http = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def key_site() -> Iterator[_KeySite]:
    site = _KeySite()
    yield site
    site.http.shutdown()


@pytest.fixture(scope="module")
def provider(mongo, tmp_path_factory) -> Iterator[Api]:
    """The OpenID Connect provider: another deployment, with its own data dir (its own key)."""
    api, server = start_smart_server(mongo, tmp_path_factory.mktemp("provider-data"))
    yield api
    stop(api, server)


@pytest.fixture(scope="module")
def provider_person(provider: Api) -> requests.Session:
    """Alex, signed in at the provider (its dev page) and known there."""
    return linked_family(provider)["browser"]


@pytest.fixture(scope="module")
def rp(mongo, data_dir, provider, key_site) -> Iterator[Api]:
    idp = {"id": "example-login", "name": "Example NHS login", "issuer": provider.base + "/oauth",
           "client_id": "ehcp-rp", "scope": "openid fhirUser", "claims": {"provider_fhir_user": "fhirUser"}}
    clients = [family_app(), {**family_app("third-app", scope=THIRD_PARTY_SCOPE + " offline_access", first_party=False),
                                    "name": "Homework Helper"},
               {"client_id": "keys-by-url", "token_endpoint_auth_method": "private_key_jwt", "scope": "system/*.rs",
                "jwks_uri": key_site.url + "/jwks", "role": "system"},
               {"client_id": "keys-moved", "token_endpoint_auth_method": "private_key_jwt", "scope": "system/*.rs",
                "jwks_uri": key_site.url + "/moved", "role": "system"}]
    api, server = start_smart_server(mongo, data_dir, identity_providers=[idp], oauth_clients=clients)
    provider.services.identity.register(family_app("ehcp-rp", redirect_uris=(api.base + "/oauth/sign-in/callback",),
                                                   scope="openid fhirUser"))
    yield api
    stop(api, server)


def _location(response: requests.Response) -> str:
    assert response.status_code in (302, 303), (response.status_code, response.text)
    return response.headers["Location"]


def _absolute(api: Api, location: str) -> str:
    return location if location.startswith("http") else api.base + location


def _to_provider(rp: Api, browser: requests.Session, next_path: str = "/oauth/account/links") -> str:
    start = browser.get(rp.base + "/oauth/sign-in/provider/example-login?" + urlencode({"next": next_path}),
                        allow_redirects=False, timeout=10)
    return _location(start)


def _provider_answer(provider_person: requests.Session, provider_url: str) -> str:
    return _location(provider_person.get(provider_url, allow_redirects=False, timeout=10))


def federated_sign_in(rp: Api, provider_person: requests.Session, next_path: str = "/oauth/account/links"):
    browser = requests.Session()  # the relying party's own cookie jar (another site in real life)
    callback = _provider_answer(provider_person, _to_provider(rp, browser, next_path))
    return browser, browser.get(callback, allow_redirects=False, timeout=10)


# --------------------------------------------------------------------------- federation

def test_provider_publishes_openid_discovery(provider):
    document = requests.get(provider.base + "/oauth/.well-known/openid-configuration", timeout=10).json()
    assert document["issuer"] == provider.base + "/oauth"
    assert document["authorization_endpoint"] == provider.base + "/oauth/authorize"
    assert document["jwks_uri"] == provider.base + "/oauth/jwks"
    assert document["code_challenge_methods_supported"] == ["S256"] and "public" in document["subject_types_supported"]


def test_sign_in_page_offers_the_configured_provider_and_the_dev_people(rp):
    page = requests.get(rp.base + "/oauth/sign-in?next=/oauth/account/links", timeout=10)
    assert page.status_code == 200 and 'id="provider-example-login"' in page.text
    assert "Example NHS login" in page.text and 'id="person-alex-parent"' in page.text
    assert 'name="viewport"' in page.text


def test_redirect_to_the_provider_carries_state_nonce_and_pkce(rp, provider):
    url = urlparse(_to_provider(rp, requests.Session()))
    params = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert f"{url.scheme}://{url.netloc}{url.path}" == provider.base + "/oauth/authorize"
    assert params["client_id"] == "ehcp-rp" and params["response_type"] == "code"
    assert params["redirect_uri"] == rp.base + "/oauth/sign-in/callback" and params["scope"] == "openid fhirUser"
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert len(params["state"]) >= 32 and len(params["nonce"]) >= 32


def test_federated_person_redeems_an_invitation_and_launches_an_app(rp, provider, provider_person):
    browser, landed = federated_sign_in(rp, provider_person)
    assert _location(landed) == "/oauth/account/links"
    account = browser.get(rp.base + "/oauth/account/links", timeout=10).json()
    assert account["identity"] == f"{provider.base}/oauth|local|alex-parent"
    assert account["claims"]["provider_fhir_user"].startswith(provider.base + "/fhir/RelatedPerson/")
    assert account["links"] == []  # the provider says who; only an invitation says what
    record = load_issued_example(rp)
    child, mum = record["Patient"][0]["id"], record["RelatedPerson"][0]["id"]
    code = invite(rp, f"Patient/{child}", f"RelatedPerson/{mum}").json()["code"]
    assert redeem(rp, browser, code).status_code == 201

    # A fresh browser: the app's authorize request waits for the federated sign-in, then goes on.
    fresh = requests.Session()
    verifier, challenge = pkce()
    sign_in_page = _location(authorize(rp, fresh, challenge))
    next_path = parse_qs(urlparse(sign_in_page).query)["next"][0]
    assert next_path.startswith("/oauth/authorize?")
    callback = _provider_answer(provider_person, _to_provider(rp, fresh, next_path))
    resumed = _location(fresh.get(callback, allow_redirects=False, timeout=10))
    assert resumed == next_path
    params = redirect_params(fresh.get(_absolute(rp, resumed), allow_redirects=False, timeout=10))
    tokens = exchange(rp, params["code"], verifier).json()
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["iss"] == rp.base + "/oauth" and claims["fhirUser"] == f"{rp.settings.base_url}/RelatedPerson/{mum}"
    assert tokens["patient"] == child
    assert fhir_get(rp, f"/fhir/Composition/{record['Composition'][0]['id']}", tokens["access_token"]).status_code == 200


def test_state_mismatch_is_refused_and_signs_nobody_in(rp, provider_person):
    browser = requests.Session()
    callback = urlparse(_provider_answer(provider_person, _to_provider(rp, browser)))
    params = {k: v[0] for k, v in parse_qs(callback.query).items()}
    forged = browser.get(rp.base + "/oauth/sign-in/callback?" + urlencode({**params, "state": "attacker"}), timeout=10)
    assert forged.status_code == 400 and forged.json()["error"] == "invalid_request"
    assert "state" in forged.json()["error_description"]
    assert browser.get(rp.base + "/oauth/account/links", timeout=10).status_code == 401
    again = browser.get(callback.geturl(), timeout=10)  # the attempt is spent, even with the right state
    assert again.status_code == 400 and again.json()["error"] == "invalid_request"


def test_a_callback_nobody_started_is_refused(rp):
    response = requests.get(rp.base + "/oauth/sign-in/callback?code=x&state=y", timeout=10)
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_an_unknown_provider_is_refused(rp):
    response = requests.get(rp.base + "/oauth/sign-in/provider/not-configured", timeout=10, allow_redirects=False)
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_the_provider_saying_no_is_access_denied(rp):
    browser = requests.Session()
    state = parse_qs(urlparse(_to_provider(rp, browser)).query)["state"][0]
    response = browser.get(rp.base + "/oauth/sign-in/callback?" + urlencode({"state": state, "error": "access_denied"}),
                           timeout=10)
    assert response.status_code == 400 and response.json()["error"] == "access_denied"


def test_the_provider_saying_no_during_an_app_launch_tells_the_app(rp):
    """RFC 6749 §4.1.2.1: the app waiting on the authorization hears `access_denied`, with its state."""
    browser = requests.Session()
    sign_in_page = _location(authorize(rp, browser, pkce()[1], state="st-waiting"))
    next_path = parse_qs(urlparse(sign_in_page).query)["next"][0]
    state = parse_qs(urlparse(_to_provider(rp, browser, next_path)).query)["state"][0]
    answer = browser.get(rp.base + "/oauth/sign-in/callback?" + urlencode({"state": state, "error": "access_denied"}),
                         allow_redirects=False, timeout=10)
    assert _location(answer).startswith(APP_REDIRECT)
    assert redirect_params(answer) == {"error": "access_denied", "state": "st-waiting",
                                       "error_description": redirect_params(answer)["error_description"]}


def test_a_response_naming_another_issuer_is_refused(rp, provider_person):
    """RFC 9207: an `iss` parameter that is not the provider's (a mix-up attack)."""
    browser = requests.Session()
    callback = _provider_answer(provider_person, _to_provider(rp, browser))
    response = browser.get(callback + "&iss=" + "http%3A%2F%2F127.0.0.1%3A9%2Fevil", timeout=10)
    assert response.status_code == 400 and "issuer" in response.json()["error_description"]


def test_a_code_for_another_relying_party_gives_no_session(rp, provider_person):
    """The provider refuses the exchange (the code was not issued with our PKCE verifier)."""
    first, second = requests.Session(), requests.Session()
    callback_for_first = _provider_answer(provider_person, _to_provider(rp, first))
    state_of_second = parse_qs(urlparse(_to_provider(rp, second)).query)["state"][0]
    code = parse_qs(urlparse(callback_for_first).query)["code"][0]
    stolen = second.get(rp.base + "/oauth/sign-in/callback?" + urlencode({"code": code, "state": state_of_second}),
                        timeout=10)
    assert stolen.status_code == 400 and stolen.json()["error"] == "access_denied"
    assert "invalid_grant" in stolen.json()["error_description"]


# --------------------------------------------------------------------------- consent screen

@pytest.fixture(scope="module")
def family(rp: Api) -> dict:
    return linked_family(rp)


def _consent_form(page: str) -> list[tuple[str, str]]:
    import re

    return re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page)


def test_third_party_app_asks_the_person_first_and_deny_is_access_denied(rp, family):
    verifier, challenge = pkce()
    page = authorize(rp, family["browser"], challenge, client_id="third-app", scope=THIRD_PARTY_SCOPE)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Content-Security-Policy"] == "frame-ancestors 'none'"  # not framable: no clickjacking
    child = family["record"]["Patient"][0]
    name = " ".join([*child["name"][0].get("given", []), child["name"][0].get("family", "")]).strip()
    assert "Homework Helper" in page.text and name in page.text
    assert "read and search everything in the record" in page.text
    assert "know which child&#39;s record you chose" in page.text or "know which child's record you chose" in page.text
    form = dict(_consent_form(page.text))
    denied = family["browser"].post(rp.base + "/oauth/authorize", data={**form, "decision": "deny"},
                                    allow_redirects=False, timeout=10)
    params = redirect_params(denied)
    assert params["error"] == "access_denied" and params["state"] == form["state"] and "code" not in params
    assert _location(denied).startswith(APP_REDIRECT)


def test_approval_is_remembered_per_client_person_and_scopes(rp, family):
    verifier, challenge = pkce()
    page = authorize(rp, family["browser"], challenge, client_id="third-app", scope=THIRD_PARTY_SCOPE)
    form = dict(_consent_form(page.text))
    without_csrf = family["browser"].post(rp.base + "/oauth/authorize", allow_redirects=False, timeout=10,
                                          data={**{k: v for k, v in form.items() if k != "csrf"}, "decision": "approve"})
    assert without_csrf.status_code == 403
    approved = redirect_params(family["browser"].post(rp.base + "/oauth/authorize", allow_redirects=False, timeout=10,
                                                      data={**form, "decision": "approve"}))
    tokens = exchange(rp, approved["code"], verifier, client_id="third-app").json()
    assert tokens["patient"] == family["child"]
    again = authorize(rp, family["browser"], pkce()[1], client_id="third-app", scope=THIRD_PARTY_SCOPE)
    assert "code" in redirect_params(again)  # remembered: no second question
    wider = authorize(rp, family["browser"], pkce()[1], client_id="third-app",
                      scope=THIRD_PARTY_SCOPE + " offline_access")
    assert wider.status_code == 200 and "until its access is revoked" in wider.text  # a new scope: asked again
    first_party = authorize(rp, family["browser"], pkce()[1])
    assert "code" in redirect_params(first_party)


def test_withdrawing_an_approval_stops_the_apps_tokens_and_asks_again(rp, family):
    browser = family["browser"]
    scope = THIRD_PARTY_SCOPE + " offline_access"
    verifier, challenge = pkce()
    page = authorize(rp, browser, challenge, client_id="third-app", scope=scope)
    if page.status_code == 200:  # not yet approved with offline_access
        page = browser.post(rp.base + "/oauth/authorize", allow_redirects=False, timeout=10,
                            data={**dict(_consent_form(page.text)), "decision": "approve"})
    tokens = exchange(rp, redirect_params(page)["code"], verifier, client_id="third-app").json()
    account = browser.get(rp.base + "/oauth/account/links", timeout=10).json()
    assert any(a["client_id"] == "third-app" and "offline_access" in a["scopes"] for a in account["approvals"])
    withdrawn = browser.delete(rp.base + "/oauth/account/approvals/third-app", headers={"X-CSRF-Token": account["csrf"]},
                               timeout=10)
    assert withdrawn.status_code == 204
    assert fhir_get(rp, f"/fhir/Patient/{family['child']}", tokens["access_token"]).status_code == 401
    refreshed = token(rp, grant_type="refresh_token", refresh_token=tokens["refresh_token"], client_id="third-app")
    assert refreshed.json()["error"] == "invalid_grant"
    assert authorize(rp, browser, pkce()[1], client_id="third-app", scope=THIRD_PARTY_SCOPE).status_code == 200
    again = browser.delete(rp.base + "/oauth/account/approvals/third-app", headers={"X-CSRF-Token": account["csrf"]},
                           timeout=10)
    assert again.status_code == 404


def test_authorize_post_is_answered_as_the_same_get(rp, family):
    """SMART `authorize-post`: the app may POST its request; the person's cookie needs a GET."""
    params = {"response_type": "code", "client_id": "family-app", "redirect_uri": APP_REDIRECT, "scope": "launch/patient",
              "state": "st-post", "code_challenge": pkce()[1], "code_challenge_method": "S256"}
    posted = requests.post(rp.base + "/oauth/authorize", data=params, allow_redirects=False, timeout=10)
    assert posted.status_code == 303
    assert {k: v[0] for k, v in parse_qs(urlparse(posted.headers["Location"]).query).items()} == params
    config = rp.get("/fhir/.well-known/smart-configuration").json()
    assert {"authorize-post", "sso-openid-connect", "client-confidential-asymmetric"} <= set(config["capabilities"])
    assert config["identity_providers"] == [rp.settings.identity_providers[0].issuer]


# --------------------------------------------------------------------------- jwks_uri clients

def _client_token(rp: Api, key: BackendKey, client_id: str = "keys-by-url") -> requests.Response:
    return token(rp, grant_type="client_credentials", scope="system/*.rs", client_assertion_type=ASSERTION,
                 client_assertion=key.assertion(client_id, rp.base + "/oauth/token"))


def test_jwks_uri_keys_are_fetched_once_cached_and_refetched_once_on_a_new_kid(rp, key_site, monkeypatch):
    from ehcp_record.identity import jwks

    monkeypatch.setattr(jwks, "REFETCH_AFTER_SECONDS", 0.0)  # the server runs in this process
    first = key_site.keys[0]
    before = key_site.fetches
    assert _client_token(rp, first).status_code == 200
    assert _client_token(rp, first).status_code == 200
    assert key_site.fetches == before + 1  # cached
    rotated = BackendKey()
    key_site.keys = [rotated]
    assert _client_token(rp, rotated).status_code == 200, "a new kid refetches the set"
    assert key_site.fetches == before + 2
    unknown = BackendKey()
    refused = _client_token(rp, unknown)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_client"  # RFC 6749 §5.2
    assert key_site.fetches == before + 3  # one refetch for the unknown kid, then refused


def test_unknown_kids_do_not_refetch_more_often_than_the_floor(rp, key_site):
    """A fresh fetch, then assertions with random `kid`s: none of them fetches again."""
    from ehcp_record.identity import jwks

    jwks.forget(key_site.url + "/jwks")
    assert _client_token(rp, key_site.keys[0]).status_code == 200
    before = key_site.fetches
    for _ in range(3):
        assert _client_token(rp, BackendKey()).json()["error"] == "invalid_client"
    assert key_site.fetches == before


def test_a_jwks_uri_that_redirects_is_not_followed(rp, key_site):
    before = key_site.fetches
    refused = _client_token(rp, key_site.keys[0], client_id="keys-moved")
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_client"  # RFC 6749 §5.2
    assert key_site.fetches == before and "HTTP 302" in refused.json()["error_description"]


def test_a_registration_gives_its_keys_once(rp):
    from marshmallow import ValidationError

    with pytest.raises(ValidationError):
        rp.services.identity.register({"client_id": f"both-{uuid.uuid4().hex[:6]}", "scope": "system/*.rs",
                                       "token_endpoint_auth_method": "private_key_jwt", "role": "system",
                                       "jwks": BackendKey().jwks(), "jwks_uri": "http://127.0.0.1:9/jwks"})


def test_an_id_token_with_another_nonce_is_invalid_token(rp, provider_person):
    """End to end: the provider's ID token carries the nonce it was sent; a session whose
    attempt remembers another nonce (same state) refuses it, and nobody is signed in."""
    browser = requests.Session()
    callback = _provider_answer(provider_person, _to_provider(rp, browser))
    serializer = rp.app.session_interface.get_signing_serializer(rp.app)
    cookie = browser.cookies.get("session", domain="127.0.0.1")
    remembered = serializer.loads(cookie)
    remembered["federation"]["nonce"] = "not-the-nonce-the-provider-saw"
    browser.cookies.set("session", serializer.dumps(remembered), domain="127.0.0.1")
    refused = browser.get(callback, timeout=10)
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"
    assert "nonce" in refused.json()["error_description"]
    assert refused.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert browser.get(rp.base + "/oauth/account/links", timeout=10).status_code == 401
