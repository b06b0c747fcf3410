"""ID token validation (OpenID Connect Core §3.1.3.7) as pure logic: every check that must
refuse, each with a token that differs from a good one in that one respect."""

from __future__ import annotations

import time

import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, OctKey

from ehcp_record.config import IdentityProvider
from ehcp_record.identity.federation import FederationError, person_from, validate_id_token

ISSUER = "https://login.example.test"
PROVIDER = IdentityProvider(issuer=ISSUER, client_id="ehcp-record", id="example", name="Example",
                            claims={"nhs_number": "nhs_number"})
KEY = ECKey.generate_key("P-256", parameters={"kid": "k1"})
OTHER = ECKey.generate_key("P-256", parameters={"kid": "k1"})  # same kid, another key
KEYS = {"keys": [KEY.as_dict(private=False)]}
NONCE = "n-0123456789"


def _token(key=KEY, alg: str = "ES256", **changes) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "ehcp-record", "sub": "person-1", "iat": now, "exp": now + 300, "nonce": NONCE,
              "name": "Robin Example", "nhs_number": "9434765919", **changes}
    claims = {k: v for k, v in claims.items() if v is not None}
    return jose_jwt.encode({"alg": alg, "kid": "k1"}, claims, key, algorithms=[alg])


def test_a_good_token_maps_to_the_configured_identity():
    claims = validate_id_token(_token(), PROVIDER, NONCE, KEYS)
    person = person_from(claims, PROVIDER)
    assert person.identity == f"{ISSUER}|person-1" and person.name == "Robin Example"
    assert person.claims == {"nhs_number": "9434765919"}


def test_nhs_login_style_subject_claim_is_configurable():
    by_number = IdentityProvider(issuer=ISSUER, client_id="ehcp-record", subject_claim="nhs_number")
    assert person_from(validate_id_token(_token(), by_number, NONCE, KEYS), by_number).identity == f"{ISSUER}|9434765919"


@pytest.mark.parametrize("why, token", [
    ("signed by another key", lambda: _token(key=OTHER)),
    ("tampered payload", lambda: _tampered(_token())),
    ("expired", lambda: _token(exp=int(time.time()) - 120)),
    ("wrong audience", lambda: _token(aud="someone-else")),
    ("several audiences, azp not ours", lambda: _token(aud=["ehcp-record", "other"], azp="other")),
    ("another issuer", lambda: _token(iss="https://unknown.example.test")),
    ("wrong nonce", lambda: _token(nonce="replayed")),
    ("no nonce", lambda: _token(nonce=None)),
    ("no iat", lambda: _token(iat=None)),
    ("shared-secret HMAC", lambda: _token(key=OctKey.import_key(b"k" * 32), alg="HS256")),
])
def test_refused_as_invalid_token(why, token):
    with pytest.raises(FederationError) as refused:
        validate_id_token(token(), PROVIDER, NONCE, KEYS)
    assert refused.value.error == "invalid_token", why


def test_alg_none_is_refused():
    import base64
    import json

    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    unsigned = f"{part({'alg': 'none', 'kid': 'k1'})}.{part({'iss': ISSUER, 'aud': 'ehcp-record', 'sub': 'x'})}."
    with pytest.raises(FederationError):
        validate_id_token(unsigned, PROVIDER, NONCE, KEYS)


def test_a_key_the_provider_does_not_publish_is_refused():
    with pytest.raises(FederationError) as refused:
        validate_id_token(_token(), PROVIDER, NONCE, {"keys": [{**KEY.as_dict(private=False), "kid": "k2"}]})
    assert "does not publish" in str(refused.value)


def _tampered(token: str) -> str:
    import base64
    import json

    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def test_discovery_must_name_the_issuer_and_stay_on_its_origin(monkeypatch):
    """OpenID Connect Discovery §4.3, and no endpoint elsewhere (the outbound door allows only
    configured origins)."""
    from ehcp_record.identity import federation, remote

    documents = {
        "https://a.example.test": {"issuer": "https://a.example.test", "authorization_endpoint": "https://a.example.test/auth",
                                   "token_endpoint": "https://evil.example.test/token", "jwks_uri": "https://a.example.test/jwks"},
        "https://b.example.test": {"issuer": "https://other.example.test", "authorization_endpoint": "https://b.example.test/a",
                                   "token_endpoint": "https://b.example.test/t", "jwks_uri": "https://b.example.test/j"},
    }

    def fake_fetch(url, allowed, form=None, fence=None):
        assert remote.origin(url) in {remote.origin(a) for a in allowed}
        return documents[remote.origin(url)]

    monkeypatch.setattr(remote, "fetch_json", fake_fetch)
    for issuer in documents:
        with pytest.raises(FederationError) as refused:
            federation.endpoints(IdentityProvider(issuer=issuer, client_id="x"))
        assert refused.value.error == "invalid_request"


def test_the_outbound_door_refuses_unconfigured_origins_before_any_request():
    from ehcp_record.identity import remote

    with pytest.raises(remote.RemoteError, match="not a configured"):
        remote.fetch_json("http://169.254.169.254/latest/meta-data", allowed=["https://login.example.test"])
    with pytest.raises(remote.RemoteError):
        remote.fetch_json("file:///etc/passwd", allowed=["file:///etc/passwd"])


def test_private_key_jwt_at_the_providers_token_endpoint(monkeypatch):
    """A provider that wants `private_key_jwt` (NHS login does) gets an assertion signed with this
    server's key (RFC 7523 §2.2: iss = sub = our client id, aud = its token endpoint, a jti), and
    the PKCE verifier; its ID token is then validated as usual."""
    from ehcp_record.identity import federation, jwks, remote

    ours = ECKey.generate_key("P-256", parameters={"kid": "ours"})
    provider = IdentityProvider(issuer=ISSUER, client_id="ehcp-record", id="nhs", token_endpoint_auth_method="private_key_jwt")
    where = federation.Endpoints(ISSUER + "/authorize", ISSUER + "/token", ISSUER + "/jwks")
    sent: dict = {}

    def token_endpoint(url, allowed, form=None, fence=None):
        sent.update(form, url=url)
        return {"id_token": _token(), "access_token": "x", "token_type": "Bearer"}

    monkeypatch.setattr(federation, "endpoints", lambda _, fence=None: where)
    monkeypatch.setattr(remote, "fetch_json", token_endpoint)
    monkeypatch.setattr(jwks, "key_set", lambda uri, kid=None, fence=None: KEYS)
    pending = federation.Pending("nhs", "s" * 32, NONCE, "v" * 48, "/oauth/account/links")
    person = federation.finish(provider, pending, {"state": "s" * 32, "code": "c1"}, "https://us.test/cb", ours)
    assert person.identity == f"{ISSUER}|person-1"
    assert sent["url"] == ISSUER + "/token" and sent["code_verifier"] == "v" * 48 and sent["code"] == "c1"
    assert sent["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    decoded = jose_jwt.decode(sent["client_assertion"], ours, algorithms=["ES256"])
    assertion = decoded.claims
    assert decoded.header["kid"] == "ours"  # the provider finds our key in our /oauth/jwks
    assert assertion["iss"] == assertion["sub"] == "ehcp-record" and assertion["aud"] == ISSUER + "/token"
    assert assertion["jti"] and time.time() < assertion["exp"] <= time.time() + 300
