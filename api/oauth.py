"""The authorization server's HTTP side (SMART App Launch 2, Backend Services) and linking.

- `/oauth/authorize`: sign-in (local page in development, configured OpenID Connect providers
  otherwise), then the child to launch with when the person has several links
  (`launch/patient`), then a code bound to PKCE S256 (api/oauth_server.py);
- `/oauth/token`, `/oauth/revoke`, `/oauth/introspect`, `/oauth/jwks`;
- invitations: the custodian LA (bearer token) creates one; the signed-in person redeems it;
  links are listed to the person and removed by them or by the custodian.
OAuth endpoints answer in OAuth's own JSON error format (RFC 6749 §5.2); the linking routes
that take a bearer token answer OperationOutcomes like the rest of the API.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlencode

from authlib.oauth2 import OAuth2Error
from flask import Blueprint, Flask, Response, current_app, jsonify, redirect, render_template_string, request, session

from api.context import services, store
from api.oauth_server import OAuthServer, SignedIn
from ehcp_record.errors import FhirError
from ehcp_record.identity import keys
from ehcp_record.identity.federation import FederationError, verify_id_token
from ehcp_record.identity.links import Link, LinkError, identity_key

bp = Blueprint("oauth", __name__)
LOCAL_ISSUER = "local"


def init_app(app: Flask) -> None:
    """Attach the authorization server (it needs the app's services) and the session secret."""
    ehcp = app.extensions["ehcp"]
    app.secret_key = keys.secret_bytes(ehcp.settings.session_secret_path)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_SECURE=ehcp.settings.base_url.startswith("https://"))
    ehcp.oauth = OAuthServer(app, ehcp.settings, ehcp.identity)


def server() -> OAuthServer:
    return current_app.extensions["ehcp"].oauth


# --------------------------------------------------------------------------- OAuth endpoints

_PROTOCOL_ENDPOINTS = frozenset({"oauth.authorize", "oauth.token", "oauth.revoke", "oauth.introspect"})


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


@bp.get("/oauth/authorize")
def authorize() -> Response:
    try:
        grant = server().get_consent_grant(end_user=None)
    except OAuth2Error as error:
        return _oauth_error(error)
    settings = services().settings
    if request.args.get("aud", settings.base_url).rstrip("/") != settings.base_url.rstrip("/"):
        return server().handle_error_response(None, _redirecting("invalid_request",
                                                                 "aud must be this server's FHIR base URL"))
    identity = session.get("identity")
    if not identity:
        return redirect(_sign_in_url(request.full_path))
    links = services().identity.links_of(identity)
    if not links:
        return server().create_authorization_response(grant=grant, grant_user=None)  # access_denied
    chosen = _chosen(links)
    if chosen is None:
        return _picker(links)
    return server().create_authorization_response(grant=grant, grant_user=SignedIn(identity, chosen))


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
    wanted = request.args.get("link")
    if wanted:
        return next((link for link in links if link.id == wanted), None)
    return links[0] if len(links) == 1 else None


_PICKER = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Choose a child</title></head>
<body><h1>Whose plan do you want to open?</h1><ul>
{% for link in links %}<li><a id="pick-{{ link.record or link.id }}" href="{{ href(link) }}">{{ link.fhir_user }}{% if link.record %} (record {{ link.record }}){% endif %}</a></li>{% endfor %}
</ul></body></html>"""


def _picker(links: list[Link]) -> Response:
    def href(link: Link) -> str:
        return "/oauth/authorize?" + urlencode([*request.args.items(multi=True), ("link", link.id)])

    return Response(render_template_string(_PICKER, links=links, href=href), mimetype="text/html")


# --------------------------------------------------------------------------- signing in

_SIGN_IN = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in</title></head>
<body><h1>Sign in to EHCP Record</h1>
<p>Development sign-in: choose one of the example people. This page is off in production.</p>
<form method="post" action="/oauth/sign-in">
<input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="next" value="{{ next }}">
{% for person in people %}<p><button type="submit" name="person" id="person-{{ person.id }}" value="{{ person.id }}">{{ person.name }}</button></p>{% endfor %}
</form></body></html>"""


@bp.get("/oauth/sign-in")
def sign_in_page() -> Response:
    settings = services().settings
    if not settings.local_sign_in:
        raise FhirError(404, "not-found", "the local sign-in page is off here; sign in with a configured provider")
    return Response(render_template_string(_SIGN_IN, people=settings.local_people, csrf=_csrf(),
                                           next=_safe_next(request.args.get("next"))), mimetype="text/html")


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


@bp.post("/oauth/sign-in/federated")
def sign_in_federated() -> Response:
    """An ID token from a configured OpenID Connect provider (OIDC Core §3.1.3.7); any other
    issuer is refused with `invalid_token` (RFC 6750 §3.1) and no session starts."""
    try:
        identity, name = verify_id_token(request.form.get("id_token", ""), services().settings.identity_providers)
    except FederationError as exc:
        response = jsonify({"error": "invalid_token", "error_description": str(exc)})
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return response
    _start_session(identity, name)
    return redirect(_safe_next(request.form.get("next")))


@bp.post("/oauth/sign-out")
def sign_out() -> Response:
    session.clear()
    return Response(status=204)


def _start_session(identity: str, name: str) -> None:
    session.clear()
    session["identity"], session["name"] = identity, name
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
    return jsonify({"identity": identity, "name": session.get("name", ""), "csrf": _csrf(),
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
