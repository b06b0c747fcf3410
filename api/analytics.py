"""The inclusion dashboard and `$evaluate-measure` (FHIR R4 Measure operation,
https://hl7.org/fhir/R4/measure-operation-evaluate-measure.html).

- `GET|POST /fhir/Measure/{id}/$evaluate-measure?periodStart=&periodEnd=&subject=`: bearer
  token; a summary MeasureReport (ehcp_record/analytics/service.py decides who may ask).
- `GET /dashboard`: the page, for a person signed in here (the sign-in session of
  api/oauth.py) whose link is a local authority (or partnership) role; `GET /dashboard/reports`
  gives it every Measure's report for one year; `GET /dashboard/static/<name>` its own script,
  styles and the vendored Chart.js (no third-party origin: the page's Content-Security-Policy
  allows 'self' only).
Neither reads a child's record: both read only the de-identified extract, and every query is
audited by the service.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, redirect, request, send_from_directory, session

from api.capability import OPERATIONS
from api.context import request_id, services, store
from api.http import fhir_response, json_body
from consent.model import Actor
from consent.scopes import parse_scopes
from ehcp_record.access.caller import Caller
from ehcp_record.analytics.service import ROLES
from ehcp_record.errors import FhirError, forbidden
from ehcp_record.fhir.parameters import read_parameters

bp = Blueprint("analytics", __name__)
STATIC = Path(__file__).resolve().parent / "static" / "dashboard"
EVALUATE_MEASURE = "http://hl7.org/fhir/OperationDefinition/Measure-evaluate-measure"
OPERATIONS.append(("evaluate-measure", "Measure", EVALUATE_MEASURE))
#: Only this deployment's own files: no inline script, no other origin (WCAG aside, a
#: dashboard of children's figures loads nothing it does not ship).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
#: What /dashboard/static serves (the licence and provenance notes beside them are not served).
SERVED = frozenset({"dashboard.js", "dashboard.css", "chart.umd.min.js"})
_PARAMETERS = {"periodStart": "date", "periodEnd": "date", "subject": "string", "reportType": "code"}


@bp.route("/fhir/Measure/<measure_id>/$evaluate-measure", methods=["GET", "POST"])
def evaluate_measure(measure_id: str) -> Response:
    if request.method == "POST":
        params = {k: str(v) for k, v in read_parameters(json_body(), _PARAMETERS, strict=True).items()}
    else:
        params = request.args.to_dict()
    if params.get("reportType", "summary") != "summary":
        raise FhirError(400, "not-supported", "only reportType=summary is produced: no report names a child")
    return fhir_response(services().analytics.evaluate(store(), measure_id, params))


# --------------------------------------------------------------------------- the dashboard

@bp.get("/dashboard")
def dashboard() -> Response:
    if not session.get("identity"):
        return redirect("/oauth/sign-in?next=/dashboard")
    _dashboard_caller()  # 403 OperationOutcome for a family or school sign-in
    response = send_from_directory(STATIC, "index.html", mimetype="text/html", max_age=0)
    response.headers["Content-Security-Policy"] = CSP
    return response


@bp.get("/dashboard/reports")
def dashboard_reports() -> Response:
    """Every Measure's report for one year (and, for a partnership user, the LA asked for)."""
    scoped = services().records.for_caller(_dashboard_caller())
    year = request.args.get("year", "")
    params = {"periodStart": year, "periodEnd": year}
    if request.args.get("subject"):
        params["subject"] = request.args["subject"]
    analytics = services().analytics
    measures = list(analytics.measures().values())
    reports = [analytics.evaluate(scoped, measure["id"], params) for measure in measures]
    entries = [{"fullUrl": measure["url"], "resource": measure} for measure in measures]
    entries += [{"resource": report} for report in reports]
    return fhir_response({"resourceType": "Bundle", "type": "collection", "entry": entries})


@bp.get("/dashboard/static/<name>")
def dashboard_static(name: str) -> Response:
    if name not in SERVED:
        raise FhirError(404, "not-found", f"no dashboard file named {name!r}")
    response = send_from_directory(STATIC, name, max_age=3600)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _dashboard_caller() -> Caller:
    """The signed-in person as their local authority (or partnership) role, from their live link."""
    identity = session.get("identity")
    if not identity:
        raise FhirError(401, "login", "sign in first (/oauth/sign-in)",
                        headers={"WWW-Authenticate": 'Cookie realm="ehcp-record"'})
    links = [link for link in services().identity.links_of(identity) if link.active and link.role in ROLES]
    if not links:
        raise forbidden("the dashboard is for local authority and partnership staff; families and schools "
                        "read the record itself")
    link = links[0]
    return Caller(actor=Actor(role=link.role, sub=identity, fhir_user=link.fhir_user, organization=link.organization),
                  scopes=parse_scopes("user/*.rs"), issuer="session", ip=request.remote_addr or "",
                  user_agent=request.headers.get("User-Agent", ""), request_id=request_id())

