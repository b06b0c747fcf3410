"""Who may ask for the figures: `$evaluate-measure` (bearer tokens) and `/dashboard` (the
sign-in session), against the shared 2,000-child cohort. Families and schools are refused
with an OperationOutcome; an LA sees its own LA only; a partnership user names the LA; every
query, refused or answered, is in the audit trail."""

from __future__ import annotations

import pytest

from tests.analytics.conftest import staff_browser
from tests.oauth_support import sign_in

LA_866, LA_855 = "Organization/la-866", "Organization/la-855"
YEAR = "periodStart=2025-01-01&periodEnd=2025-12-31"
PATH = "/fhir/Measure/ehcp-need-prevalence/$evaluate-measure"


def _total(report: dict) -> int:
    return report["group"][0]["population"][0]["count"]


def _audited(api, reason_part: str, outcome: str) -> int:
    """evaluate-measure audit entries with this outcome whose reason says `reason_part` (the
    reason is sealed at rest: each entry is opened as the store opens it)."""
    repo = api.services.repo
    entries = (repo.seal.entry_out(e) for e in repo.audit.find({"body.action": "evaluate-measure", "body.outcome": outcome}))
    return sum(1 for e in entries if reason_part in str(e["body"].get("reason", "")))


def test_an_la_gets_its_own_summary_report(cohort_api):
    api, cohort = cohort_api
    before = _audited(api, "for LA 866, 2025", "permit")
    response = api.get(f"{PATH}?{YEAR}", api.token("la", LA_866))
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["resourceType"] == "MeasureReport" and report["type"] == "summary"
    assert report["subject"]["identifier"]["value"] == "866"
    assert report["period"] == {"start": "2025-01-01", "end": "2025-12-31"}
    assert _total(report) > 500
    assert _audited(api, "for LA 866, 2025", "permit") == before + 1


def test_an_la_naming_another_la_is_refused_and_audited(cohort_api):
    api, _ = cohort_api
    before = _audited(api, "ehcp-need-prevalence", "deny")
    for subject in ("855", LA_855):
        response = api.get(f"{PATH}?{YEAR}&subject={subject}", api.token("la", LA_866))
        assert response.status_code == 403, response.text
        assert response.json()["resourceType"] == "OperationOutcome"
        assert "own figures only" in response.json()["issue"][0]["diagnostics"]
    assert _audited(api, "ehcp-need-prevalence", "deny") == before + 2


@pytest.mark.parametrize("role,organization,extra", [
    ("parent", None, {"fhir_user": "RelatedPerson/someone"}),
    ("young-person", None, {"fhir_user": "Patient/someone", "patient": "Patient/someone"}),
    ("school", "Organization/school-3", {}),
    ("health", "Organization/ods-rn3", {}),
])
def test_families_schools_and_services_are_refused(cohort_api, role, organization, extra):
    api, _ = cohort_api
    response = api.get(f"{PATH}?{YEAR}&subject=866", api.token(role, organization, **extra))
    assert response.status_code == 403, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "forbidden"


def test_no_token_is_401(cohort_api):
    api, _ = cohort_api
    response = api.get(f"{PATH}?{YEAR}")
    assert response.status_code == 401 and "Bearer" in response.headers["WWW-Authenticate"]


def test_a_partnership_user_names_the_la_and_may_ask_for_any(cohort_api):
    api, _ = cohort_api
    token = api.token("partnership", "Organization/dfe")
    missing = api.get(f"{PATH}?{YEAR}", token)
    assert missing.status_code == 400 and "'subject'" in missing.json()["issue"][0]["diagnostics"]
    one = api.get(f"{PATH}?{YEAR}&subject=855", token).json()
    other = api.get(f"{PATH}?{YEAR}&subject={LA_866}", token).json()
    assert one["subject"]["identifier"]["value"] == "855" and other["subject"]["identifier"]["value"] == "866"
    assert _total(one) != _total(other)


def test_post_with_parameters_matches_get(cohort_api):
    api, _ = cohort_api
    token = api.token("la", LA_866)
    body = {"resourceType": "Parameters", "parameter": [{"name": "periodStart", "valueDate": "2025-01-01"},
                                                        {"name": "periodEnd", "valueDate": "2025-12-31"}]}
    posted = api.post(PATH, body, token)
    assert posted.status_code == 200, posted.text
    assert posted.json()["group"] == api.get(f"{PATH}?{YEAR}", token).json()["group"]


@pytest.mark.parametrize("query", ["periodStart=2025-01-01&periodEnd=2025-06-30",
                                   "periodStart=2024-01-01&periodEnd=2025-12-31",
                                   "periodStart=2025-03-01&periodEnd=2025-12-31", "", "periodStart=soon"])
def test_only_whole_single_years_are_evaluated(cohort_api, query):
    api, _ = cohort_api
    response = api.get(f"{PATH}?{query}", api.token("la", LA_866))
    assert response.status_code == 400, response.text
    assert "one calendar year" in response.json()["issue"][0]["diagnostics"]


def test_unknown_measure_and_individual_reports(cohort_api):
    api, _ = cohort_api
    token = api.token("la", LA_866)
    assert api.get(f"/fhir/Measure/nope/$evaluate-measure?{YEAR}", token).status_code == 404
    individual = api.get(f"{PATH}?{YEAR}&reportType=individual", token)
    assert individual.status_code == 400 and individual.json()["issue"][0]["code"] == "not-supported"


def test_capability_statement_lists_evaluate_measure(cohort_api):
    api, _ = cohort_api
    statement = api.get("/fhir/metadata").json()
    measure = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Measure")
    assert measure["operation"] == [{"name": "evaluate-measure",
                                     "definition": "http://hl7.org/fhir/OperationDefinition/Measure-evaluate-measure"}]


# --------------------------------------------------------------------------- the dashboard

def test_dashboard_sends_a_stranger_to_sign_in(cohort_api):
    api, _ = cohort_api
    response = api.session.get(api.base + "/dashboard", allow_redirects=False, timeout=10)
    assert response.status_code == 302 and response.headers["Location"] == "/oauth/sign-in?next=/dashboard"
    assert api.session.get(api.base + "/dashboard/reports?year=2025", timeout=10).status_code == 401


def test_dashboard_refuses_a_family_sign_in(cohort_api):
    api, _ = cohort_api
    browser = sign_in(api, "jordan-parent")
    for path in ("/dashboard", "/dashboard/reports?year=2025"):
        response = browser.get(api.base + path, timeout=10)
        assert response.status_code == 403, response.text
        assert response.json()["resourceType"] == "OperationOutcome"


def test_dashboard_refuses_school_staff(cohort_api):
    api, _ = cohort_api
    browser = staff_browser(api, "school", "Organization/school-3", "sam-young-person")
    response = browser.get(api.base + "/dashboard/reports?year=2025", timeout=10)
    assert response.status_code == 403 and response.json()["issue"][0]["code"] == "forbidden"


def test_dashboard_serves_la_staff_their_own_figures(cohort_api):
    api, _ = cohort_api
    browser = staff_browser(api, "la", LA_866, "casey-professional")
    page = browser.get(api.base + "/dashboard", timeout=10)
    assert page.status_code == 200 and "<h1>Inclusion dashboard</h1>" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    bundle = browser.get(api.base + "/dashboard/reports?year=2025", timeout=10).json()
    reports = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "MeasureReport"]
    measures = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Measure"]
    assert len(reports) == len(measures) == 8
    assert {r["subject"]["identifier"]["value"] for r in reports} == {"866"}
    refused = browser.get(api.base + "/dashboard/reports?year=2025&subject=855", timeout=10)
    assert refused.status_code == 403
    script = browser.get(api.base + "/dashboard/static/chart.umd.min.js", timeout=10)
    assert script.status_code == 200 and script.text.startswith("/*!\n * Chart.js v4.6.1")
    assert browser.get(api.base + "/dashboard/static/nothing.js", timeout=10).status_code == 404


def test_one_refresh_at_a_time_across_processes(cohort_api):
    """Another process holding the extract's lock file (a gunicorn worker refreshing): this
    one skips its turn instead of writing a second generation beside it."""
    import fcntl

    api, _ = cohort_api
    extract = api.services.analytics.extract
    before = extract.manifest()["generation"]
    with open(extract.root / "refresh.lock", "a+") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        assert extract.refresh(wait=False) is None
        fcntl.flock(other, fcntl.LOCK_UN)
    assert extract.manifest()["generation"] == before


def test_dashboard_serves_partnership_staff_any_la_and_no_record(cohort_api):
    """A partnership's administrator links a member of staff (role `partnership`): signed in,
    they see the dashboard for the LA they name, and their role reads no child's record."""
    api, cohort = cohort_api
    browser = staff_browser(api, "partnership", "Organization/dfe", "alex-parent")  # a person of no other link
    assert browser.get(api.base + "/dashboard", timeout=10).status_code == 200
    missing = browser.get(api.base + "/dashboard/reports?year=2025", timeout=30)
    assert missing.status_code == 400 and "'subject'" in missing.json()["issue"][0]["diagnostics"]
    bundle = browser.get(api.base + "/dashboard/reports?year=2025&subject=855", timeout=30).json()
    reports = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "MeasureReport"]
    assert len(reports) == 8 and {r["subject"]["identifier"]["value"] for r in reports} == {"855"}
    child = cohort.facts[0].record
    for path in (f"/fhir/Patient/{child}", f"/fhir/Condition?patient=Patient/{child}", "/fhir/Patient"):
        read = browser.get(api.base + path, timeout=10)  # the session is no bearer token: nothing
        assert read.status_code == 401, (path, read.status_code)
    token = api.token("partnership", "Organization/dfe")
    read = api.get(f"/fhir/Patient/{child}", token)
    found = api.get("/fhir/Patient", token)
    assert read.status_code == 404 and read.json()["issue"][0]["code"] == "not-found"  # hidden equals missing
    assert found.status_code == 200 and found.json()["total"] == 0 and found.json()["entry"] == []
