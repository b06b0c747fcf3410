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
external OpenID Connect issuers: {"id", "name", "issuer", "client_id", "scope", "jwks_uri",
"subject_claim", "name_claim", "claims", "token_endpoint_auth_method"}; docs/sign-in.md),
EHCP_LOCAL_SIGN_IN (1/0: the dev sign-in page for the example people; never in production),
EHCP_ACCESS_TOKEN_TTL, EHCP_REFRESH_TOKEN_TTL, EHCP_INVITATION_TTL (seconds).

Outbound requests (Subscription notifications, transfer peers, JWKS): EHCP_OUTBOUND_ALLOW
(comma-separated addresses or CIDR networks the server may connect to although they are not
public, e.g. `127.0.0.1` for a receiver on the same machine; none by default; docs/security.md).
Encryption at rest (docs/encryption.md): EHCP_KMS_PROVIDERS (JSON: the KMS credentials pymongo
takes, e.g. {"aws": {"accessKeyId": ..., "secretAccessKey": ...}}) and EHCP_MASTER_KEY (JSON: the
provider and master key that wrap every data key, e.g. {"provider": "aws", "region": ..., "key":
...}). Unset: a local master key file generated in the data dir, refused in production.
EHCP_RETENTION_YEARS: years kept after the young person's 25th birthday (default 6).
"""

from __future__ import annotations

import hashlib
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
    `id` names it in our URLs, `name` on the sign-in page; endpoints come from its discovery
    document (`jwks_uri` may be configured instead); `claims` maps our names to its claims
    (e.g. {"nhs_number": "nhs_number"}, {"organization": "org_code"}), shown, never trusted
    for roles.
    """

    issuer: str
    client_id: str
    jwks_uri: str | None = None
    subject_claim: str = "sub"
    name_claim: str = "name"
    id: str = ""
    name: str = ""
    scope: str = "openid"
    claims: dict = field(default_factory=dict)
    token_endpoint_auth_method: str = "none"  # or "private_key_jwt", signed with this server's ES256 key

    def __hash__(self) -> int:
        return hash((self.issuer, self.client_id, self.id))


#: The people the dev sign-in page offers (README "Signing in"); links still come from invitations.
DEFAULT_LOCAL_PEOPLE: tuple[dict, ...] = (
    {"id": "alex-parent", "name": "Alex Example (parent)"},
    {"id": "jordan-parent", "name": "Jordan Example (parent)"},
    {"id": "sam-young-person", "name": "Sam Example (young person)"},
    {"id": "casey-professional", "name": "Casey Example (professional)"},
)


@dataclass(frozen=True)
class Settings:
    mongodb_uri: str | None = field(default=None, repr=False)  # carries the database password
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
    outbound_allow: tuple[str, ...] = ()
    kms_providers: dict[str, Any] = field(default_factory=dict)
    master_key: dict[str, Any] | None = None
    retention_years: int = 6
    #: analytics disclosure control: cells of fewer children than this are suppressed
    analytics_threshold: int = 5
    #: how often the serving processes bring the analytics extract up to date (0: never; use
    #: `ehcp-record analytics refresh` from a timer instead)
    analytics_refresh_seconds: int = 300
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def master_key_dir(self) -> Path:
        """The local master key files of this database (embedded default only; never in production)."""
        return self.data_dir / "keys" / "master" / self.database

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
    issuer = fields.Url(required=True, schemes={"https", "http"}, require_tld=False)
    client_id = fields.String(required=True, validate=validate.Length(min=1))
    jwks_uri = fields.Url(load_default=None, allow_none=True, schemes={"https", "http"}, require_tld=False)
    subject_claim = fields.String(load_default="sub")
    name_claim = fields.String(load_default="name")
    id = fields.String(load_default=None, allow_none=True, validate=validate.Regexp(r"^[a-z0-9-]{1,40}$"))
    name = fields.String(load_default=None, allow_none=True)
    scope = fields.String(load_default="openid", validate=validate.Regexp(r"(^|.* )openid( .*|$)",
                                                                          error="the scope must include openid"))
    claims = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)
    token_endpoint_auth_method = fields.String(load_default="none", validate=validate.OneOf(["none", "private_key_jwt"]))

    @post_load
    def make(self, data: dict, **_: Any) -> IdentityProvider:
        data["id"] = data["id"] or hashlib.sha256(data["issuer"].encode()).hexdigest()[:10]
        data["name"] = data["name"] or data["issuer"]
        return IdentityProvider(**data)


def _networks(value: Any) -> list[str]:
    """EHCP_OUTBOUND_ALLOW: comma-separated (or a list); each an IP address or CIDR network."""
    import ipaddress

    values = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
    for entry in values:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValidationError(f"{entry!r} is not an IP address or network", "outbound_allow") from None
    return values


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
    outbound_allow = fields.Function(deserialize=_networks, load_default=list)
    kms_providers = fields.Dict(keys=fields.String(), values=fields.Dict(), load_default=dict)
    master_key = fields.Dict(load_default=None, allow_none=True)
    retention_years = fields.Integer(load_default=6, validate=validate.Range(min=0, max=100))
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
        provider_ids = [p.id for p in data["identity_providers"]]
        if len(provider_ids) != len(set(provider_ids)):
            raise ValidationError("each identity provider needs its own id", "identity_providers")
        _check_master_key(data["kms_providers"], data["master_key"], production)
        if "*" in data["cors_origins"]:
            raise ValidationError("name each allowed origin; '*' is not accepted", "cors_origins")
        return Settings(
            data_dir=Path(data.pop("data_dir")), trusted_issuers=tuple(data.pop("trusted_issuers")),
            trust_list=tuple(data.pop("trust_list")), dev_issuer=dev, local_sign_in=local,
            oauth_clients=tuple(data.pop("oauth_clients")), cors_origins=tuple(data.pop("cors_origins")),
            identity_providers=tuple(data.pop("identity_providers")), local_people=tuple(data.pop("local_people")),
            outbound_allow=tuple(data.pop("outbound_allow")),
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
    "invitation_ttl": "EHCP_INVITATION_TTL", "outbound_allow": "EHCP_OUTBOUND_ALLOW",
    "kms_providers": "EHCP_KMS_PROVIDERS",
    "master_key": "EHCP_MASTER_KEY", "retention_years": "EHCP_RETENTION_YEARS",
    "analytics_threshold": "EHCP_ANALYTICS_THRESHOLD",
    "analytics_refresh_seconds": "EHCP_ANALYTICS_REFRESH_SECONDS",
}
_JSON_KEYS = {"trusted_issuers", "trust_list", "oauth_clients", "identity_providers", "kms_providers", "master_key"}

#: What each KMS provider pymongo supports needs (MongoDB CSFLE "KMS providers"): credentials
#: in EHCP_KMS_PROVIDERS, and the master key's fields in EHCP_MASTER_KEY. An empty credentials
#: object asks pymongo to find them on demand (instance roles), which aws, azure and gcp allow.
KMS_CREDENTIALS = {
    "aws": ("accessKeyId", "secretAccessKey"),
    "azure": ("tenantId", "clientId", "clientSecret"),
    "gcp": ("email", "privateKey"),
    "kmip": ("endpoint",),
}
KMS_MASTER_KEY = {
    "aws": ("region", "key"),
    "azure": ("keyVaultEndpoint", "keyName"),
    "gcp": ("projectId", "location", "keyRing", "keyName"),
    "kmip": (),
}


def _check_master_key(providers: dict, master_key: dict | None, production: bool) -> None:
    """The master key's configuration has the shape pymongo's KMS providers need; the local
    key file (the embedded default) is refused in production, where it would sit beside the
    data it protects."""
    if master_key is None:
        if providers:
            raise ValidationError("EHCP_KMS_PROVIDERS needs EHCP_MASTER_KEY naming the provider and key", "master_key")
        if production:
            raise ValidationError("production needs a KMS master key (EHCP_KMS_PROVIDERS and EHCP_MASTER_KEY); "
                                  "the local key file is for the embedded default only", "master_key")
        return
    kind = str(master_key.get("provider", "")).split(":")[0]
    if kind not in KMS_CREDENTIALS:
        raise ValidationError(f"master key provider must be one of {', '.join(KMS_CREDENTIALS)}", "master_key")
    credentials = providers.get(master_key["provider"])
    if credentials is None:
        raise ValidationError(f"EHCP_KMS_PROVIDERS has no '{master_key['provider']}' entry", "kms_providers")
    on_demand = credentials == {} and kind != "kmip"
    missing = [k for k in KMS_CREDENTIALS[kind] if k not in credentials and not on_demand]
    missing += [k for k in KMS_MASTER_KEY[kind] if k not in master_key]
    if missing:
        raise ValidationError(f"the {kind} master key needs {', '.join(missing)}", "master_key")


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
