"""The access boundary, generated from the route table: no route leaks what consent hides.

Every rule in the Flask app (taken from the same `_register_blueprints` that `create_app` uses,
so a new route is covered without anyone remembering) is requested by three callers who may
see little or nothing of child 1's record:

- ``school``: a school with no consent at all;
- ``other-parent``: the parent of child 2 (another family), looking at child 1;
- ``trust``: an NHS trust that child 1's parent consented to read sections C and G only.

Each route's path variables are filled with child 1's real ids and, separately, with an id that
does not exist. Child 1's plan carries a distinctive canary string in every section's content
("CANARY-SECTION-F"), in Binaries whose securityContext is the Composition, the Patient and a
RelatedPerson, and the family disagreed with the issued plan ("LEAK-CANARY-DISAGREE"), so the
family's recorded view (their text and the rights text) sits on the issued Composition. Then:

1. no response carries a canary the caller may not see, the family's recorded view, or an
   ETag / Last-Modified / Location header on a refusal;
2. a hidden resource and a missing id answer with the same status and the same body apart from
   the id (no existence or version oracle);
3. each refused request (403/404) about child 1's record adds exactly one entry to child 1's
   audit chain;
4. the named cases: conditional create (plain and as a batch entry), PUT with a stale If-Match,
   $respond / $issue on a review Task, $document / $diff / $everything, and the Binary whose
   securityContext is the Composition.

All requests run once, in order, in one module fixture (`observations`); each parametrised test
then judges one route for one caller and lists every failing request, named by route.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Callable, Iterator

import pytest
from flask import Flask

import api as api_package
from consent.engine import handover_date
from ehcp_record.audit.chain import CHECKPOINT_ACTION
from ehcp_record.fhir.model import SERVED_TYPES
from ehcp_record.operations.proposals import RIGHTS_TEXT
from tests.consent_support import SECTIONS, example_for_a_new_child, grant, section_of
from tests.e2e.test_statutory_process import respond

# --------------------------------------------------------------------------- the route table

#: The only rules not requested: open by design, or authenticated by something else.
OPEN_RULES = {
    "/fhir/metadata": "the CapabilityStatement is public",
    "/fhir/.well-known/smart-configuration": "SMART discovery is public",
    "/healthz": "liveness probe",
    "/readyz": "readiness probe",
    "/fhir/$receive-transfer": "authenticated by the sending deployment's Ed25519 signature, not a token",
    "/static/<path:filename>": "Flask's static files (the API has no static folder)",
    # The authorization server and linking: OAuth client authentication or the sign-in session;
    # the two bearer routes reach a record only through ScopedStore.open_record (tests/api/test_oauth_errors.py).
    "/oauth/authorize": "OAuth authorization endpoint (sign-in session)",
    "/oauth/token": "OAuth token endpoint (client authentication)",
    "/oauth/revoke": "OAuth revocation (client authentication)",
    "/oauth/introspect": "OAuth introspection (client authentication)",
    "/oauth/jwks": "the authorization server's public keys",
    "/oauth/.well-known/openid-configuration": "OpenID Connect discovery is public",
    "/oauth/sign-in": "the sign-in page (providers; the example people in development)",
    "/oauth/sign-in/provider/<provider_id>": "sends the person to a configured OpenID Connect provider",
    "/oauth/sign-in/callback": "the provider's answer; starts a session only for a validated ID token",
    "/oauth/account/approvals/<client_id>": "the signed-in person's own approvals (session)",
    "/oauth/sign-out": "ends the sign-in session",
    "/oauth/account/links": "the signed-in person's own links (session)",
    "/oauth/account/links/<link_id>": "the signed-in person's own links (session)",
    "/oauth/invitations": "custodian only, decided by ScopedStore.open_record(record, 'write')",
    "/oauth/links/<link_id>": "custodian only, decided by ScopedStore.open_record(record, 'write')",
    # aggregate figures from the de-identified extract only, never a record (tests/analytics)
    "/fhir/Measure/<measure_id>/$evaluate-measure": "suppressed MeasureReports; LA and partnership users only",
    "/dashboard": "the dashboard page (sign-in session; LA and partnership staff only)",
    "/dashboard/reports": "suppressed MeasureReports (sign-in session; LA and partnership staff only)",
    "/dashboard/static/<name>": "the dashboard's own script, styles and vendored Chart.js",
    **{f"/fhir/{t}{suffix}": "our published definitions (profiles/), no child's data"
       for t in ("StructureDefinition", "ValueSet", "CodeSystem", "SearchParameter", "OperationDefinition",
                 "CompartmentDefinition", "Measure") for suffix in ("", "/<fhir_id:resource_id>")},
}
IGNORED_METHODS = {"HEAD", "OPTIONS"}
#: Path variables this suite knows how to fill with child 1's ids and with a missing id.
ID_VARIABLES = {"resource_id": None, "composition_id": "Composition", "task_id": "Task",
                "patient_id": "Patient", "binary_id": "Binary"}
KNOWN_VARIABLES = set(ID_VARIABLES) | {"resource_type", "vid"}


def route_table(app: Flask) -> list[tuple[str, str, tuple[str, ...]]]:
    """(method, rule, variables) for every rule and method the app answers, open rules left out."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.rule in OPEN_RULES:
            continue
        for method in rule.methods - IGNORED_METHODS:
            plain = re.sub(r"<[a-z_]+:([a-z_]+)>", r"<\1>", rule.rule)  # converters (fhir_type, fhir_id) aside
            found.add((method, plain, tuple(sorted(rule.arguments))))
    return sorted(found, key=lambda r: (r[1], r[0]))


def _blueprint_app() -> Flask:
    """The app's route table without a database: the blueprints `create_app` registers."""
    app = Flask("route-table", static_folder=None)
    api_package._register_blueprints(app)
    return app


ROUTES = route_table(_blueprint_app())
_UNFILLABLE = [(m, r, v) for m, r, vs in ROUTES for v in vs if v not in KNOWN_VARIABLES]
if _UNFILLABLE:
    pytest.fail("the access-boundary suite does not know how to fill these path variables; extend "
                f"ID_VARIABLES / bindings() for them: {_UNFILLABLE}", pytrace=False)


def body_kind(method: str, rule: str) -> str | None:
    """Which request body a write route gets (None: no body)."""
    if method in ("GET", "DELETE"):
        return None
    kinds = [
        ("POST", "/fhir", "bundle"), ("POST", "/fhir/", "bundle"), ("POST", "/fhir/Binary", "binary-upload"),
        ("PUT", "/fhir/<resource_type>", "conditional-put"),
        ("PUT", "/fhir/Binary/<binary_id>", "put"), ("PUT", "/fhir/<resource_type>/<resource_id>", "put"),
        ("POST", "/fhir/<resource_type>", "create"), ("POST", "/fhir/<resource_type>/_search", "search-form"),
        ("POST", "/fhir/<resource_type>/$validate", "create"),
        ("POST", "/fhir/Composition/<composition_id>/$propose", "proposal"),
        ("POST", "/fhir/Task/<task_id>/$respond", "response"), ("POST", "/fhir/Task/<task_id>/$issue", "none"),
        ("POST", "/fhir/Task/<task_id>/$accept", "none"), ("POST", "/fhir/Patient/<patient_id>/$transfer", "transfer"),
        ("POST", "/fhir/Patient/<patient_id>/$erase", "none"),
        # the statutory timeline (operations.assessment, reviews, notices): the record is opened first
        ("POST", "/fhir/Patient/<patient_id>/$request-assessment", "none"),
        ("POST", "/fhir/Task/<task_id>/$request-advice", "none"), ("POST", "/fhir/Task/<task_id>/$clock-exception", "none"),
        ("POST", "/fhir/Task/<task_id>/$complete-step", "none"), ("POST", "/fhir/Patient/<patient_id>/$phase-transfer", "none"),
        ("POST", "/fhir/Patient/<patient_id>/$cease", "none"), ("POST", "/fhir/Patient/<patient_id>/$notice-event", "none"),
    ]
    return next((kind for m, r, kind in kinds if m == method and r == rule), None)


_NO_BODY = [(m, r) for m, r, _ in ROUTES if m in ("POST", "PUT", "PATCH") and body_kind(m, r) is None]
if _NO_BODY:
    pytest.fail(f"the access-boundary suite has no request body for these routes; extend body_kind(): {_NO_BODY}",
                pytrace=False)

CALLERS = ("school", "other-parent", "trust")
CASE_IDS = [f"{c}-{m}-{r}" for c in CALLERS for m, r, _ in ROUTES]
CASES = [(c, m, r) for c in CALLERS for m, r, _ in ROUTES]

# --------------------------------------------------------------------------- canaries

BASE = "http://ehcp-record.example.org/fhir"
TRUST_SECTIONS = frozenset({"C", "G"})
DISAGREE = "LEAK-CANARY-DISAGREE"
RIGHTS_FRAGMENT = RIGHTS_TEXT[:60]
PLAN_IDENTIFIER = {"system": f"{BASE}/NamingSystem/leak-suite-plan", "value": "LEAK-PLAN-CHILD-1"}
CHILD1_NHS = "9000000009"
CHILD2_NHS = "9000000017"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
CONTEXT_BINARIES = ("Composition", "Patient", "RelatedPerson")
MISSING = str(uuid.uuid4())  # an id no resource has, shaped like the server's own ids


def section_canary(code: str) -> str:
    return f"CANARY-SECTION-{code}"


def binary_canary(context_type: str) -> str:
    return f"CANARY-BINARY-{context_type.upper()}"


ALL_CANARIES = tuple(section_canary(s) for s in SECTIONS) + tuple(binary_canary(t) for t in CONTEXT_BINARIES)


def forbidden_for(caller: str) -> tuple[str, ...]:
    """What must never reach this caller from child 1's record."""
    allowed = {section_canary(s) for s in TRUST_SECTIONS} if caller == "trust" else set()
    return tuple(c for c in ALL_CANARIES if c not in allowed) + (DISAGREE, RIGHTS_FRAGMENT)


# --------------------------------------------------------------------------- seeding


def _with_canaries(bundle: dict) -> dict:
    """The example plan with each section's canary in its narrative and in every resource in it."""
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Composition":
            resource["identifier"] = dict(PLAN_IDENTIFIER)
            for section in resource["section"]:
                code = section["code"]["coding"][0]["code"]
                div = section["text"]["div"]
                section["text"]["div"] = div[:-len("</div>")] + f"<p>{section_canary(code)}</p></div>"
            continue
        code = section_of(resource)
        if code not in SECTIONS:
            continue
        canary = section_canary(code)
        if resource["resourceType"] == "Condition":
            resource["note"][0]["text"] += f" {canary}"
        elif resource["resourceType"] == "Goal":
            resource["description"]["text"] += f" {canary}"
        elif resource["resourceType"] == "CarePlan":
            resource["description"] = f"{resource.get('title', '')} {canary}"
        elif resource["resourceType"] == "DocumentReference":
            resource["description"] = f"{resource.get('description', '')} {canary}"
    return bundle


def _load_plan(api, canaries: bool, nhs: str, answer: str, comment: str = "") -> dict:
    """An example plan as a new child's issued plan (the family answering `answer`)."""
    bundle = example_for_a_new_child()
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"]["identifier"] = [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}]
    if canaries:
        bundle = _with_canaries(bundle)
    response = api.post("/fhir", bundle, api.la())
    assert response.status_code == 200, response.text
    created: dict[str, list[dict]] = {}
    for entry in response.json()["entry"]:
        created.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    plan, child, mum = created["Composition"][0], created["Patient"][0], created["RelatedPerson"][0]
    parent = api.token("parent", None, fhir_user=f"RelatedPerson/{mum['id']}")
    decides = parent
    if date.today() >= handover_date(date.fromisoformat(child["birthDate"])):
        decides = api.token("young-person", None, fhir_user=f"Patient/{child['id']}")
    task = _propose(api, plan["id"])
    answered = respond(api, task["id"], decides, answer, comment)
    assert answered.status_code == 200, answered.text
    issued = api.post(f"/fhir/Task/{task['id']}/$issue", None, api.la())
    assert issued.status_code == 200, issued.text
    return {"created": created, "plan": plan["id"], "child": child["id"], "mum": mum["id"],
            "parent_token": parent, "decides": decides, "review_task": task["id"]}


def _propose(api, plan_id: str) -> dict:
    plan = api.get(f"/fhir/Composition/{plan_id}", api.la()).json()
    plan.pop("meta")
    proposal = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": plan, "request": {"method": "PUT", "url": f"Composition/{plan_id}"}}]}
    response = api.post(f"/fhir/Composition/{plan_id}/$propose", proposal, api.la())
    assert response.status_code == 201, response.text
    return response.json()


def _upload_json_binary(api, context: str, text: str) -> tuple[int, str | None, str]:
    body = {"resourceType": "Binary", "contentType": "text/plain", "securityContext": {"reference": context},
            "data": base64.b64encode(text.encode()).decode()}
    response = api.post("/fhir/Binary", body, api.la())
    return response.status_code, (response.json().get("id") if response.status_code == 201 else None), response.text


@dataclass
class World:
    child: str
    plan: str
    mum: str
    open_task: str
    review_task: str
    transfer_task: str | None
    photo: str
    context_binaries: dict[str, str]       # securityContext type -> Binary id (those the LA could create)
    context_refused: dict[str, str]        # securityContext type -> why the LA could not create it
    resources: list[tuple[str, str]]       # every (type, id) in child 1's record, plus two AuditEvents
    la_views: dict[tuple[str, str], dict]  # (type, id) -> the custodian's view, canaries stripped
    sections: dict[tuple[str, str], str]   # (type, id) -> stored section / pseudo-section
    tokens: dict[str, str]
    child2: str
    child2_parent: str
    task_scoped: str

    def visible_to(self, caller: str, key: tuple[str, str]) -> bool:
        """Which of child 1's resources a caller may see at all (written out, not asked of the server)."""
        if caller != "trust":
            return False
        resource_type, _ = key
        section = self.sections.get(key)
        if resource_type == "Binary":
            return section in TRUST_SECTIONS  # a Binary follows its DocumentReference's section only
        return section in TRUST_SECTIONS or section in ("record", "plan", "directory")


def _strip(value: Any) -> Any:
    """A copy with every canary and the recorded view taken out (request bodies carry none)."""
    text = json.dumps(value, ensure_ascii=False)
    for canary in ALL_CANARIES + (DISAGREE,):
        text = text.replace(canary, "stripped")
    text = text.replace(json.dumps(RIGHTS_TEXT)[1:-1], "stripped")
    return json.loads(text)


@pytest.fixture(scope="module")
def world(api) -> World:
    api.ensure_la_organization()
    one = _load_plan(api, True, CHILD1_NHS, "disagree", DISAGREE)
    two = _load_plan(api, False, CHILD2_NHS, "agree")
    child, plan, mum = one["child"], one["plan"], one["mum"]
    consent = api.post("/fhir/Consent", grant(child, f"RelatedPerson/{mum}", "Organization/nhs-leak-1",
                                              sorted(TRUST_SECTIONS), role="health"), one["parent_token"])
    assert consent.status_code == 201, consent.text

    photo_of = next(d for d in one["created"]["DocumentReference"] if section_of(d) == "A")
    headers = {"Authorization": f"Bearer {api.la()}", "Content-Type": "image/png",
               "X-Security-Context": f"DocumentReference/{photo_of['id']}"}
    photo = api.session.post(api.base + "/fhir/Binary", data=PNG + section_canary("A").encode(), headers=headers)
    assert photo.status_code == 201, photo.text

    contexts = {"Composition": f"Composition/{plan}", "Patient": f"Patient/{child}",
                "RelatedPerson": f"RelatedPerson/{mum}"}
    made, refused = {}, {}
    for context_type, reference in contexts.items():
        status, binary_id, text = _upload_json_binary(api, reference, binary_canary(context_type))
        if binary_id:
            made[context_type] = binary_id
        else:
            refused[context_type] = f"{status}: {text[:200]}"

    open_task = _propose(api, plan)["id"]  # an amendment proposal still waiting for the family
    transfer = api.post(f"/fhir/Patient/{child}/$transfer", {"resourceType": "Parameters", "parameter": [
        {"name": "destination", "valueReference": {"reference": "Organization/la-916"}},
        {"name": "moveDate", "valueDate": date.today().isoformat()},
        {"name": "notifiedDate", "valueDate": date.today().isoformat()}]}, api.la())
    transfer_task = transfer.json()["id"] if transfer.status_code == 201 else None

    everything = api.get(f"/fhir/Patient/{child}/$everything", api.la())
    assert everything.status_code == 200, everything.text
    la_views, sections, resources = {}, {}, []
    for entry in everything.json()["entry"]:
        resource = entry["resource"]
        key = (resource["resourceType"], resource["id"])
        resources.append(key)
        la_views[key] = _strip(resource)
        stored = api.services.repo.read(*key)
        sections[key] = stored.section if stored is not None else section_of(resource)
    for seq in (1, 2):
        key = ("AuditEvent", f"{child}-{seq}")
        resources.append(key)
        sections[key] = "governance"
    assert {("Binary", b) for b in made.values()} <= set(resources)

    tokens = {
        "school": api.token("school", "Organization/school-leak-1"),
        "other-parent": two["parent_token"],
        "trust": api.token("health", "Organization/nhs-leak-1"),
    }
    task_scoped = api.token("la", "Organization/la-866", scope="user/Task.rs")
    return World(child, plan, mum, open_task, one["review_task"], transfer_task, photo.json()["id"], made, refused,
                 resources, la_views, sections, tokens, two["child"], two["parent_token"], task_scoped)


# --------------------------------------------------------------------------- requests


@dataclass
class Request:
    label: str
    method: str
    path: str
    body: Any = None          # JSON, or bytes when raw
    raw: bool = False
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Variant:
    """One concrete request against child 1 and the same request with the id missing."""
    name: str                    # e.g. "Condition/<id> If-Match stale"
    real: Request
    missing: Request | None
    about: list[tuple[str, str]]  # the child-1 resources the request is about
    real_ids: tuple[str, ...]     # ids replaced by <id> when comparing
    audited: bool = True          # False: not about an existing thing in child 1's record


@dataclass
class Seen:
    status: int
    headers: dict[str, str]
    content: bytes
    audit_delta: int


@dataclass
class Observation:
    variant: Variant
    real: Seen
    missing: Seen | None


def bindings(world: World, variables: tuple[str, ...]) -> Iterator[tuple[dict, dict, list, tuple, bool]]:
    """(real values, missing values, resources it is about, real ids, whether it exists) for a
    rule's variables; `_history/99` of a real resource is a version that does not exist."""
    ids = [v for v in variables if v in ID_VARIABLES]
    vids = ("1", "99") if "vid" in variables else (None,)
    if "resource_id" in variables:
        pairs = [(t, i) for t, i in world.resources]
    elif ids:
        wanted = ID_VARIABLES[ids[0]]
        pairs = [(t, i) for t, i in world.resources if t == wanted]
        if wanted == "Task":
            pairs = [("Task", t) for t in (world.open_task, world.review_task, world.transfer_task) if t]
    elif "resource_type" in variables:
        for resource_type in SERVED_TYPES:
            about = [k for k in world.resources if k[0] == resource_type] or [(resource_type, "")]
            yield {"resource_type": resource_type}, {"resource_type": resource_type}, about, (world.child,), True
        return
    else:
        yield {}, {}, [("Patient", world.child)], (world.child,), True
        return
    for resource_type, resource_id in pairs:
        for vid in vids:
            real = {"resource_type": resource_type}
            missing = {"resource_type": resource_type}
            for name in ids:
                real[name], missing[name] = resource_id, MISSING
            if vid is not None:
                real["vid"] = missing["vid"] = vid
            yield real, missing, [(resource_type, resource_id)], (resource_id,), vid != "99"


def fill(rule: str, values: dict) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: values[m.group(1)], rule)


#: Types whose created resources belong to no existing child's record.
UNLINKED_CREATE_TYPES = {"Patient", "Organization", "Practitioner", "PractitionerRole", "Subscription", "AuditEvent"}
#: Types with no patient search parameter are searched by _id (one of child 1's, if any).
UNLINKED_SEARCH_TYPES = {"Patient", "Organization", "Practitioner", "PractitionerRole", "Binary", "Subscription"}


def search_criterion(world: World, resource_type: str) -> tuple[str, str, list[tuple[str, str]]]:
    """(parameter, child 1's value, resources it is about) for a search of the type."""
    if resource_type not in UNLINKED_SEARCH_TYPES:
        return "patient", world.child, [k for k in world.resources if k[0] == resource_type]
    mine = [k for k in world.resources if k[0] == resource_type]
    if resource_type == "Binary":
        mine = [("Binary", world.context_binaries.get("Composition") or world.photo)]
    return "_id", (mine[0][1] if mine else str(uuid.uuid5(uuid.NAMESPACE_URL, resource_type))), mine[:1]


def create_body(world: World, resource_type: str, patient: str) -> dict:
    """A plausible new resource of the type in the given child's record (or the directory)."""
    subject = {"reference": f"Patient/{patient}"}
    section = lambda code: [{"coding": [{"system": f"{BASE}/CodeSystem/ehcp-section", "code": code}]}]  # noqa: E731
    bodies: dict[str, dict] = {
        "Patient": {"resourceType": "Patient", "birthDate": "2016-01-01"},
        "RelatedPerson": {"resourceType": "RelatedPerson", "patient": subject, "name": [{"family": "Intruder"}]},
        "Organization": {"resourceType": "Organization", "name": "Leak suite organisation"},
        "Practitioner": {"resourceType": "Practitioner", "name": [{"family": "Leak"}]},
        "PractitionerRole": {"resourceType": "PractitionerRole", "active": True},
        "Composition": {"resourceType": "Composition", "status": "preliminary", "subject": subject,
                        "type": {"coding": [{"system": f"{BASE}/CodeSystem/ehcp-document-type", "code": "ehcp"}]},
                        "date": "2025-01-01", "author": [{"display": "leak suite"}], "title": "Draft"},
        "Condition": {"resourceType": "Condition", "subject": subject, "category": section("D"),
                      "code": {"text": "A new need"}},
        "Goal": {"resourceType": "Goal", "lifecycleStatus": "proposed", "subject": subject,
                 "description": {"text": "A new outcome"}},
        "CarePlan": {"resourceType": "CarePlan", "status": "draft", "intent": "plan", "subject": subject,
                     "category": section("F"), "title": "New provision"},
        "DocumentReference": {"resourceType": "DocumentReference", "status": "current", "subject": subject,
                              "category": section("K"), "content": [{"attachment": {
                                  "contentType": "text/plain", "data": "YWR2aWNl", "title": "Advice"}}]},
        "Binary": {"resourceType": "Binary", "contentType": "text/plain",
                   "securityContext": {"reference": f"Patient/{patient}"}, "data": "aGVsbG8="},
        "Consent": grant(patient, f"RelatedPerson/{world.mum}", "Organization/school-leak-1", ["A"]),
        "Task": {"resourceType": "Task", "status": "requested", "intent": "order", "for": subject},
        "Provenance": {"resourceType": "Provenance", "target": [subject], "recorded": "2025-01-01T00:00:00Z",
                       "agent": [{"who": {"display": "leak suite"}}]},
        "Subscription": {"resourceType": "Subscription", "status": "requested", "reason": "leak suite",
                         "criteria": f"Condition?patient={patient}",
                         "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook",
                                     "payload": "application/fhir+json"}},
        "AuditEvent": {"resourceType": "AuditEvent", "type": {"code": "rest"}, "recorded": "2025-01-01T00:00:00Z",
                       "agent": [{"requestor": True}], "source": {"observer": {"display": "leak"}}},
        "Communication": {"resourceType": "Communication", "status": "completed", "subject": subject,
                          "payload": [{"contentString": "a forged decision notice"}]},
    }
    return bodies[resource_type]


def put_body(world: World, resource_type: str, real_id: str, target_id: str) -> dict:
    """The custodian's current view (canaries stripped) under the URL's id."""
    if resource_type == "Binary":
        return {"resourceType": "Binary", "id": target_id, "contentType": "text/plain",
                "securityContext": {"reference": f"Patient/{world.child}"}, "data": "cmVwbGFjZWQ="}
    body = copy.deepcopy(world.la_views.get((resource_type, real_id)) or create_body(world, resource_type, world.child))
    body.pop("meta", None)
    body["id"] = target_id
    return body


def variants(world: World, method: str, rule: str, variables: tuple[str, ...]) -> list[Variant]:
    kind = body_kind(method, rule)
    found: list[Variant] = []
    for real, missing, about, real_ids, exists in bindings(world, variables):
        rtype = real.get("resource_type", "")
        path, missing_path = fill(rule, real), fill(rule, missing)
        name = path.replace(real_ids[0], "<id>") if real_ids[0] else path
        has_missing = any(v in variables for v in ID_VARIABLES)

        def add(suffix: str, real_req: Request, missing_req: Request | None) -> None:
            found.append(Variant(f"{name}{suffix}", real_req, missing_req, about, real_ids, exists))

        if method == "GET" and rule == "/fhir/<resource_type>":
            param, value, subjects = search_criterion(world, rtype)
            add(f"?{param}=<id>", Request(name, method, f"{path}?{param}={value}"),
                Request(name, method, f"{path}?{param}={MISSING}"))
            found[-1].real_ids, found[-1].about = (value,), subjects or [(rtype, "")]
        elif method == "GET" and rule.endswith("$diff"):
            add("?from=1&to=2", Request(name, method, f"{path}?from=1&to=2"),
                Request(name, method, f"{missing_path}?from=1&to=2"))
        elif method == "GET" and rule.startswith("/fhir/Binary/"):
            for accept in ("application/fhir+json", "*/*"):
                add(f" Accept {accept}", Request(name, method, path, headers={"Accept": accept}),
                    Request(name, method, missing_path, headers={"Accept": accept}))
        elif kind is None or kind == "none":
            add("", Request(name, method, path), Request(name, method, missing_path) if has_missing else None)
        elif kind == "put":
            current = str(max(1, int((world.la_views.get((rtype or "Binary", real_ids[0])) or {})
                                     .get("meta", {}).get("versionId", "1"))))
            matches = [f'W/"{current}"', 'W/"99"'] + (['W/"1"'] if current != "1" else [])
            for match in matches:  # the current version, one it never had, and a stale one
                real_body = put_body(world, rtype or "Binary", real_ids[0], real_ids[0])
                missing_body = put_body(world, rtype or "Binary", real_ids[0], MISSING)
                add(f" If-Match {match}", Request(name, method, path, real_body, headers={"If-Match": match}),
                    Request(name, method, missing_path, missing_body, headers={"If-Match": match}))
        elif kind == "conditional-put":  # PUT /fhir/Type?_id=<one of child 1's>: as a PUT to that id
            mine = [k[1] for k in world.resources if k[0] == rtype]
            if not mine or rtype == "Binary":  # Binary is replaced through PUT /fhir/Binary/<id>
                continue
            current = str((world.la_views.get((rtype, mine[0])) or {}).get("meta", {}).get("versionId", "1"))
            add(f"?_id=<id> If-Match W/\"{current}\"",
                Request(name, method, f"{path}?_id={mine[0]}", put_body(world, rtype, mine[0], mine[0]),
                        headers={"If-Match": f'W/"{current}"'}),
                Request(name, method, f"{path}?_id={MISSING}", put_body(world, rtype, mine[0], MISSING),
                        headers={"If-Match": f'W/"{current}"'}))
            found[-1].real_ids, found[-1].about = (mine[0],), [(rtype, mine[0])]
        elif kind == "create":
            body = create_body(world, rtype, world.child)
            missing_body = create_body(world, rtype, MISSING)
            comparable = json.dumps(body) != json.dumps(missing_body)
            add("", Request(name, method, path, body), Request(name, method, path, missing_body) if comparable else None)
            if rtype in UNLINKED_CREATE_TYPES:  # a new resource outside child 1's record
                found[-1].about, found[-1].audited = [(rtype, "")], False
            else:
                found[-1].about = [("Patient", world.child)]  # the body names child 1's record
        elif kind == "search-form":
            form = {"Content-Type": "application/x-www-form-urlencoded"}
            param, value, subjects = search_criterion(world, rtype)
            add(f" {param}=<id>", Request(name, method, path, f"{param}={value}".encode(), True, form),
                Request(name, method, path, f"{param}={MISSING}".encode(), True, form))
            found[-1].real_ids, found[-1].about = (value,), subjects or [(rtype, "")]
        elif kind == "bundle":
            for bundle_type, entries in _bundle_entries(world).items():
                add(f" {bundle_type}", Request(name, method, path, {"resourceType": "Bundle", "type": bundle_type,
                                                                     "entry": entries(world.child, world.plan)}),
                    Request(name, method, path, {"resourceType": "Bundle", "type": bundle_type,
                                                 "entry": entries(MISSING, MISSING)}))
                found[-1].about = [("Composition", world.plan)] if bundle_type == "batch" else [("Patient", world.child)]
            found[-1].real_ids = found[-2].real_ids = (world.child, world.plan)
        elif kind == "binary-upload":
            docs = [k for k in world.resources if k[0] == "DocumentReference" and world.sections[k] == "A"]
            doc = docs[0][1]
            json_body = lambda target: {"resourceType": "Binary", "contentType": "text/plain",  # noqa: E731
                                        "securityContext": {"reference": f"DocumentReference/{target}"},
                                        "data": "aGVsbG8="}
            found.append(Variant(f"{name} JSON securityContext DocumentReference/<id>",
                                 Request(name, method, path, json_body(doc)), Request(name, method, path, json_body(MISSING)),
                                 [("DocumentReference", doc)], (doc,)))
            raw = lambda target: {"Content-Type": "image/png", "X-Security-Context": f"DocumentReference/{target}"}  # noqa: E731
            found.append(Variant(f"{name} image/png X-Security-Context DocumentReference/<id>",
                                 Request(name, method, path, PNG, True, raw(doc)),
                                 Request(name, method, path, PNG, True, raw(MISSING)),
                                 [("DocumentReference", doc)], (doc,)))
        elif kind == "proposal":
            plan = copy.deepcopy(world.la_views[("Composition", world.plan)])
            plan.pop("meta", None)
            proposal = lambda pid: {"resourceType": "Bundle", "type": "transaction", "entry": [  # noqa: E731
                {"resource": dict(plan, id=pid), "request": {"method": "PUT", "url": f"Composition/{pid}"}}]}
            add("", Request(name, method, path, proposal(real_ids[0])), Request(name, method, missing_path, proposal(MISSING)))
        elif kind == "response":
            answer = {"resourceType": "Parameters", "parameter": [{"name": "response", "valueCode": "agree"}]}
            add("", Request(name, method, path, answer), Request(name, method, missing_path, answer))
        elif kind == "transfer":
            params = {"resourceType": "Parameters", "parameter": [
                {"name": "destination", "valueReference": {"reference": "Organization/la-201"}},
                {"name": "moveDate", "valueDate": date.today().isoformat()},
                {"name": "notifiedDate", "valueDate": date.today().isoformat()}]}
            add("", Request(name, method, path, params), Request(name, method, missing_path, params))
        else:
            raise AssertionError(f"no request body for {method} {rule} (kind {kind})")
    return found


def _bundle_entries(world: World) -> dict[str, Callable[[str, str], list]]:
    def read_entries(child: str, plan: str) -> list:
        return [{"request": {"method": "GET", "url": f"Composition/{plan}"}},
                {"request": {"method": "GET", "url": f"Patient/{child}"}},
                {"request": {"method": "GET", "url": f"Condition?patient={child}"}},
                {"request": {"method": "GET", "url": f"Composition/{plan}/_history/1"}}]

    def write_entries(child: str, plan: str) -> list:
        return [{"fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'leak')}",
                 "resource": create_body(world, "Condition", child), "request": {"method": "POST", "url": "Condition"}}]

    return {"batch": read_entries, "transaction": write_entries}


def audit_count(api, world: World) -> int:
    return api.services.repo.db.audit.count_documents({"record": world.child, "body.action": {"$ne": CHECKPOINT_ACTION}})


def send(api, token: str, request: Request) -> Any:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    if not request.raw:
        headers["Content-Type"] = "application/fhir+json"
    headers.update(request.headers)
    data = request.body if request.raw else (json.dumps(request.body) if request.body is not None else None)
    return api.session.request(request.method, api.base + request.path, data=data, headers=headers, timeout=60)


def observe(api, world: World, token: str, request: Request) -> Seen:
    before = audit_count(api, world)
    response = send(api, token, request)
    return Seen(response.status_code, dict(response.headers), response.content, audit_count(api, world) - before)


@pytest.fixture(scope="module")
def observations(api, world) -> dict[tuple[str, str, str], list[Observation]]:
    """Every generated request, for every caller, sent once and in order."""
    seen: dict[tuple[str, str, str], list[Observation]] = {}
    adapter = api.app.url_map.bind("127.0.0.1")
    for method, rule, variables in ROUTES:
        # a fill that a more specific rule answers (GET /fhir/Binary/<id>) is that rule's case
        generated = [v for v in variants(world, method, rule, variables)
                     if adapter.match(v.real.path.split("?")[0], method, return_rule=True)[0].rule == rule]
        for v in generated:  # what even the custodian gets 404 for (AuditEvent/_history, PUT) hides nothing
            if method == "GET" and send(api, api.la(), v.real).status_code == 404:
                v.audited = False
            if method != "GET" and any(t == "AuditEvent" for t, _ in v.about):
                v.audited = False  # rendered from the audit chain, never stored: no write finds one
        for caller in CALLERS:
            token = world.tokens[caller]
            seen[(caller, method, rule)] = [
                Observation(v, observe(api, world, token, v.real), observe(api, world, token, v.missing) if v.missing else None)
                for v in generated]
    return seen


# --------------------------------------------------------------------------- judging


def readable(content: bytes) -> str:
    """The body as text, with every base64 `data` value decoded too (Binaries, documents)."""
    parts = [content.decode("utf-8", "replace")]
    try:
        stack = [json.loads(content)]
    except ValueError:
        return parts[0]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key == "data" and isinstance(value, str):
                    try:
                        parts.append(base64.b64decode(value).decode("utf-8", "replace"))
                    except ValueError:
                        pass
                else:
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return "\n".join(parts)


def leaked(caller: str, content: bytes) -> list[str]:
    text = readable(content)
    return [c for c in forbidden_for(caller) if c in text]


def normalised(seen: Seen, ids: tuple[str, ...]) -> str:
    text = seen.content.decode("utf-8", "replace")
    for value in ids:
        text = text.replace(value, "<id>")
    try:
        body = json.loads(text)
    except ValueError:
        return text
    if isinstance(body, dict) and body.get("resourceType") == "Bundle" and body.get("type", "").endswith("-response"):
        body["id"] = "<bundle-id>"
    if seen.status == 201 and isinstance(body, dict):  # two new resources: their own ids and times differ
        body.pop("id", None)
        body.pop("meta", None)
    return json.dumps(body, sort_keys=True)


def hidden(world: World, caller: str, variant: Variant) -> bool:
    return not any(world.visible_to(caller, key) for key in variant.about if key[1])


def describe(caller: str, variant: Variant, seen: Seen) -> str:
    return f"{caller} {variant.real.method} {variant.name}: {seen.status} {seen.content[:160]!r}"


@pytest.mark.parametrize("caller,method,rule", CASES, ids=CASE_IDS)
def test_no_hidden_content_or_recorded_view(observations, caller, method, rule):
    failures = []
    for obs in observations[(caller, method, rule)]:
        for which, seen in (("child 1", obs.real), ("missing id", obs.missing)):
            if seen is None:
                continue
            found = leaked(caller, seen.content)
            if found:
                failures.append(f"{describe(caller, obs.variant, seen)} [{which}] leaked {found}")
            if seen.status >= 400:
                shown = sorted(h for h in ("ETag", "Last-Modified", "Location") if h in seen.headers)
                if shown:
                    failures.append(f"{caller} {method} {obs.variant.name} [{which}]: refusal {seen.status} "
                                    f"carries {shown}")
    report(failures)


@pytest.mark.parametrize("caller,method,rule", CASES, ids=CASE_IDS)
def test_hidden_answers_like_missing(world, observations, caller, method, rule):
    failures = []
    for obs in observations[(caller, method, rule)]:
        if obs.missing is None or not hidden(world, caller, obs.variant):
            continue
        ids = obs.variant.real_ids + (MISSING,)
        if obs.real.status != obs.missing.status:
            failures.append(f"{caller} {method} {obs.variant.name}: child 1 answers {obs.real.status} "
                            f"{obs.real.content[:200]!r}, a missing id {obs.missing.status} {obs.missing.content[:200]!r}")
        elif normalised(obs.real, ids) != normalised(obs.missing, ids):
            failures.append(f"{caller} {method} {obs.variant.name}: bodies differ beyond the id:\n"
                            f"  child 1: {normalised(obs.real, ids)[:300]}\n  missing: {normalised(obs.missing, ids)[:300]}")
        real_headers = {h for h in ("ETag", "Last-Modified", "Location") if h in obs.real.headers}
        missing_headers = {h for h in ("ETag", "Last-Modified", "Location") if h in obs.missing.headers}
        if real_headers != missing_headers:
            failures.append(f"{caller} {method} {obs.variant.name}: headers {sorted(real_headers)} vs "
                            f"{sorted(missing_headers)} for a missing id")
    report(failures)


@pytest.mark.parametrize("caller,method,rule", CASES, ids=CASE_IDS)
def test_each_refusal_is_audited_once(observations, caller, method, rule):
    failures = []
    for obs in observations[(caller, method, rule)]:
        if obs.variant.audited and obs.real.status in (403, 404) and obs.real.audit_delta != 1:
            failures.append(f"{caller} {method} {obs.variant.name}: refused {obs.real.status} with "
                            f"{obs.real.audit_delta} new entries in child 1's audit chain")
    report(failures)


def report(failures: list[str]) -> None:
    """Fail listing every failing request, one a line (not pytest's truncated repr of a list)."""
    if failures:
        pytest.fail(f"{len(failures)} failing request(s):\n" + "\n".join(failures), pytrace=False)


def test_route_table_is_the_apps(api):
    """The import-time table (which parametrises this module) is exactly the running app's."""
    assert route_table(api.app) == ROUTES


def test_every_route_generates_requests(world):
    empty = [(m, r) for m, r, vs in ROUTES if not variants(world, m, r, vs)]
    assert not empty, f"routes with no generated request: {empty}"


def test_seeded_canaries_reach_the_family(api, world):
    """The canaries are really there: the custodian's $everything holds every one of them."""
    text = readable(api.get(f"/fhir/Patient/{world.child}/$everything", api.la()).content)
    for context_type in world.context_binaries:
        binary = api.get(f"/fhir/Binary/{world.context_binaries[context_type]}", api.la())
        text += readable(binary.content)
    expected = [section_canary(s) for s in SECTIONS] + [binary_canary(t) for t in world.context_binaries] + [DISAGREE]
    assert [c for c in expected if c not in text] == []
    plan = api.get(f"/fhir/Composition/{world.plan}", api.la()).text
    assert f"{BASE}/StructureDefinition/ehcp-family-recorded-view" in plan and DISAGREE in plan
    assert RIGHTS_FRAGMENT in plan


# --------------------------------------------------------------------------- named cases


def _outsiders(world: World) -> dict[str, str]:
    return {**world.tokens, "task-scoped": world.task_scoped}


@pytest.mark.parametrize("who", ["school", "other-parent", "trust", "task-scoped"])
@pytest.mark.parametrize("target", ["Composition", "Patient"])
def test_conditional_create_does_not_return_the_stored_resource(api, world, who, target):
    token = _outsiders(world)[who]
    if target == "Composition":
        criteria = f"identifier={PLAN_IDENTIFIER['system']}|{PLAN_IDENTIFIER['value']}"
        stored_id = world.plan
    else:
        criteria = f"identifier=https://fhir.nhs.uk/Id/nhs-number|{CHILD1_NHS}"
        stored_id = world.child
    body = create_body(world, target, world.child)
    nowhere = criteria.rsplit("|", 1)[0] + "|NO-SUCH-VALUE-1"
    plain = send(api, token, Request("", "POST", f"/fhir/{target}", body, headers={"If-None-Exist": criteria}))
    control = send(api, token, Request("", "POST", f"/fhir/{target}", body, headers={"If-None-Exist": nowhere}))
    batch = send(api, token, Request("", "POST", "/fhir", {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": body, "request": {"method": "POST", "url": target, "ifNoneExist": criteria}}]}))
    failures = []
    for label, response in (("POST If-None-Exist", plain), ("batch entry ifNoneExist", batch)):
        if stored_id in response.text:
            failures.append(f"{who} {label} {target}: {response.status_code} returns child 1's {target}/{stored_id}: "
                            f"{response.text[:300]}")
        found = leaked("trust" if who == "trust" else "school", response.content)
        if found:
            failures.append(f"{who} {label} {target}: leaked {found}")
    if plain.status_code != control.status_code:
        failures.append(f"{who} POST {target} If-None-Exist: matching criteria answer {plain.status_code}, "
                        f"non-matching {control.status_code} (a match oracle)")
    if who == "task-scoped" and plain.status_code != 403:
        failures.append(f"task-scoped token POST {target} If-None-Exist: {plain.status_code}, not 403 "
                        f"(user/Task.rs allows no {target})")
    report(failures)


@pytest.mark.parametrize("target", ["Composition", "Patient", "Condition"])
def test_stale_if_match_by_another_family_answers_like_a_missing_id(api, world, target):
    real_id = {"Composition": world.plan, "Patient": world.child}.get(target) or next(
        i for t, i in world.resources if t == target)
    token = world.tokens["other-parent"]
    failures = []
    for match in ('W/"1"', 'W/"99"'):
        real = send(api, token, Request("", "PUT", f"/fhir/{target}/{real_id}", put_body(world, target, real_id, real_id),
                                        headers={"If-Match": match}))
        missing = send(api, token, Request("", "PUT", f"/fhir/{target}/{MISSING}", put_body(world, target, real_id, MISSING),
                                           headers={"If-Match": match}))
        a = real.text.replace(real_id, "<id>")
        b = missing.text.replace(MISSING, "<id>")
        if (real.status_code, a) != (missing.status_code, b):
            failures.append(f"PUT {target} If-Match {match}: child 1 {real.status_code} {a[:200]} / "
                            f"missing {missing.status_code} {b[:200]}")
    report(failures)


@pytest.mark.parametrize("operation", ["$respond", "$issue"])
def test_review_operations_by_another_family_answer_like_a_missing_task(api, world, operation):
    token = world.tokens["other-parent"]
    body = {"resourceType": "Parameters", "parameter": [{"name": "response", "valueCode": "agree"}]}
    body = body if operation == "$respond" else None
    failures = []
    for task in (world.open_task, world.review_task):
        real = send(api, token, Request("", "POST", f"/fhir/Task/{task}/{operation}", body))
        missing = send(api, token, Request("", "POST", f"/fhir/Task/{MISSING}/{operation}", body))
        read = api.get(f"/fhir/Task/{task}", token)
        a, b = real.text.replace(task, "<id>"), missing.text.replace(MISSING, "<id>")
        if (real.status_code, a) != (missing.status_code, b):
            failures.append(f"{operation} on Task/{task} (GET answers {read.status_code}): {real.status_code} {a[:200]} "
                            f"/ missing {missing.status_code} {b[:200]}")
    report(failures)


@pytest.mark.parametrize("who", ["school", "other-parent"])
@pytest.mark.parametrize("path", ["/fhir/Composition/{plan}/$document", "/fhir/Composition/{plan}/_history/1/$document",
                                  "/fhir/Composition/{plan}/$diff?from=1&to=2", "/fhir/Patient/{child}/$everything"])
def test_operations_on_a_hidden_record_answer_like_a_missing_one(api, world, who, path):
    token = world.tokens[who]
    real_id = world.child if "{child}" in path else world.plan
    real = api.get(path.format(plan=world.plan, child=world.child), token)
    missing = api.get(path.format(plan=MISSING, child=MISSING), token)
    a, b = real.text.replace(real_id, "<id>"), missing.text.replace(MISSING, "<id>")
    assert (real.status_code, a) == (missing.status_code, b)


@pytest.mark.parametrize("context_type", CONTEXT_BINARIES)
@pytest.mark.parametrize("accept", ["application/fhir+json", "*/*"])
def test_trust_gets_nothing_of_a_binary_whose_context_is_not_a_document(api, world, context_type, accept):
    if context_type not in world.context_binaries:
        pytest.skip(f"the LA could not create a Binary for {context_type}: {world.context_refused[context_type]}")
    binary = world.context_binaries[context_type]
    headers = {"Authorization": f"Bearer {world.tokens['trust']}", "Accept": accept}
    response = api.session.get(f"{api.base}/fhir/Binary/{binary}", headers=headers)
    missing = api.session.get(f"{api.base}/fhir/Binary/{MISSING}", headers=headers)
    assert binary_canary(context_type) not in readable(response.content), response.text[:300]
    assert response.status_code == missing.status_code == 404
    assert response.text.replace(binary, "<id>") == missing.text.replace(MISSING, "<id>")
