"""Decision notices a family can prove they received, and their receipts.

Every decision with a right of appeal (CFA 2014 s51: not to assess, not to issue, the issued
plan, the amended plan, not to amend after a review, to cease) is a `Communication` to the
decision-maker: the decision, the reasons, the appeal and mediation information the
regulations require (SEND Regulations 2014 regs 5(3), 10(3), 14, 20(10), 22(3)-(4), 31(3), 32),
and the appeal deadline computed by `clocks.appeal_deadline` (Tribunal Procedure Rules 2008
r20(1)(c)). The server writes it (`ScopedStore.prepare_decision_notice`); clients can only
read it. The family's app records `delivered` and `read` receipts with the server's time
(`$notice-receipt`); a mediation certificate moves the appeal deadline. A notice still unread
5 working days after it was sent is on the LA's worklist, so someone sends it another way.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime

from consent import engine
from ehcp_record.access.scoped import PreparedWrite, RecordScope, ScopedStore, version_of
from ehcp_record.errors import business_rule, invalid, not_found
from ehcp_record.fhir.canonical import code_system, structure_definition
from ehcp_record.fhir.dates import instant, parse_date
from ehcp_record.fhir.signatures import read_inputs
from ehcp_record.store.versions import Version
from ehcp_record.workflow import clocks

NOTICE_SYSTEM = code_system("ehcp-decision-notice")
APPEAL_DEADLINE = structure_definition("ehcp-appeal-deadline")
MEDIATION_CERTIFICATE = structure_definition("ehcp-mediation-certificate")
READ_AT = structure_definition("ehcp-notice-read")
APPEAL_LODGED = structure_definition("ehcp-appeal-lodged")
APPEAL_DECIDED = structure_definition("ehcp-appeal-decided")
APPEAL_OUTCOME = structure_definition("ehcp-appeal-outcome")
NOTICE_KINDS = ("not-to-assess", "not-to-issue", "plan-issued", "plan-amended", "not-to-amend", "cease")
#: What `$notice-event` records: receipts (the decision-maker), and the mediation certificate and
#: appeal (the decision-maker or the custodian LA, who is told of an appeal by the Tribunal).
EVENTS = ("delivered", "read", "mediation-certificate", "appeal-lodged", "appeal-decided")
APPEAL_OUTCOMES = ("dismissed", "allowed")

#: What every notice says about the family's rights (CFA 2014 ss51-55; SEND Regulations 2014
#: reg 32: mediation information; Code of Practice 11.13-11.51).
RIGHTS = (
    "You have the right to appeal this decision to the First-tier Tribunal (Special Educational Needs and "
    "Disability). Before appealing you must contact a mediation adviser (the contact is in this letter) unless your "
    "appeal is only about the school or other institution named in the plan. You may choose mediation; it must "
    "take place within 30 days. The Tribunal must receive your appeal by {deadline} (2 months from this notice), or "
    "within 1 month of the date of a mediation certificate if that is later. Disagreement resolution services and "
    "information, advice and support on special educational needs are available free from the local authority's "
    "SENDIASS service."
)


@dataclass(frozen=True)
class Decision:
    """What a notice tells the family."""

    kind: str
    decision: str
    reasons: str
    about: str  # the Task (or plan version) the decision was taken on


def notice(scope: RecordScope, store: ScopedStore, decision: Decision) -> dict:
    """The Communication for a decision, addressed to the record's decision-makers."""
    if decision.kind not in NOTICE_KINDS:
        raise ValueError(decision.kind)
    now = store.clock()
    deadline = clocks.appeal_deadline(now.date())
    recipients = _decision_makers(scope, now.date())
    resource = {
        "resourceType": "Communication", "id": str(uuid.uuid4()), "status": "completed",
        "category": [{"coding": [{"system": NOTICE_SYSTEM, "code": decision.kind}]}],
        "subject": {"reference": f"Patient/{scope.record}"},
        "about": [{"reference": decision.about}],
        "sender": {"reference": store.caller.actor.organization or store.caller.actor.sub},
        "sent": instant(now),
        "payload": [{"contentString": decision.decision}, {"contentString": f"Reasons: {decision.reasons}"},
                    {"contentString": RIGHTS.format(deadline=deadline.strftime("%-d %B %Y"))}],
        "extension": [{"url": APPEAL_DEADLINE, "valueDate": deadline.isoformat()}],
    }
    if recipients:
        resource["recipient"] = [{"reference": r} for r in recipients]
    return resource


def prepared_notice(scope: RecordScope, store: ScopedStore, decision: Decision) -> PreparedWrite:
    return store.prepare_decision_notice(notice(scope, store, decision))


def _decision_makers(scope: RecordScope, today: date) -> list[str]:
    """Everyone who decides for the child (each parent with parental responsibility, or the
    young person): each is told of a decision they may appeal, not only the first."""
    state = scope.state()
    return sorted(engine.decision_makers(state, today)) if state else []


def is_notice(resource: dict) -> bool:
    return resource.get("resourceType") == "Communication" and kind_of(resource) is not None


def kind_of(resource: dict) -> str | None:
    for concept in resource.get("category", []) or []:
        for coding in concept.get("coding", []) or []:
            if coding.get("system") == NOTICE_SYSTEM:
                return coding.get("code")
    return None


def extension_value(resource: dict, url: str, kind: str) -> object:
    return next((e.get(kind) for e in resource.get("extension", []) or [] if e.get("url") == url), None)


def sent_on(resource: dict) -> date | None:
    sent = resource.get("sent")
    return parse_date(sent[:10]) if isinstance(sent, str) else None


def read_on(resource: dict) -> str | None:
    value = extension_value(resource, READ_AT, "valueDateTime")
    return value if isinstance(value, str) else None


@dataclass
class NoticeService:
    """`$notice-event`: delivered and read receipts (the decision-maker); the mediation
    certificate and the appeal (the decision-maker or the custodian LA)."""

    def event(self, store: ScopedStore, patient_id: str, body: object) -> Version:
        purpose = "write" if self._is_la(store) else "respond"
        scope = store.open_record(patient_id, purpose)
        values = read_inputs(body, "notice-event")
        kind = values["kind"]
        if kind not in EVENTS:
            raise invalid(f"parameter 'kind' must be one of {', '.join(EVENTS)}", "value", ["Parameters.parameter"])
        if kind in ("delivered", "read") and purpose != "respond":
            raise business_rule("delivered and read receipts come from the family's own app (the decision-maker)")
        current = self._notice(scope, values["notice"])
        now = store.clock()
        updated = _with_event(current.resource, kind, now, values)
        prepared = store.prepare_notice_receipt(updated, current, f"notice-{kind}", purpose)
        store.commit([prepared])
        return version_of(prepared.write)

    @staticmethod
    def _is_la(store: ScopedStore) -> bool:
        return store.caller.actor.role == "la"

    @staticmethod
    def _notice(scope: RecordScope, reference: object) -> Version:
        target = (reference or {}).get("reference", "") if isinstance(reference, dict) else ""
        resource_type, _, resource_id = target.partition("/")
        found = scope.read("Communication", resource_id) if resource_type == "Communication" else None
        if found is None or found.record != scope.record or not is_notice(found.resource):
            raise not_found(target or "the notice")
        return found


def _with_event(resource: dict, kind: str, now: datetime, values: dict) -> dict:
    """The notice with one more event; the first time of each receipt is the one kept."""
    certificate = values.get("date")
    updated = dict(resource)
    updated.pop("meta", None)
    extensions = list(updated.get("extension", []) or [])
    if kind == "delivered" and not updated.get("received"):
        updated["received"] = instant(now)
    elif kind == "read":
        updated.setdefault("received", instant(now))  # read implies delivered
        if read_on(resource) is None:
            extensions.append({"url": READ_AT, "valueDateTime": instant(now)})
    elif kind == "mediation-certificate":
        issued = _certificate_date(certificate, now.date(), sent_on(resource))
        extensions = [e for e in extensions if e.get("url") not in (MEDIATION_CERTIFICATE, APPEAL_DEADLINE)]
        extensions.append({"url": MEDIATION_CERTIFICATE, "valueDate": issued.isoformat()})
        deadline = clocks.appeal_deadline(sent_on(resource) or now.date(), issued)
        extensions.append({"url": APPEAL_DEADLINE, "valueDate": deadline.isoformat()})
    elif kind in ("appeal-lodged", "appeal-decided"):
        extensions = _appeal(extensions, kind, now.date(), values, sent_on(resource))
    updated["extension"] = extensions
    return updated


def _certificate_date(value: object, today: date, sent: date | None) -> date:
    if not isinstance(value, str):
        raise invalid("this event needs parameter 'date' (valueDate): the day it happened", "required",
                      ["Parameters.parameter"])
    try:
        issued = parse_date(value)
    except ValueError:
        raise invalid("parameter 'date' must be a full date (YYYY-MM-DD)", "value", ["Parameters.parameter"]) from None
    if issued > today or (sent is not None and issued < sent):
        raise business_rule(f"this event happens between the notice ({sent}) and today, not on {issued}")
    return issued


def _appeal(extensions: list[dict], kind: str, today: date, values: dict, sent: date | None) -> list[dict]:
    """An appeal lodged with, or decided by, the First-tier Tribunal (CFA 2014 s51)."""
    day = _certificate_date(values.get("date"), today, sent)
    has = {e.get("url") for e in extensions}
    if kind == "appeal-lodged":
        if APPEAL_LODGED in has:
            raise business_rule("an appeal against this decision is already recorded")
        return extensions + [{"url": APPEAL_LODGED, "valueDate": day.isoformat()}]
    if APPEAL_LODGED not in has or APPEAL_DECIDED in has:
        raise business_rule("record the appeal as lodged (and not yet decided) before its decision")
    outcome = values.get("outcome")
    if outcome not in APPEAL_OUTCOMES:
        raise invalid("an appeal decision needs parameter 'outcome': dismissed or allowed", "required",
                      ["Parameters.parameter"])
    return extensions + [{"url": APPEAL_DECIDED, "valueDate": day.isoformat()},
                         {"url": APPEAL_OUTCOME, "valueCode": outcome}]
