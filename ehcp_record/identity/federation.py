"""Federation: believing an external OpenID Connect provider about who someone is.

Only issuers named in EHCP_IDENTITY_PROVIDERS are trusted (DESIGN.md "Security baseline"): an
ID token is accepted when its `iss` is configured, its signature verifies with a key from that
issuer's configured `jwks_uri`, `aud` is the client id registered with that issuer, and it has
not expired (OpenID Connect Core §3.1.3.7). The identity is `issuer|<subject claim>`; what the
person may do still comes only from the links they redeemed.
"""

from __future__ import annotations

import threading

import jwt

from ehcp_record.config import IdentityProvider
from ehcp_record.identity.links import identity_key
from ehcp_record.net.outbound import Fence, fenced_jwk_client

ALGORITHMS = ["RS256", "ES256", "RS384", "ES384"]
_clients: dict[tuple[str, Fence], jwt.PyJWKClient] = {}
_lock = threading.Lock()


class FederationError(ValueError):
    """An ID token that is not believed; the message says why, without echoing the token."""


def verify_id_token(id_token: str, providers: tuple[IdentityProvider, ...], fence: Fence = Fence()) -> tuple[str, str]:
    """(identity, display name) for a valid ID token from a configured provider; the JWKS is
    fetched through the outbound fence (an internal `jwks_uri` must be allowed in configuration)."""
    try:
        unverified = jwt.decode(id_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise FederationError("the ID token is not a well-formed JWT") from None
    provider = next((p for p in providers if p.issuer == unverified.get("iss")), None)
    if provider is None:
        raise FederationError("the ID token's issuer is not a configured identity provider")
    try:
        key = _jwks_client(provider.jwks_uri, fence).get_signing_key_from_jwt(id_token)
        claims = jwt.decode(id_token, key.key, algorithms=ALGORITHMS, audience=provider.client_id,
                            issuer=provider.issuer, leeway=30, options={"require": ["exp", "iss", "aud", "sub"]})
    except jwt.PyJWKClientError:
        raise FederationError("the identity provider's keys could not be fetched or do not sign this token") from None
    except jwt.PyJWTError as exc:
        raise FederationError(f"the ID token was refused: {exc}") from None
    subject = claims.get(provider.subject_claim)
    if not isinstance(subject, str) or not subject:
        raise FederationError(f"the ID token has no '{provider.subject_claim}' claim to identify the person")
    name = claims.get(provider.name_claim)
    return identity_key(provider.issuer, subject), name if isinstance(name, str) else ""


def _jwks_client(jwks_uri: str, fence: Fence) -> jwt.PyJWKClient:
    with _lock:
        if (jwks_uri, fence) not in _clients:
            _clients[(jwks_uri, fence)] = fenced_jwk_client(jwks_uri, fence, cache_keys=True, lifespan=300, timeout=5)
        return _clients[(jwks_uri, fence)]
