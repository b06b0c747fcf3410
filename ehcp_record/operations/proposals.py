"""$propose -> $respond -> $issue: no change to a plan without the family's input.

SEND Regulations 2014: reg 13 (the draft plan goes to the parent/young person, who has at
least 15 days to comment), reg 22 (proposed amendments, at least 15 days to respond, the final
amended plan within 8 weeks of the proposals). The exact proposed content is pinned by a
SHA-256 hash; `$issue` applies it only when a response by the decision-maker exists for that
hash and the plan has not moved since it was proposed.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from ehcp_record.audit import entries as audit

from ehcp_record.audit import chain as audit_chain

from ehcp_record.workflow import clocks
from ehcp_record.operations.bundles import PreparedTransaction, prepare_transaction
from ehcp_record.plan.documents import DocumentService
from ehcp_record.access.caller import Caller
from ehcp_record.errors import business_rule, invalid, not_found
from ehcp_record.fhir.dates import instant
from ehcp_record.fhir.model import parse_resource
from ehcp_record.plan.gate import PLAN_CONTENT_TYPES, is_issued, is_plan
from ehcp_record.plan.provenance import signed_provenance
from ehcp_record.access.scoped import PreparedWrite, RecordService, version_of
from ehcp_record.workflow.task_values import TASK_CODE_SYSTEM, TASK_INPUT_SYSTEM, concept, is_task, task_input, task_output
from ehcp_record.plan.validation import plan_resources
from ehcp_record.store.repository import AuditAppend, Version

BASE = "http://ehcp-record.example.org/fhir"
RESPONSE_SYSTEM = f"{BASE}/CodeSystem/parental-response"
RESPONSES = ("agree", "disagree", "comment")
RECORDED_VIEW_EXTENSION = f"{BASE}/StructureDefinition/ehcp-family-recorded-view"
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
    records: RecordService
    documents: "DocumentService | None" = None

    # --- $propose -----------------------------------------------------------------------

    def propose(self, caller: Caller, composition_id: str, body: object) -> Version:
        plan = self._plan(caller, composition_id)
        self.records.access.require(caller, "write", plan.record or "")
        proposal = _proposal_bundle(body)
        trial = prepare_transaction(self.records, caller, copy.deepcopy(proposal["entry"]), through_issue=True)
        _check_proposal_scope(trial, plan)
        self._check_plan(trial, plan)
        owner = self._owner(plan.record or "")
        if owner is None:
            raise business_rule("this child's record names no parent with parental responsibility (or young person) "
                                "to respond; add them before proposing")
        now = self.records.clock()
        content_hash = audit_chain.content_hash(proposal)
        binary = self._proposal_binary(plan, proposal)
        task = _review_task(plan, caller, owner, binary["id"], content_hash,
                            self._fingerprint(plan.record or ""), now)
        writes = [self.records.prepare(caller, binary, binary["id"], None),
                  self.records.prepare(caller, task, task["id"], None)]
        writes += self._supersede_open_reviews(caller, plan, task["id"])
        self.records.commit(writes)
        return self.records.repo.read("Task", task["id"])  # type: ignore[return-value]

    def _plan(self, caller: Caller, composition_id: str) -> Version:
        version = self.records.repo.read("Composition", composition_id)
        if version is None or version.record is None:
            raise not_found(f"Composition/{composition_id}")
        if not is_plan(version.resource):
            raise business_rule(f"Composition/{composition_id} is not an EHCP plan (type ehcp, sections A to K)")
        self.records.access.confine_to_launch_patient(caller, "Composition", "u", version.record)
        return version

    def _check_plan(self, trial: PreparedTransaction, plan: Version) -> None:
        """The plan as it would be issued must keep the golden thread (refused at propose and issue)."""
        checks = self.records.validator
        if checks is None:
            return
        pending = {f"{w.write.type}/{w.write.id}": w.write.resource for w in trial.writes.values()}
        composition = copy.deepcopy(pending.get(f"Composition/{plan.id}", plan.resource))
        composition["status"] = "amended" if is_issued(plan.resource) else "final"

        def lookup(reference: str) -> dict | None:
            if reference in pending:
                return pending[reference]
            resource_type, _, resource_id = reference.partition("/")
            version = self.records.repo.read(resource_type, resource_id)
            return version.resource if version and version.record == plan.record else None

        checks.check_plan(composition, plan_resources(composition, lookup))

    def _proposal_binary(self, plan: Version, proposal: dict) -> dict:
        return {
            "resourceType": "Binary", "id": str(uuid.uuid4()), "contentType": "application/fhir+json",
            "securityContext": {"reference": f"Composition/{plan.id}"},
            "data": base64.b64encode(audit_chain.canonical_json(proposal)).decode(),
            "_section": "governance",
        }

    def _owner(self, record: str) -> str | None:
        from consent import engine

        state = self.records.access.record_state(record)
        if state is None:
            return None
        makers = sorted(engine.decision_makers(state, self.records.clock().date()))
        return makers[0] if makers else None

    def _fingerprint(self, record: str) -> str:
        """What 'the plan has not changed since' means: every plan resource's current version."""
        versions = [v for v in self.records.repo.current_of_record(record) if v.type in PLAN_CONTENT_TYPES]
        return audit_chain.content_hash({"versions": sorted(f"{v.type}/{v.id}/{v.vid}" for v in versions)})

    def _supersede_open_reviews(self, caller: Caller, plan: Version, new_task: str) -> list[PreparedWrite]:
        writes = []
        for task in self.records.repo.current_of_type(plan.record or "", "Task"):
            resource = task.resource
            if is_review(resource) and resource.get("status") == "requested" and _plan_of(resource) == plan.id:
                updated = dict(resource, status="cancelled",
                               statusReason={"text": f"superseded by a later proposal, Task/{new_task}"})
                writes.append(self.records.prepare(caller, updated, task.id, task.vid, current=task))
        return writes

    # --- $respond -----------------------------------------------------------------------

    def respond(self, caller: Caller, task_id: str, body: object) -> Version:
        task = self._review(caller, task_id)
        self.records.access.require_scope(caller, "Task", "u")
        response, comment = _parse_response(body)
        decision = self.records.access.require(caller, "respond", task.record or "")
        status = task.resource.get("status")
        if status != "requested":
            raise business_rule(f"this review is {status}; only an open review (status requested) can be answered")
        now = self.records.clock()
        answered = dict(task.resource, status="completed", lastModified=instant(now),
                        output=_response_outputs(response, comment, caller, task_input(task.resource, "content-hash"), now))
        prepared = self.records.prepare(caller, answered, task.id, task.vid, current=task,
                                        authorized=f"respond:{response}")
        prepared.consent_ids = decision.consent_ids
        self.records.commit([prepared])
        return self.records.repo.read("Task", task.id)  # type: ignore[return-value]

    def _review(self, caller: Caller, task_id: str) -> Version:
        task = self.records.repo.read("Task", task_id)
        if task is None or task.record is None or not is_review(task.resource):
            raise not_found(f"parental-review Task/{task_id}")
        self.records.access.confine_to_launch_patient(caller, "Task", "u", task.record)
        if not self.records.access.decide(caller, "read", task.record).permit:
            raise not_found(f"Task/{task_id}")
        return task

    # --- $issue -------------------------------------------------------------------------

    def issue(self, caller: Caller, task_id: str) -> Version:
        task = self._review(caller, task_id)
        record = task.record or ""
        self.records.access.require(caller, "write", record)
        plan = self.records.repo.read("Composition", _plan_of(task.resource) or "")
        if plan is None:
            raise not_found("the plan this review is about")
        proposal = self._check_issuable(task, plan)
        trial = prepare_transaction(self.records, caller, proposal["entry"], through_issue=True)
        self._check_plan(trial, plan)
        writes = self._issued_writes(caller, trial, plan, task)
        provenance = signed_provenance(self.records.repo.signing_key, writes, caller, task, self.records.clock())
        writes.append(self.records.prepare(caller, provenance, provenance["id"], None))
        writes.append(self._mark_issued(caller, task, writes))
        self.records.commit(writes, [self._issue_audit(caller, record, writes)])
        issued = self.records.repo.read("Composition", plan.id)
        if self.documents is not None and issued is not None:
            self.documents.issued_bytes(issued)  # the signed document, kept as issued
        return issued  # type: ignore[return-value]

    def _check_issuable(self, task: Version, plan: Version) -> dict:
        """Refuse (409 business-rule) unless the family answered exactly this, and nothing moved."""
        resource = task.resource
        if resource.get("status") == "cancelled":
            raise business_rule("this proposal was superseded by a later one; issue the latest proposal")
        if resource.get("status") != "completed" or task_output(resource, "parental-response") is None:
            raise business_rule("the family has not responded to this proposal yet; $issue needs their response ($respond)")
        pinned = task_input(resource, "content-hash")
        if task_output(resource, "content-hash") != pinned:
            raise business_rule("the response on this Task is for a different proposal than the one pinned")
        proposal = self._load_proposal(resource)
        if audit_chain.content_hash(proposal) != pinned:
            raise business_rule("the stored proposal no longer matches the content the family was shown")
        if self._fingerprint(plan.record or "") != task_input(resource, "plan-fingerprint"):
            raise business_rule("the plan has changed since this proposal was made; propose again and ask the family")
        self._check_responder(task)
        return proposal

    def _check_responder(self, task: Version) -> None:
        from consent import engine

        responder = task_output(task.resource, "responder")
        state = self.records.access.record_state(task.record or "")
        makers = engine.decision_makers(state, self.records.clock().date()) if state else frozenset()
        if responder not in makers:
            raise business_rule(f"the response was given by {responder}, who is not now the decision-maker for this plan")

    def _load_proposal(self, task: dict) -> dict:
        focus = (task.get("focus") or {}).get("reference", "")
        binary = self.records.repo.read("Binary", focus.split("/")[-1]) if focus.startswith("Binary/") else None
        if binary is None:
            raise business_rule("the proposal this review is about is missing")
        return json.loads(base64.b64decode(binary.resource["data"]))

    def _issued_writes(self, caller: Caller, trial: PreparedTransaction, plan: Version, task: Version) -> list[PreparedWrite]:
        writes = [trial.writes[i] for i in sorted(trial.writes)]
        composition = next((w for w in writes if w.write.type == "Composition" and w.write.id == plan.id), None)
        content = copy.deepcopy(composition.write.resource if composition else plan.resource)
        content["status"] = "amended" if is_issued(plan.resource) else "final"
        content["date"] = instant(self.records.clock())
        content["extension"] = [e for e in content.get("extension", []) if e.get("url") != RECORDED_VIEW_EXTENSION]
        content["extension"].append(_recorded_view(task))
        content.pop("meta", None)
        current = self.records.repo.read("Composition", plan.id)
        issued = self.records.prepare(caller, content, plan.id, current.vid if current else None, current=current,
                                      through_issue=True)
        issued.operation = "issue"
        return [w for w in writes if w is not composition] + [issued]

    def _mark_issued(self, caller: Caller, task: Version, writes: list[PreparedWrite]) -> PreparedWrite:
        issued = next(w for w in writes if w.operation == "issue").write
        outputs = list(task.resource.get("output", [])) + [{
            "type": concept(TASK_INPUT_SYSTEM, "issued-version"),
            "valueReference": {"reference": f"Composition/{issued.id}/_history/{issued.vid}"},
        }]
        updated = dict(task.resource, businessStatus={"text": "issued"}, output=outputs)
        return self.records.prepare(caller, updated, task.id, task.vid, current=task, through_issue=True)

    def _issue_audit(self, caller: Caller, record: str, writes: list[PreparedWrite]) -> AuditAppend:
        """A signed checkpoint at every issued plan version (DESIGN.md "Audit")."""
        body = audit.body(caller, "issue", "permit", self.records.clock(), "plan issued after the family's response",
                          [audit.version_ref(version_of(w.write)) for w in writes])
        return AuditAppend(audit.chain_of(record), body, checkpoint=True)


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
    parameters = parse_resource(body, "Parameters")
    values: dict[str, object] = {}
    for parameter in parameters.get("parameter", []) or []:
        name = parameter.get("name")
        value = next((v for k, v in parameter.items() if k.startswith("value")), None)
        values[name] = value
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


def is_review(task: dict) -> bool:
    return is_task(task, "parental-review")


def _plan_of(task: dict) -> str | None:
    reference = task_input(task, "plan-version")
    return reference.split("/")[1] if isinstance(reference, str) and reference.startswith("Composition/") else None
