"""$propose -> $respond -> $issue: no change to a plan without the family's input.

SEND Regulations 2014: reg 13 (the draft plan goes to the parent/young person, who has at
least 15 days to comment), reg 22 (proposed amendments, at least 15 days to respond, the final
amended plan within 8 weeks of the proposals). The exact proposed content is pinned by a
SHA-256 hash; `$issue` applies it only when a response by the decision-maker exists for that
hash and the plan has not moved since it was proposed. Issuing sends the plan with its notice
of the right of appeal (reg 14(2); reg 22(3) for an amended plan) and moves the statutory
timeline on in the same transaction (`assessment.issued_effects`).
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from consent import engine
from ehcp_record.audit import entries as audit

from ehcp_record.audit import chain as audit_chain

from ehcp_record.workflow import clocks
from ehcp_record.operations import assessment
from ehcp_record.operations.bundles import PreparedTransaction
from ehcp_record.plan.documents import DocumentService
from ehcp_record.access.caller import Caller
from ehcp_record.access.scoped import PreparedWrite, RecordScope, ScopedStore, version_of
from ehcp_record.errors import business_rule, invalid, not_found
from ehcp_record.fhir.canonical import code_system, structure_definition
from ehcp_record.fhir.dates import instant
from ehcp_record.fhir.signatures import read_inputs
from ehcp_record.fhir.model import parse_resource
from ehcp_record.plan.gate import PLAN_CONTENT_TYPES, is_issued, is_plan
from ehcp_record.plan.proposed import ProposedPlan, proposed_resources
from ehcp_record.plan.provenance import signed_provenance
from ehcp_record.workflow.task_values import TASK_CODE_SYSTEM, TASK_INPUT_SYSTEM, concept, is_task, task_input, task_output
from ehcp_record.plan.validation import ProfileChecks, plan_resources
from ehcp_record.store.versions import AuditAppend, Version

RESPONSE_SYSTEM = code_system("parental-response")
RESPONSES = ("agree", "disagree", "comment")
RECORDED_VIEW_EXTENSION = structure_definition("ehcp-family-recorded-view")
MAX_COMMENT = 20_000
#: What the family is told when they disagree (Children and Families Act 2014 ss51-55; Code of
#: Practice chapter 11): mediation first, then the First-tier Tribunal (SEND).
RIGHTS_TEXT = (
    "You disagreed with this plan. You can ask for mediation (contact the mediation adviser named in the "
    "local authority's decision letter within 2 months) and then appeal to the First-tier Tribunal "
    "(Special Educational Needs and Disability). Your view is kept with this version of the plan."
)


@dataclass
class ProposalService:
    checks: ProfileChecks | None = None
    documents: DocumentService | None = None

    # --- $propose -----------------------------------------------------------------------

    def propose(self, store: ScopedStore, composition_id: str, body: object) -> Version:
        plan = self._plan(store, composition_id)
        scope = store.open_record(plan.record or "", "write")
        proposal = _proposal_bundle(body)
        trial = store.prepare_proposed_content(copy.deepcopy(proposal["entry"]))
        _check_proposal_scope(trial, plan)
        self._check_plan(scope, trial, plan)
        owner = _owner(scope, store.clock().date())
        if owner is None:
            raise business_rule("this child's record names no parent with parental responsibility (or young person) "
                                "to respond; add them before proposing")
        now = store.clock()
        content_hash = audit_chain.content_hash(proposal)
        binary = _proposal_binary(plan, proposal)
        task = _review_task(plan, store.caller, owner, binary["id"], content_hash, _fingerprint(scope), now)
        writes = [store.prepare(binary, binary["id"], None), store.prepare(task, task["id"], None)]
        writes += self._supersede_open_reviews(store, scope, plan, task["id"])
        store.commit(writes)
        return version_of(writes[1].write)

    def _plan(self, store: ScopedStore, composition_id: str) -> Version:
        plan, _ = store.resource("Composition", composition_id, "write")
        if not is_plan(plan.resource):
            raise business_rule(f"Composition/{composition_id} is not an EHCP plan (type ehcp, sections A to K)")
        return plan

    def _check_plan(self, scope: RecordScope, trial: PreparedTransaction, plan: Version) -> None:
        """The plan as it would be issued must keep the golden thread (refused at propose and issue)."""
        if self.checks is None:
            return
        pending = {f"{w.write.type}/{w.write.id}": w.write.resource for w in trial.writes.values()}
        composition = copy.deepcopy(pending.get(f"Composition/{plan.id}", plan.resource))
        composition["status"] = "amended" if is_issued(plan.resource) else "final"

        def lookup(reference: str) -> dict | None:
            if reference in pending:
                return pending[reference]
            resource_type, _, resource_id = reference.partition("/")
            version = scope.read(resource_type, resource_id)
            return version.resource if version and version.record == plan.record else None

        self.checks.check_plan(composition, plan_resources(composition, lookup))

    def _supersede_open_reviews(self, store: ScopedStore, scope: RecordScope, plan: Version,
                                new_task: str) -> list[PreparedWrite]:
        """Every earlier review of this plan that was not issued is closed as superseded, so the
        family sees why it will never be issued: an open one is cancelled, an answered one keeps
        the family's answer (completed) and is marked superseded."""
        writes = []
        reason = f"superseded by a later proposal, Task/{new_task}"
        for task in scope.current_of_type("Task"):
            resource = task.resource
            if not is_review(resource) or _plan_of(resource) != plan.id or _is_issued_review(resource):
                continue
            if resource.get("status") == "requested":
                updated = dict(resource, status="cancelled", statusReason={"text": reason},
                               businessStatus={"text": reason})
            elif resource.get("status") == "completed" and not _superseded_by(resource):
                updated = dict(resource, statusReason={"text": reason}, businessStatus={"text": reason})
            else:
                continue
            writes.append(store.prepare(updated, task.id, task.vid, current=task))
        return writes

    # --- Task/{id}/$proposal ---------------------------------------------------------------

    def proposal(self, store: ScopedStore, task_id: str) -> ProposedPlan:
        """What a review proposes, as a document the family can read before answering: the plan
        as it stood when proposed, with the proposal's resources in place (plan.proposed),
        redacted for the caller like `$document`. Whoever may read the review Task may read
        it (the family, the custodian); anyone else is answered as if it did not exist."""
        assert self.documents is not None
        task = _review(store, task_id, "read")
        pinned = str(task_input(task.resource, "plan-version") or "")
        plan_id, _, vid = pinned.removeprefix("Composition/").partition("/_history/")
        plan, decision = store.resource("Composition", plan_id, "read", vid or None)
        scope = store.open_record(task.record or "", "read", f"Task/{task_id}")
        proposed = proposed_resources(_load_proposal(scope, task.resource))
        rendered = self.documents.render(store, plan, proposed)
        shown = self.documents.shown(store, rendered, decision, task.record or "", "$proposal")
        return ProposedPlan(plan.id, plan.vid, shown)

    # --- $respond -----------------------------------------------------------------------

    def respond(self, store: ScopedStore, task_id: str, body: object) -> Version:
        task = _review(store, task_id, "respond")
        store.access.require_scope("Task", "u", task.record, f"Task/{task_id}")
        response, comment = _parse_response(body)
        status = task.resource.get("status")
        if status != "requested":
            raise business_rule(f"this review is {status}; only an open review (status requested) can be answered")
        now = store.clock()
        answered = dict(task.resource, status="completed", lastModified=instant(now),
                        output=_response_outputs(response, comment, store.caller,
                                                 task_input(task.resource, "content-hash"), now))
        prepared = store.prepare_server_task(answered, task, f"respond:{response}", "respond")
        store.commit([prepared])
        return version_of(prepared.write)

    # --- $issue -------------------------------------------------------------------------

    def issue(self, store: ScopedStore, task_id: str) -> Version:
        task = _review(store, task_id, "write")
        scope = store.open_record(task.record or "", "write", f"Task/{task_id}")
        plan = scope.read("Composition", _plan_of(task.resource) or "")
        if plan is None:
            raise not_found("the plan this review is about")
        proposal = self._check_issuable(scope, task, plan, store.clock().date())
        trial = store.prepare_proposed_content(proposal["entry"])
        self._check_plan(scope, trial, plan)
        writes = self._issued_writes(store, trial, plan, task)
        provenance = signed_provenance(store.signing_key, writes, store.caller, task, store.clock())
        writes.append(store.prepare(provenance, provenance["id"], None))
        writes.append(self._mark_issued(store, task, writes))
        audit_entry = self._issue_audit(store, task.record or "", writes)
        issued = next(w for w in writes if w.operation == "issue")
        writes += assessment.issued_effects(store, scope, f"Composition/{issued.write.id}/_history/{issued.write.vid}",
                                            amended=issued.write.resource.get("status") == "amended")
        store.commit(writes, [audit_entry])
        version = version_of(issued.write)
        if self.documents is not None:
            self.documents.issued_bytes(store, version)  # the signed document, kept as issued
        return version

    def _check_issuable(self, scope: RecordScope, task: Version, plan: Version, today) -> dict:
        """Refuse (409 business-rule) unless the family answered exactly this, and nothing moved."""
        resource = task.resource
        newer = _newer_review(scope, task, plan)
        if newer is not None:
            raise business_rule(f"this proposal was superseded by a later one, Task/{newer}; only the newest "
                                f"proposal for Composition/{plan.id} can be issued (issue Task/{newer} once the "
                                "family has answered it)")
        if resource.get("status") == "cancelled":
            raise business_rule("this proposal was superseded by a later one; issue the latest proposal")
        if resource.get("status") != "completed" or task_output(resource, "parental-response") is None:
            raise business_rule("the family has not responded to this proposal yet; $issue needs their response ($respond)")
        pinned = task_input(resource, "content-hash")
        if task_output(resource, "content-hash") != pinned:
            raise business_rule("the response on this Task is for a different proposal than the one pinned")
        proposal = _load_proposal(scope, resource)
        if audit_chain.content_hash(proposal) != pinned:
            raise business_rule("the stored proposal no longer matches the content the family was shown")
        if _fingerprint(scope) != task_input(resource, "plan-fingerprint"):
            raise business_rule("the plan has changed since this proposal was made; propose again and ask the family")
        responder = task_output(resource, "responder")
        state = scope.state()
        makers = engine.decision_makers(state, today) if state else frozenset()
        if responder not in makers:
            raise business_rule(f"the response was given by {responder}, who is not now the decision-maker for this plan")
        return proposal

    def _issued_writes(self, store: ScopedStore, trial: PreparedTransaction, plan: Version,
                       task: Version) -> list[PreparedWrite]:
        writes = [trial.writes[i] for i in sorted(trial.writes)]
        composition = next((w for w in writes if w.write.type == "Composition" and w.write.id == plan.id), None)
        content = copy.deepcopy(composition.write.resource if composition else plan.resource)
        content["status"] = "amended" if is_issued(plan.resource) else "final"
        content["date"] = instant(store.clock())
        content["extension"] = [e for e in content.get("extension", []) if e.get("url") != RECORDED_VIEW_EXTENSION]
        content["extension"].append(_recorded_view(task))
        content.pop("meta", None)
        issued = store.prepare_issued_plan(content, plan.id)
        return [w for w in writes if w is not composition] + [issued]

    def _mark_issued(self, store: ScopedStore, task: Version, writes: list[PreparedWrite]) -> PreparedWrite:
        issued = next(w for w in writes if w.operation == "issue").write
        outputs = list(task.resource.get("output", [])) + [{
            "type": concept(TASK_INPUT_SYSTEM, "issued-version"),
            "valueReference": {"reference": f"Composition/{issued.id}/_history/{issued.vid}"},
        }]
        updated = dict(task.resource, businessStatus={"text": "issued"}, output=outputs)
        return store.prepare(updated, task.id, task.vid, current=task)

    def _issue_audit(self, store: ScopedStore, record: str, writes: list[PreparedWrite]) -> AuditAppend:
        """A signed checkpoint at every issued plan version (DESIGN.md "Audit")."""
        body = audit.body(store.caller, "issue", "permit", store.clock(), "plan issued after the family's response",
                          [audit.version_ref(version_of(w.write)) for w in writes])
        return AuditAppend(audit.chain_of(record), body, checkpoint=True)


def _review(store: ScopedStore, task_id: str, purpose: str) -> Version:
    """The parental-review Task for `purpose`; anything else is answered as a missing Task."""
    task, _ = store.resource("Task", task_id, purpose)
    if task.record is None or not is_review(task.resource):
        raise not_found(f"Task/{task_id}")
    return task


def _owner(scope: RecordScope, today) -> str | None:
    state = scope.state()
    if state is None:
        return None
    makers = sorted(engine.decision_makers(state, today))
    return makers[0] if makers else None


def _fingerprint(scope: RecordScope) -> str:
    """What 'the plan has not changed since' means: every plan resource's current version."""
    versions = [v for v in scope.current() if v.type in PLAN_CONTENT_TYPES]
    return audit_chain.content_hash({"versions": sorted(f"{v.type}/{v.id}/{v.vid}" for v in versions)})


def _proposal_binary(plan: Version, proposal: dict) -> dict:
    return {
        "resourceType": "Binary", "id": str(uuid.uuid4()), "contentType": "application/fhir+json",
        "securityContext": {"reference": f"Composition/{plan.id}"},
        "data": base64.b64encode(audit_chain.canonical_json(proposal)).decode(),
        "_section": "governance",
    }


def _load_proposal(scope: RecordScope, task: dict) -> dict:
    focus = (task.get("focus") or {}).get("reference", "")
    binary = scope.read("Binary", focus.split("/")[-1]) if focus.startswith("Binary/") else None
    if binary is None:
        raise business_rule("the proposal this review is about is missing")
    return json.loads(base64.b64decode(binary.resource["data"]))


def _proposal_bundle(body: object) -> dict:
    bundle = parse_resource(body, "Bundle")
    if bundle.get("type") != "transaction" or not bundle.get("entry"):
        raise invalid("$propose takes a transaction Bundle holding the proposed content of the plan", "invalid", ["Bundle.type"])
    return bundle


def _check_proposal_scope(trial: PreparedTransaction, plan: Version) -> None:
    for prepared in trial.writes.values():
        write = prepared.write
        if write.record != plan.record:
            raise invalid(f"{write.type}/{write.id} belongs to another child's record; a proposal stays in one record")
        if write.type not in PLAN_CONTENT_TYPES | {"DocumentReference"}:
            raise invalid(f"a proposal holds plan content (Composition, Condition, Goal, CarePlan, DocumentReference), not {write.type}")
        if write.type == "Composition" and write.id != plan.id:
            raise invalid(f"this proposal is for Composition/{plan.id}, not Composition/{write.id}")


def _review_task(plan: Version, caller: Caller, owner: str | None, binary_id: str, content_hash: str,
                 fingerprint: str, now: datetime) -> dict:
    sent = now.date()
    inputs = [
        {"type": concept(TASK_INPUT_SYSTEM, "content-hash"), "valueString": content_hash},
        {"type": concept(TASK_INPUT_SYSTEM, "plan-version"), "valueReference": {"reference": f"Composition/{plan.id}/_history/{plan.vid}"}},
        {"type": concept(TASK_INPUT_SYSTEM, "plan-fingerprint"), "valueString": fingerprint},
    ]
    if is_issued(plan.resource):
        inputs.append({"type": concept(TASK_INPUT_SYSTEM, "final-plan-due"),
                       "valueDate": clocks.amendment_deadline(sent).isoformat()})
    task = {
        "resourceType": "Task", "id": str(uuid.uuid4()), "status": "requested", "intent": "order",
        "code": concept(TASK_CODE_SYSTEM, "parental-review"),
        "description": "Please review the proposed plan and tell us whether you agree, disagree or want to comment.",
        "focus": {"reference": f"Binary/{binary_id}", "display": "Proposed plan content"},
        "for": {"reference": f"Patient/{plan.record}"},
        "authoredOn": instant(now),
        "requester": {"reference": caller.actor.organization or caller.actor.sub},
        "restriction": {"period": {"start": sent.isoformat(), "end": clocks.response_window_end(sent).isoformat()}},
        "input": inputs,
    }
    if owner:
        task["owner"] = {"reference": owner}
    return task


def _parse_response(body: object) -> tuple[str, str]:
    """`$respond`'s Parameters: `response` (agree | disagree | comment) and `comment` text."""
    values = read_inputs(body, "respond")
    response = values.get("response")
    if response not in RESPONSES:
        raise invalid("parameter 'response' must be agree, disagree or comment", "required", ["Parameters.parameter"])
    comment = values.get("comment") or ""
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        raise invalid(f"parameter 'comment' must be text of at most {MAX_COMMENT} characters")
    if response in ("comment", "disagree") and not comment.strip():
        raise invalid(f"a '{response}' response needs a comment saying what the family wants changed", "required")
    return str(response), comment


def _response_outputs(response: str, comment: str, caller: Caller, content_hash: object, now: datetime) -> list[dict]:
    outputs = [
        {"type": concept(TASK_INPUT_SYSTEM, "parental-response"), "valueCodeableConcept": concept(RESPONSE_SYSTEM, response)},
        {"type": concept(TASK_INPUT_SYSTEM, "content-hash"), "valueString": content_hash},
        {"type": concept(TASK_INPUT_SYSTEM, "responder"), "valueReference": {"reference": caller.actor.fhir_user or caller.actor.sub}},
        {"type": concept(TASK_INPUT_SYSTEM, "responded-at"), "valueDateTime": instant(now)},
    ]
    if comment:
        outputs.append({"type": concept(TASK_INPUT_SYSTEM, "comment"), "valueString": comment})
    return outputs


def _recorded_view(task: Version) -> dict:
    response = task_output(task.resource, "parental-response")
    parts = [{"url": "response", "valueCode": response},
             {"url": "respondedAt", "valueDateTime": task_output(task.resource, "responded-at")}]
    comment = task_output(task.resource, "comment")
    if comment:
        parts.append({"url": "comment", "valueString": comment})
    if response == "disagree":
        parts.append({"url": "rights", "valueString": RIGHTS_TEXT})
    return {"url": RECORDED_VIEW_EXTENSION, "extension": parts}


def _is_issued_review(task: dict) -> bool:
    return ((task.get("businessStatus") or {}).get("text") == "issued"
            or task_output(task, "issued-version") is not None)


def _superseded_by(task: dict) -> str | None:
    text = str((task.get("businessStatus") or {}).get("text") or "")
    return text.rpartition("Task/")[2] or None if text.startswith("superseded") else None


def _newer_review(scope: RecordScope, task: Version, plan: Version) -> str | None:
    """The newest review of the same plan proposed after `task`, if any (answered or not)."""
    marked = _superseded_by(task.resource)
    authored = str(task.resource.get("authoredOn") or "")
    later = [t for t in scope.current_of_type("Task")
             if t.id != task.id and is_review(t.resource) and _plan_of(t.resource) == plan.id
             and str(t.resource.get("authoredOn") or "") > authored]
    if later:
        return max(later, key=lambda t: str(t.resource.get("authoredOn") or "")).id
    return marked


def is_review(task: dict) -> bool:
    return is_task(task, "parental-review")


def _plan_of(task: dict) -> str | None:
    reference = task_input(task, "plan-version")
    return reference.split("/")[1] if isinstance(reference, str) and reference.startswith("Composition/") else None
