"""`GET /fhir/$worklist`: every statutory clock due or overdue across the caller's records.

One list, evaluated as of a day (`asOf`, default today, so tests and "what will be late next
week" use the same code): the open clock Tasks (assessment decision, advice, decision to
issue, final plan, review, review report, review decision, phase transfer, ceasing, the new LA's
notice to the family after a transfer), a transfer still to be made (reg 15(2)), the
amendments (the `amendment` clock a review's decision to amend opens, or, for an amendment
proposed outside a review, the parental-review Task's `final-plan-due`: reg 22(3), 8 weeks), and decision notices not read 5 working days after
they were sent (`clocks.notice_read_due`), each with its due day and the days left (negative:
overdue). Items are those due within `within` days (default 14) or overdue.

It reads only through the caller's scoped store searches, so an LA sees its custody, a family
its own child's clocks, and everyone else nothing; no access logic lives here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from ehcp_record.access.scoped import ScopedStore
from ehcp_record.errors import invalid
from ehcp_record.fhir.dates import parse_date
from ehcp_record.operations import notices
from ehcp_record.workflow import clocks, statutory
from ehcp_record.workflow.task_values import is_task, task_input, task_output

PAGE = 100
MAX_ITEMS = 5000


@dataclass(frozen=True)
class Item:
    clock: str
    reference: str
    patient: str
    due: date
    days_left: int
    state: str
    regulation: str
    exception: str | None = None

    def parameter(self) -> dict:
        parts = [{"name": "clock", "valueCode": self.clock},
                 {"name": "focus", "valueReference": {"reference": self.reference}},
                 {"name": "patient", "valueReference": {"reference": self.patient}},
                 {"name": "due", "valueDate": self.due.isoformat()},
                 {"name": "daysLeft", "valueInteger": self.days_left},
                 {"name": "state", "valueCode": self.state},
                 {"name": "regulation", "valueString": self.regulation}]
        if self.exception:
            parts.append({"name": "exception", "valueCode": self.exception})
        return {"name": "item", "part": parts}


@dataclass
class WorklistService:
    def worklist(self, store: ScopedStore, args: dict[str, str]) -> dict:
        as_of = _as_of(args.get("asOf"), store.clock().date())
        within = _within(args.get("within"))
        items = [i for i in self.items(store, as_of) if i.days_left <= within]
        items.sort(key=lambda i: (i.due, i.clock, i.reference))
        return {"resourceType": "Parameters",
                "parameter": [{"name": "asOf", "valueDate": as_of.isoformat()},
                              {"name": "total", "valueInteger": len(items)}] + [i.parameter() for i in items]}

    def items(self, store: ScopedStore, as_of: date) -> list[Item]:
        found = []
        tasks = all_matches(store, "Task", [("status", "requested,in-progress,on-hold,completed")])
        tracked = {i.patient for i in (_clock_item(t, as_of) for t in tasks) if i is not None and i.clock == "amendment"}
        for task in tasks:
            item = _clock_item(task, as_of) or _amendment_item(task, as_of) or _transfer_item(task, as_of)
            if item is not None and not (item.clock == "amendment" and item.reference.startswith("Task/")
                                         and is_task(task, "parental-review") and item.patient in tracked):
                found.append(item)
        for communication in all_matches(store, "Communication", []):
            item = _unread_item(communication, as_of)
            if item is not None:
                found.append(item)
        return found


def all_matches(store: ScopedStore, resource_type: str, pairs: list[tuple[str, str]]) -> list[dict]:
    """Every match, page by page, through the caller's scoped store."""
    found: list[dict] = []
    offset = 0
    while len(found) < MAX_ITEMS:
        result = store.search(resource_type, pairs + [("_count", str(PAGE)), ("_offset", str(offset))])
        found += result.matches
        offset += PAGE
        if offset >= result.total or not result.matches:
            break
    return found


def _clock_item(task: dict, as_of: date) -> Item | None:
    if task.get("status") == "completed":
        return None
    state = statutory.state_of(task, as_of)
    if state is None:
        return None
    return Item(state.code, f"Task/{task['id']}", (task.get("for") or {}).get("reference", ""), state.due,
                state.days_left, "overdue" if state.days_left < 0 else "due", state.regulation, state.exception)


def _amendment_item(task: dict, as_of: date) -> Item | None:
    """A proposed amendment not issued yet: the final amended plan is due 8 weeks on (reg 22(3))."""
    due = task_input(task, "final-plan-due")
    if not is_task(task, "parental-review") or not isinstance(due, str) or task.get("status") == "cancelled":
        return None
    if task_output(task, "issued-version") is not None:
        return None
    day = parse_date(due)
    left = (day - as_of).days
    return Item("amendment", f"Task/{task['id']}", (task.get("for") or {}).get("reference", ""), day, left,
                "overdue" if left < 0 else "due", "SEND Regulations 2014 reg 22(3)")


def _transfer_item(task: dict, as_of: date) -> Item | None:
    """A transfer not yet made: the old LA transfers the plan on the day of the move, or within 15
    working days of learning of it (reg 15(2)); the Task's period ends on that day."""
    end = ((task.get("restriction") or {}).get("period") or {}).get("end")
    if not is_task(task, "transfer") or task.get("status") != "requested" or not isinstance(end, str):
        return None
    day = parse_date(end[:10])
    left = (day - as_of).days
    return Item("transfer", f"Task/{task['id']}", (task.get("for") or {}).get("reference", ""), day, left,
                "overdue" if left < 0 else "due", "SEND Regulations 2014 reg 15(2)")


def _unread_item(communication: dict, as_of: date) -> Item | None:
    if not notices.is_notice(communication) or notices.read_on(communication) is not None:
        return None
    sent = notices.sent_on(communication)
    if sent is None:
        return None
    due = clocks.notice_read_due(sent)
    left = (due - as_of).days
    return Item("notice-unread", f"Communication/{communication['id']}",
                (communication.get("subject") or {}).get("reference", ""), due, left,
                "overdue" if left < 0 else "due", "not read within 5 working days: send it another way")


def _as_of(value: str | None, today: date) -> date:
    if value is None:
        return today
    try:
        return parse_date(value)
    except ValueError:
        raise invalid("asOf must be a full date (YYYY-MM-DD)", "value", ["asOf"]) from None


def _within(value: str | None) -> int:
    if value is None:
        return 14
    if not value.isdigit() or len(value) > 4:
        raise invalid("within must be a number of days from 0 to 9999", "value", ["within"])
    return int(value)
