"""Federation: this server as an OpenID Connect relying party of the configured providers.

The interactive flow (OpenID Connect Core 1.0 §3.1, authorization code):
1. `begin`: Authlib's OAuth 2 client builds the provider's authorization URL with a fresh
   `state` (RFC 6749 §10.12), `nonce` (OIDC Core §3.1.2.1) and PKCE S256 verifier (RFC 7636);
   the caller keeps the returned `Pending` in the person's session.
2. `finish`: on the callback the `state` must match, an `iss` parameter must name the provider
   (RFC 9207, mix-up defence), the code is exchanged at the provider's token endpoint, and the
   ID token is validated (`validate_id_token`, OIDC Core §3.1.3.7: signature with a key from the
   provider's JWKS, `iss`, `aud`/`azp`, `exp`, `iat`, `nonce`).
3. The claims are mapped by configuration (`subject_claim`, `name_claim`, `claims`) into a
   `FederatedPerson`. The identity is `issuer|<subject>`; what the person may do here still
   comes only from the links they redeemed (links.py), never from a provider's claim.

Only configured issuers are trusted (DESIGN.md "Security baseline"). Every outbound request
(discovery, token endpoint, JWKS) goes through `remote.fetch_json`, limited to the issuer's
origin (or a `jwks_uri` named in configuration).
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import jwt
from authlib.integrations.requests_client import OAuth2Session
from authlib.common.encoding import to_unicode
from authlib.oauth2.rfc6749.parameters import prepare_token_request
from authlib.oauth2.rfc7523 import private_key_jwt_sign

from ehcp_record.config import IdentityProvider
from ehcp_record.identity import jwks, keys, remote
from ehcp_record.identity.links import identity_key
from ehcp_record.net.outbound import Fence

#: Asymmetric algorithms only: `none` and shared-secret HMAC are never accepted for ID tokens.
ALGORITHMS = ["RS256", "ES256", "RS384", "ES384", "PS256"]
DISCOVERY_TTL_SECONDS = 300
LEEWAY_SECONDS = 30
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class FederationError(ValueError):
    """A sign-in that is not believed. `error` is the OAuth code to answer with (RFC 6749
    §4.1.2.1 / RFC 6750 §3.1); the message says why, without echoing tokens."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error


@dataclass(frozen=True)
class Endpoints:
    """OpenID Connect Discovery 1.0 §3: what the relying party needs of the provider."""

    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


@dataclass(frozen=True)
class Pending:
    """What the session remembers between `begin` and `finish` for one sign-in attempt."""

    provider: str
    state: str
    nonce: str
    verifier: str
    next: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def restore(cls, remembered: object) -> "Pending | None":
        """From the session; None when there is none (or it is of another shape)."""
        if not isinstance(remembered, dict):
            return None
        try:
            return cls(**{k: str(remembered[k]) for k in ("provider", "state", "nonce", "verifier", "next")})
        except KeyError:
            return None


@dataclass(frozen=True)
class FederatedPerson:
    identity: str
    name: str
    claims: dict = field(default_factory=dict)  # mapped by configuration; informative only


_discovered: dict[str, tuple[Endpoints, float]] = {}
_lock = threading.Lock()


def provider_named(providers: tuple[IdentityProvider, ...], provider_id: str) -> IdentityProvider:
    for provider in providers:
        if provider.id == provider_id:
            return provider
    raise FederationError("invalid_request", "that is not a configured identity provider")


def endpoints(provider: IdentityProvider, fence: Fence = Fence()) -> Endpoints:
    """The provider's endpoints: its discovery document (cached), checked to name the configured
    issuer (Discovery §4.3) and to stay on the issuer's origin; `jwks_uri` may be configured."""
    with _lock:
        cached = _discovered.get(provider.issuer)
    if cached is not None and time.monotonic() - cached[1] < DISCOVERY_TTL_SECONDS:
        return cached[0]
    url = provider.issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        document = remote.fetch_json(url, allowed=[provider.issuer], fence=fence)
    except remote.RemoteError as exc:
        raise FederationError("temporarily_unavailable", f"the identity provider's discovery failed: {exc}") from None
    if not isinstance(document, dict) or document.get("issuer") != provider.issuer:
        raise FederationError("invalid_request", "the provider's discovery document names another issuer")
    found = Endpoints(str(document.get("authorization_endpoint", "")), str(document.get("token_endpoint", "")),
                      provider.jwks_uri or str(document.get("jwks_uri", "")))
    on_issuer = [found.authorization_endpoint, found.token_endpoint] + ([] if provider.jwks_uri else [found.jwks_uri])
    if any(remote.origin(url) != remote.origin(provider.issuer) for url in on_issuer):
        raise FederationError("invalid_request", "the provider's endpoints are not on its configured origin")
    with _lock:
        _discovered[provider.issuer] = (found, time.monotonic())
    return found


def _client(provider: IdentityProvider, redirect_uri: str) -> OAuth2Session:
    return OAuth2Session(client_id=provider.client_id, redirect_uri=redirect_uri, scope=provider.scope,
                         code_challenge_method="S256", token_endpoint_auth_method=provider.token_endpoint_auth_method)


def begin(provider: IdentityProvider, redirect_uri: str, next_path: str, fence: Fence = Fence()
          ) -> tuple[str, Pending]:
    """(the provider's authorization URL, what to remember in the session). Every fetch goes
    through `fence`, the deployment's outbound fence (Fence.from_settings)."""
    where = endpoints(provider, fence)
    pending = Pending(provider.id, secrets.token_urlsafe(24), secrets.token_urlsafe(24),
                      secrets.token_urlsafe(48), next_path)
    url, _ = _client(provider, redirect_uri).create_authorization_url(
        where.authorization_endpoint, state=pending.state, code_verifier=pending.verifier, nonce=pending.nonce)
    return url, pending


def finish(provider: IdentityProvider, pending: Pending, params: dict[str, str], redirect_uri: str,
           signing_key: Any = None, fence: Fence = Fence()) -> FederatedPerson:
    """The person the provider vouches for, after every check of the callback and ID token.
    `signing_key` (this server's own) signs a `private_key_jwt` assertion for providers that
    want one."""
    if not params.get("state") or not secrets.compare_digest(params["state"].encode(), pending.state.encode()):
        raise FederationError("invalid_request", "the sign-in response does not match this browser's request (state)")
    if params.get("iss") and params["iss"] != provider.issuer:
        raise FederationError("invalid_request", "the sign-in response came from another issuer (RFC 9207)")
    if params.get("error"):
        error = params["error"] if params["error"] == "access_denied" else "temporarily_unavailable"
        raise FederationError(error, f"the identity provider answered {params['error']!r}")
    if not params.get("code"):
        raise FederationError("invalid_request", "the sign-in response has no code")
    where = endpoints(provider, fence)
    tokens = _exchange(provider, where, params["code"], pending.verifier, redirect_uri, signing_key, fence)
    claims = validate_id_token(tokens["id_token"], provider, pending.nonce, _keys_for(tokens["id_token"], where, fence))
    return person_from(claims, provider)


def _exchange(provider: IdentityProvider, where: Endpoints, code: str, verifier: str, redirect_uri: str,
              signing_key: Any, fence: Fence) -> dict:
    """RFC 6749 §4.1.3 with the PKCE verifier; as a public client (`none`), or authenticated
    with a `private_key_jwt` assertion (RFC 7523 §2.2, signed by Authlib) when configured."""
    body = dict(parse_qsl(prepare_token_request("authorization_code", code=code, redirect_uri=redirect_uri,
                                                client_id=provider.client_id, code_verifier=verifier)))
    if provider.token_endpoint_auth_method == "private_key_jwt":
        assertion = private_key_jwt_sign(signing_key, client_id=provider.client_id, token_endpoint=where.token_endpoint,
                                         alg=keys.ALGORITHM, header={"kid": signing_key.kid}, expires_in=300)
        body.update(client_assertion_type=CLIENT_ASSERTION_TYPE, client_assertion=to_unicode(assertion))
    try:
        tokens = remote.fetch_json(where.token_endpoint, allowed=[provider.issuer], form=body, fence=fence)
    except remote.RemoteError as exc:
        raise FederationError("temporarily_unavailable", f"the identity provider's token endpoint failed: {exc}") from None
    if not isinstance(tokens, dict) or not isinstance(tokens.get("id_token"), str):
        raise FederationError("access_denied", "the identity provider gave no ID token"
                              + (f" ({tokens['error']})" if isinstance(tokens, dict) and "error" in tokens else ""))
    return tokens


def _keys_for(id_token: str, where: Endpoints, fence: Fence) -> dict:
    try:
        kid = jwt.get_unverified_header(id_token).get("kid")
        return jwks.key_set(where.jwks_uri, kid, fence)
    except jwt.PyJWTError:
        raise FederationError("invalid_token", "the ID token is not a well-formed JWT") from None
    except remote.RemoteError as exc:
        raise FederationError("temporarily_unavailable", f"the identity provider's keys: {exc}") from None


def validate_id_token(id_token: str, provider: IdentityProvider, nonce: str, key_set: dict) -> dict:
    """OpenID Connect Core §3.1.3.7, with PyJWT: signature (a key of `key_set`, asymmetric
    algorithms only), `iss` the configured issuer, `aud` our client id (and `azp` when several
    audiences), `exp` and `iat` present and `exp` not passed, `nonce` the one we sent."""
    try:
        header = jwt.get_unverified_header(id_token)
        keys = jwt.PyJWKSet.from_dict(key_set)
        key = next((k for k in keys.keys if k.key_id == header.get("kid")), None)
        if key is None and header.get("kid") is None and len(keys.keys) == 1:
            key = keys.keys[0]
        if key is None:
            raise FederationError("invalid_token", "the ID token is signed with a key the provider does not publish")
        claims = jwt.decode(id_token, key.key, algorithms=ALGORITHMS, audience=provider.client_id,
                            issuer=provider.issuer, leeway=LEEWAY_SECONDS,
                            options={"require": ["exp", "iat", "iss", "aud", "sub"]})
    except FederationError:
        raise
    except (jwt.PyJWTError, jwt.exceptions.PyJWKSetError) as exc:
        raise FederationError("invalid_token", f"the ID token was refused: {exc}") from None
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if len(audiences) > 1 and claims.get("azp") != provider.client_id:
        raise FederationError("invalid_token", "the ID token has several audiences and another authorized party")
    if not isinstance(claims.get("nonce"), str) or not secrets.compare_digest(claims["nonce"].encode(), nonce.encode()):
        raise FederationError("invalid_token", "the ID token's nonce is not the one this sign-in sent")
    return claims


def person_from(claims: dict, provider: IdentityProvider) -> FederatedPerson:
    """Claims mapped by configuration: NHS login-style providers may name the person by
    `sub` and add `nhs_number`; staff providers their organisation. Mapped claims are shown
    to the person and kept in the session; roles still come only from links."""
    subject = claims.get(provider.subject_claim)
    if not isinstance(subject, str) or not subject:
        raise FederationError("invalid_token", f"the ID token has no '{provider.subject_claim}' claim to identify the person")
    name = claims.get(provider.name_claim)
    mapped = {ours: claims[theirs] for ours, theirs in provider.claims.items()
              if isinstance(claims.get(theirs), (str, int, bool))}
    return FederatedPerson(identity_key(provider.issuer, subject), name if isinstance(name, str) else "", mapped)
