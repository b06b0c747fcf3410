"""The statutory timeline from a request for an EHC needs assessment to the final plan.

`$request-assessment` records a request (CFA 2014 s36(1): by the child's parent, the young person
or a person acting on behalf of a school or post-16 institution; or recorded by the custodian LA
on the day it received one) and opens the LA's clocks: the decision whether to assess (SEND
Regulations 2014 reg 5(1), 6 weeks) and the final plan (reg 13(2), 20 weeks). Deciding to assess
opens the decision whether to issue a plan (reg 10(1), 16 weeks: the draft, or a notice not to
issue). `$request-advice` opens one advice clock per adviser (reg 8(1), 6 weeks from the request
for advice). `$clock-exception` records a reason of reg 5(4), 8(2) or 10(4) with its dates;
`$complete-step` records a step as done on a day, with the decision and reasons, and says whether
it was on time or which exception made it lawful. `$issue` meets the final-plan clock by sending
the plan (`issued_effects`). Decisions with a right of appeal produce a decision notice
(`operations.notices`). Only the custodian LA runs the steps after the request. Clock logic is
pure (`workflow.statutory`, `workflow.clocks`); every read and write goes through the scoped
store, the clocks through its named writes `prepare_assessment_request` and `prepare_clock`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Protocol
from datetime import date, timedelta

from consent.terminology import code_system_codes
from ehcp_record.access.scoped import REQUEST_PURPOSES, PreparedWrite, RecordScope, ScopedStore, version_of
from ehcp_record.errors import business_rule, invalid, not_found, unprocessable
from ehcp_record.fhir.canonical import code_system
from ehcp_record.fhir.dates import instant, parse_date
from ehcp_record.fhir.signatures import read_inputs
from ehcp_record.operations import notices
from ehcp_record.store.versions import Version
from ehcp_record.workflow import clocks, statutory
from ehcp_record.workflow.task_values import (TASK_CODE_SYSTEM, TASK_INPUT_SYSTEM, concept, is_task, task_input,
                                              task_output)

REQUESTER_SYSTEM = code_system("ehcp-requester")
ADVICE_SYSTEM = code_system("ehcp-advice-type")
DECISION_SYSTEM = code_system("ehcp-decision")
#: The decisions each clock takes (ehcp-decision), the first being the default.
DECISIONS = {
    "assessment-decision": ("assess", "not-assess"),
    "issue-decision": ("issue", "not-issue"),
    "annual-review": ("maintain", "amend", "cease"),
}

def full_date(values: dict, name: str, today: date, not_before: date | None = None) -> date:
    """A full YYYY-MM-DD, not in the future (a step is recorded when it has happened)."""
    try:
        value = parse_date(values[name])
    except (KeyError, TypeError, ValueError):
        raise invalid(f"parameter '{name}' must be a full date (YYYY-MM-DD)", "value", ["Parameters.parameter"]) from None
    if value > today:
        raise invalid(f"parameter '{name}' ({value}) is in the future; record a step once it has happened", "value",
                      ["Parameters.parameter"])
    if not_before is not None and value < not_before:
        raise invalid(f"parameter '{name}' ({value}) is before the clock started ({not_before})", "value",
                      ["Parameters.parameter"])
    return value


def typed(code: str, **value: object) -> dict:
    return {"type": concept(TASK_INPUT_SYSTEM, code), **value}


def clock_task(record: str, code: str, start: date, due: date, store: ScopedStore,
               part_of: str | None = None, inputs: list[dict] | None = None, owner: str | None = None) -> dict:
    """One statutory clock: open (requested) from `start`, on time until `due` (inclusive), the
    custodian LA's to meet (whoever's request opened it)."""
    state = store.custody_state(record)
    la = (state.custodian if state is not None else None) or store.caller.actor.organization or store.caller.actor.sub
    task = {
        "resourceType": "Task", "id": str(uuid.uuid4()), "status": "requested", "intent": "order",
        "code": concept(TASK_CODE_SYSTEM, code),
        "description": f"Due by {due.isoformat()} ({statutory.CLOCK_REGULATIONS[code]})",
        "for": {"reference": f"Patient/{record}"}, "authoredOn": instant(store.clock()),
        "requester": {"reference": la}, "owner": {"reference": owner or la},
        "restriction": {"period": {"start": start.isoformat(), "end": due.isoformat()}},
        "input": list(inputs or []),
    }
    if part_of:
        task["partOf"] = [{"reference": f"Task/{part_of}"}]
    return task


@dataclass
class Step:
    """What completing a clock writes: the updated clock, new clocks, notices, other updates."""

    writes: list[PreparedWrite] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    business_status: str = ""


class StepEffects(Protocol):
    """What completing a review, decision, amendment or cease clock also writes
    (`operations.reviews.ReviewService`)."""

    def effects(self, store: ScopedStore, scope: RecordScope, clock: Version, code: str, done: date,
                decision: str | None, values: dict, step: "Step") -> "Step": ...


@dataclass
class AssessmentService:
    reviews: StepEffects | None = None  # set by the composition root (wiring)

    # --- $request-assessment ------------------------------------------------------------

    def request(self, store: ScopedStore, patient_id: str, body: object) -> Version:
        """A request under CFA 2014 s36(1): by the parent or young person (the decision-maker) or
        a school or college the family lets contribute, received today; or recorded by the
        custodian LA from a letter, on the day it was received (`received`, `requester`)."""
        role = store.caller.actor.role or ""
        scope = store.open_record(patient_id, REQUEST_PURPOSES.get(role, "write"), scope_type="Task")
        values = read_inputs(body, "request-assessment",
                             also_required=("received", "requester") if role == "la" else ())
        today = store.clock().date()
        if role != "la":
            values = _own_request(store, values, today, role)
        received = full_date(values, "received", today)
        requester = values["requester"]
        if requester not in code_system_codes("ehcp-requester"):
            raise invalid("parameter 'requester' must be parent, young-person, school or other (ehcp-requester)",
                          "value", ["Parameters.parameter"])
        if any(is_task(t.resource, "assessment-request") and t.resource.get("status") == "in-progress"
               for t in scope.current_of_type("Task")):
            raise business_rule("this child already has an EHC needs assessment request in progress")
        request = self._request_task(store, scope.record, received, values)
        decision = clock_task(scope.record, "assessment-decision", received, clocks.assessment_decision_due(received),
                              store, request["id"])
        final = clock_task(scope.record, "final-plan", received, clocks.final_plan_due(received), store, request["id"])
        request["output"] = [typed("clock", valueReference={"reference": f"Task/{t['id']}"}) for t in (decision, final)]
        writes = [store.prepare_assessment_request(t) for t in (request, decision, final)]
        store.commit(writes)
        return version_of(writes[0].write)

    @staticmethod
    def _request_task(store: ScopedStore, record: str, received: date, values: dict) -> dict:
        inputs = [typed("received", valueDate=received.isoformat()),
                  typed("requester-type", valueCodeableConcept=concept(REQUESTER_SYSTEM, values["requester"]))]
        if isinstance(values.get("requesterReference"), dict):
            inputs.append(typed("requester", valueReference=values["requesterReference"]))
        if isinstance(values.get("inRelevantYouthAccommodation"), bool):  # CFA 2014 ss70-75; SEN2 RYA
            inputs.append(typed("relevant-youth-accommodation", valueBoolean=values["inRelevantYouthAccommodation"]))
        task = clock_task(record, "final-plan", received, clocks.final_plan_due(received), store, inputs=inputs)
        if isinstance(values.get("requesterReference"), dict) and store.caller.actor.role != "la":
            task["requester"] = values["requesterReference"]
        task.update(status="in-progress", code=concept(TASK_CODE_SYSTEM, "assessment-request"),
                    description="Request for an EHC needs assessment (Children and Families Act 2014 s36(1))")
        if values.get("note"):
            task["note"] = [{"text": values["note"]}]
        return task

    # --- $request-advice ----------------------------------------------------------------

    def request_advice(self, store: ScopedStore, task_id: str, body: object) -> Version:
        request, scope = self._task(store, task_id, "assessment-request")
        values = read_inputs(body, "request-advice")
        if request.resource.get("status") != "in-progress":
            raise business_rule("advice is sought for an assessment in progress; this request is "
                                f"{request.resource.get('status')}")
        if not self._decided(scope, request.id, "assess"):
            raise business_rule("advice is sought once the LA has decided to assess (reg 6); record that decision "
                                "with $complete-step on the assessment-decision clock first")
        if values["adviceType"] not in code_system_codes("ehcp-advice-type"):
            raise invalid("parameter 'adviceType' must be a code of ehcp-advice-type", "value", ["Parameters.parameter"])
        received = parse_date(task_input(request.resource, "received"))
        requested = full_date(values, "requested", store.clock().date(), received)
        adviser = (values.get("adviser") or {}).get("reference") if isinstance(values.get("adviser"), dict) else None
        inputs = [typed("advice-type", valueCodeableConcept=concept(ADVICE_SYSTEM, values["adviceType"]))]
        if adviser:
            inputs.append(typed("adviser", valueReference={"reference": adviser}))
        advice = clock_task(scope.record, "advice", requested, clocks.advice_due(requested), store, request.id,
                            inputs, owner=adviser)
        outputs = list(request.resource.get("output", [])) + [typed("clock", valueReference={"reference": f"Task/{advice['id']}"})]
        writes = [store.prepare_clock(advice, None, "request-advice"),
                  store.prepare_clock(_updated(request.resource, output=outputs), request, "request-advice")]
        store.commit(writes)
        return version_of(writes[0].write)

    # --- $clock-exception ---------------------------------------------------------------

    def record_exception(self, store: ScopedStore, task_id: str, body: object) -> Version:
        clock, _ = self._clock(store, task_id)
        values = read_inputs(body, "clock-exception")
        if clock.resource.get("status") not in statutory.OPEN:
            raise business_rule("an exception is recorded while the clock runs; this one is "
                                f"{clock.resource.get('status')} and its outcome is already recorded")
        today = store.clock().date()
        exception = statutory.ClockException(values["reason"], full_date(values, "start", today + _YEAR),
                                             full_date(values, "end", today + _YEAR), values.get("note") or "")
        code = statutory.clock_code(clock.resource) or ""
        problem = statutory.exception_problem(code, exception)
        if problem:
            raise unprocessable(problem, "business-rule", ["Parameters.parameter"])
        recorded = statutory.exception_extension(exception, store.caller.actor.fhir_user or store.caller.actor.sub,
                                                 instant(store.clock()))
        updated = _updated(clock.resource, extension=list(clock.resource.get("extension", []) or []) + [recorded])
        prepared = store.prepare_clock(updated, clock, "clock-exception")
        store.commit([prepared])
        return version_of(prepared.write)

    # --- $complete-step -----------------------------------------------------------------

    def complete(self, store: ScopedStore, task_id: str, body: object) -> Version:
        clock, scope = self._clock(store, task_id)
        values = read_inputs(body, "complete-step")
        if clock.resource.get("status") not in statutory.OPEN:
            raise business_rule(f"this clock is {clock.resource.get('status')}; only an open clock can be completed")
        code = statutory.clock_code(clock.resource) or ""
        if code in ISSUED_BY:
            raise business_rule(f"the {code} clock is met when the plan is issued: {ISSUED_BY[code]}")
        period = clock.resource["restriction"]["period"]
        done = full_date(values, "date", store.clock().date(), parse_date(period["start"][:10]))
        decision = self._decision(code, values)
        step = self._effects(store, scope, clock, code, done, decision, values)
        writes = [completed_clock(store, clock, done, step, decision, values)] + step.writes
        store.commit(writes)
        return version_of(writes[0].write)

    @staticmethod
    def _decision(code: str, values: dict) -> str | None:
        allowed = DECISIONS.get(code)
        decision = values.get("decision")
        if allowed is None:
            return decision or "done"
        if decision not in allowed:
            raise invalid(f"completing a {code} clock needs parameter 'decision': one of {', '.join(allowed)}",
                          "required", ["Parameters.parameter"])
        if decision.startswith("not-") or decision == "maintain":
            if not str(values.get("reason") or "").strip():
                raise invalid(f"a '{decision}' decision needs parameter 'reason': the reasons the family is given",
                              "required", ["Parameters.parameter"])
        return decision

    def _effects(self, store: ScopedStore, scope: RecordScope, clock: Version, code: str, done: date,
                 decision: str | None, values: dict) -> Step:
        """What else a step writes: the next clocks, notices, the request closed."""
        step = Step()
        reason = str(values.get("reason") or "")
        request = self._request_of(scope, clock)
        if code == "assessment-decision" and decision == "assess" and request is not None:
            received = parse_date(task_input(request.resource, "received"))
            issue = clock_task(scope.record, "issue-decision", received, clocks.issue_decision_due(received), store,
                               request.id)
            step.writes.append(store.prepare_clock(issue, None, "complete-step"))
        elif decision in ("not-assess", "not-issue"):
            kind = "not-to-assess" if decision == "not-assess" else "not-to-issue"
            text = ("The local authority has decided not to carry out an EHC needs assessment." if kind == "not-to-assess"
                    else "The local authority has decided not to issue an EHC plan after the assessment.")
            step.writes.append(self._notice(store, scope, kind, text, reason, f"Task/{clock.id}", step))
            step.writes += self._close_request(store, scope, request, clock, "closed: " + kind.replace("-", " "))
        elif self.reviews is not None:
            step = self.reviews.effects(store, scope, clock, code, done, decision, values, step)
        return step

    def _notice(self, store: ScopedStore, scope: RecordScope, kind: str, text: str, reason: str, about: str,
                step: Step) -> PreparedWrite:
        prepared = notices.prepared_notice(scope, store, notices.Decision(kind, text, reason, about))
        step.outputs.append(typed("notice", valueReference={"reference": f"Communication/{prepared.write.id}"}))
        return prepared

    def _close_request(self, store: ScopedStore, scope: RecordScope, request: Version | None, clock: Version,
                       status_text: str, completed: bool = False) -> list[PreparedWrite]:
        return close_request(store, scope, request, clock, status_text, completed)

    # --- helpers ------------------------------------------------------------------------

    def _task(self, store: ScopedStore, task_id: str, code: str) -> tuple[Version, RecordScope]:
        task, _ = store.resource("Task", task_id, "write")
        if not is_task(task.resource, code):
            raise not_found(f"Task/{task_id}")
        return task, store.open_record(task.record or "", "write", f"Task/{task_id}")

    def _clock(self, store: ScopedStore, task_id: str) -> tuple[Version, RecordScope]:
        task, _ = store.resource("Task", task_id, "write")
        if statutory.clock_code(task.resource) is None or not (task.resource.get("restriction") or {}).get("period"):
            raise not_found(f"Task/{task_id}")
        return task, store.open_record(task.record or "", "write", f"Task/{task_id}")

    @staticmethod
    def _request_of(scope: RecordScope, clock: Version) -> Version | None:
        for part in clock.resource.get("partOf", []) or []:
            resource_type, _, resource_id = str(part.get("reference", "")).partition("/")
            if resource_type == "Task":
                return scope.read("Task", resource_id)
        return None

    @staticmethod
    def _decided(scope: RecordScope, request_id: str, decision: str) -> bool:
        for task in scope.current_of_type("Task"):
            if (is_task(task.resource, "assessment-decision") and task.resource.get("status") == "completed"
                    and f"Task/{request_id}" in [p.get("reference") for p in task.resource.get("partOf", [])]
                    and task_output(task.resource, "decision") == decision):
                return True
        return False

_YEAR = timedelta(days=366)
#: The clocks `$issue` meets, and why `$complete-step` does not.
ISSUED_BY = {
    "final-plan": "$issue sends the finalised plan with its notice (SEND Regulations 2014 regs 13(2), 14(2))",
    "amendment": "$issue of the amended plan sends it with its notice (SEND Regulations 2014 reg 22(3))",
}
#: What each caller's request is made as (CFA 2014 s36(1)), and the ehcp-requester code.
OWN_REQUESTER = {"parent": "parent", "young-person": "young-person", "school": "school"}


def _own_request(store: ScopedStore, values: dict, today: date, role: str) -> dict:
    """A request made through the record: received today, made as the caller (never as someone else)."""
    kind = OWN_REQUESTER.get(role, role)
    if values.get("requester") not in (None, kind):
        raise invalid(f"a request made with a {role} token is made as '{kind}'; the local authority records "
                      "requests made by others", "value", ["Parameters.parameter"])
    if values.get("received") not in (None, today.isoformat()):
        raise invalid(f"a request made through the record is received today ({today}); the local authority records a "
                      "request it received earlier", "value", ["Parameters.parameter"])
    actor = store.caller.actor
    who = actor.fhir_user or actor.organization or actor.sub
    return dict(values, received=today.isoformat(), requester=kind, requesterReference={"reference": who})


def completed_clock(store: ScopedStore, clock: Version, done: date, step: Step, decision: str | None,
                    values: dict) -> PreparedWrite:
    """The clock completed on `done`: on time, late, or late with the exception that applies."""
    code = statutory.clock_code(clock.resource) or ""
    period = clock.resource["restriction"]["period"]
    state = statutory.evaluate(code, parse_date(period["start"][:10]), parse_date(period["end"][:10]), done,
                               statutory.exceptions_of(clock.resource), done)
    outputs = list(clock.resource.get("output", []) or []) + step.outputs + _state_outputs(state, done, decision, values)
    completed = _updated(clock.resource, status="completed", output=outputs,
                         executionPeriod={"start": period["start"], "end": done.isoformat()},
                         businessStatus={"text": step.business_status or _describe(state)})
    return store.prepare_clock(completed, clock, "complete-step")


def close_request(store: ScopedStore, scope: RecordScope, request: Version | None, clock: Version | None,
                  status_text: str, completed: bool = False) -> list[PreparedWrite]:
    """The request ends (completed with a plan, else cancelled), with its still-open clocks."""
    writes: list[PreparedWrite] = []
    if request is None:
        return writes
    for task in scope.current_of_type("Task"):
        part_of = [p.get("reference") for p in task.resource.get("partOf", []) or []]
        if (clock is None or task.id != clock.id) and f"Task/{request.id}" in part_of \
                and task.resource.get("status") in statutory.OPEN \
                and statutory.clock_code(task.resource) in ("final-plan", "issue-decision", "advice", "assessment-decision"):
            writes.append(store.prepare_clock(_updated(task.resource, status="cancelled",
                                                       statusReason={"text": status_text}), task, "close-request"))
    writes.append(store.prepare_clock(_updated(request.resource, status="completed" if completed else "cancelled",
                                               businessStatus={"text": status_text}), request, "close-request"))
    return writes


def issued_effects(store: ScopedStore, scope: RecordScope, plan: str, amended: bool) -> list[PreparedWrite]:
    """What `$issue` does to the timeline, in the same transaction as the plan.

    The finalised plan is sent with the notice of the right of appeal (SEND Regulations 2014 reg
    14(2)); that meets the final-plan clock of a request in progress (reg 13(2), 20 weeks, or
    late with a reg 13(3) exception), which ends the request, and starts the first review clock
    (CFA 2014 s44(1): 12 months beginning with the date the plan was made). An amended plan is
    sent with its notice within 8 weeks of the proposed amendments (reg 22(3)), meeting the amendment
    clock a review opened.
    """
    today = store.clock().date()
    code = "amendment" if amended else "final-plan"
    clock = _open_clock(scope, code)
    decision = (notices.Decision("plan-amended", "The local authority has issued the amended EHC plan.",
                                 "The plan was amended after the family's response to the proposed amendments.", plan)
                if amended else
                notices.Decision("plan-issued", "The local authority has issued the final EHC plan.",
                                 "The plan sets out the provision the EHC needs assessment found necessary.", plan))
    notice = notices.prepared_notice(scope, store, decision)
    writes = [notice]
    if clock is not None:
        step = Step(outputs=[typed("plan-version", valueReference={"reference": plan}),
                             typed("notice", valueReference={"reference": f"Communication/{notice.write.id}"})])
        writes.append(completed_clock(store, clock, today, step, None, {}))
        if not amended:
            writes += close_request(store, scope, AssessmentService._request_of(scope, clock), clock,
                                    "final plan issued", completed=True)
    if not amended:
        review = clock_task(scope.record, "review-due", today, clocks.annual_review_due(today), store)
        writes.append(store.prepare_clock(review, None, "first-review"))
    return writes


def _open_clock(scope: RecordScope, code: str) -> Version | None:
    found = [t for t in scope.current_of_type("Task")
             if statutory.clock_code(t.resource) == code and t.resource.get("status") in statutory.OPEN]
    return min(found, key=lambda t: t.resource["restriction"]["period"]["end"]) if found else None


def _updated(resource: dict, **changes: object) -> dict:
    updated = {k: v for k, v in resource.items() if k != "meta"}
    updated.update(changes)
    return updated


def _state_outputs(state: statutory.ClockState, done: date, decision: str | None, values: dict) -> list[dict]:
    outputs = [typed("completed-on", valueDate=done.isoformat()), typed("on-time", valueBoolean=state.state == "met")]
    if decision:
        outputs.append(typed("decision", valueCodeableConcept=concept(DECISION_SYSTEM, decision)))
    if values.get("reason"):
        outputs.append(typed("reason", valueString=str(values["reason"])))
    if state.exception:
        outputs.append(typed("exception-applied", valueCodeableConcept=concept(statutory.EXCEPTION_SYSTEM, state.exception)))
    if isinstance(values.get("advice"), dict):
        outputs.append(typed("advice-document", valueReference=values["advice"]))
    return outputs


def _describe(state: statutory.ClockState) -> str:
    if state.state == "met":
        return f"done on time ({state.regulation})"
    if state.state == "late-excepted":
        rule = statutory.exception_rules()[state.exception or ""]
        return f"done {-state.days_left} days late; the time limit did not apply: {rule.display} ({rule.regulation})"
    return f"done {-state.days_left} days late ({state.regulation})"
