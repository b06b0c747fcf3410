"""Annual reviews, phase transfers and ceasing a plan (CFA 2014 ss44-45; SEND Regulations 2014
regs 18-22, 29-31).

Completing a `review-due` clock is holding the review meeting (reg 20): the advice must have
been circulated at least 2 weeks before (reg 20(4), recorded and flagged when late), progress
towards each outcome is recorded on its Goal (reg 20(5): `achievementStatus` from the FHIR
value set goal-achievement, with a dated note naming who recorded it), and the review records
whether stepping down to targeted support or ceasing the plan was discussed (SEND and AP
Improvement Plan 2023). It opens the report clock (reg 20(7), 2 weeks), the decision Task
(`annual-review`, reg 20(10), 4 weeks) and the next
review clock (CFA s44(1), 12 months from this review). The decision `maintain` gives a notice
(decision not to amend); `amend` opens the amendment clock (reg 22(3), 8 weeks; on the worklist), met when `$issue` sends
the amended plan after `$propose` and the family's response;
`cease` is followed by `$cease`.

`$phase-transfer` opens the reg 18(1) clock (before 15 February, or 31 March for post-16).
`$cease` records the consultation (reg 31(1)) and the decision, sends the notice (reg 31(3))
and opens a `cease` clock that stays open while the plan is maintained: completing it as
`ceased` is refused until the time for appealing has passed with no appeal, or the appeal
was decided (the plan is maintained until then).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from consent.terminology import code_system_codes
from ehcp_record.access.scoped import RecordScope, ScopedStore, version_of
from ehcp_record.errors import business_rule, invalid
from ehcp_record.fhir.canonical import code_system
from ehcp_record.fhir.dates import parse_date
from ehcp_record.fhir.signatures import read_inputs
from ehcp_record.operations import notices
from ehcp_record.operations.assessment import Step, clock_task, full_date, typed
from ehcp_record.store.versions import Version
from ehcp_record.workflow import clocks, statutory
from ehcp_record.workflow.task_values import concept, is_task

#: FHIR R4 value set goal-achievement (http://hl7.org/fhir/R4/valueset-goal-achievement.html).
ACHIEVEMENT_SYSTEM = "http://terminology.hl7.org/CodeSystem/goal-achievement"
ACHIEVEMENT_CODES = ("in-progress", "improving", "worsening", "no-change", "achieved", "sustaining",
                     "not-achieved", "no-progress", "not-attainable")
CEASE_REASON_SYSTEM = code_system("ehcp-cease-reason")


@dataclass
class ReviewService:
    # --- effects of completing review clocks (called by AssessmentService.complete) -----

    def effects(self, store: ScopedStore, scope: RecordScope, clock: Version, code: str, done: date,
                decision: str | None, values: dict, step: Step) -> Step:
        if code == "review-due":
            return self._meeting(store, scope, clock, done, values, step)
        if code == "annual-review" and decision == "maintain":
            step.writes.append(self._notice(store, scope, "not-to-amend", "After the annual review the local "
                                            "authority has decided to keep the plan as it is.",
                                            str(values.get("reason") or ""), f"Task/{clock.id}", step))
        if code == "annual-review" and decision == "amend":
            amendment = clock_task(scope.record, "amendment", done, clocks.amendment_deadline(done), store, clock.id)
            step.writes.append(store.prepare_clock(amendment, None, "complete-step"))
        if code == "cease":
            return self._ceased(scope, clock, done, values, step)
        return step

    def _meeting(self, store: ScopedStore, scope: RecordScope, clock: Version, meeting: date, values: dict,
                 step: Step) -> Step:
        circulated = values.get("adviceCirculated")
        if circulated is None:
            raise invalid("a review meeting needs parameter 'adviceCirculated': the day the advice was circulated "
                          "(reg 20(4))", "required", ["Parameters.parameter"])
        circulated_on = full_date(values, "adviceCirculated", meeting)
        latest = clocks.review_advice_circulated_by(meeting)
        step.outputs += [typed("meeting-date", valueDate=meeting.isoformat()),
                         typed("advice-circulated", valueDate=circulated_on.isoformat()),
                         typed("step-down-discussed", valueBoolean=bool(values.get("stepDownDiscussed"))),
                         typed("cease-discussed", valueBoolean=bool(values.get("ceaseDiscussed")))]
        late = (latest - circulated_on).days
        step.business_status = (f"review meeting held on {meeting}; advice circulated {circulated_on}"
                                + ("" if late >= 0 else f", {-late} days later than 2 weeks before the meeting "
                                   "(reg 20(4))"))
        step.writes += self._progress(store, scope, meeting, values.get("progress") or [], step)
        report = clock_task(scope.record, "review-report", meeting, clocks.review_report_due(meeting), store)
        decision = clock_task(scope.record, "annual-review", meeting, clocks.review_decision_deadline(meeting), store,
                              inputs=[typed("meeting-date", valueDate=meeting.isoformat())])
        following = clock_task(scope.record, "review-due", meeting, clocks.annual_review_due(meeting), store)
        step.writes += [store.prepare_clock(t, None, "complete-step") for t in (report, decision, following)]
        return step

    def _progress(self, store: ScopedStore, scope: RecordScope, meeting: date, items: list, step: Step) -> list:
        """Progress on every outcome of the plan (reg 20(5)); each Goal once."""
        goals = {g.id: g for g in scope.current_of_type("Goal")}
        seen: set[str] = set()
        writes = []
        for item in items:
            goal_ref = (item.get("goal") or {}).get("reference", "") if isinstance(item.get("goal"), dict) else ""
            goal_id = goal_ref.removeprefix("Goal/")
            status = item.get("achievementStatus")
            if goal_id not in goals or goal_id in seen:
                raise invalid(f"progress part 'goal' must name an outcome (Goal) of this plan, once: {goal_ref!r}",
                              "value", ["Parameters.parameter"])
            if status not in ACHIEVEMENT_CODES:
                raise invalid("progress part 'achievementStatus' must be a code of the FHIR value set "
                              f"goal-achievement: {', '.join(ACHIEVEMENT_CODES)}", "value", ["Parameters.parameter"])
            seen.add(goal_id)
            goal = goals[goal_id]
            updated = {k: v for k, v in goal.resource.items() if k != "meta"}
            updated["achievementStatus"] = {"coding": [{"system": ACHIEVEMENT_SYSTEM, "code": status}]}
            note = {"time": f"{meeting.isoformat()}",
                    "authorReference": {"reference": store.caller.actor.fhir_user or store.caller.actor.organization
                                        or store.caller.actor.sub},
                    "text": str(item.get("note") or f"Progress at the review on {meeting}: {status}")}
            updated["note"] = list(goal.resource.get("note", []) or []) + [note]
            writes.append(store.prepare_outcome_progress(updated, goal))
            step.outputs.append(typed("progress", valueReference={"reference": f"Goal/{goal_id}"}))
        return writes

    def _notice(self, store: ScopedStore, scope: RecordScope, kind: str, text: str, reason: str, about: str,
                step: Step):
        prepared = notices.prepared_notice(scope, store, notices.Decision(kind, text, reason, about))
        step.outputs.append(typed("notice", valueReference={"reference": f"Communication/{prepared.write.id}"}))
        return prepared

    # --- $phase-transfer ----------------------------------------------------------------

    def phase_transfer(self, store: ScopedStore, patient_id: str, body: object) -> Version:
        scope = store.open_record(patient_id, "write")
        values = read_inputs(body, "phase-transfer")
        year = values["transferYear"]
        today = store.clock().date()
        if not isinstance(year, int) or not today.year <= year <= today.year + 1:
            raise invalid("parameter 'transferYear' must be this calendar year or next (reg 18(1) applies within 12 "
                          "months of the transfer)", "value", ["Parameters.parameter"])
        post16 = bool(values.get("postSixteen"))
        due = clocks.phase_transfer_due(year, post16)
        task = clock_task(scope.record, "phase-transfer", today, due, store,
                          inputs=[typed("transfer-year", valueInteger=year), typed("post-16", valueBoolean=post16)])
        prepared = store.prepare_clock(task, None, "phase-transfer")
        store.commit([prepared])
        return version_of(prepared.write)

    # --- $cease -------------------------------------------------------------------------

    def cease(self, store: ScopedStore, patient_id: str, body: object) -> Version:
        scope = store.open_record(patient_id, "write")
        values = read_inputs(body, "cease")
        today = store.clock().date()
        consulted = full_date(values, "consulted", today)
        decided = full_date(values, "decided", today, consulted)
        if values["reason"] not in code_system_codes("ehcp-cease-reason"):
            raise invalid("parameter 'reason' must be a code of ehcp-cease-reason", "value", ["Parameters.parameter"])
        if any(is_task(t.resource, "cease") and t.resource.get("status") in statutory.OPEN
               for t in scope.current_of_type("Task")):
            raise business_rule("a decision to cease this plan is already awaiting the end of the appeal period")
        task = clock_task(scope.record, "cease", decided, clocks.appeal_deadline(decided), store,
                          inputs=[typed("consulted", valueDate=consulted.isoformat()),
                                  typed("cease-reason", valueCodeableConcept=concept(CEASE_REASON_SYSTEM, values["reason"]))])
        task["description"] = ("The plan is maintained until the time for appealing has passed or any appeal is "
                               "decided (SEND Regulations 2014 reg 31; Code of Practice 9.210)")
        step = Step()
        notice = self._notice(store, scope, "cease", "The local authority has decided to stop maintaining the EHC "
                              "plan. The plan stays in place until the time for appealing has passed or any appeal "
                              "is decided.", values.get("reasonText") or values["reason"], f"Task/{task['id']}", step)
        task["input"] += step.outputs
        store.commit([store.prepare_clock(task, None, "cease"), notice])
        return self._read_back(store, task["id"])

    @staticmethod
    def _read_back(store: ScopedStore, task_id: str) -> Version:
        version, _ = store.resource("Task", task_id, "write")
        return version

    def _ceased(self, scope: RecordScope, clock: Version, done: date, values: dict, step: Step) -> Step:
        """The plan stops only when no appeal can still change the decision."""
        notice = _cease_notice(scope, clock)
        lodged = notices.extension_value(notice.resource, notices.APPEAL_LODGED, "valueDate") if notice else None
        decided = notices.extension_value(notice.resource, notices.APPEAL_DECIDED, "valueDate") if notice else None
        outcome = notices.extension_value(notice.resource, notices.APPEAL_OUTCOME, "valueCode") if notice else None
        deadline = notices.extension_value(notice.resource, notices.APPEAL_DEADLINE, "valueDate") if notice else None
        if lodged and not decided:
            raise business_rule(f"an appeal against ceasing was lodged on {lodged}; the plan is maintained until the "
                                "Tribunal decides it")
        if not lodged and deadline and done <= parse_date(str(deadline)):
            raise business_rule(f"the family may appeal until {deadline}; the plan is maintained until then")
        if outcome == "allowed":
            step.business_status = f"the Tribunal allowed the appeal on {decided}; the plan continues"
            step.outputs.append(typed("appeal-decided", valueDate=str(decided)))
            return step
        step.business_status = f"plan ceased on {done}" + (f" after the appeal was dismissed on {decided}" if decided else "")
        return step


def _cease_notice(scope: RecordScope, clock: Version) -> Version | None:
    for item in clock.resource.get("input", []) or []:
        reference = (item.get("valueReference") or {}).get("reference", "")
        if reference.startswith("Communication/"):
            return scope.read("Communication", reference.split("/")[1])
    return None
