"""Configuration from the environment (or a test mapping), checked by a marshmallow schema.

Environment variables: EHCP_MONGODB_URI (unset -> the embedded mongod), EHCP_DATABASE,
EHCP_DATA_DIR (default ./var), EHCP_ENV (production turns the dev issuer off), EHCP_BASE_URL,
EHCP_AUDIENCE, EHCP_TRUSTED_ISSUERS (JSON list of {"iss", "jwks_uri"}), EHCP_DEV_ISSUER (1/0),
EHCP_TRUST_LIST (JSON list of other deployments for transfer), EHCP_ORGANIZATION,
EHCP_MAX_TRANSFER_BYTES (largest `$receive-transfer` body), EHCP_DB_REQUEST_TIMEOUT (seconds a
request may spend waiting on the database before it answers 503).

Signing in (SMART App Launch 2, README "Signing in"): EHCP_OAUTH_CLIENTS (JSON list of client
registrations, also kept with `ehcp-record clients add`), EHCP_CORS_ORIGINS (comma-separated
browser origins allowed to call the API; none by default), EHCP_IDENTITY_PROVIDERS (JSON list of
external OpenID Connect issuers: {"issuer", "client_id", "jwks_uri", "subject_claim"}),
EHCP_LOCAL_SIGN_IN (1/0: the dev sign-in page for the example people; never in production),
EHCP_ACCESS_TOKEN_TTL, EHCP_REFRESH_TOKEN_TTL, EHCP_INVITATION_TTL (seconds).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate

DEV_ISSUER = "urn:ehcp-record:dev-issuer"
PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"


class ConfigError(ValueError):
    """Configuration that cannot work; the message names the setting."""


@dataclass(frozen=True)
class TrustedIssuer:
    iss: str
    jwks_uri: str


@dataclass(frozen=True)
class IdentityProvider:
    """An external OpenID Connect issuer this deployment trusts to say who someone is.

    Only these issuers (and the local sign-in page, outside production) are believed; the
    identity they assert is `issuer|<subject_claim>`, which a link then ties to a fhirUser.
    """

    issuer: str
    client_id: str
    jwks_uri: str
    subject_claim: str = "sub"
    name_claim: str = "name"


#: The people the dev sign-in page offers (README "Signing in"); links still come from invitations.
DEFAULT_LOCAL_PEOPLE: tuple[dict, ...] = (
    {"id": "alex-parent", "name": "Alex Example (parent)"},
    {"id": "jordan-parent", "name": "Jordan Example (parent)"},
    {"id": "sam-young-person", "name": "Sam Example (young person)"},
    {"id": "casey-professional", "name": "Casey Example (professional)"},
)


@dataclass(frozen=True)
class Settings:
    mongodb_uri: str | None = None
    database: str = "ehcp_record"
    data_dir: Path = Path("var")
    env: str = "local"
    base_url: str = "http://127.0.0.1:8080/fhir"
    audience: str = "ehcp-record"
    trusted_issuers: tuple[TrustedIssuer, ...] = ()
    dev_issuer: bool = True
    trust_list: tuple[dict, ...] = ()
    organization: str | None = None
    max_body_bytes: int = 1024 * 1024
    max_binary_bytes: int = 100 * 1024 * 1024
    max_query_bytes: int = 8 * 1024
    max_transfer_bytes: int = 200 * 1024 * 1024
    db_request_timeout: float = 30.0
    profiles_dir: Path = PROFILES_DIR
    oauth_clients: tuple[dict, ...] = ()
    cors_origins: tuple[str, ...] = ()
    identity_providers: tuple[IdentityProvider, ...] = ()
    local_sign_in: bool = True
    local_people: tuple[dict, ...] = DEFAULT_LOCAL_PEOPLE
    access_token_ttl: int = 3600
    refresh_token_ttl: int = 30 * 24 * 3600
    invitation_ttl: int = 14 * 24 * 3600
    #: analytics disclosure control: cells of fewer children than this are suppressed
    analytics_threshold: int = 5
    #: how often the serving processes bring the analytics extract up to date (0: never; use
    #: `ehcp-record analytics refresh` from a timer instead)
    analytics_refresh_seconds: int = 300
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def oauth_issuer(self) -> str:
        """The authorization server's issuer: `/oauth` beside the FHIR base (SMART App Launch
        2 lets the two differ; the token's `aud` is the FHIR base URL)."""
        root = self.base_url.rstrip("/")
        root = root[: -len("/fhir")] if root.endswith("/fhir") else root
        return root + "/oauth"

    @property
    def oauth_key_path(self) -> Path:
        return self.data_dir / "keys" / "oauth-signing.pem"

    @property
    def session_secret_path(self) -> Path:
        return self.data_dir / "keys" / "session-secret"

    @property
    def served_organizations(self) -> frozenset[str]:
        """The local authorities this deployment holds plans for (EHCP_ORGANIZATION, comma-separated)."""
        return frozenset(o.strip() for o in (self.organization or "").split(",") if o.strip())

    @property
    def dev_key_path(self) -> Path:
        return self.data_dir / "keys" / "dev-issuer.pem"

    @property
    def signing_key_path(self) -> Path:
        return self.data_dir / "keys" / "server-signing.pem"


class _IssuerSchema(Schema):
    iss = fields.String(required=True, validate=validate.Length(min=1))
    jwks_uri = fields.Url(required=True, schemes={"https", "http"}, require_tld=False)

    @post_load
    def make(self, data: dict, **_: Any) -> TrustedIssuer:
        return TrustedIssuer(**data)


class _ProviderSchema(Schema):
    issuer = fields.String(required=True, validate=validate.Length(min=1))
    client_id = fields.String(required=True, validate=validate.Length(min=1))
    jwks_uri = fields.Url(required=True, schemes={"https", "http"}, require_tld=False)
    subject_claim = fields.String(load_default="sub")
    name_claim = fields.String(load_default="name")

    @post_load
    def make(self, data: dict, **_: Any) -> IdentityProvider:
        return IdentityProvider(**data)


def _origins(value: Any) -> list[str]:
    if isinstance(value, str):
        return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
    return list(value)


class _SettingsSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    mongodb_uri = fields.String(load_default=None, allow_none=True)
    database = fields.String(load_default="ehcp_record", validate=validate.Regexp(r"^[A-Za-z0-9_-]{1,60}$"))
    data_dir = fields.String(load_default="var")
    env = fields.String(load_default="local", validate=validate.OneOf(["local", "test", "production"]))
    base_url = fields.String(load_default="http://127.0.0.1:8080/fhir")
    audience = fields.String(load_default="ehcp-record")
    trusted_issuers = fields.List(fields.Nested(_IssuerSchema), load_default=list)
    dev_issuer = fields.Boolean(load_default=None, allow_none=True)
    trust_list = fields.List(fields.Dict(), load_default=list)
    organization = fields.String(load_default=None, allow_none=True)
    max_transfer_bytes = fields.Integer(load_default=200 * 1024 * 1024, validate=validate.Range(min=1024))
    db_request_timeout = fields.Float(load_default=30.0, validate=validate.Range(min=0.5, max=600))
    oauth_clients = fields.List(fields.Dict(), load_default=list)
    cors_origins = fields.Function(deserialize=_origins, load_default=list)
    identity_providers = fields.List(fields.Nested(_ProviderSchema), load_default=list)
    local_sign_in = fields.Boolean(load_default=None, allow_none=True)
    local_people = fields.List(fields.Dict(), load_default=lambda: list(DEFAULT_LOCAL_PEOPLE))
    access_token_ttl = fields.Integer(load_default=3600, validate=validate.Range(min=30, max=24 * 3600))
    refresh_token_ttl = fields.Integer(load_default=30 * 24 * 3600, validate=validate.Range(min=1))
    invitation_ttl = fields.Integer(load_default=14 * 24 * 3600, validate=validate.Range(min=1))
    analytics_threshold = fields.Integer(load_default=5, validate=validate.Range(min=3, max=100))
    analytics_refresh_seconds = fields.Integer(load_default=300, validate=validate.Range(min=0))

    @post_load
    def make(self, data: dict, **_: Any) -> Settings:
        production = data["env"] == "production"
        dev, local = data.pop("dev_issuer"), data.pop("local_sign_in")
        dev = not production if dev is None else dev
        local = not production if local is None else local
        if dev and production:
            raise ValidationError("the dev issuer cannot be trusted in production", "dev_issuer")
        if local and production:
            raise ValidationError("the local sign-in page cannot be on in production", "local_sign_in")
        if "*" in data["cors_origins"]:
            raise ValidationError("name each allowed origin; '*' is not accepted", "cors_origins")
        return Settings(
            data_dir=Path(data.pop("data_dir")), trusted_issuers=tuple(data.pop("trusted_issuers")),
            trust_list=tuple(data.pop("trust_list")), dev_issuer=dev, local_sign_in=local,
            oauth_clients=tuple(data.pop("oauth_clients")), cors_origins=tuple(data.pop("cors_origins")),
            identity_providers=tuple(data.pop("identity_providers")), local_people=tuple(data.pop("local_people")),
            **data,
        )


_ENV = {
    "mongodb_uri": "EHCP_MONGODB_URI", "database": "EHCP_DATABASE", "data_dir": "EHCP_DATA_DIR",
    "env": "EHCP_ENV", "base_url": "EHCP_BASE_URL", "audience": "EHCP_AUDIENCE",
    "trusted_issuers": "EHCP_TRUSTED_ISSUERS", "dev_issuer": "EHCP_DEV_ISSUER",
    "trust_list": "EHCP_TRUST_LIST", "organization": "EHCP_ORGANIZATION",
    "max_transfer_bytes": "EHCP_MAX_TRANSFER_BYTES", "db_request_timeout": "EHCP_DB_REQUEST_TIMEOUT",
    "oauth_clients": "EHCP_OAUTH_CLIENTS", "cors_origins": "EHCP_CORS_ORIGINS",
    "identity_providers": "EHCP_IDENTITY_PROVIDERS", "local_sign_in": "EHCP_LOCAL_SIGN_IN",
    "access_token_ttl": "EHCP_ACCESS_TOKEN_TTL", "refresh_token_ttl": "EHCP_REFRESH_TOKEN_TTL",
    "invitation_ttl": "EHCP_INVITATION_TTL", "analytics_threshold": "EHCP_ANALYTICS_THRESHOLD",
    "analytics_refresh_seconds": "EHCP_ANALYTICS_REFRESH_SECONDS",
}
_JSON_KEYS = {"trusted_issuers", "trust_list", "oauth_clients", "identity_providers"}


def locate_data_dir(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path:
    """The data dir `serve` and the other commands share, whichever directory they run in:
    EHCP_DATA_DIR if set; else `./var`; else the nearest enclosing directory's `var/` that holds
    a server's state (its keys or its mongod port); else the checkout's own `var/` when it
    exists; else `./var` (which `serve` then creates)."""
    environ = os.environ if environ is None else environ
    if environ.get("EHCP_DATA_DIR"):
        return Path(environ["EHCP_DATA_DIR"])
    cwd = (cwd or Path.cwd()).resolve()
    if (cwd / "var").is_dir():
        return cwd / "var"
    for parent in cwd.parents:
        candidate = parent / "var"
        if (candidate / "keys").is_dir() or (candidate / "mongod.port").exists():
            return candidate
    checkout = PROFILES_DIR.parent / "var"
    return checkout if checkout.is_dir() else cwd / "var"


def load_settings(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the environment, overridden by an explicit mapping (tests)."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    for key, variable in _ENV.items():
        if variable in environ and environ[variable] != "":
            raw[key] = _decode(key, environ[variable])
    raw.update(overrides or {})
    try:
        return _SettingsSchema().load(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc.messages}") from None


def _decode(key: str, value: str) -> Any:
    if key not in _JSON_KEYS:
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise ConfigError(f"{_ENV[key]} must be JSON") from None
