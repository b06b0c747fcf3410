"""The statutory timeline as clock Tasks, and how each clock stands on a given day.

A request for an EHC needs assessment opens a timeline (SEND Regulations 2014 regs 5, 8, 10,
13; reviews under CFA 2014 s44 and regs 18-20). Each deadline is one Task: `code` from
profiles/CodeSystem/ehcp-task-code, `restriction.period` = [the day the clock started, the last
day on time], `status` requested while open, completed (with `executionPeriod.end`) when done.

The regulations let an LA miss a limit "if it is impractical to do so because" of a listed
reason (regs 5(4), 8(2), 10(4), 13(3)). Such a reason is recorded on the clock as an exception
with its dates; it never moves the deadline or stops the clock silently. `evaluate` says whether
the step was on time, late, or late with an exception that applies, and which one. Which reason
lifts which clock, and for how long it must last, is data in profiles/CodeSystem/
ehcp-clock-exception. Pure logic, no I/O beyond reading that CodeSystem once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path

from ehcp_record.fhir.canonical import code_system, structure_definition
from ehcp_record.fhir.dates import parse_date
from ehcp_record.workflow import clocks
from ehcp_record.workflow.task_values import TASK_CODE_SYSTEM, is_task, task_input

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
EXCEPTION_SYSTEM = code_system("ehcp-clock-exception")
EXCEPTION_EXTENSION = structure_definition("ehcp-clock-exception")
DECISION_SYSTEM = code_system("ehcp-decision")

#: The clocks this module tracks, with the regulation each deadline comes from.
CLOCK_REGULATIONS: dict[str, str] = {
    "assessment-decision": "SEND Regulations 2014 reg 5(1)",
    "advice": "SEND Regulations 2014 reg 8(1)",
    "issue-decision": "SEND Regulations 2014 reg 10(1)",
    "final-plan": "SEND Regulations 2014 reg 13(2)",
    "review-due": "Children and Families Act 2014 s44(1)",
    "review-report": "SEND Regulations 2014 reg 20(7)",
    "annual-review": "SEND Regulations 2014 reg 20(10)",
    "amendment": "SEND Regulations 2014 reg 22(3)",
    "phase-transfer": "SEND Regulations 2014 reg 18(1)",
    "cease": "Children and Families Act 2014 s45; SEND Regulations 2014 reg 31",
    "notice-to-family": "SEND Regulations 2014 reg 15(4)",
}
#: Every Task of the statutory timeline: the clocks and the request they belong to. The server
#: writes them (`ScopedStore.prepare_clock`, `prepare_assessment_request`); a client's plain
#: create or update of one is refused, so no due date moves except by the operations.
CLOCK_TASK_CODES = frozenset(CLOCK_REGULATIONS) | {"assessment-request"}
#: Every Task the server alone writes, and what a client calls instead: the clocks, and the
#: transfer (its due dates are reg 15(2)'s, its completion moves custody). A client's plain
#: create, update or transaction entry of one is refused (409 business-rule), in
#: `ScopedStore`'s client write path, through `client_write_refusal`.
SERVER_WRITTEN_TASKS = {
    **{code: ("statutory clock Tasks (ehcp-task-code: assessment-request, assessment-decision, advice, issue-decision, "
              "final-plan, review-due, review-report, annual-review, amendment, phase-transfer, cease, "
              "notice-to-family) are written by the server; use $request-assessment, $request-advice, "
              "$clock-exception, $complete-step, $phase-transfer, $cease or $issue") for code in CLOCK_TASK_CODES},
    "transfer": ("transfer Tasks (ehcp-task-code transfer) are written by the server with the due dates of SEND "
                 "Regulations 2014 reg 15; use POST /fhir/Patient/{id}/$transfer (the custodian LA), and $accept "
                 "(the destination LA) to complete it"),
}
OPEN = ("requested", "received", "accepted", "in-progress", "ready", "on-hold")


@dataclass(frozen=True)
class ExceptionRule:
    """One reason of ehcp-clock-exception: the clocks it lifts and its minimum length."""

    code: str
    display: str
    clocks: frozenset[str]
    minimum_days: int
    regulation: str


@dataclass(frozen=True)
class ClockException:
    """An exception recorded on a clock: the reason and the period it covered."""

    reason: str
    start: date
    end: date
    note: str = ""


@dataclass(frozen=True)
class ClockState:
    """How one clock stands on `as_of` (or stood when it was done)."""

    code: str
    due: date
    done: date | None
    days_left: int          # calendar days from as_of to due; negative when overdue
    state: str              # open | overdue | met | late | late-excepted | overdue-excepted
    exception: str | None   # the reason that applies to a late step, if any
    regulation: str


@lru_cache(maxsize=1)
def exception_rules() -> dict[str, ExceptionRule]:
    """The shipped exception reasons (profiles/CodeSystem/ehcp-clock-exception.json)."""
    system = json.loads((PROFILES / "CodeSystem" / "ehcp-clock-exception.json").read_text(encoding="utf-8"))
    rules = {}
    for concept in system["concept"]:
        props = concept.get("property", [])
        rules[concept["code"]] = ExceptionRule(
            code=concept["code"], display=concept["display"],
            clocks=frozenset(p["valueCode"] for p in props if p["code"] == "clock"),
            minimum_days=next((p["valueInteger"] for p in props if p["code"] == "minimumDays"), 0),
            regulation=next((p["valueString"] for p in props if p["code"] == "regulation"), ""),
        )
    return rules


def exception_problem(clock_code: str, exception: ClockException) -> str | None:
    """Why this exception cannot be recorded on this clock, or None when it can."""
    rule = exception_rules().get(exception.reason)
    if rule is None:
        return f"'{exception.reason}' is not a reason in ehcp-clock-exception"
    if clock_code not in rule.clocks:
        lifts = ", ".join(sorted(rule.clocks))
        return f"'{exception.reason}' ({rule.regulation}) lifts only these time limits: {lifts}; not {clock_code}"
    if exception.end < exception.start:
        return "the exception's period ends before it starts"
    length = (exception.end - exception.start).days + 1
    if length < rule.minimum_days:
        return (f"'{exception.reason}' needs a continuous period of at least {rule.minimum_days} days "
                f"({rule.regulation}); {exception.start} to {exception.end} is {length}")
    return None


def applies(clock_code: str, start: date, due: date, exception: ClockException) -> bool:
    """Does this exception lift the time limit of a clock running from `start` to `due`?

    The reason must be one the regulation gives for this clock, long enough, and fall in
    the clock's own period ("during that time period", regs 8(2), 10(4)(c)-(d)). A closure of
    a school counts from one week before it closed to one week before it re-opened (reg
    10(4)(a)).
    """
    if exception_problem(clock_code, exception) is not None:
        return False
    lo, hi = exception.start, exception.end
    if exception.reason in ("school-closed", "early-years-closed"):
        lo, hi = lo - timedelta(weeks=1), hi - timedelta(weeks=1)
    return lo <= due and hi >= start


def evaluate(clock_code: str, start: date, due: date, done: date | None, exceptions: list[ClockException],
             as_of: date) -> ClockState:
    """The state of one clock on `as_of`: open or overdue while not done, met or late once done."""
    excused = next((e.reason for e in exceptions if applies(clock_code, start, due, e)), None)
    regulation = CLOCK_REGULATIONS.get(clock_code, "")
    if done is not None:
        state = "met" if done <= due else ("late-excepted" if excused else "late")
        return ClockState(clock_code, due, done, (due - done).days, state, excused if done > due else None, regulation)
    days_left = (due - as_of).days
    if days_left >= 0:
        return ClockState(clock_code, due, None, days_left, "open", None, regulation)
    return ClockState(clock_code, due, None, days_left, "overdue-excepted" if excused else "overdue", excused, regulation)


# --------------------------------------------------------------------------- reading clock Tasks


def is_clock_task(task: dict) -> bool:
    """Is this a Task of the statutory timeline (a clock, or the request that opened clocks)?"""
    codings = (task.get("code") or {}).get("coding", []) if isinstance(task.get("code"), dict) else []
    return any(isinstance(c, dict) and c.get("system") == TASK_CODE_SYSTEM and c.get("code") in CLOCK_TASK_CODES
               for c in codings)


def client_write_refusal(task: dict, current: dict | None) -> str | None:
    """Why a client may not write this Task (a server-written one, or one that was), or None."""
    for candidate in (task, current or {}):
        codings = (candidate.get("code") or {}).get("coding", []) if isinstance(candidate.get("code"), dict) else []
        for coding in codings:
            if isinstance(coding, dict) and coding.get("system") == TASK_CODE_SYSTEM and \
                    coding.get("code") in SERVER_WRITTEN_TASKS:
                return SERVER_WRITTEN_TASKS[coding["code"]]
    return None


def clock_code(task: dict) -> str | None:
    for coding in (task.get("code") or {}).get("coding", []):
        if coding.get("system") == TASK_CODE_SYSTEM and coding.get("code") in CLOCK_REGULATIONS:
            return coding["code"]
    return None


def exceptions_of(task: dict) -> list[ClockException]:
    found = []
    for extension in task.get("extension", []) or []:
        if extension.get("url") != EXCEPTION_EXTENSION:
            continue
        parts = {p.get("url"): p for p in extension.get("extension", [])}
        try:
            period = parts["period"]["valuePeriod"]
            found.append(ClockException(parts["reason"]["valueCoding"]["code"], parse_date(period["start"]),
                                        parse_date(period["end"]), (parts.get("note") or {}).get("valueString", "")))
        except (KeyError, TypeError, ValueError):
            continue
    return found


def exception_extension(exception: ClockException, recorded_by: str, recorded_at: str) -> dict:
    rule = exception_rules()[exception.reason]
    parts = [
        {"url": "reason", "valueCoding": {"system": EXCEPTION_SYSTEM, "code": rule.code, "display": rule.display}},
        {"url": "period", "valuePeriod": {"start": exception.start.isoformat(), "end": exception.end.isoformat()}},
        {"url": "regulation", "valueString": rule.regulation},
        {"url": "recordedBy", "valueReference": {"reference": recorded_by}},
        {"url": "recorded", "valueDateTime": recorded_at},
    ]
    if exception.note:
        parts.append({"url": "note", "valueString": exception.note})
    return {"url": EXCEPTION_EXTENSION, "extension": parts}


def state_of(task: dict, as_of: date) -> ClockState | None:
    """A clock Task's state on `as_of`; None for Tasks that are not open or done clocks."""
    code = clock_code(task)
    period = (task.get("restriction") or {}).get("period") or {}
    if code is None or not period.get("end") or not period.get("start"):
        return None
    status = task.get("status")
    if status not in OPEN and status != "completed":
        return None
    done = (task.get("executionPeriod") or {}).get("end") if status == "completed" else None
    return evaluate(code, parse_date(period["start"][:10]), parse_date(period["end"][:10]),
                    parse_date(done[:10]) if done else None, exceptions_of(task), as_of)


# --------------------------------------------------------------------------- workflow Tasks clients may write


#: The due-date inputs of the workflow Tasks an LA may still write directly (the shipped examples).
DUE_INPUTS = ("transfer-due", "notice-due", "review-due", "final-plan-due", "move-date", "notified-date")


def client_task_problem(task: dict, current: dict | None) -> str | None:
    """Why a client's own write of a parental-review Task is refused, or None.

    That Task may be written directly (profiles/examples), but never with a due date the
    regulations do not give: a family's window to respond is at least 15 days (regs 13(1)(a),
    22(2)(c)); and an update never moves a due date. (A transfer Task is the server's alone:
    `client_write_refusal`.)"""
    if not any(is_task(t, "parental-review") for t in (task, current or {})):
        return None
    period = (task.get("restriction") or {}).get("period") or {}
    if current is not None:
        before = (current.get("restriction") or {}).get("period") or {}
        moved = [name for name in DUE_INPUTS if task_input(task, name) != task_input(current, name)]
        if period.get("end") != before.get("end") or period.get("start") != before.get("start") or moved:
            return ("a workflow Task's due dates are set when it is made and do not move by update "
                    f"(changed: {', '.join(moved + (['restriction.period'] if not moved else []))})")
        return None
    if is_task(task, "parental-review") and period.get("start") and period.get("end"):
        try:
            least = clocks.response_window_end(parse_date(str(period["start"])[:10]))
            if parse_date(str(period["end"])[:10]) < least:
                return (f"the family has at least 15 days to respond (SEND Regulations 2014 regs 13(1)(a), 22(2)(c)): "
                        f"restriction.period.end must be on or after {least}")
        except ValueError:
            return "restriction.period must hold full dates"
    return None
