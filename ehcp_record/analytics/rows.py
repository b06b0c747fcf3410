"""One child's current resources -> the rows of the extract tables.

What a row may hold is fixed by `TABLES`: the child's keyed pseudonym, the LA number, years
and months, codes from the project's CodeSystems (need, setting type, provision category,
cease reason, clock states) and nothing else. No name, address, identifier, free text or exact
date is copied: everything comes through a code lookup or `banding`.

Where each figure comes from in the record:
- the plan: the newest issued Composition (final/amended); it starts on the day its
  `final-plan` clock was completed (SEND Regulations 2014 reg 13(2)), else its date;
- need: the Conditions section B names, coded from sen-primary-need, in order (rank 1 primary);
- provision: the CarePlans sections F, G, H1, H2 name, with their provision-category;
- placement: the Organization section I names, with its ehcp-setting-type (and URN);
- outcomes: the Goals section E names, one row per review meeting (`review-due` clock) that
  recorded progress on them (reg 20(5)), with the `achievementStatus` of the Goal version that
  meeting wrote (the Goal's history), dated by the meeting's month;
- timeliness: the clock Tasks, judged by `workflow.statutory.state_of` (the same rules as the
  worklist and SEN2): `final-plan` (20 weeks, reg 13(2)), `review-due` (CFA 2014 s44(1));
  `transfer` Tasks against their reg 15 due date;
- cessation: a completed `cease` clock whose business status says the plan ceased (s45).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Iterable

from ehcp_record.analytics.banding import age_band, la_number, month
from ehcp_record.fhir.canonical import code_system, naming_system
from ehcp_record.fhir.dates import parse_date
from ehcp_record.workflow import statutory
from ehcp_record.workflow.task_values import is_task, task_input, task_output

NEED_SYSTEM = code_system("sen-primary-need")
SETTING_SYSTEM = code_system("ehcp-setting-type")
CATEGORY_SYSTEM = code_system("provision-category")
URN_SYSTEM = naming_system("urn")
LA_NUMBER_SYSTEM = naming_system("dfe-la-number")
PROVISION_SECTIONS = ("F", "G", "H1", "H2")
ACHIEVEMENT_SYSTEM = "http://terminology.hl7.org/CodeSystem/goal-achievement"
ISSUED = ("final", "amended")

#: goal-achievement (http://terminology.hl7.org/CodeSystem/goal-achievement) -> the three
#: groups the dashboard reports at annual review.
PROGRESS = {"achieved": "achieved", "sustaining": "achieved", "in-progress": "progressing", "improving": "progressing",
            "worsening": "not-progressing", "no-change": "not-progressing", "not-achieved": "not-progressing",
            "no-progress": "not-progressing", "not-attainable": "not-progressing"}

#: Every table and its columns, in order: the whole vocabulary of the extract.
TABLES: dict[str, tuple[str, ...]] = {
    "plan_years": ("child", "la", "year", "age_band", "primary_need", "setting_type", "setting"),
    "needs": ("child", "la", "year", "need", "rank"),
    "provisions": ("child", "la", "year", "section", "category"),
    "outcomes": ("child", "la", "month", "primary_need", "progress"),
    "assessments": ("child", "la", "month", "primary_need", "timeliness", "exception"),
    "reviews": ("child", "la", "month", "primary_need", "timeliness"),
    "transfers": ("child", "la", "month", "timeliness"),
    "cessations": ("child", "la", "month", "primary_need", "reason"),
}
#: Columns that are whole numbers; every other column is a string (or null).
INTEGER_COLUMNS = frozenset({"year", "rank"})
Sections = dict[str, list[str]]  # a plan's section code -> the references it lists


@dataclass
class ChildRows:
    """The rows of one child, table by table; `settings` are the URNs before folding."""

    tables: dict[str, list[dict]] = field(default_factory=lambda: {t: [] for t in TABLES})


def child_rows(child: str, custodian: str | None, resources: Iterable[dict], directory: dict[str, dict],
               as_of: date, history: Iterable[dict] = ()) -> ChildRows:
    """The rows for one record, `child` being its pseudonym; `as_of` judges open clocks;
    `history` the earlier versions of its Goals (what each review recorded)."""
    out = ChildRows()
    resources = list(resources)
    goal_history: dict[str, list[dict]] = {}
    for version in history:
        goal_history.setdefault(f"{version.get('resourceType')}/{version.get('id')}", []).append(version)
    by_ref = {f"{r.get('resourceType')}/{r.get('id')}": r for r in resources}
    tasks = [r for r in resources if r.get("resourceType") == "Task"]
    la = la_number(custodian, directory, LA_NUMBER_SYSTEM)
    patient = next((r for r in resources if r.get("resourceType") == "Patient"), {})
    birth = _date(patient.get("birthDate"))
    plan = _issued_plan(resources)
    sections = _sections(plan) if plan else {}
    needs = _needs(sections, by_ref)
    primary = needs[0] if needs else "none"
    if plan is not None:
        start = _plan_start(plan, tasks)
        ceased = _ceased(tasks)
        _plan_years(out, child, la, sections, by_ref, directory, needs, birth, start, ceased, as_of)
        _outcomes(out, child, la, sections, by_ref, tasks, primary, goal_history)
    _clocks(out, child, la, tasks, primary, directory, as_of)
    return out


# --------------------------------------------------------------------------- the plan

def _issued_plan(resources: list[dict]) -> dict | None:
    issued = [r for r in resources if r.get("resourceType") == "Composition" and r.get("status") in ISSUED]
    return max(issued, key=lambda r: str(r.get("date", ""))) if issued else None


def _sections(plan: dict) -> dict[str, list[str]]:
    """Section code -> the references it lists (reg 12: each section separately identified)."""
    found: dict[str, list[str]] = {}
    for section in plan.get("section", []) or []:
        for coding in (section.get("code") or {}).get("coding", []) or []:
            entries = section.get("entry", []) or []
            found.setdefault(str(coding.get("code")), [str(e.get("reference", "")) for e in entries])
    return found


def _coded(concept: object, system: str) -> str | None:
    codings = concept.get("coding", []) if isinstance(concept, dict) else []
    return next((c.get("code") for c in codings or [] if isinstance(c, dict) and c.get("system") == system), None)


def _needs(sections: Sections, by_ref: dict[str, dict]) -> list[str]:
    found = [_coded(by_ref.get(ref, {}).get("code"), NEED_SYSTEM) for ref in sections.get("B", [])]
    return [code for code in found if code]


def _date(value: object) -> date | None:
    try:
        return parse_date(str(value)[:10]) if value else None
    except ValueError:
        return None


def _done(task: dict) -> date | None:
    if task.get("status") != "completed":
        return None
    return _date((task.get("executionPeriod") or {}).get("end")) or _date(task_output(task, "completed-on"))


def _plan_start(plan: dict, tasks: list[dict]) -> date | None:
    issued = [d for d in (_done(t) for t in tasks if is_task(t, "final-plan")) if d]
    return min(issued) if issued else _date(plan.get("date"))


def _ceased(tasks: list[dict]) -> tuple[date, str] | None:
    for task in tasks:
        day = _done(task) if is_task(task, "cease") else None
        if day and "ceased" in str((task.get("businessStatus") or {}).get("text", "")):
            return day, str(task_input(task, "cease-reason") or "other")
    return None


def _placement(sections: Sections, by_ref: dict[str, dict], directory: dict[str, dict]) -> tuple[str, str | None]:
    """The first setting section I names: its SEN2 setting type and URN (folded later)."""
    for ref in sections.get("I", []):
        organization = by_ref.get(ref) or directory.get(ref)
        if organization and organization.get("resourceType") == "Organization":
            setting = next((_coded(t, SETTING_SYSTEM) for t in organization.get("type", []) or []
                            if _coded(t, SETTING_SYSTEM)), None) or "OTH"
            urn = next((i.get("value") for i in organization.get("identifier", []) or []
                        if i.get("system") == URN_SYSTEM), None)
            return setting, urn
    return "none", None


def _plan_years(out: ChildRows, child: str, la: str, sections: Sections, by_ref: dict[str, dict],
                directory: dict[str, dict], needs: list[str], birth: date | None, start: date | None, ceased: tuple[date, str] | None,
                as_of: date) -> None:
    """One row per calendar year in which the plan was maintained, up to `as_of`."""
    if start is None:
        return
    last = min(ceased[0].year if ceased else as_of.year, as_of.year)
    setting_type, urn = _placement(sections, by_ref, directory)
    primary = needs[0] if needs else "none"
    provisions = [(section, _coded(_activity_code(by_ref.get(ref, {})), CATEGORY_SYSTEM) or "unspecified")
                  for section in PROVISION_SECTIONS for ref in sections.get(section, []) if ref in by_ref]
    for year in range(start.year, last + 1):
        band = age_band(birth, year)
        if band is None:
            continue
        out.tables["plan_years"].append({"child": child, "la": la, "year": year, "age_band": band,
                                         "primary_need": primary, "setting_type": setting_type, "setting": urn})
        out.tables["needs"] += [{"child": child, "la": la, "year": year, "need": need, "rank": rank}
                                for rank, need in enumerate(needs, start=1)]
        out.tables["provisions"] += [{"child": child, "la": la, "year": year, "section": section, "category": category}
                                     for section, category in provisions]
    if ceased:
        out.tables["cessations"].append({"child": child, "la": la, "month": month(ceased[0]),
                                         "primary_need": primary, "reason": ceased[1]})


def _activity_code(careplan: dict) -> object:
    for activity in careplan.get("activity", []) or []:
        code = (activity.get("detail") or {}).get("code")
        if code:
            return code
    return None


def _outcomes(out: ChildRows, child: str, la: str, sections: Sections, by_ref: dict[str, dict], tasks: list[dict],
              primary: str, history: dict[str, list[dict]]) -> None:
    """Progress recorded at each review meeting (reg 20(5)), one row per outcome per review,
    dated by that meeting's month. What a review recorded is the Goal version it wrote
    (operations/reviews.py adds a note dated the meeting with the new achievementStatus), so
    an outcome reviewed in 2024 and again in 2025 counts once in each year. A Goal without
    that history (a record brought in without it) counts its current status at its latest
    review only."""
    meetings: dict[str, set[date]] = {}
    for task in tasks:
        day = (_date(task_output(task, "meeting-date")) or _done(task)) if is_task(task, "review-due") else None
        for item in (task.get("output", []) or []) if day and _done(task) else []:
            ref = (item.get("valueReference") or {}).get("reference", "")
            if ref.startswith("Goal/"):
                meetings.setdefault(ref, set()).add(day)
    for ref in sections.get("E", []):
        if ref not in meetings:
            continue
        current = by_ref.get(ref, {})
        recorded = _recorded_at(history.get(ref, []) + [current])
        latest = max(meetings[ref])
        for day in sorted(meetings[ref]):
            status = recorded.get(day) or (_coded(current.get("achievementStatus"), ACHIEVEMENT_SYSTEM)
                                           if day == latest else None)
            progress = PROGRESS.get(status or "")
            if progress:
                out.tables["outcomes"].append({"child": child, "la": la, "month": month(day),
                                               "primary_need": primary, "progress": progress})


def _recorded_at(versions: list[dict]) -> dict[date, str]:
    """Meeting day -> the achievementStatus the version written at it holds (its newest note is
    dated that day); of several versions on one day, the latest."""
    found: dict[date, str] = {}
    for version in sorted(versions, key=lambda v: int(str((v.get("meta") or {}).get("versionId") or 0) or 0)):
        notes = version.get("note", []) or []
        day = _date(str(notes[-1].get("time", ""))[:10]) if notes and isinstance(notes[-1], dict) else None
        status = _coded(version.get("achievementStatus"), ACHIEVEMENT_SYSTEM)
        if day and status:
            found[day] = status
    return found


# --------------------------------------------------------------------------- clocks

def _clocks(out: ChildRows, child: str, la: str, tasks: list[dict], primary: str, directory: dict[str, dict],
            as_of: date) -> None:
    for task in tasks:
        if is_task(task, "transfer"):
            _transfer(out, child, task, directory, as_of)
            continue
        state = statutory.state_of(task, as_of)
        if state is None or state.state == "open" or state.code not in ("final-plan", "review-due"):
            continue
        if state.code == "final-plan" and state.done is not None:
            out.tables["assessments"].append({"child": child, "la": la, "month": month(state.done),
                                              "primary_need": primary, "timeliness": state.state,
                                              "exception": state.exception})
        elif state.code == "review-due":
            out.tables["reviews"].append({"child": child, "la": la, "month": month(state.due),
                                          "primary_need": primary, "timeliness": state.state})


def _transfer(out: ChildRows, child: str, task: dict, directory: dict[str, dict], as_of: date) -> None:
    """A reg 15 transfer, counted for the LA that had to send it (the Task's requester)."""
    due = _date(task_input(task, "transfer-due"))
    if due is None or task.get("status") in ("cancelled", "rejected", "entered-in-error"):
        return
    done = _date(task_output(task, "transferred-on")) if task.get("status") == "completed" else None
    if done is None and due >= as_of:
        return
    timeliness = "overdue" if done is None else ("met" if done <= due else "late")
    sender = la_number((task.get("requester") or {}).get("reference"), directory, LA_NUMBER_SYSTEM)
    out.tables["transfers"].append({"child": child, "la": sender, "month": month(due), "timeliness": timeliness})
