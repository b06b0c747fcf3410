"""Helpers for the sign-in tests: a server that knows its own URL, registered clients, and the
steps a person and an app take (sign in, redeem an invitation, authorize with PKCE, token).

The server is bound before the app is made, so `base_url` (and with it the issuer, the token
URL a client assertion names, and `aud`) is the address clients really use.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import requests
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey
from werkzeug.serving import make_server

from tests.consent_support import load_issued_example
from tests.support import HEALTH, Api

APP_REDIRECT = "http://127.0.0.1:9/callback"  # never followed: the tests read the Location
FAMILY_SCOPE = "openid fhirUser launch/patient patient/*.rs offline_access"


def family_app(client_id: str = "family-app", redirect_uris: tuple[str, ...] = (APP_REDIRECT,),
               scope: str = FAMILY_SCOPE, first_party: bool = True) -> dict:
    """A public app; first-party (no consent screen) unless a test is about third-party apps."""
    return {"client_id": client_id, "name": "Family app", "token_endpoint_auth_method": "none",
            "scope": scope, "redirect_uris": list(redirect_uris), "first_party": first_party}


@dataclass
class BackendKey:
    """A backend service's own key pair; only the public half is registered (its JWKS)."""

    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    key: ECKey = field(default_factory=lambda: ECKey.import_key(_p384_pem()))

    def jwks(self) -> dict:
        return {"keys": [{**self.key.as_dict(private=False), "kid": self.kid, "alg": "ES384"}]}

    def assertion(self, client_id: str, token_url: str, jti: str | None = None, exp_in: int = 240) -> str:
        """SMART Backend Services §"Authenticating to the token endpoint"."""
        now = int(time.time())
        claims = {"iss": client_id, "sub": client_id, "aud": token_url, "exp": now + exp_in,
                  "jti": jti or uuid.uuid4().hex}
        return jose_jwt.encode({"alg": "ES384", "kid": self.kid, "typ": "JWT"}, claims, self.key, algorithms=["ES384"])


def _p384_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization

    return ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def backend_client(key: BackendKey, client_id: str = "trust-system", scope: str = "system/*.rs",
                   role: str = "health", organization: str | None = HEALTH) -> dict:
    return {"client_id": client_id, "name": "NHS trust system", "token_endpoint_auth_method": "private_key_jwt",
            "scope": scope, "jwks": key.jwks(), "role": role, "organization": organization}


def start_smart_server(mongo: Any, data_dir: Any, **overrides: Any) -> tuple[Api, Any]:
    from api import create_app

    holder: dict[str, Any] = {}
    server = make_server("127.0.0.1", 0, lambda environ, start: holder["app"](environ, start), threaded=True)
    root = f"http://127.0.0.1:{server.server_port}"
    config = {"mongodb_uri": mongo.uri, "database": f"t_{uuid.uuid4().hex[:12]}", "data_dir": str(data_dir),
              "env": "test", "base_url": f"{root}/fhir", "outbound_allow": "127.0.0.1", **overrides}
    holder["app"] = create_app(config)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Api(root, holder["app"].extensions["ehcp"].settings, holder["app"]), server


def stop(api: Api, server: Any) -> None:
    server.shutdown()
    api.session.close()
    api.services.repo.client.drop_database(api.services.settings.database)
    api.services.repo.close()


# --------------------------------------------------------------------------- a person

def sign_in(api: Api, person: str) -> requests.Session:
    """A browser-like session signed in on the dev page as one of the example people."""
    browser = requests.Session()
    page = browser.get(api.base + "/oauth/sign-in", timeout=10)
    assert page.status_code == 200, page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    done = browser.post(api.base + "/oauth/sign-in", data={"person": person, "csrf": csrf, "next": ""},
                        allow_redirects=False, timeout=10)
    assert done.status_code == 302, done.text
    return browser


def csrf_of(api: Api, browser: requests.Session) -> str:
    return browser.get(api.base + "/oauth/account/links", timeout=10).json()["csrf"]


def invite(api: Api, patient: str, person: str, token: str | None = None) -> requests.Response:
    return api.session.post(api.base + "/oauth/invitations", json={"patient": patient, "person": person},
                            headers={"Authorization": f"Bearer {token or api.la()}"}, timeout=10)


def redeem(api: Api, browser: requests.Session, code: str) -> requests.Response:
    return browser.post(api.base + "/oauth/account/links", data={"code": code, "csrf": csrf_of(api, browser)},
                        timeout=10)


def link_parent(api: Api, patient_id: str, related_person_id: str, person: str = "alex-parent") -> requests.Session:
    invitation = invite(api, f"Patient/{patient_id}", f"RelatedPerson/{related_person_id}")
    assert invitation.status_code == 201, invitation.text
    browser = sign_in(api, person)
    linked = redeem(api, browser, invitation.json()["code"])
    assert linked.status_code == 201, linked.text
    return browser


# --------------------------------------------------------------------------- an app

def linked_family(api: Api) -> dict:
    """The example child with an issued plan, and a browser signed in as the parent linked to it."""
    record = load_issued_example(api)
    child, mum = record["Patient"][0], record["RelatedPerson"][0]
    return {"record": record, "child": child["id"], "mum": mum["id"],
            "browser": link_parent(api, child["id"], mum["id"]), "plan": record["Composition"][0]["id"]}


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(api: Api, browser: requests.Session, challenge: str | None, client_id: str = "family-app",
              redirect_uri: str = APP_REDIRECT, scope: str = FAMILY_SCOPE, method: str | None = "S256",
              **extra: str) -> requests.Response:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "scope": scope,
              "state": "st-" + uuid.uuid4().hex[:8], "aud": api.settings.base_url, **extra}
    if challenge is not None:
        params["code_challenge"] = challenge
    if method is not None:
        params["code_challenge_method"] = method
    return browser.get(api.base + "/oauth/authorize?" + urlencode(params), allow_redirects=False, timeout=10)


def redirect_params(response: requests.Response) -> dict[str, str]:
    assert response.status_code == 302, (response.status_code, response.text)
    location = response.headers["Location"]
    return {k: v[0] for k, v in parse_qs(urlparse(location).query).items()}


def code_for(api: Api, browser: requests.Session, **kwargs: Any) -> tuple[str, str]:
    verifier, challenge = pkce()
    params = redirect_params(authorize(api, browser, challenge, **kwargs))
    assert "code" in params, params
    return params["code"], verifier


def token(api: Api, **form: str) -> requests.Response:
    return requests.post(api.base + "/oauth/token", data=form, timeout=10)


def exchange(api: Api, code: str, verifier: str | None, client_id: str = "family-app",
             redirect_uri: str = APP_REDIRECT) -> requests.Response:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, "client_id": client_id}
    if verifier is not None:
        form["code_verifier"] = verifier
    return token(api, **form)


def fhir_get(api: Api, path: str, access_token: str) -> requests.Response:
    return requests.get(api.base + path, headers={"Authorization": f"Bearer {access_token}",
                                                  "Accept": "application/fhir+json"}, timeout=10)

