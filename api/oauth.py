"""The authorization server's HTTP side (SMART App Launch 2, Backend Services) and linking.

- `/oauth/authorize` (GET, or POST: SMART `authorize-post`): sign-in (the local page in
  development, and the configured OpenID Connect providers, this server acting as their
  relying party: `/oauth/sign-in/provider/<id>` -> the provider -> `/oauth/sign-in/callback`),
  then the child to launch with when the person has several links (`launch/patient`), then,
  for a third-party app, the consent screen, then a code bound to PKCE S256
  (api/oauth_server.py);
- `/oauth/.well-known/openid-configuration` (OpenID Connect Discovery 1.0) for apps, and for
  another deployment federating to this one;
- `/oauth/token`, `/oauth/revoke`, `/oauth/introspect`, `/oauth/jwks`;
- invitations: the custodian LA (bearer token) creates one; the signed-in person redeems it;
  links are listed to the person and removed by them or by the custodian.
OAuth endpoints answer in OAuth's own JSON error format (RFC 6749 §5.2); the linking routes
that take a bearer token answer OperationOutcomes like the rest of the API.
"""

from __future__ import annotations

import secrets
from urllib.parse import parse_qsl, urlencode, urlsplit

from authlib.oauth2 import OAuth2Error
from flask import Blueprint, Flask, Response, current_app, jsonify, redirect, render_template, request, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

from api.context import services, store
from api.oauth_server import OAuthServer, SignedIn
from ehcp_record.errors import FhirError
from ehcp_record.identity import federation, keys, scopes
from ehcp_record.identity.clients import RegisteredClient
from ehcp_record.identity.federation import FederationError, Pending
from ehcp_record.identity.links import Link, LinkError, identity_key
from ehcp_record.net.outbound import Fence

bp = Blueprint("oauth", __name__)
LOCAL_ISSUER = "local"


class _CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, except that a request without the cookie (every FHIR API
    call: they carry bearer tokens) gets its empty session without building the signing
    serializer, which was about 2% of a search's CPU, or parsing a Cookie header it lacks."""

    def open_session(self, app: Flask, request) -> SecureCookieSession | None:
        if "Cookie" not in request.headers or not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def init_app(app: Flask) -> None:
    """Attach the authorization server (it needs the app's services) and the session secret."""
    ehcp = app.extensions["ehcp"]
    app.session_interface = _CookieSessions()
    app.secret_key = keys.secret_bytes(ehcp.settings.session_secret_path)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_SECURE=ehcp.settings.base_url.startswith("https://"))
    ehcp.oauth = OAuthServer(app, ehcp.settings, ehcp.identity)


def server() -> OAuthServer:
    return current_app.extensions["ehcp"].oauth


# --------------------------------------------------------------------------- OAuth endpoints

_PROTOCOL_ENDPOINTS = frozenset({"oauth.authorize", "oauth.token", "oauth.revoke", "oauth.introspect",
                                 "oauth.sign_in_callback"})


@bp.before_request
def _printable_parameters() -> Response | None:
    """OAuth parameters are printable ASCII (RFC 6749 Appendix A): anything else is
    `invalid_request` here, before it can reach an error message or a comparison."""
    if request.endpoint not in _PROTOCOL_ENDPOINTS:
        return None
    values = [*request.args.values(), *(request.form.values() if request.method == "POST" else ())]
    if all(value.isascii() and value.isprintable() for value in values):
        return None
    response = jsonify({"error": "invalid_request", "error_description": "OAuth parameters must be printable ASCII"})
    response.status_code = 400
    return response


@bp.route("/oauth/authorize", methods=["GET", "POST"])
def authorize() -> Response:
    """RFC 6749 §4.1.1. A POST from an app (SMART `authorize-post`) is answered with a 303 to
    the same request as a GET, so the person's (SameSite=Lax) session cookie comes along; a
    POST carrying `decision` is the person's answer on the consent screen."""
    try:
        grant = server().get_consent_grant(end_user=None)
    except OAuth2Error as error:
        return _oauth_error(error)
    if request.method == "POST" and "decision" not in request.form:
        return redirect("/oauth/authorize?" + urlencode(list(request.form.items(multi=True))), code=303)
    settings = services().settings
    if request.values.get("aud", settings.base_url).rstrip("/") != settings.base_url.rstrip("/"):
        return server().handle_error_response(None, _redirecting("invalid_request",
                                                                 "aud must be this server's FHIR base URL"))
    identity = session.get("identity")
    if not identity:
        return redirect(_sign_in_url("/oauth/authorize?" + urlencode(_authorize_params())))
    links = services().identity.links_of(identity)
    if not links:
        return server().create_authorization_response(grant=grant, grant_user=None)  # access_denied
    chosen = _chosen(links)
    if chosen is None:
        return _picker(links)
    scope = grant.request.payload.scope or ""
    if request.method == "POST":
        _check_csrf()
        if request.form["decision"] != "approve":  # RFC 6749 §4.1.2.1: the owner denied the request
            return server().create_authorization_response(grant=grant, grant_user=None)
        services().identity.approve(grant.client, identity, chosen, scope)
    elif services().identity.needs_approval(grant.client, identity, chosen, scope):
        return _consent_screen(grant.client, chosen, scope)
    return server().create_authorization_response(grant=grant, grant_user=SignedIn(identity, chosen))


def _authorize_params() -> list[tuple[str, str]]:
    return [(k, v) for k, v in request.values.items(multi=True) if k not in ("csrf", "decision")]


def _consent_screen(client: RegisteredClient, link: Link, scope: str) -> Response:
    """Which app, which child, which scopes in plain English; Allow or Don't allow."""
    params = _authorize_params()
    if "link" not in request.values:
        params.append(("link", link.id))
    who = {"parent": "their parent", "young-person": "the young person"}.get(link.role, f"a {link.role} professional")
    return _page("oauth/consent.html", app=client.name, child=services().identity.child_name(link), who=who,
                 csrf=_csrf(), lines=[scopes.describe(w) for w in scopes.words(scope)], params=params)


def _page(template: str, **context: object) -> Response:
    """A sign-in page: HTML that no other site may frame (clickjacking, RFC 6749 §10.13)."""
    response = Response(render_template(template, **context), mimetype="text/html")
    response.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
    response.headers["X-Frame-Options"] = "DENY"
    return response


@bp.post("/oauth/token")
def token() -> Response:
    return server().create_token_response()


@bp.post("/oauth/revoke")
def revoke() -> Response:
    return server().create_endpoint_response("revocation")


@bp.post("/oauth/introspect")
def introspect() -> Response:
    return server().create_endpoint_response("introspection")


@bp.get("/oauth/jwks")
def jwks() -> Response:
    return jsonify(server().public_jwks())


def _oauth_error(error: OAuth2Error) -> Response:
    """An error with a verified redirect URI goes back to the app; otherwise it is shown here
    and never redirected (RFC 6749 §4.1.2.1: a bad client or redirect URI must not redirect)."""
    if error.redirect_uri:
        return server().handle_error_response(None, error)
    response = jsonify({"error": error.error, "error_description": error.description or error.error})
    response.status_code = 400 if error.error != "invalid_client" else 401
    return response


def _redirecting(code: str, description: str) -> OAuth2Error:
    """An error for the app, sent to its redirect URI (already checked by get_consent_grant)."""
    error = OAuth2Error(description=description, redirect_uri=request.args.get("redirect_uri"),
                        state=request.args.get("state"))
    error.error = code
    return error


def _chosen(links: list[Link]) -> Link | None:
    """SMART `launch/patient`: one link is the launch; several, the person picks the child."""
    wanted = request.values.get("link")
    if wanted:
        return next((link for link in links if link.id == wanted), None)
    return links[0] if len(links) == 1 else None


def _picker(links: list[Link]) -> Response:
    def href(link: Link) -> str:
        return "/oauth/authorize?" + urlencode([*_authorize_params(), ("link", link.id)])

    names = {link.id: services().identity.child_name(link) for link in links}
    return _page("oauth/pick.html", links=links, href=href, names=names)


# --------------------------------------------------------------------------- signing in

@bp.get("/oauth/sign-in")
def sign_in_page() -> Response:
    """The configured identity providers, and the example people when the dev page is on."""
    settings = services().settings
    if not settings.local_sign_in and not settings.identity_providers:
        raise FhirError(404, "not-found", "no way to sign in is configured here")
    next_path = _safe_next(request.args.get("next"))

    def provider_href(provider) -> str:
        return f"/oauth/sign-in/provider/{provider.id}?" + urlencode({"next": next_path})

    return _page("oauth/sign_in.html", people=settings.local_people if settings.local_sign_in else [],
                 providers=settings.identity_providers, provider_href=provider_href, csrf=_csrf(), next=next_path)


@bp.post("/oauth/sign-in")
def sign_in() -> Response:
    settings = services().settings
    if not settings.local_sign_in:
        raise FhirError(404, "not-found", "the local sign-in page is off here; sign in with a configured provider")
    _check_csrf()
    person = request.form.get("person", "")
    known = {p["id"]: p.get("name", p["id"]) for p in settings.local_people}
    if person not in known:
        raise FhirError(400, "value", "choose one of the example people")
    _start_session(identity_key(LOCAL_ISSUER, person), known[person])
    return redirect(_safe_next(request.form.get("next")))


@bp.get("/oauth/sign-in/provider/<provider_id>")
def sign_in_with_provider(provider_id: str) -> Response:
    """Send the person to a configured OpenID Connect provider (OIDC Core §3.1.2.1)."""
    try:
        provider = federation.provider_named(services().settings.identity_providers, provider_id)
        url, pending = federation.begin(provider, _callback_url(), _safe_next(request.args.get("next")),
                                        Fence.from_settings(services().settings))
    except FederationError as exc:
        return _federation_error(exc)
    session["federation"] = pending.as_dict()
    return redirect(url)


@bp.get("/oauth/sign-in/callback")
def sign_in_callback() -> Response:
    """The provider's answer (OIDC Core §3.1.2.5): checked, exchanged, the ID token validated;
    only then does a session start and the SMART authorization continue where it stopped."""
    pending = Pending.restore(session.pop("federation", None))
    try:
        if pending is None:
            raise FederationError("invalid_request", "no sign-in was started in this browser (or it was finished)")
        provider = federation.provider_named(services().settings.identity_providers, pending.provider)
        person = federation.finish(provider, pending, request.args.to_dict(), _callback_url(), server().jwk,
                                   Fence.from_settings(services().settings))
    except FederationError as exc:
        return (_denied_to_app(pending.next, exc) if pending else None) or _federation_error(exc)
    _start_session(person.identity, person.name, person.claims)
    return redirect(_safe_next(pending.next))


def _denied_to_app(next_path: str, exc: FederationError) -> Response | None:
    """The person (or their provider) said no during an app's authorization request: the app
    hears `access_denied` at its registered redirect URI with its state (RFC 6749 §4.1.2.1)."""
    if exc.error != "access_denied" or not next_path.startswith("/oauth/authorize?"):
        return None
    asked = dict(parse_qsl(urlsplit(next_path).query))
    client = services().identity.client(asked.get("client_id"))
    if client is None or not client.check_redirect_uri(asked.get("redirect_uri", "")):
        return None
    error = OAuth2Error(description=str(exc), redirect_uri=asked["redirect_uri"], state=asked.get("state"))
    error.error = "access_denied"
    return server().handle_error_response(None, error)


@bp.get("/oauth/.well-known/openid-configuration")
def openid_configuration() -> Response:
    """OpenID Connect Discovery 1.0 §3 for this authorization server (issuer `/oauth`)."""
    from api.open_endpoints import smart_metadata

    smart = smart_metadata(services().settings)
    keep = ("issuer", "jwks_uri", "authorization_endpoint", "token_endpoint", "revocation_endpoint",
            "introspection_endpoint", "token_endpoint_auth_methods_supported",
            "token_endpoint_auth_signing_alg_values_supported", "grant_types_supported", "scopes_supported",
            "response_types_supported", "code_challenge_methods_supported", "id_token_signing_alg_values_supported")
    return jsonify({**{k: smart[k] for k in keep}, "subject_types_supported": ["public"],
                    "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
                    "authorization_response_iss_parameter_supported": False})


def _callback_url() -> str:
    return services().settings.oauth_issuer + "/sign-in/callback"


def _federation_error(exc: FederationError) -> Response:
    """Shown here, never redirected: the app's redirect URI is not in play yet. An ID token
    that is not believed is `invalid_token` (RFC 6750 §3.1) with 401; a provider that cannot
    be reached 502; anything else is the OAuth code with 400 (RFC 6749 §4.1.2.1)."""
    response = jsonify({"error": exc.error, "error_description": str(exc)})
    response.status_code = {"invalid_token": 401, "temporarily_unavailable": 502}.get(exc.error, 400)
    if exc.error == "invalid_token":
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return response


@bp.post("/oauth/sign-out")
def sign_out() -> Response:
    session.clear()
    return Response(status=204)


def _start_session(identity: str, name: str, claims: dict | None = None) -> None:
    session.clear()
    session["identity"], session["name"], session["claims"] = identity, name, claims or {}
    session["csrf"] = secrets.token_urlsafe(16)


def _sign_in_url(next_path: str) -> str:
    return "/oauth/sign-in?" + urlencode({"next": next_path})


def _safe_next(value: str | None) -> str:
    """Only our own authorize, account or dashboard pages: never an open redirect."""
    if value and (value.startswith(("/oauth/authorize?", "/oauth/account")) or value == "/dashboard"):
        return value
    return "/oauth/account/links"


def _csrf() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(16)
    return session["csrf"]


def _check_csrf() -> None:
    supplied = request.form.get("csrf") or request.headers.get("X-CSRF-Token", "")
    if not supplied or not secrets.compare_digest(supplied.encode(), session.get("csrf", "").encode()):
        raise FhirError(403, "security", "the form is stale or came from another site; reload the page")


# --------------------------------------------------------------------------- linking

@bp.post("/oauth/invitations")
def invite() -> Response:
    """The custodian LA invites a parent (RelatedPerson) or the young person (Patient)."""
    body = request.get_json(silent=True)
    person = body.get("person") if isinstance(body, dict) else None
    staff = isinstance(person, str) and person.startswith("PractitionerRole/")
    if not isinstance(person, str) or (not staff and not isinstance(body.get("patient"), str)):
        raise FhirError(400, "invalid", "send JSON {\"patient\": \"Patient/<id>\", \"person\": \"RelatedPerson/<id>\"} "
                                        "(or {\"person\": \"PractitionerRole/<id>\"} for staff)")
    try:
        if staff:
            issued = services().identity.invite_professional(store(), person)
        else:
            issued = services().identity.invite(store(), body["patient"].removeprefix("Patient/"), person)
    except LinkError as exc:
        raise FhirError(422, "business-rule", str(exc)) from None
    response = jsonify({"code": issued.code, "patient": f"Patient/{issued.record}" if issued.record else None,
                        "person": issued.fhir_user, "expires": issued.expires_at.isoformat()})
    response.status_code = 201
    return response


@bp.get("/oauth/account/links")
def my_links() -> Response:
    """The signed-in person's links: who they are linked as, to which record (visible to them)."""
    identity = _signed_in()
    return jsonify({"identity": identity, "name": session.get("name", ""), "claims": session.get("claims", {}),
                    "csrf": _csrf(), "approvals": services().identity.approvals_of(identity),
                    "links": [_link_json(link) for link in services().identity.links_of(identity)]})


@bp.post("/oauth/account/links")
def redeem() -> Response:
    identity = _signed_in()
    _check_csrf()
    try:
        link = services().identity.redeem(request.form.get("code", ""), identity, session.get("name", ""))
    except LinkError as exc:
        raise FhirError(422, "business-rule", str(exc)) from None
    response = jsonify(_link_json(link))
    response.status_code = 201
    return response


@bp.delete("/oauth/account/links/<link_id>")
def unlink_mine(link_id: str) -> Response:
    identity = _signed_in()
    _check_csrf()
    link = services().identity.link(link_id)
    if link is None or link.identity != identity or not link.active:
        raise FhirError(404, "not-found", "you have no such link")
    services().identity.unlink_by_person(link)
    return Response(status=204)


@bp.delete("/oauth/account/approvals/<client_id>")
def withdraw_approval(client_id: str) -> Response:
    """The person withdraws what they allowed a third-party app (the consent screen asks again)."""
    identity = _signed_in()
    _check_csrf()
    if not services().identity.withdraw(client_id, identity, services().settings.access_token_ttl):
        raise FhirError(404, "not-found", "you have not allowed that app anything")
    return Response(status=204)


@bp.delete("/oauth/links/<link_id>")
def unlink(link_id: str) -> Response:
    """The custodian LA removes a link (bearer token); it stops working on the next request."""
    try:
        services().identity.unlink_by_custodian(store(), link_id)
    except LinkError as exc:
        raise FhirError(404, "not-found", str(exc)) from None
    return Response(status=204)


def _signed_in() -> str:
    identity = session.get("identity")
    if not identity:
        raise FhirError(401, "login", "sign in first (/oauth/sign-in)", headers={"WWW-Authenticate": 'Cookie realm="ehcp-record"'})
    return identity


def _link_json(link: Link) -> dict:
    return {"id": link.id, "fhirUser": link.fhir_user, "patient": link.patient, "role": link.role,
            "organization": link.organization, "active": link.active}
