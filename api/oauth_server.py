"""The authorization server: Authlib's grants and endpoints, bound to our clients and links.

What each piece follows:
- authorization code for public apps (RFC 6749 §4.1) with PKCE S256 only (RFC 7636; SMART App
  Launch 2 §"Considerations for PKCE": `plain` is not allowed and PKCE is required);
- refresh tokens (RFC 6749 §6) for `offline_access`, rotated on every use (OAuth 2.0 Security
  BCP §4.14.2): the old one is revoked when the new one is issued;
- client credentials (RFC 6749 §4.4) authenticated with `private_key_jwt` (RFC 7523 §2.2, SMART
  Backend Services): ES384/RS384 (and ES256/RS256) assertions, `jti` accepted once;
- JWT access tokens (RFC 9068) signed ES256, `aud` = the FHIR base URL; revocation (RFC 7009)
  and introspection (RFC 7662).
The person behind a code or refresh token is a `SignedIn`: an identity and the link (the
fhirUser) they chose at launch.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import InvalidRequestError, InvalidScopeError, grants
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidGrantError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from flask import Flask
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet

from ehcp_record.config import Settings
from ehcp_record.identity import jwks, keys
from ehcp_record.identity.clients import PRIVATE_KEY_JWT, PUBLIC, PUBLIC_BY_REFRESH_TOKEN, RegisteredClient
from ehcp_record.identity.links import Link
from ehcp_record.identity.remote import RemoteError
from ehcp_record.identity.service import IdentityService
from ehcp_record.net.outbound import Fence

#: SMART Backend Services: servers SHALL support RS384 and ES384 client assertions.
ASSERTION_ALGORITHMS = ["ES384", "RS384", "ES256", "RS256"]
CODE_TTL_SECONDS = 300  # RFC 6749 §4.1.2: short-lived; 10 minutes at most


def _now() -> datetime:
    return datetime.now(timezone.utc)


def digest(token: str) -> str:
    """Refresh tokens are kept only as SHA-256 hashes: a database reader cannot use them."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class SignedIn:
    """The resource owner of a code or refresh token: who signed in, and as whom here."""

    identity: str
    link: Link

    def get_user_id(self) -> str:
        return self.identity


@dataclass
class StoredCode:
    """An authorization code as Authlib's AuthorizationCodeMixin expects it."""

    doc: dict

    def get_redirect_uri(self) -> str:
        return self.doc["redirect_uri"]

    def get_scope(self) -> str:
        return self.doc["scope"]

    @property
    def code_challenge(self) -> str | None:
        return self.doc.get("code_challenge")

    @property
    def code_challenge_method(self) -> str | None:
        return self.doc.get("code_challenge_method")


@dataclass
class StoredToken:
    """A refresh token (stored) or an access token (its verified claims), for RFC 7009/7662."""

    kind: str  # "refresh_token" | "access_token"
    doc: dict

    def check_client(self, client: RegisteredClient) -> bool:
        return self.doc.get("client_id") == client.get_client_id()

    def get_scope(self) -> str:
        return self.doc.get("scope", "")

    def get_expires_in(self) -> int:
        return max(0, int(self.expires_at.timestamp() - time.time()))

    @property
    def expires_at(self) -> datetime:
        value = self.doc["expires_at"]
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)

    def is_expired(self) -> bool:
        return self.expires_at <= _now()

    def is_revoked(self) -> bool:
        return bool(self.doc.get("revoked"))


class S256Challenge(CodeChallenge):
    """PKCE required, S256 only: a missing challenge or `plain` is `invalid_request` (RFC 7636 §4.4.1)."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge with code_challenge_method=S256")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256 ('plain' is not accepted)")
        super().validate_code_challenge(grant, redirect_uri)


def _require_registered_scope(grant: Any, scope: str | None) -> str:
    """Scopes beyond the client's registration are refused, not quietly narrowed."""
    allowed = grant.request.client.get_allowed_scope(scope)
    if allowed is None:
        raise InvalidScopeError("the requested scope is missing or beyond what this client is registered for")
    return allowed


class AuthorizationCode(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = [PUBLIC]

    def __init__(self, request: Any, server: "OAuthServer") -> None:
        super().__init__(request, server)
        self.identity: IdentityService = server.identity

    def save_authorization_code(self, code: str, request: Any) -> None:
        data = request.payload.data
        user: SignedIn = request.user
        self.identity.store.add_code({
            "_id": code, "client_id": request.client.get_client_id(), "redirect_uri": request.payload.redirect_uri,
            "scope": request.scope, "identity": user.identity, "link": user.link.id,
            "code_challenge": data.get("code_challenge"), "code_challenge_method": data.get("code_challenge_method"),
            "nonce": data.get("nonce"), "used": False, "expires_at": _now() + timedelta(seconds=CODE_TTL_SECONDS),
        })

    def query_authorization_code(self, code: str, client: RegisteredClient) -> StoredCode | None:
        claimed, replayed = self.identity.store.claim_code(code, client.get_client_id())
        if replayed:  # RFC 6749 §4.1.2: a code used twice revokes the tokens it gave
            self.server.revoke_grant(code)
        if claimed is None:
            return None
        self.request.code_doc = claimed
        return StoredCode(claimed)

    def generate_token(self, user: Any = None, scope: str | None = None, grant_type: str | None = None,
                       expires_in: int | None = None, include_refresh_token: bool = True) -> dict:
        """A refresh token only when the app asked for one (SMART `offline_access` /
        `online_access`)."""
        wants = bool({"offline_access", "online_access"} & set((scope or "").split()))
        return super().generate_token(user, scope, grant_type, expires_in, include_refresh_token and wants)

    def delete_authorization_code(self, authorization_code: StoredCode) -> None:
        """Already claimed (marked used) by query_authorization_code; kept to detect replays."""

    def authenticate_user(self, authorization_code: StoredCode) -> SignedIn | None:
        link = self.identity.link(authorization_code.doc["link"])
        if link is None or not link.active:
            return None
        return SignedIn(authorization_code.doc["identity"], link)


class RefreshToken(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = [PUBLIC, PUBLIC_BY_REFRESH_TOKEN]
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation

    def authenticate_refresh_token(self, refresh_token: str) -> StoredToken | None:
        """Unknown, expired, revoked (or rotated) tokens and tokens of an unlinked person are
        `invalid_grant` (RFC 6749 §5.2)."""
        store = self.server.identity.store
        doc = store.live_refresh_token(digest(refresh_token))
        if doc is None:
            spent = store.refresh_token(digest(refresh_token))
            if spent is not None and spent.get("revoked") and spent.get("from_code"):
                self.server.revoke_grant(spent["from_code"])  # reuse of a rotated token (OAuth 2.0 Security BCP §4.14.2)
            return None
        link = self.server.identity.link(doc["link"])
        if link is None or not link.active:
            return None
        return StoredToken("refresh_token", doc)

    def authenticate_user(self, refresh_token: StoredToken) -> SignedIn | None:
        link = self.server.identity.link(refresh_token.doc["link"])
        return SignedIn(refresh_token.doc["identity"], link) if link and link.active else None

    def revoke_old_credential(self, refresh_token: StoredToken) -> None:
        self.server.identity.store.revoke_refresh_token(refresh_token.doc["_id"])

    def validate_token_request(self) -> None:
        super().validate_token_request()
        if not self.server.identity.store.revoke_refresh_token(self.request.refresh_token.doc["_id"]):
            raise InvalidGrantError("the refresh token has already been used")  # a race: one rotation wins


def client_of_refresh_token(server: "OAuthServer") -> Any:
    """Authlib client-authentication method `none_by_refresh_token`: a refresh request with no
    `client_id` is the public client the (live) refresh token was issued to."""

    def authenticate(query_client: Any, request: Any) -> RegisteredClient | None:
        if request.payload.grant_type != "refresh_token" or request.payload.client_id:
            return None
        doc = server.identity.store.live_refresh_token(digest(request.form.get("refresh_token") or ""))
        client = query_client(doc["client_id"]) if doc else None
        return client if client is not None and client.auth_method == PUBLIC else None

    return authenticate


class ClientCredentials(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = [PRIVATE_KEY_JWT]

    def validate_requested_scope(self) -> None:
        scope = self.request.payload.scope
        if not scope or any(not w.startswith("system/") for w in scope.split()):
            raise InvalidScopeError("a backend service asks for system/ scopes only")
        _require_registered_scope(self, scope)


class PrivateKeyJwt(JWTBearerClientAssertion):
    """`private_key_jwt`: the client signs an assertion with a key in its registered JWKS."""

    CLIENT_AUTH_METHOD = PRIVATE_KEY_JWT

    def __init__(self, server: "OAuthServer") -> None:
        super().__init__(validate_jti=True, leeway=30)
        self.server = server

    def get_audiences(self) -> list[str]:
        return [self.server.token_url]

    def validate_jti(self, claims: dict, jti: str) -> bool:
        expires = datetime.fromtimestamp(int(claims.get("exp", time.time() + 300)), timezone.utc)
        return self.server.identity.store.use_assertion_id(str(claims["sub"]), str(jti), expires)

    def resolve_client_public_key(self, client: RegisteredClient) -> KeySet:
        if not client.jwks_uri:
            return KeySet.import_key_set(client.jwks or {"keys": []})
        return self._fetched(client.jwks_uri, None)

    def _fetched(self, jwks_uri: str, kid: str | None) -> KeySet:
        try:
            return KeySet.import_key_set(jwks.key_set(jwks_uri, kid, Fence.from_settings(self.server.settings)))
        except (RemoteError, JoseError, ValueError) as exc:
            raise InvalidClientError(description=f"the client's registered keys could not be used: {exc}") from None

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict:
        try:
            token = jose_jwt.decode(assertion, self._keys_for(assertion, resolve_key), algorithms=ASSERTION_ALGORITHMS)
        except (JoseError, ValueError) as exc:
            raise InvalidClientError(description=f"the client assertion was refused: {exc}") from exc
        self.verify_claims(token.claims)
        return token.claims

    def _keys_for(self, assertion: str, resolve_key: Any) -> Any:
        """The inline JWKS, or the registered `jwks_uri`'s set (cached; refetched once when the
        assertion's `kid` is new to it, identity/jwks.py)."""
        headers, claims = self.extract_assertion(assertion)  # unverified: only to find the key
        client = self.server.identity.client(str(claims.get("sub")))
        if client is None or not client.jwks_uri:
            return resolve_key
        return self._fetched(client.jwks_uri, headers.get("kid"))


class AccessTokens(JWTBearerTokenGenerator):
    """RFC 9068 access tokens: `aud` the FHIR base URL; `fhirUser` and `patient` from the link."""

    def __init__(self, settings: Settings, key: ECKey) -> None:
        super().__init__(issuer=settings.oauth_issuer, alg=keys.ALGORITHM,
                         refresh_token_generator=lambda client, grant_type, user, scope: generate_token(48),
                         expires_generator=lambda client, grant_type: settings.access_token_ttl)
        self.settings = settings
        self.key = key

    def get_jwks(self) -> ECKey:
        return self.key

    def get_audiences(self, client: Any, user: Any, scope: str) -> str:
        return self.settings.base_url

    def get_extra_claims(self, client: Any, grant_type: str, user: SignedIn | None, scope: str) -> dict:
        if user is None:
            return {}
        claims = {"fhirUser": f"{self.settings.base_url}/{user.link.fhir_user}"}
        if user.link.record:
            claims["patient"] = user.link.record
        return claims


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = [PUBLIC, PRIVATE_KEY_JWT]

    def query_token(self, token_string: str, token_type_hint: str | None) -> StoredToken | None:
        return self.server.find_token(token_string, token_type_hint)

    def revoke_token(self, token: StoredToken, request: Any) -> None:
        store = self.server.identity.store
        if token.kind == "refresh_token":
            store.revoke_refresh_token(token.doc["_id"])
            if token.doc.get("access_jti"):
                store.revoke_access(token.doc["access_jti"], token.expires_at)
        else:
            store.revoke_access(token.doc["jti"], token.expires_at)


class Introspection(IntrospectionEndpoint):
    """A client may introspect the tokens issued to it (RFC 7662 §4: no token scanning)."""

    CLIENT_AUTH_METHODS = [PUBLIC, PRIVATE_KEY_JWT]

    def query_token(self, token_string: str, token_type_hint: str | None) -> StoredToken | None:
        return self.server.find_token(token_string, token_type_hint)

    def check_permission(self, token: StoredToken, client: RegisteredClient, request: Any) -> bool:
        return token.check_client(client)

    def introspect_token(self, token: StoredToken) -> dict:
        doc = token.doc
        body = {"active": True, "client_id": doc.get("client_id"), "scope": doc.get("scope", ""),
                "sub": doc.get("sub") or doc.get("identity"), "exp": int(token.expires_at.timestamp()),
                "iss": self.server.settings.oauth_issuer, "token_type": "Bearer" if token.kind == "access_token"
                else "refresh_token"}
        if token.kind == "access_token":
            body.update({k: doc[k] for k in ("aud", "iat", "jti", "fhirUser", "patient") if k in doc})
        return body


class OAuthServer(AuthorizationServer):
    """Authlib's Flask authorization server, holding the identity service and the signing key."""

    def __init__(self, app: Flask, settings: Settings, identity: IdentityService) -> None:
        self.settings = settings
        self.identity = identity
        self.private_key = keys.load_or_create(settings.oauth_key_path)
        self.jwk = ECKey.import_key(keys.private_jwk(self.private_key))
        super().__init__(app, query_client=identity.client, save_token=self._save_token)
        self.register_token_generator("default", AccessTokens(settings, self.jwk))
        self.register_client_auth_method(PRIVATE_KEY_JWT, PrivateKeyJwt(self))
        self.register_client_auth_method(PUBLIC_BY_REFRESH_TOKEN, client_of_refresh_token(self))
        self.register_grant(AuthorizationCode, [S256Challenge(required=True)])
        self.register_grant(RefreshToken)
        self.register_grant(ClientCredentials)
        self.register_endpoint(Revocation)
        self.register_endpoint(Introspection)

    @property
    def token_url(self) -> str:
        return self.settings.oauth_issuer + "/token"

    def validate_requested_scope(self, scope: str | None) -> None:
        """Authlib's own check runs first; ours is in the grants (registration as ceiling)."""

    def _save_token(self, token: dict, request: Any) -> None:
        """Keep the refresh token (hashed); add SMART's launch context to the response."""
        user: SignedIn | None = request.user
        claims = self.access_claims(token["access_token"]) or {}
        if user is not None and user.link.record and "launch/patient" in token.get("scope", "").split():
            token["patient"] = user.link.record  # SMART App Launch 2 §"Launch context arrives with your access_token"
        if user is not None and {"openid", "fhirUser"} <= set(token.get("scope", "").split()):
            token["id_token"] = self.id_token(request, user)
        if token.get("refresh_token") and user is not None:
            code = getattr(request, "code_doc", None)
            previous = getattr(request, "refresh_token", None)
            grant_id = code["_id"] if code else (previous.doc.get("from_code") if previous is not None else None)
            self.identity.store.add_refresh_token({
                "_id": digest(token["refresh_token"]), "client_id": request.client.get_client_id(),
                "identity": user.identity, "link": user.link.id, "scope": token.get("scope", ""), "revoked": False,
                "from_code": grant_id, "access_jti": claims.get("jti"),
                "expires_at": _now() + timedelta(seconds=self.settings.refresh_token_ttl), "created_at": _now(),
            })

    def revoke_grant(self, code: str) -> None:
        """Every refresh and access token descended from one authorization code."""
        for jti in self.identity.store.revoke_tokens_from_code(code):
            self.identity.store.revoke_access(jti, _now() + timedelta(seconds=self.settings.access_token_ttl))

    def id_token(self, request: Any, user: SignedIn) -> str:
        """OpenID Connect Core §2 ID token; SMART's `fhirUser` claim names the linked resource."""
        now = int(time.time())
        claims = {"iss": self.settings.oauth_issuer, "sub": user.identity, "aud": request.client.get_client_id(),
                  "iat": now, "exp": now + self.settings.access_token_ttl,
                  "fhirUser": f"{self.settings.base_url}/{user.link.fhir_user}"}
        code = getattr(request, "code_doc", None)
        if code and code.get("nonce"):
            claims["nonce"] = code["nonce"]
        return jose_jwt.encode({"alg": keys.ALGORITHM, "kid": self.jwk.kid}, claims, self.jwk)

    def access_claims(self, token: str) -> dict | None:
        """Claims of an access token this server signed and that has not expired, else None."""
        try:
            decoded = jose_jwt.decode(token, self.jwk, algorithms=[keys.ALGORITHM])
        except (JoseError, ValueError):
            return None
        claims = decoded.claims
        if claims.get("iss") != self.settings.oauth_issuer or int(claims.get("exp", 0)) <= time.time():
            return None
        return claims

    def find_token(self, token_string: str, hint: str | None) -> StoredToken | None:
        if hint != "refresh_token":
            claims = self.access_claims(token_string)
            if claims is not None and not self.identity.store.access_revoked(str(claims.get("jti"))):
                expires = datetime.fromtimestamp(int(claims["exp"]), timezone.utc)
                return StoredToken("access_token", {**claims, "expires_at": expires})
        doc = self.identity.store.live_refresh_token(digest(token_string))
        return StoredToken("refresh_token", doc) if doc else None

    def public_jwks(self) -> dict:
        return keys.public_jwks(self.private_key)
