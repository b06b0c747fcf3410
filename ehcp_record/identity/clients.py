"""Registered OAuth clients (RFC 6749 §2), as Authlib's server asks about them.

Two kinds only, because SMART App Launch 2 names them and nothing else is safe here:
- public apps (parent and young-person apps, browser or native): `token_endpoint_auth_method`
  `none`, authorization code with PKCE S256 (RFC 7636), exact redirect URIs (RFC 6749 §3.1.2.2,
  OAuth 2.0 Security BCP: no pattern matching);
- backend services (LA and NHS systems): `private_key_jwt` (RFC 7523 §2.2, SMART Backend
  Services) with the client's public keys given at registration (`jwks`, or a `jwks_uri`
  fetched and cached by identity/jwks.py), client credentials only, and the organisation and
  role the registration names, never the token request.
A public app is third-party unless registered `first_party` (an app the deployment itself
runs): a third-party app gets the person's approval on the consent screen first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc6749 import ClientMixin
from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate, validates_schema

from ehcp_record.identity import scopes

PUBLIC = "none"
PRIVATE_KEY_JWT = "private_key_jwt"
#: A public app refreshing without `client_id` (the SMART JS client does): the client is the one
#: the refresh token was issued to (RFC 6749 §6 asks no authentication of public clients).
PUBLIC_BY_REFRESH_TOKEN = "none_by_refresh_token"
PUBLIC_GRANTS = ("authorization_code", "refresh_token")
BACKEND_GRANTS = ("client_credentials",)
BACKEND_ROLES = ("la", "school", "health", "social-care", "system", "auditor", "partnership")


@dataclass(frozen=True)
class RegisteredClient(ClientMixin):
    client_id: str
    name: str
    auth_method: str
    scope: str
    redirect_uris: tuple[str, ...] = ()
    jwks: dict | None = None
    jwks_uri: str | None = None
    first_party: bool = False
    role: str | None = None
    organization: str | None = None
    source: str = "store"  # "config" for clients named in EHCP_OAUTH_CLIENTS
    extra: dict = field(default_factory=dict)

    @property
    def grant_types(self) -> tuple[str, ...]:
        return BACKEND_GRANTS if self.auth_method == PRIVATE_KEY_JWT else PUBLIC_GRANTS

    # --- Authlib ClientMixin ---------------------------------------------------------------

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if len(self.redirect_uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """The requested scope if the registration covers every word of it, else None
        (Authlib then answers `invalid_scope`, RFC 6749 §4.1.2.1 / §5.2)."""
        if not scope:
            return None
        if scopes.beyond(scope, self.scope):
            return None
        return " ".join(scopes.words(scope))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return False  # no shared secrets: public clients use PKCE, systems their own keys

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if endpoint == "token":
            return method == self.auth_method or (self.auth_method == PUBLIC and method == PUBLIC_BY_REFRESH_TOKEN)
        return method in (self.auth_method, PUBLIC) if self.auth_method == PUBLIC else method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and self.auth_method == PUBLIC

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types

    def as_document(self) -> dict:
        return {"client_id": self.client_id, "name": self.name, "auth_method": self.auth_method,
                "scope": self.scope, "redirect_uris": list(self.redirect_uris), "jwks": self.jwks,
                "jwks_uri": self.jwks_uri, "first_party": self.first_party, "role": self.role,
                "organization": self.organization}


class ClientSchema(Schema):
    """A registration, from configuration, the command line or the store."""

    class Meta:
        unknown = EXCLUDE

    client_id = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9._~-]{1,100}$"))
    name = fields.String(load_default="")
    auth_method = fields.String(load_default=PUBLIC, validate=validate.OneOf([PUBLIC, PRIVATE_KEY_JWT]),
                                data_key="token_endpoint_auth_method")
    scope = fields.String(required=True, validate=validate.Length(min=1))
    redirect_uris = fields.List(fields.Url(require_tld=False, schemes={"https", "http"}), load_default=list)
    jwks = fields.Dict(load_default=None, allow_none=True)
    jwks_uri = fields.Url(load_default=None, allow_none=True, require_tld=False, schemes={"https", "http"})
    first_party = fields.Boolean(load_default=False)
    role = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(BACKEND_ROLES))
    organization = fields.String(load_default=None, allow_none=True,
                                 validate=validate.Regexp(r"^Organization/[A-Za-z0-9.-]{1,64}$"))

    @validates_schema
    def _kind(self, data: dict, **_: Any) -> None:
        unknown = [w for w in scopes.words(data["scope"]) if not scopes.understood(w)]
        if unknown:
            raise ValidationError(f"scopes not understood here: {' '.join(unknown)}", "scope")
        if data["auth_method"] == PUBLIC:
            if not data["redirect_uris"]:
                raise ValidationError("a public app needs at least one redirect URI", "redirect_uris")
            if any(w.startswith("system/") for w in scopes.words(data["scope"])):
                raise ValidationError("system/ scopes are for backend services only", "scope")
            return
        keys = (data.get("jwks") or {}).get("keys")
        if data.get("jwks_uri") and data.get("jwks"):
            raise ValidationError("give the public keys once: either jwks or jwks_uri", "jwks_uri")
        if not data.get("jwks_uri") and (not isinstance(keys, list) or not keys):
            raise ValidationError("a backend service needs its public keys (a JWKS with 'keys', or a jwks_uri)",
                                  "jwks")
        if not data.get("role"):
            raise ValidationError("a backend service needs the role it acts in", "role")
        if data["role"] not in ("system", "auditor") and not data.get("organization"):
            raise ValidationError(f"a '{data['role']}' backend service needs its organization", "organization")

    @post_load
    def make(self, data: dict, **_: Any) -> RegisteredClient:
        return RegisteredClient(name=data.pop("name") or data["client_id"],
                                redirect_uris=tuple(data.pop("redirect_uris")), **data)


def client_from(document: dict, source: str = "store") -> RegisteredClient:
    """A registration checked by the schema; raises marshmallow.ValidationError when unusable."""
    raw = {("token_endpoint_auth_method" if k == "auth_method" else k): v for k, v in document.items()
           if k != "_id"}
    client = ClientSchema().load(raw)
    return RegisteredClient(**{**client.__dict__, "source": source})
