"""Moving a child's plan to another local authority (SEND Regulations 2014 reg 15; Code of
Practice 9.157-9.161), within one deployment.

`$transfer` (the custodian LA) opens a transfer Task carrying the reg 15 clocks; `$accept` (the
destination LA) moves custody in one transaction. The plan's content, versions and audit chain
are untouched: the new LA maintains the plan "as if it had made it" on the original date. The
old LA loses read and write access and keeps only its own entries in the access log; its open
clocks end as reg 15 says (`arrival_clocks`: an assessment stops, the review is re-timed to reg
15(5)); the family gets a notice Task they can read (reg 15(4)); the family's
consents carry over unchanged (they name recipients, not the custodian).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Callable

from consent import engine
from consent.references import reference_of
from ehcp_record.audit import entries as audit
from ehcp_record.workflow import clocks
from ehcp_record.transfer import remote as transfer_remote
from ehcp_record.config import Settings
from ehcp_record.access.scoped import PreparedWrite, RecordScope, ScopedStore, version_of
from ehcp_record.errors import business_rule, invalid, unprocessable
from ehcp_record.fhir.dates import instant, parse_date
from ehcp_record.fhir.signatures import read_inputs
from ehcp_record.plan.gate import is_issued, is_plan
from ehcp_record.fhir.identifiers import la_by_number
from ehcp_record.net.outbound import Fence
from ehcp_record.store.versions import Version
from ehcp_record.workflow.task_values import TASK_CODE_SYSTEM, TASK_INPUT_SYSTEM, concept, is_task, task_input

#: Why the old LA's open clocks end when the plan transfers (SEND Regulations 2014 reg 15).
STOPPED = ("the old local authority's review or proposed amendment ends on transfer to another local authority; "
           "the new authority maintains the plan and reviews it (SEND Regulations 2014 reg 15(3)(a), (5))")
ASSESSMENT_STOPPED = ("the old local authority's EHC needs assessment ends on transfer: the new authority decides "
                      "whether to make one and tells the family within 6 weeks (SEND Regulations 2014 reg 15(4)(b)), "
                      "its own time limits running from becoming responsible for the child (regs 5(1)(b), 10(1)); "
                      "advice already obtained is passed on and is not sought again where the adviser, the old "
                      "authority and the family are satisfied it is sufficient (reg 15(3)(b))")
REVIEW_RETIMED = ("replaced on transfer by the new authority's review clock: before the later of 12 months from the "
                  "plan being made or last reviewed and 3 months from the transfer (SEND Regulations 2014 reg 15(5))")
ASSESSMENT_CLOCKS = ("assessment-request", "assessment-decision", "advice", "issue-decision", "final-plan")
REVIEW_STEPS = ("parental-review", "annual-review", "amendment")
_OPEN = ("requested", "received", "accepted", "in-progress", "ready", "on-hold")
_WITHDRAWN = ("cancelled", "entered-in-error", "rejected", "failed")


@dataclass(frozen=True)
class TransferRequest:
    destination: str
    move_date: date
    notified_date: date


@dataclass
class TransferService:
    settings: Settings
    session_factory: Callable[[], Any] | None = None  # default: delivery_session through the settings' fence

    # --- $transfer ----------------------------------------------------------------------

    def start(self, store: ScopedStore, patient_id: str, body: object) -> Version:
        store.access.require_scope("Task", "c")
        scope = store.open_record(patient_id, "transfer")
        request = parse_transfer(body)
        pending = self._pending_remote(scope)
        if pending is not None:
            if pending.resource["owner"]["reference"] != request.destination:
                raise business_rule(f"a transfer of this plan to {pending.resource['owner']['reference']} is waiting "
                                    "to be delivered; call $transfer with that destination to send it again")
            return self._deliver(store, scope, pending)  # the receiver was down: try the same transfer again
        state = scope.state()
        self._check(store, scope, request, state.custodian if state else None)
        task = self._transfer_task(store, scope, request)
        peer = transfer_remote.peer_for_organization(self.settings, request.destination)
        if peer is not None:
            task["input"].append({"type": concept(TASK_INPUT_SYSTEM, "deployment"), "valueUrl": peer.base_url})
        prepared = store.prepare_server_task(task, None, "transfer", "transfer")
        store.commit([prepared])
        created = version_of(prepared.write)
        return self._deliver(store, scope, created) if peer is not None else created

    # --- across deployments -------------------------------------------------------------

    def _pending_remote(self, scope: RecordScope) -> Version | None:
        for task in scope.current_of_type("Task"):
            if is_transfer(task.resource) and task.resource.get("status") == "requested" and task_input(task.resource, "deployment"):
                return task
        return None

    def _deliver(self, store: ScopedStore, scope: RecordScope, task: Version) -> Version:
        """Send the signed Bundle; custody leaves only on a valid signed acknowledgement."""
        destination = task.resource["owner"]["reference"]
        peer = transfer_remote.peer_for_organization(self.settings, destination)
        if peer is None:
            raise business_rule(f"{destination} is no longer in this deployment's trust list")
        storage = store.transfer_storage(scope.record)
        body = self._outbound_body(store, scope, storage, task)
        headers = transfer_remote.signed_headers(body, store.signing_key, task.id)
        sent = storage.sent(task.id)
        try:
            session = self.session_factory() if self.session_factory else \
                transfer_remote.delivery_session(fence=Fence.from_settings(self.settings))
            ack = transfer_remote.deliver(peer, body, headers, session, earlier=sent)
        except transfer_remote.DeliveryFailed as failure:
            return self._note_pending(store, task, str(failure))
        received = storage.outbound(sent[transfer_remote.acknowledged_hash(ack) or ""]) or body
        return self._complete_remote(store, task, ack, self._not_carried(scope, task, received))

    def _outbound_body(self, store: ScopedStore, scope: RecordScope, storage, task: Version) -> bytes:
        """The same bytes on every attempt while the record stays as it was (a receiver that
        got them but whose answer was lost replays its acknowledgement); a new bundle once
        anything in the record has changed, so the change travels too."""
        record = task.record or ""
        key = f"{task.id}.{storage.version_count(record, f'Task/{task.id}')}"
        stored = storage.outbound(key)
        if stored is not None:
            return stored
        versions = list(scope.versions())
        now = store.clock()
        export = audit.body(store.caller, "transfer-export", "permit", now,
                            f"signed transfer Bundle for {task.resource['owner']['reference']} (reg 15)",
                            [(f"Task/{task.id}/_history/{task.vid}", task.hash)])
        chain = storage.export_chain(record, export)
        bundle = transfer_remote.build_bundle(storage, record, task.id, now, versions, chain)
        body = storage.keep_outbound(key, transfer_remote.encode_bundle(bundle))
        storage.note_sent(task.id, hashlib.sha256(body).hexdigest(), key)
        return body

    def _not_carried(self, scope: RecordScope, task: Version, received: bytes) -> list[str]:
        """Versions written here after the bundle the receiver holds was built (its answer to
        that one was lost): they did not travel, and the old LA must send them on."""
        carried = transfer_remote.version_refs(received)
        return [f"{v.type}/{v.id}/_history/{v.vid}" for v in scope.versions()
                if f"{v.type}/{v.id}/_history/{v.vid}" not in carried and not (v.type == "Task" and v.id == task.id)]

    def _note_pending(self, store: ScopedStore, task: Version, reason: str) -> Version:
        waiting = dict(task.resource, businessStatus={"text": f"delivery pending: {reason}"[:500]})
        prepared = store.prepare_server_task(waiting, task, "transfer-delivery", "transfer")
        store.commit([prepared])
        return version_of(prepared.write)

    def _complete_remote(self, store: ScopedStore, task: Version, ack: dict, not_carried: list[str]) -> Version:
        now = store.clock()
        values = transfer_remote.ack_values(ack)
        outputs = [{"type": concept(TASK_INPUT_SYSTEM, "transferred-on"), "valueDate": now.date().isoformat()},
                   {"type": concept(TASK_INPUT_SYSTEM, "acknowledgement"), "valueString": json.dumps(values, sort_keys=True)}]
        status = "received by the new local authority"
        if not_carried:
            outputs.append({"type": concept(TASK_INPUT_SYSTEM, "not-carried"), "valueString": " ".join(not_carried)})
            status += f"; {len(not_carried)} later change(s) did not travel and must be sent on"
        done = dict(task.resource, status="completed", businessStatus={"text": status},
                    lastModified=instant(now), output=outputs)
        prepared = store.prepare_server_task(done, task, "transfer-delivery", "transfer")
        state = store.custody_state(task.record or "")
        custody = {"$set": {"transferred_out": True}, "$addToSet": {"former_custodians": state.custodian if state else None}}
        body = audit.body(store.caller, "transferred-out", "permit", now, f"acknowledged by {values.get('receiver')} (reg 15)",
                          [(ref, None) for ref in not_carried])
        store.commit_custody_move([prepared], task.record or "", None, custody, body)
        return version_of(prepared.write)

    def _check(self, store: ScopedStore, scope: RecordScope, request: TransferRequest, custodian: str | None) -> None:
        number = request.destination.removeprefix("Organization/la-")
        if not request.destination.startswith("Organization/la-") or la_by_number(number) is None:
            raise unprocessable(f"{request.destination} is not a local authority in England (Organization/la-<DfE number>)",
                                "value", ["Parameters.parameter.destination"])
        if request.destination == custodian:
            raise business_rule(f"the plan is already held by {custodian}; a transfer needs another local authority")
        if not any(is_plan(v.resource) and is_issued(v.resource) for v in scope.current_of_type("Composition")):
            raise business_rule("only an issued plan transfers (reg 15); this child has no final or amended plan")
        if any(is_transfer(t.resource) and t.resource.get("status") in _OPEN for t in scope.current_of_type("Task")):
            raise business_rule("a transfer of this plan is already in progress; the destination must accept it first")
        if request.notified_date > store.clock().date():
            raise unprocessable("notifiedDate (when the LA learned of the move) cannot be in the future", "value")

    def _transfer_task(self, store: ScopedStore, scope: RecordScope, request: TransferRequest) -> dict:
        record = scope.record
        caller = store.caller
        last_review = self._last_review_or_made(scope, store.clock().date())
        due = clocks.transfer_clocks(request.move_date, request.notified_date, last_review)
        now = store.clock()
        inputs = [("destination", {"valueReference": {"reference": request.destination}}),
                  ("move-date", {"valueDate": request.move_date.isoformat()}),
                  ("notified-date", {"valueDate": request.notified_date.isoformat()}),
                  ("last-review", {"valueDate": last_review.isoformat()}),
                  ("transfer-due", {"valueDate": due.transfer_due.isoformat()}),
                  ("notice-due", {"valueDate": due.notice_due.isoformat()}),
                  ("review-due", {"valueDate": due.review_due.isoformat()})]
        return {
            "resourceType": "Task", "id": str(uuid.uuid4()), "status": "requested", "intent": "order",
            "code": concept(TASK_CODE_SYSTEM, "transfer"),
            "description": (f"Transfer of the EHC plan to {store.display_names([request.destination]).get(request.destination, request.destination)}"
                            " (SEND Regulations 2014 reg 15)"),
            "for": {"reference": f"Patient/{record}"}, "authoredOn": instant(now),
            "requester": {"reference": caller.actor.organization or caller.actor.sub},
            "owner": {"reference": request.destination},  # the destination acts on it (and may read it)
            "restriction": {"period": {"start": request.notified_date.isoformat(), "end": due.transfer_due.isoformat()}},
            "input": [{"type": concept(TASK_INPUT_SYSTEM, code), **value} for code, value in inputs],
        }

    def _last_review_or_made(self, scope: RecordScope, today: date) -> date:
        """When the plan was made or last reviewed (reg 15(5) counts 12 months from it): the
        later of the issued plan's `date` (the current version of an issued plan is its newest
        final/amended one) and the meeting date of any annual review already held, decided or
        not (a review happens at its meeting; reg 20), unless that review was withdrawn."""
        dates = []
        for version in scope.current_of_type("Composition"):
            if is_plan(version.resource) and is_issued(version.resource) and version.resource.get("date"):
                dates.append(parse_date(version.resource["date"][:10]))
        for task in scope.current_of_type("Task"):
            if is_task(task.resource, "annual-review") and task.resource.get("status") not in _WITHDRAWN:
                meeting = task_input(task.resource, "meeting-date")
                if isinstance(meeting, str) and parse_date(meeting) <= today:
                    dates.append(parse_date(meeting))
        return max(dates) if dates else today

    # --- $accept ------------------------------------------------------------------------

    def accept(self, store: ScopedStore, task_id: str) -> Version:
        task = store.transfer_for_destination(task_id, is_transfer)
        destination = (task.resource.get("owner") or {}).get("reference")
        caller = store.caller
        if task.resource.get("status") != "requested":
            raise business_rule(f"this transfer is {task.resource.get('status')}; only a requested transfer can be accepted")
        if task_input(task.resource, "deployment"):
            raise business_rule(f"{destination} is served by another deployment: the plan is delivered there, "
                                "not accepted here")
        record = task.record or ""
        state = store.custody_state(record)
        old = state.custodian if state else None
        now = store.clock()
        writes = [self._complete(store, task, now)]
        writes += arrival_clocks(store, store.record_tasks_for_destination(task), task, destination or "", now)
        writes.append(self._family_notice(store, task, state, now))
        body = audit.body(caller, "transfer-accepted", "permit", now, f"custody moved from {old} to {destination} (reg 15)",
                          [(f"Task/{task.id}/_history/{task.vid + 1}", None)])
        store.commit_custody_move(writes, record, destination, _custody_moves(old, destination), body)
        return version_of(writes[0].write)

    def _complete(self, store: ScopedStore, task: Version, now: datetime) -> PreparedWrite:
        outputs = [{"type": concept(TASK_INPUT_SYSTEM, "transferred-on"), "valueDate": now.date().isoformat()}]
        done = dict(task.resource, status="completed", lastModified=instant(now), output=outputs)
        return store.prepare_server_task(done, task, "accept-transfer", "arrival")

    def _family_notice(self, store: ScopedStore, task: Version, state, now: datetime,
                       pending: dict[str, str | None] | None = None) -> PreparedWrite:
        """Reg 15(4): within 6 weeks the new LA tells the family the plan has transferred,
        whether it will reassess, and when it will review (reg 15(5))."""
        transferred = now.date()
        last_review = parse_date(task_input(task.resource, "last-review"))
        notice_due = clocks.transfer_notice_due(transferred)
        review_due = clocks.transfer_review_due(last_review, transferred)
        makers = sorted(engine.decision_makers(state, transferred)) if state else []
        la = store.caller.actor.organization or ""
        name = store.display_names([la]).get(la, la)
        notice = {
            "resourceType": "Task", "id": str(uuid.uuid4()), "status": "requested", "intent": "order",
            "code": concept(TASK_CODE_SYSTEM, "notice-to-family"),
            "description": (f"Your child's EHC plan has moved to {name}. By {notice_due} we will "
                            f"write to tell you whether we will reassess and when we will review the plan; the first "
                            f"review will be before {review_due}."),
            "for": task.resource["for"], "authoredOn": instant(now),
            "requester": {"reference": la, "display": name}, "basedOn": [{"reference": f"Task/{task.id}"}],
            "restriction": {"period": {"start": transferred.isoformat(), "end": notice_due.isoformat()}},
            "input": [{"type": concept(TASK_INPUT_SYSTEM, "notice-due"), "valueDate": notice_due.isoformat()},
                      {"type": concept(TASK_INPUT_SYSTEM, "review-due"), "valueDate": review_due.isoformat()}],
        }
        if makers:
            notice["owner"] = {"reference": makers[0]}
        return store.prepare_server_task(notice, None, "accept-transfer", "arrival", pending=pending)


def arrival_clocks(store: ScopedStore, tasks: list[Version], transfer: Version, destination: str, now: datetime,
                   pending: dict[str, str | None] | None = None) -> list[PreparedWrite]:
    """The old LA's open clocks, as the transfer leaves them (reg 15): an assessment in progress
    ends (the new authority decides afresh, reg 15(4)(b); advice already given stays in the record
    and need not be sought again, reg 15(3)(b)); the old LA's review decision and proposed
    amendments end; the review clock is replaced by the new authority's (reg 15(5)). Other clocks
    (a phase transfer, a decision to cease awaiting appeal) stay open: the plan is maintained as if
    the new authority had made it (reg 15(3)(a)), and the worklist shows them to the new custodian."""
    writes = []
    last_review = parse_date(task_input(transfer.resource, "last-review"))
    for task in tasks:
        resource = task.resource
        if task.id == transfer.id or resource.get("status") not in _OPEN:
            continue
        code = next((c for c in ASSESSMENT_CLOCKS + REVIEW_STEPS + ("review-due",) if is_task(resource, c)), None)
        if code is None:
            continue
        reason = ASSESSMENT_STOPPED if code in ASSESSMENT_CLOCKS else REVIEW_RETIMED if code == "review-due" else STOPPED
        stopped = dict(resource, status="cancelled", statusReason={"text": reason})
        writes.append(store.prepare_server_task(stopped, task, "accept-transfer", "arrival", pending=pending))
    review = _review_clock(transfer, destination, last_review, now)
    writes.append(store.prepare_server_task(review, None, "accept-transfer", "arrival", pending=pending))
    return writes


def _review_clock(transfer: Version, destination: str, last_review: date, now: datetime) -> dict:
    """The new authority's first review (reg 15(5)), as a statutory review-due clock."""
    transferred = now.date()
    due = clocks.transfer_review_due(last_review, transferred)
    return {
        "resourceType": "Task", "id": str(uuid.uuid4()), "status": "requested", "intent": "order",
        "code": concept(TASK_CODE_SYSTEM, "review-due"),
        "description": f"Due by {due.isoformat()} (SEND Regulations 2014 reg 15(5))",
        "for": transfer.resource["for"], "authoredOn": instant(now),
        "requester": {"reference": destination}, "owner": {"reference": destination},
        "basedOn": [{"reference": f"Task/{transfer.id}"}],
        "restriction": {"period": {"start": transferred.isoformat(), "end": due.isoformat()}},
        "input": [{"type": concept(TASK_INPUT_SYSTEM, "last-review"), "valueDate": last_review.isoformat()}],
    }


def _custody_moves(old: str | None, new: str) -> list[dict]:
    """The records-document update (a pipeline, so one statement both adds the old LA to the
    former custodians and takes the new one off it: a plan can come back to an LA that held it)."""
    held = {"$setUnion": [{"$ifNull": ["$former_custodians", []]}, [old] if old else []]}
    return [{"$set": {"custodian": new, "former_custodians": {"$setDifference": [held, [new]]}}}]


#: $transfer's inputs, all required: the new LA and the two dates the reg 15 clocks run from.
def parse_transfer(body: object) -> TransferRequest:
    """Read through the one Parameters reader, so a missing, repeated or mistyped input is
    refused the same way as in every other operation."""
    values = read_inputs(body, "transfer")
    destination = reference_of(values["destination"])
    if destination is None:
        raise invalid("parameter 'destination' must be a valueReference with a reference to the new LA's "
                      "Organization", "required", ["Parameters.parameter"])
    return TransferRequest(destination, _date(values, "moveDate"), _date(values, "notifiedDate"))


def _date(values: dict, name: str) -> date:
    """A full date: the clocks count whole days, so "2026-09" is refused, not guessed."""
    try:
        return parse_date(values[name])
    except ValueError as exc:
        raise invalid(f"parameter '{name}' must be a full date (YYYY-MM-DD): {exc}", "value",
                      ["Parameters.parameter"]) from None


def is_transfer(task: dict) -> bool:
    return is_task(task, "transfer")
