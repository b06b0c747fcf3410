"""EHCP operations (API.md "EHCP operations"): one small handler each, rules in the services."""

from __future__ import annotations

from flask import Blueprint, Response

from api.capability import OPERATIONS
from api.context import services, store
from api.http import base_url, bundle_link, fhir_response, json_body, version_headers
from ehcp_record.fhir import bundles
from ehcp_record.fhir.canonical import operation_definition

bp = Blueprint("operations", __name__, url_prefix="/fhir")


def operation(name: str, resource_type: str | None):
    """Register the operation in the CapabilityStatement as well as the route table."""
    OPERATIONS.append((name, resource_type, operation_definition(name)))
    return lambda handler: handler


@bp.post("/Composition/<composition_id>/$propose")
@operation("propose", "Composition")
def propose(composition_id: str) -> Response:
    task = services().proposals.propose(store(), composition_id, json_body())
    return fhir_response(task.resource, 201, version_headers(task, location=True))


@bp.post("/Task/<task_id>/$respond")
@operation("respond", "Task")
def respond(task_id: str) -> Response:
    task = services().proposals.respond(store(), task_id, json_body())
    return fhir_response(task.resource, 200, version_headers(task))


@bp.post("/Task/<task_id>/$issue")
@operation("issue", "Task")
def issue(task_id: str) -> Response:
    plan = services().proposals.issue(store(), task_id)
    return fhir_response(plan.resource, 200, version_headers(plan))


@bp.get("/Patient/<patient_id>/$access-log")
@operation("access-log", "Patient")
def access_log(patient_id: str) -> Response:
    from flask import request

    asked = [(k, v) for k, v in request.args.items(multi=True) if k != "patient"]
    total, events, offset, count = services().audit_log.search(store(), [("patient", patient_id)] + asked)
    # Paged like any search (self/next/previous below the configured base), plus the signed head.
    url = lambda pairs: bundle_link(f"/Patient/{patient_id}/$access-log", pairs)  # noqa: E731
    rest = [(k, v) for k, v in asked if k not in ("_count", "_offset")]
    links = bundles.paging_links(url, asked, rest, offset, count, total)
    head = services().audit_log.head_link(store(), patient_id)
    links += [head] if head is not None else []
    entries = [bundles.entry(e, base_url(), "match") for e in events]
    return fhir_response(bundles.searchset(entries, total, links))


@bp.get("/Patient/<patient_id>/$verify-audit")
@operation("verify-audit", "Patient")
def verify_audit(patient_id: str) -> Response:
    from flask import request

    return fhir_response(services().audit_log.verify(store(), patient_id, request.args.get("head")))



@bp.get("/Composition/<composition_id>/$document")
@bp.get("/Composition/<composition_id>/_history/<vid>/$document")
@operation("document", "Composition")
def document(composition_id: str, vid: str | None = None) -> Response:
    data = services().documents.document(store(), composition_id, vid)
    return Response(data, 200, content_type="application/fhir+json; charset=utf-8")


@bp.get("/Composition/<composition_id>/$diff")
@operation("diff", "Composition")
def diff(composition_id: str) -> Response:
    from flask import request

    scoped = store()
    return fhir_response(services().documents.diff(scoped, composition_id, request.args.get("from"),
                                                   request.args.get("to"),
                                                   lambda task_id: services().proposals.proposal(scoped, task_id)))


@bp.get("/Task/<task_id>/$proposal")
@operation("proposal", "Task")
def proposal(task_id: str) -> Response:
    """What a review Task proposes, as a document Bundle the family reads before answering."""
    return fhir_response(services().proposals.proposal(store(), task_id).document)


@bp.get("/Patient/<patient_id>/$everything")
@operation("everything", "Patient")
def everything(patient_id: str) -> Response:
    resources = services().everything.everything(store(), patient_id)
    return fhir_response(bundles.searchset([bundles.entry(r, mode="match") for r in resources], len(resources)))


@bp.post("/Patient/<patient_id>/$erase")
@operation("erase", "Patient")
def erase(patient_id: str) -> Response:
    return fhir_response(services().erasure.erase(store(), patient_id, json_body()))


@bp.post("/<fhir_type:resource_type>/$validate")
@operation("validate", None)
def validate(resource_type: str) -> Response:
    from ehcp_record.fhir.model import require_served_type

    require_served_type(resource_type)
    return fhir_response(services().validate.validate(store(), resource_type, json_body()))


@bp.post("/Patient/<patient_id>/$transfer")
@operation("transfer", "Patient")
def transfer(patient_id: str) -> Response:
    task = services().transfers.start(store(), patient_id, json_body())
    return fhir_response(task.resource, 201, version_headers(task, location=True))


@bp.post("/Task/<task_id>/$accept")
@operation("accept", "Task")
def accept(task_id: str) -> Response:
    task = services().transfers.accept(store(), task_id)
    return fhir_response(task.resource, 200, version_headers(task))


@bp.post("/$receive-transfer")
@operation("receive-transfer", None)
def receive_transfer() -> Response:
    """Authenticated by the sending deployment's Ed25519 signature, not a bearer token. Nothing
    is read until the headers name a sender in the trust list and carry a signature-shaped
    value, and never more than `max_transfer_bytes` (EHCP_MAX_TRANSFER_BYTES)."""
    import re

    from flask import request

    from ehcp_record.errors import FhirError
    from ehcp_record.transfer.remote import KEY_HEADER, SIGNATURE_HEADER, peer_for_key

    settings = services().settings
    if not re.fullmatch(r"[A-Za-z0-9_-]{86}(==)?", request.headers.get(SIGNATURE_HEADER, "")):
        raise FhirError(403, "security", f"a transfer must carry its Ed25519 signature in {SIGNATURE_HEADER}")
    if peer_for_key(settings, request.headers.get(KEY_HEADER, "")) is None:
        raise FhirError(403, "security", "the sending deployment is not in this deployment's trust list")
    limit = settings.max_transfer_bytes
    too_large = FhirError(413, "too-costly", f"the transfer is larger than the {limit} bytes this deployment accepts")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    request.max_content_length = limit + 1  # a chunked body: read one byte past the limit at most
    body = request.get_data(cache=False)
    if len(body) > limit:
        raise too_large
    status, ack = services().receive_transfer.receive(body, dict(request.headers))
    return fhir_response(ack, status)


# --- the statutory timeline (SEND Regulations 2014 regs 5-31; ehcp_record.operations.assessment,
# reviews, notices, worklist)


@bp.post("/Patient/<patient_id>/$request-assessment")
@operation("request-assessment", "Patient")
def request_assessment(patient_id: str) -> Response:
    task = services().assessment.request(store(), patient_id, json_body())
    return fhir_response(task.resource, 201, version_headers(task, location=True))


@bp.post("/Task/<task_id>/$request-advice")
@operation("request-advice", "Task")
def request_advice(task_id: str) -> Response:
    task = services().assessment.request_advice(store(), task_id, json_body())
    return fhir_response(task.resource, 201, version_headers(task, location=True))


@bp.post("/Task/<task_id>/$clock-exception")
@operation("clock-exception", "Task")
def clock_exception(task_id: str) -> Response:
    task = services().assessment.record_exception(store(), task_id, json_body())
    return fhir_response(task.resource, 200, version_headers(task))


@bp.post("/Task/<task_id>/$complete-step")
@operation("complete-step", "Task")
def complete_step(task_id: str) -> Response:
    task = services().assessment.complete(store(), task_id, json_body())
    return fhir_response(task.resource, 200, version_headers(task))


@bp.post("/Patient/<patient_id>/$phase-transfer")
@operation("phase-transfer", "Patient")
def phase_transfer(patient_id: str) -> Response:
    task = services().reviews.phase_transfer(store(), patient_id, json_body())
    return fhir_response(task.resource, 201, version_headers(task, location=True))


@bp.post("/Patient/<patient_id>/$cease")
@operation("cease", "Patient")
def cease(patient_id: str) -> Response:
    task = services().reviews.cease(store(), patient_id, json_body())
    return fhir_response(task.resource, 201, version_headers(task, location=True))


@bp.post("/Patient/<patient_id>/$notice-event")
@operation("notice-event", "Patient")
def notice_event(patient_id: str) -> Response:
    notice = services().notices.event(store(), patient_id, json_body())
    return fhir_response(notice.resource, 200, version_headers(notice))


@bp.get("/$worklist")
@operation("worklist", None)
def worklist() -> Response:
    from flask import request

    return fhir_response(services().worklist.worklist(store(), request.args.to_dict()))


@bp.get("/$sen2")
@operation("sen2", None)
def sen2() -> Response:
    """The SEN2 return of the caller's custody: one CSV per module and the validation report."""
    from flask import request

    from ehcp_record.operations.sen2 import as_parameters

    return fhir_response(as_parameters(services().sen2.build(store(), request.args.get("year"))))
