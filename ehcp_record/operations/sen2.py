"""The SEN2 person-level return, generated from the recorded events (never re-keyed).

`GET /fhir/$sen2?year=2027` (and `ehcp-record sen2 --year 2027`) for the custodian LA: the
census date is the third Thursday of January of `year` (SEN2 technical specification: the
census is taken in January), the reporting period the calendar year before it. A child is in
the return when a request was received in the period or was still open at the census date, or
a plan was active at the census date or ceased in the period. One CSV per module, columns in
the order of profiles/CodeSystem/sen2-module (codes as CodeSystems in profiles/), and a
validation report naming each record whose data is incomplete for the return and why.
Structure and items after the DfE SEN2 person level 2023 technical specification v1.1 (October
2022); docs/sen2.md names the sources and which recorded fact each column is read from: a
placement is an entry of the plan's section I with its `ehcp-placement` extension, the personal
budget section J's `ehcp-personal-budget`.

Only records in the caller's custody are included (`ScopedStore.custody_state`); every record
is read through `ScopedStore.everything`, so the read is audited as an export.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path

from ehcp_record.access.scoped import ScopedStore
from ehcp_record.errors import FhirError, invalid
from ehcp_record.fhir.canonical import code_system, naming_system, structure_definition
from ehcp_record.fhir.dates import parse_date
from ehcp_record.operations import notices
from ehcp_record.operations.worklist import all_matches
from ehcp_record.workflow.task_values import is_task, task_input, task_output

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
NEED_SYSTEM = code_system("sen-primary-need")
SETTING_SYSTEM = code_system("sen2-setting")
ATTENDANCE_SYSTEM = code_system("sen2-attendance-pattern")
RESIDENTIAL_SYSTEM = code_system("sen2-residential")
PLACEMENT_EXTENSION = structure_definition("ehcp-placement")
BUDGET_EXTENSION = structure_definition("ehcp-personal-budget")
UPN_SYSTEM = naming_system("upn")
ULN_SYSTEM = naming_system("uln")
URN_SYSTEM = naming_system("urn")
UKPRN_SYSTEM = naming_system("ukprn")
ETHNICITY_SYSTEM = code_system("sen2-ethnicity")
#: UK Core's ethnic category extension, carrying the DfE code (sen2-ethnicity) for SEN2.
ETHNICITY_EXTENSION = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory"
MAX_RECORD_RESOURCES = 5000


@lru_cache(maxsize=8)
def sen2_codes(system: str) -> dict[str, str]:
    """Our code -> the DfE SEN2 code (property sen2Code), from profiles/CodeSystem/<system>.json."""
    data = json.loads((PROFILES / "CodeSystem" / f"{system}.json").read_text(encoding="utf-8"))
    return {c["code"]: p["valueString"] for c in data["concept"] for p in c.get("property", []) if p["code"] == "sen2Code"}


@lru_cache(maxsize=1)
def ethnicity_codes() -> frozenset[str]:
    data = json.loads((PROFILES / "CodeSystem" / "sen2-ethnicity.json").read_text(encoding="utf-8"))
    return frozenset(c["code"] for c in data["concept"])


@lru_cache(maxsize=1)
def modules() -> dict[str, tuple[str, ...]]:
    """Module code -> its CSV columns, from profiles/CodeSystem/sen2-module.json."""
    system = json.loads((PROFILES / "CodeSystem" / "sen2-module.json").read_text(encoding="utf-8"))
    return {c["code"]: tuple(p["valueString"] for p in c.get("property", []) if p["code"] == "field")
            for c in system["concept"]}


def census_date(year: int) -> date:
    """The third Thursday of January of the collection year."""
    first = date(year, 1, 1)
    first_thursday = first + timedelta(days=(3 - first.weekday()) % 7)
    return first_thursday + timedelta(weeks=2)


@dataclass
class Return:
    year: int
    census: date
    rows: dict[str, list[dict]] = field(default_factory=lambda: {m: [] for m in modules()})
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # (person, module, why)

    def csv(self, module: str) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=modules()[module], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows[module])
        return out.getvalue()

    def validation_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["person_id", "module", "problem"])
        writer.writerows(self.problems)
        return out.getvalue()


@dataclass
class Sen2Service:
    def build(self, store: ScopedStore, year: object) -> Return:
        year = _year(year)
        result = Return(year, census_date(year))
        period = (date(year - 1, 1, 1), date(year - 1, 12, 31))
        organization = store.caller.actor.organization
        result.rows["la"].append({"la": (organization or "").removeprefix("Organization/la-"), "year": year,
                                  "reference_date": result.census.isoformat()})
        for patient in all_matches(store, "Patient", []):
            state = store.custody_state(patient["id"])
            if organization is None or state is None or state.custodian != organization:
                continue
            resources = [r for _, r in store.everything(patient["id"], MAX_RECORD_RESOURCES)]
            resources += _establishments(store, resources)
            _child(result, patient, resources, period, organization)
        return result


def _establishments(store: ScopedStore, resources: list[dict]) -> list[dict]:
    """The directory entries (Organizations) the plans' section I names, read through the store."""
    wanted = {e.get("reference", "") for r in resources if r["resourceType"] == "Composition"
              for e in _section(r, "I").get("entry", []) or [] if str(e.get("reference", "")).startswith("Organization/")}
    found = []
    for reference in sorted(wanted):
        try:
            found.append(store.read("Organization", reference.split("/")[1])[1])
        except FhirError:
            continue  # reported as a placement that cannot be read
    return found


def _year(value: object) -> int:
    text = str(value or "")
    if not text.isdigit() or not 2015 <= int(text) <= 2100:
        raise invalid("parameter 'year' must be the collection year, e.g. 2026 (census in January 2026)", "value",
                      ["year"])
    return int(text)


def _child(result: Return, patient: dict, resources: list[dict], period: tuple[date, date], la: str) -> None:
    census = result.census
    tasks = [r for r in resources if r["resourceType"] == "Task"]
    requests = [t for t in tasks if is_task(t, "assessment-request") and _received(t) is not None
                and _received(t) <= census]
    in_period = [t for t in requests if period[0] <= _received(t) <= period[1] or _open_at(t, tasks, census)]
    plan = _plan(tasks, resources, census, period)
    if not in_period and plan is None:
        return
    pid = patient["id"]
    _person(result, pid, patient)
    for request in in_period:
        _request(result, pid, request, tasks, census, [r for r in resources if notices.is_notice(r)])
    if plan is not None:
        _named_plan(result, pid, plan, tasks, resources, census, la, period)


def _open_at(request: dict, tasks: list[dict], census: date) -> bool:
    """Was this request still being worked on at the census date (SEN2 "ongoing work")?"""
    decision = _clock(tasks, request["id"], "assessment-decision")
    if _done(decision, census) is None:
        return True
    if task_output(decision, "decision") != "assess":
        return False
    issue = _clock(tasks, request["id"], "issue-decision")
    if _done(issue, census) is not None and task_output(issue, "decision") == "not-issue":
        return False
    return _done(_clock(tasks, request["id"], "final-plan"), census) is None


def _received(task: dict) -> date | None:
    value = task_input(task, "received")
    return parse_date(value) if isinstance(value, str) else None


def _person(result: Return, pid: str, patient: dict) -> None:
    name = (patient.get("name") or [{}])[0]
    row = {"person_id": pid, "upn": _identifier(patient, UPN_SYSTEM), "uln": _identifier(patient, ULN_SYSTEM),
           "surname": name.get("family", ""), "forename": " ".join(name.get("given", []) or []),
           "birth_date": patient.get("birthDate", ""), "sex": {"male": "M", "female": "F"}.get(patient.get("gender"), ""),
           "postcode": ((patient.get("address") or [{}])[0]).get("postalCode", ""), "ethnicity": _ethnicity(patient)}
    result.rows["person"].append(row)
    for column, why in (("upn", "no UPN (or ULN) recorded for the child"), ("sex", "sex (Patient.gender) not recorded"),
                        ("postcode", "no home postcode (Patient.address.postalCode)"),
                        ("ethnicity", "no ethnicity recorded (UK Core ethnic category extension coded from sen2-ethnicity; "
                                      "REFU if the family declined, NOBT if not yet obtained)")):
        if not row[column] and not (column == "upn" and row["uln"]):
            result.problems.append((pid, "person", why))


def _ethnicity(patient: dict) -> str:
    """The DfE ethnicity code (SEN2 Ethnicity) from UK Core's ethnic category extension, if recorded."""
    for extension in patient.get("extension", []) or []:
        if extension.get("url") != ETHNICITY_EXTENSION:
            continue
        for coding in (extension.get("valueCodeableConcept") or {}).get("coding", []) or []:
            if coding.get("system") == ETHNICITY_SYSTEM and coding.get("code") in ethnicity_codes():
                return coding["code"]
    return ""


def _identifier(resource: dict, system: str) -> str:
    return next((i.get("value", "") for i in resource.get("identifier", []) or [] if i.get("system") == system), "")


def _clock(tasks: list[dict], request_id: str, code: str) -> dict | None:
    found = [t for t in tasks if is_task(t, code) and f"Task/{request_id}" in
             [p.get("reference") for p in t.get("partOf", []) or []]]
    return found[0] if found else None


def _done(task: dict | None, census: date) -> date | None:
    """The day a clock was completed, if that was on or before the census date."""
    if task is None or task.get("status") != "completed":
        return None
    value = task_output(task, "completed-on")
    day = parse_date(value) if isinstance(value, str) else None
    return day if day is not None and day <= census else None


def _request(result: Return, pid: str, request: dict, tasks: list[dict], census: date, sent: list[dict]) -> None:
    decision = _clock(tasks, request["id"], "assessment-decision")
    decided = _done(decision, census)
    outcome = task_output(decision, "decision") if decided else None
    withdrawn = request.get("status") == "cancelled"
    result.rows["requests"].append({
        "person_id": pid, "received_date": _received(request).isoformat(),
        "request_source": task_input(request, "requester-type") or "", "rya": _rya(result, pid, request),
        "request_outcome": outcome or "pending", "request_outcome_date": decided.isoformat() if decided else "",
        "request_outcome_code": _outcome_code(outcome, withdrawn),
        **_disputed("request", sent, decision, census)})
    if outcome != "assess":
        return
    issue = _clock(tasks, request["id"], "issue-decision")
    final = _clock(tasks, request["id"], "final-plan")
    issue_done, final_done = _done(issue, census), _done(final, census)
    assessment = task_output(issue, "decision") if issue_done else None
    if final_done:
        met = "Y" if task_output(final, "on-time") else "N"
        exception = task_output(final, "exception-applied") or ""
    else:
        met, exception = "", ""
    result.rows["assessments"].append({
        "person_id": pid, "received_date": _received(request).isoformat(),
        "assessment_outcome": assessment or "pending",
        "assessment_outcome_date": issue_done.isoformat() if issue_done else "",
        "final_plan_date": final_done.isoformat() if final_done else "", "twenty_week_met": met,
        "exception": exception, "assessment_outcome_code": _outcome_code(assessment, withdrawn and not final_done),
        **_disputed("assessment", sent, issue, census), **_plan_disputed(sent, final if final_done else None, census)})


def _rya(result: Return, pid: str, request: dict) -> str:
    """SEN2 RYA: was the request made while the child or young person was detained in relevant
    youth accommodation (CFA 2014 ss70-75)? Recorded by `$request-assessment`
    (`inRelevantYouthAccommodation`); a request that did not say is listed for the LA to answer."""
    value = task_input(request, "relevant-youth-accommodation")
    if isinstance(value, bool):
        return "Y" if value else "N"
    result.problems.append((pid, "requests", (f"request received {_received(request)} does not record whether it was "
                            "made in relevant youth accommodation ($request-assessment inRelevantYouthAccommodation)")))
    return ""


def _disputed(prefix: str, sent: list[dict], clock: dict | None, census: date) -> dict[str, str]:
    """SEN2 RequestMediation/RequestTribunal, AssessmentMediation/AssessmentTribunal: whether the
    decision's notice (not to assess, not to issue) led to a mediation certificate or an appeal to
    the Tribunal by the census date (recorded with `$notice-event`); empty when there was no such notice."""
    about = f"Task/{clock['id']}" if clock else None
    found = [n for n in sent if about and {"reference": about} in (n.get("about") or [])]
    if not found:
        return {f"{prefix}_mediation": "", f"{prefix}_tribunal": ""}
    return {f"{prefix}_mediation": _by_census(found[0], notices.MEDIATION_CERTIFICATE, census),
            f"{prefix}_tribunal": _by_census(found[0], notices.APPEAL_LODGED, census)}


def _plan_disputed(sent: list[dict], final: dict | None, census: date) -> dict[str, str]:
    """SEN2 OtherMediation/OtherTribunal: whether the notice sent with the issued plan (appeal
    rights against its sections B, F and I, CFA 2014 s51(2)(c)) led to a mediation certificate or an
    appeal by the census date; empty when no plan was issued."""
    reference = str(task_output(final, "notice") or "") if final else ""
    notice = [n for n in sent if reference == f"Communication/{n['id']}"]
    if not notice:
        return {"other_mediation": "", "other_tribunal": ""}
    return {"other_mediation": _by_census(notice[0], notices.MEDIATION_CERTIFICATE, census),
            "other_tribunal": _by_census(notice[0], notices.APPEAL_LODGED, census)}


def _by_census(notice: dict, url: str, census: date) -> str:
    day = notices.extension_value(notice, url, "valueDate")
    return "Y" if isinstance(day, str) and parse_date(day) <= census else "N"


def _outcome_code(decision: str | None, withdrawn: bool) -> str:
    """SEN2 RequestOutcome / AssessmentOutcome: Y or N for a decision (ehcp-decision sen2Code),
    W when the request ended before one (withdrawn, or stopped by a transfer), A while awaited."""
    if decision:
        return sen2_codes("ehcp-decision").get(decision, "")
    return "W" if withdrawn else "A"


@dataclass(frozen=True)
class NamedPlan:
    """The child's plan as SEN2 reports it: when it started and the issued Composition."""

    start: date
    composition: dict | None
    why_missing: str = "the issued plan named by the final-plan clock is not in the record"


def _plan(tasks: list[dict], resources: list[dict], census: date, period: tuple[date, date]) -> NamedPlan | None:
    """The child's plan, when it was active at the census or ceased in the period.

    Made after a recorded request: the final-plan clock `$issue` met. Otherwise (a plan issued
    before its request was recorded here, or transferred in: treated as made by this LA on its
    original date, SEND Regulations 2014 reg 15(3)(a)) the issued Composition, started on the day
    its first review clock started (`$issue` opens it on the day the plan is first issued)."""
    ceased = _ceased(tasks, census)
    if ceased is not None and ceased[0] < period[0]:
        return None
    finals = [t for t in tasks if is_task(t, "final-plan") and _done(t, census)]
    if finals:
        final = max(finals, key=lambda t: _done(t, census))
        return NamedPlan(_done(final, census), _plan_composition(resources, final))  # type: ignore[arg-type]
    issued = [r for r in resources if r["resourceType"] == "Composition" and r.get("status") in ("final", "amended")]
    starts = [parse_date(str(t["restriction"]["period"]["start"])[:10]) for t in tasks
              if is_task(t, "review-due") and (t.get("restriction") or {}).get("period", {}).get("start")]
    if not issued or not starts or min(starts) > census:
        return None
    return NamedPlan(min(starts), issued[0], "")


def _ceased(tasks: list[dict], census: date) -> tuple[date, str] | None:
    for task in tasks:
        if is_task(task, "cease") and task.get("status") == "completed":
            day = parse_date(str((task.get("executionPeriod") or {}).get("end", ""))[:10] or "1900-01-01")
            if day <= census and "ceased" in str((task.get("businessStatus") or {}).get("text", "")):
                return day, str(task_input(task, "cease-reason") or "")
    return None


def _named_plan(result: Return, pid: str, named: NamedPlan, tasks: list[dict], resources: list[dict], census: date,
                la: str, period: tuple[date, date]) -> None:
    reviews = [d for d in (_done(t, census) for t in tasks if is_task(t, "review-due")) if d]
    ceased = _ceased(tasks, census)
    start = named.start
    cease_code = sen2_codes("ehcp-cease-reason").get(ceased[1], "") if ceased else ""
    plan = named.composition
    placements = _placements(result, pid, plan, resources, start, period) if plan is not None else []
    result.rows["named-plans"].append({
        "person_id": pid, "plan_start_date": start.isoformat() if start else "",
        "plan_res": placements[0]["residential"] if placements else "",
        **(_personal_budget(result, pid, plan) if plan is not None else {"pb": "", "oa": "", "dp": ""}),
        "last_review_date": max(reviews).isoformat() if reviews else "",
        "cease_date": ceased[0].isoformat() if ceased else "", "cease_reason": ceased[1] if ceased else "",
        "transfer_la": _transferred_from(tasks, la, census), "review_outcome_code": _review_outcome(tasks, census),
        "cease_reason_code": cease_code})
    if ceased and not cease_code:
        result.problems.append((pid, "named-plans", f"cease reason '{ceased[1]}' has no SEN2 code (ehcp-cease-reason)"))
    if plan is None:
        result.problems.append((pid, "named-plans", named.why_missing))
        return
    _needs(result, pid, plan, resources)
    result.rows["placements"] += placements


def _personal_budget(result: Return, pid: str, plan: dict) -> dict[str, str]:
    """SEN2 PB, OA and DP from section J's ehcp-personal-budget (CFA 2014 s49): Y or N each."""
    budget = _parts(_section(plan, "J"), BUDGET_EXTENSION)
    if "takenUp" not in budget:
        result.problems.append((pid, "named-plans", ("section J does not record whether a personal budget was taken "
                                "up (ehcp-personal-budget takenUp, organisedArrangements, directPayments)")))
        return {"pb": "", "oa": "", "dp": ""}
    taken = budget["takenUp"] is True
    return {"pb": _yes_no(taken), "oa": _yes_no(taken and budget.get("organisedArrangements") is True),
            "dp": _yes_no(taken and budget.get("directPayments") is True)}


def _parts(element: dict, url: str) -> dict:
    """The sub-extension values of a complex extension, by their url (start -> "2026-09-03")."""
    for extension in element.get("extension", []) or []:
        if extension.get("url") == url:
            return {part.get("url"): next((v for k, v in part.items() if k.startswith("value")), None)
                    for part in extension.get("extension", []) or []}
    return {}


def _yes_no(value: bool) -> str:
    return "Y" if value else "N"


def _transferred_from(tasks: list[dict], la: str, census: date) -> str:
    """SEN2 TransferLA: the DfE number of the LA this plan transferred from (reg 15), if it did."""
    moves = [t for t in tasks if is_task(t, "transfer") and t.get("status") == "completed"
             and (t.get("owner") or {}).get("reference") == la and _moved_on(t) is not None and _moved_on(t) <= census]
    if not moves:
        return ""
    latest = max(moves, key=_moved_on)
    return str((latest.get("requester") or {}).get("reference", "")).removeprefix("Organization/la-")


def _moved_on(task: dict) -> date | None:
    value = task_output(task, "transferred-on")
    return parse_date(value) if isinstance(value, str) else None


def _review_outcome(tasks: list[dict], census: date) -> str:
    """SEN2 ReviewOutcome (M, A or C) of the latest review decision made by the census date."""
    decided = [(d, t) for t in tasks if is_task(t, "annual-review") for d in [_done(t, census)] if d]
    if not decided:
        return ""
    _, latest = max(decided, key=lambda pair: pair[0])
    return sen2_codes("ehcp-decision").get(str(task_output(latest, "decision") or ""), "")


def _plan_composition(resources: list[dict], final: dict) -> dict | None:
    reference = str(task_output(final, "plan-version") or "")
    plan_id = reference.split("/")[1] if reference.startswith("Composition/") else ""
    return next((r for r in resources if r["resourceType"] == "Composition" and r["id"] == plan_id), None)


def _section(plan: dict, code: str) -> dict:
    for section in plan.get("section", []) or []:
        if any(c.get("code") == code for c in (section.get("code") or {}).get("coding", [])):
            return section
    return {}


def _needs(result: Return, pid: str, plan: dict, resources: list[dict]) -> None:
    by_ref = {f"{r['resourceType']}/{r['id']}": r for r in resources}
    rank = 0
    for entry in _section(plan, "B").get("entry", []) or []:
        need = by_ref.get(entry.get("reference", ""))
        code = next((c.get("code") for c in ((need or {}).get("code") or {}).get("coding", [])
                     if c.get("system") == NEED_SYSTEM), None)
        if code:
            rank += 1
            result.rows["needs"].append({"person_id": pid, "sen_type": code, "sen_type_rank": rank})
    if rank == 0:
        result.problems.append((pid, "needs", "section B names no need coded from sen-primary-need"))


def _placements(result: Return, pid: str, plan: dict, resources: list[dict], start: date | None,
                period: tuple[date, date]) -> list[dict]:
    """Placements: the entries of section I (SEND Regulations 2014 reg 12(1)(i)), each an
    establishment with a URN or UKPRN, or the DfE setting type where there is none, with how it is
    attended (the entry's ehcp-placement extension). A placement that ended before the collection
    year is not reported; one with no recorded start is reported from the plan's start."""
    by_ref = {f"{r['resourceType']}/{r['id']}": r for r in resources}
    rows: list[dict] = []
    for entry in _section(plan, "I").get("entry", []) or []:
        organization = by_ref.get(str(entry.get("reference", "")))
        placement = _parts(entry, PLACEMENT_EXTENSION)
        ended = parse_date(placement["end"]) if isinstance(placement.get("end"), str) else None
        if ended is not None and ended < period[0]:
            continue
        row = _placement_row(result, pid, entry, organization, placement, start)
        if row is not None:
            row["placement_rank"] = len(rows) + 1
            rows.append(row)
    if not rows:
        result.problems.append((pid, "placements", ("no placement in the collection year: section I names no "
                                "establishment (an Organization with a URN or UKPRN) and records no setting type "
                                "(ehcp-placement setting), or every placement ended before the year")))
    return rows


def _placement_row(result: Return, pid: str, entry: dict, organization: dict | None, placement: dict,
                   start: date | None) -> dict | None:
    urn = _identifier(organization or {}, URN_SYSTEM)
    ukprn = _identifier(organization or {}, UKPRN_SYSTEM)
    setting = _code(placement.get("setting"), SETTING_SYSTEM)
    if not (urn or ukprn or setting):
        return None
    name = (organization or {}).get("name") or entry.get("display") or "a placement"
    pattern = _code(placement.get("attendancePattern"), ATTENDANCE_SYSTEM)
    if not pattern:
        result.problems.append((pid, "placements", (f"attendance pattern of {name} (full or part time) is not "
                                "recorded (ehcp-placement attendancePattern on its section I entry)")))
    entered = placement.get("start") if isinstance(placement.get("start"), str) else (start.isoformat() if start else "")
    return {"person_id": pid, "urn": urn, "ukprn": ukprn, "sen_setting": "" if urn or ukprn else setting,
            "sen_setting_other": entry.get("display", "") if setting == "NIEO" and not (urn or ukprn) else "",
            "entry_date": entered, "leaving_date": placement.get("end") or "", "attendance_pattern": pattern,
            "sen_unit": _yes_no(placement.get("senUnit") is True),
            "resourced_provision": _yes_no(placement.get("resourcedProvision") is True),
            "residential": _code(placement.get("residential"), RESIDENTIAL_SYSTEM)}


def _code(coding: object, system: str) -> str:
    return str(coding.get("code", "")) if isinstance(coding, dict) and coding.get("system") == system else ""


def as_parameters(result: Return) -> dict:
    """The return as FHIR Parameters: census date, one Binary (text/csv) per module, validation."""
    import base64

    def binary(text: str) -> dict:
        return {"resourceType": "Binary", "contentType": "text/csv", "data": base64.b64encode(text.encode()).decode()}

    parameters = [{"name": "year", "valueInteger": result.year},
                  {"name": "censusDate", "valueDate": result.census.isoformat()}]
    parameters += [{"name": module, "resource": binary(result.csv(module))} for module in modules()]
    parameters.append({"name": "validation", "resource": binary(result.validation_csv())})
    return {"resourceType": "Parameters", "parameter": parameters}
