"""Bearer-token authentication: PyJWT against this deployment's authorization server, the
trusted issuers (JWKS) and the dev issuer.

Tokens from our own authorization server (api/oauth_server.py) are SMART-shaped: `aud` is the
FHIR base URL, `fhirUser`, `patient`, `client_id`, no `role`. Who the caller is comes from the
server's own records, looked up on every request: the person's live link (RelatedPerson ->
parent, Patient -> young person, PractitionerRole -> its organisation and role) or the backend
client's registration, so unlinking, revocation or removing a client takes effect on the next
request. A `role` claim in such a token is ignored. Dev and trusted-issuer tokens keep the
`role` claim API.md describes.

Only `iss`, `aud`, `exp`, signature and the claims API.md names are trusted. JWKS documents are
fetched through the outbound fence (ehcp_record/net/outbound.py) and cached; a token naming an unknown `kid` refreshes the cache, at most
once a minute per issuer. Each key verifies only with its own algorithm (the dev key: EdDSA; a
JWKS key: its `alg`, or its key type's), whatever the token's header claims.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
import requests
from urllib3.util.retry import Retry

from consent.model import Actor
from consent.scopes import parse_scopes
from ehcp_record.config import DEV_ISSUER, Settings
from ehcp_record.access.caller import Caller
from ehcp_record.errors import FhirError
from ehcp_record.audit.signing import load_or_create_private_key
from ehcp_record.identity import keys as oauth_keys
from ehcp_record.identity.clients import PRIVATE_KEY_JWT
from ehcp_record.net.outbound import Fence, OutboundRefused

ROLES = frozenset({"parent", "young-person", "la", "school", "health", "social-care", "auditor", "system",
                   "partnership"})  # partnership: national or regional figures only (ehcp_record/analytics)
PROFESSIONAL_ROLES = frozenset({"la", "school", "health", "social-care", "system"})
ALGORITHMS = ["RS256", "ES256", "EdDSA"]
DEV_ALGORITHM = "EdDSA"
JWKS_TTL_SECONDS = 300
JWKS_MIN_REFETCH_SECONDS = 60
VERIFIED_CACHE_SIZE = 4096
_LEEWAY_SECONDS = 30


def unauthorized(message: str) -> FhirError:
    return FhirError(401, "login", message, headers={"WWW-Authenticate": 'Bearer realm="ehcp-record", error="invalid_token"'})


@dataclass
class JwksCache:
    """JWKS per issuer, fetched over HTTPS with retries and cached for a few minutes."""

    session: requests.Session = field(default_factory=lambda: _retrying_session(Fence()))
    min_refetch_seconds: float = JWKS_MIN_REFETCH_SECONDS
    _keys: dict[str, tuple[float, jwt.PyJWKSet]] = field(default_factory=dict)
    _attempted: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def key_for(self, jwks_uri: str, kid: str | None) -> jwt.PyJWK:
        """The issuer's key for `kid`; an unknown `kid` refetches the JWKS only if the last
        fetch is over a minute old (a negative cache: junk kids cannot hammer the issuer)."""
        key = _find(self._get(jwks_uri, refresh=False), kid)
        if key is None and self._may_refetch(jwks_uri):
            key = _find(self._get(jwks_uri, refresh=True), kid)
        if key is None:
            raise unauthorized("the token's signing key is not in its issuer's JWKS")
        return key

    def _may_refetch(self, jwks_uri: str) -> bool:
        with self._lock:
            last = self._attempted.get(jwks_uri)
            return last is None or time.monotonic() - last >= self.min_refetch_seconds

    def _get(self, jwks_uri: str, refresh: bool) -> jwt.PyJWKSet:
        with self._lock:
            cached = self._keys.get(jwks_uri)
            if cached and not refresh and time.monotonic() - cached[0] < JWKS_TTL_SECONDS:
                return cached[1]
            self._attempted[jwks_uri] = time.monotonic()
        try:
            response = self.session.get(jwks_uri, timeout=5)
            response.raise_for_status()
            jwks = jwt.PyJWKSet.from_dict(response.json())
        except (requests.RequestException, ValueError, jwt.PyJWTError) as exc:
            if isinstance(exc, OutboundRefused):
                logging.getLogger("ehcp_record.net.outbound").warning("JWKS %s refused: %s", jwks_uri, exc)
            if cached:
                return cached[1]
            raise FhirError(503, "exception", "the token issuer's keys could not be fetched; try again shortly") from None
        with self._lock:
            self._keys[jwks_uri] = (time.monotonic(), jwks)
        return jwks


def _find(jwks: jwt.PyJWKSet, kid: object) -> jwt.PyJWK | None:
    return next((key for key in jwks.keys if kid is None or key.key_id == kid), None)


def _retrying_session(fence: Fence) -> requests.Session:
    """Through the outbound fence: the issuer's address is checked at connect time."""
    return fence.session(Retry(total=2, backoff_factor=0.2, status_forcelist=(502, 503, 504), allowed_methods=("GET",)))


class TokenVerifier:
    def __init__(self, settings: Settings, jwks: JwksCache | None = None, identity: Any = None) -> None:
        self.settings = settings
        self.jwks = jwks or JwksCache(session=_retrying_session(Fence.from_settings(settings)))
        self.issuers = {i.iss: i for i in settings.trusted_issuers}
        self.dev_key = load_or_create_private_key(settings.dev_key_path) if settings.dev_issuer else None
        self.identity = identity  # ehcp_record.identity.service.IdentityService: links and clients
        self.oauth_key = oauth_keys.load_or_create(settings.oauth_key_path).public_key() if identity else None
        self._verified: dict[str, dict] = {}
        self._lock = threading.Lock()

    def caller(self, authorization: str | None, ip: str, user_agent: str, request_id: str) -> Caller:
        claims = self.verify(_bearer(authorization))
        actor = self._smart_actor(claims) if self._is_ours(claims["iss"]) else _actor(claims)
        return Caller(actor=actor, scopes=parse_scopes(claims.get("scope")), issuer=claims["iss"],
                      ip=ip, user_agent=user_agent, request_id=request_id)

    def _is_ours(self, issuer: object) -> bool:
        return self.oauth_key is not None and issuer == self.settings.oauth_issuer

    def _smart_actor(self, claims: dict) -> Actor:
        """The caller behind one of our own tokens, from the links and clients as they are now."""
        jti = claims.get("jti")
        if not isinstance(jti, str) or self.identity.store.access_revoked(jti):
            raise unauthorized("the bearer token has been revoked")
        client = self.identity.client(claims.get("client_id"))
        if client is None:
            raise unauthorized("the token's client is no longer registered here")
        if client.auth_method == PRIVATE_KEY_JWT:  # SMART Backend Services: the registration decides
            if claims["sub"] != client.client_id:
                raise unauthorized("a backend-service token must be the client's own")
            return Actor(role=client.role or "system", sub=client.client_id, organization=client.organization)
        fhir_user = _optional_reference(claims, "fhirUser")
        link = self.identity.link_for_token(str(claims["sub"]), fhir_user) if fhir_user else None
        if link is None:
            raise unauthorized("the person is no longer linked to this record; sign in again")
        patient = link.patient if claims.get("patient") else None
        return Actor(role=link.role, sub=str(claims["sub"]), fhir_user=link.fhir_user,
                     organization=link.organization, patient=patient)

    def verify(self, token: str) -> dict:
        """Claims of a valid token; a token verified before is trusted again until it expires
        (the same bytes were signed by a trusted key; only `exp` can change the answer)."""
        with self._lock:
            cached = self._verified.get(token)
        if cached is not None and cached["exp"] > time.time():
            return cached
        claims = self._verify_signature(token)
        with self._lock:
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.pop(next(iter(self._verified)))
            self._verified[token] = claims
        return claims

    def _verify_signature(self, token: str) -> dict:
        try:
            header = jwt.get_unverified_header(token)
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            raise unauthorized("the bearer token is not a well-formed JWT") from None
        key, algorithm = self._key(issuer, header)
        if header.get("alg") != algorithm:
            raise unauthorized(f"the bearer token must be signed with {algorithm} for its issuer's key")
        audience = self.settings.base_url if self._is_ours(issuer) else self.settings.audience
        try:
            claims = jwt.decode(
                token, key, algorithms=[algorithm], audience=audience, issuer=issuer,
                leeway=_LEEWAY_SECONDS, options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("the bearer token has expired") from None
        except jwt.InvalidAudienceError:
            raise unauthorized("the bearer token is for another audience") from None
        except jwt.PyJWTError as exc:
            raise unauthorized(f"the bearer token was refused: {exc}") from None
        except (TypeError, ValueError):  # a key that cannot check this token at all
            raise unauthorized("the bearer token was refused: its signature cannot be checked") from None
        _check_claim_types(claims)
        return claims

    def _key(self, issuer: object, header: dict) -> tuple[Any, str]:
        """The key for the token's issuer and the one algorithm that key verifies."""
        if issuer == DEV_ISSUER and self.dev_key is not None:
            return self.dev_key.public_key(), DEV_ALGORITHM
        if self._is_ours(issuer):
            return self.oauth_key, oauth_keys.ALGORITHM
        trusted = self.issuers.get(issuer) if isinstance(issuer, str) else None
        if trusted is None:
            raise unauthorized("the token's issuer is not trusted here")
        key = self.jwks.key_for(trusted.jwks_uri, header.get("kid"))
        if key.algorithm_name not in ALGORITHMS:
            raise unauthorized(f"the issuer's key uses {key.algorithm_name}, which is not accepted here")
        return key, key.algorithm_name


def _check_claim_types(claims: dict) -> None:
    """Claims PyJWT lets through in shapes nothing downstream expects: 401, never a crash."""
    for name in ("exp", "iat", "nbf"):
        value = claims.get(name)
        if (value is not None or name == "exp") and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise unauthorized(f"the token's '{name}' claim must be a number (seconds since 1970)")
    scope = claims.get("scope")
    if scope is not None and not isinstance(scope, str) and not (
            isinstance(scope, list) and all(isinstance(word, str) for word in scope)):
        raise unauthorized("the token's 'scope' claim must be a space-separated string")


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise unauthorized("this endpoint needs Authorization: Bearer <token>")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or len(token) > 8192:
        raise unauthorized("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def _actor(claims: dict) -> Actor:
    role = claims.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise unauthorized(f"the token's role must be one of {', '.join(sorted(ROLES))}")
    organization = _optional_reference(claims, "organization")
    if role in PROFESSIONAL_ROLES - {"system"} and not organization:
        raise unauthorized(f"a '{role}' token must name its organization")
    return Actor(role=role, sub=str(claims["sub"]), fhir_user=_optional_reference(claims, "fhirUser"),
                 organization=organization, patient=_optional_reference(claims, "patient"))


def _optional_reference(claims: dict, name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 200:
        raise unauthorized(f"the token's '{name}' claim must be a reference string")
    if name == "patient" and "/" not in value:
        return f"Patient/{value}"
    return "/".join(value.rstrip("/").split("/")[-2:]) if "/" in value else value


def issue_dev_token(settings: Settings, role: str, fhir_user: str | None = None, organization: str | None = None,
                    patient: str | None = None, scope: str | None = None, ttl: int = 3600, sub: str | None = None) -> str:
    """A JWT signed by the dev key in the data dir (`ehcp-record token`); never trusted in production."""
    check_dev_token_arguments(role, organization, fhir_user, patient)
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": DEV_ISSUER, "aud": settings.audience, "sub": sub or fhir_user or organization or role,
        "iat": now, "exp": now + ttl, "role": role, "scope": scope or default_scope(role, patient),
    }
    for name, value in (("fhirUser", fhir_user), ("organization", organization), ("patient", patient)):
        if value:
            claims[name] = value
    key = load_or_create_private_key(settings.dev_key_path)
    return jwt.encode(claims, key, algorithm=DEV_ALGORITHM)


def check_dev_token_arguments(role: str, organization: str | None, fhir_user: str | None,
                              patient: str | None) -> None:
    """Refuse a dev token the API would refuse anyway (ValueError with the reason), so
    `ehcp-record token` says what is missing instead of printing a useless token."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(sorted(ROLES))}")
    if role in PROFESSIONAL_ROLES - {"system"} and not organization:
        raise ValueError(f"a '{role}' token needs --organization Organization/<id>")
    for name, value in (("organization", organization), ("fhir-user", fhir_user), ("patient", patient)):
        if value is not None and (not value.strip() or len(value) > 200):
            raise ValueError(f"--{name} must be a reference such as Type/id")
    if organization and not organization.startswith("Organization/"):
        raise ValueError("--organization must be Organization/<id>")


def default_scope(role: str, patient: str | None = None) -> str:
    """SMART v2 scopes typical of each kind of client; a launch patient confines a family app."""
    if role in ("parent", "young-person") and patient:
        return "patient/*.cruds"
    if role == "system":
        return "system/*.cruds"
    if role == "auditor":
        return "user/*.rs"
    return "user/*.cruds"
