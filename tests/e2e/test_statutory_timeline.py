"""The statutory timeline end to end, on a server whose clock the test moves.

Child 1 (a school's request): decision to assess in week 5, four advice requests (health
returns late), the draft, the family's comment, the final plan in week 19, its notice with the
appeal deadline and the family's receipts; a year later the annual review with progress on
every outcome and an amendment; a phase transfer. Child 2: the final plan late, with an
exception that applies (absent from the area for 5 weeks, SEND Regulations 2014 reg 13(3),
10(4)(d)); its notice never read (on the overdue list after 5 working days); later a decision
to cease, appealed, the plan maintained until the Tribunal decides. Child 3: late with no
exception. Child 4: a refusal to assess, a mediation certificate moving the appeal deadline.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tests.e2e.plan_builders import draft_plan_bundle, ids_by_type, parent
from tests.e2e.test_statutory_process import proposal_from_current, respond
from tests.support import outcome_code

BASE = "http://ehcp-record.example.org/fhir"
INPUT = f"{BASE}/CodeSystem/ehcp-task-input"


class Clock:
    """The server's clock, moved by the test (the app runs in this process)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def at(self, day: str, hour: int = 10) -> None:
        self.now = datetime.fromisoformat(day).replace(hour=hour, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def clock(api):
    moved = Clock()
    api.services.records.clock = moved
    return moved


def params(**values) -> dict:
    out = []
    for name, value in values.items():
        if isinstance(value, bool):
            out.append({"name": name, "valueBoolean": value})
        elif isinstance(value, int):
            out.append({"name": name, "valueInteger": value})
        elif isinstance(value, dict):
            out.append({"name": name, "valueReference": value})
        elif isinstance(value, list):
            out += [{"name": name, "part": part} for part in value]
        elif len(value) == 10 and value[4] == "-":
            out.append({"name": name, "valueDate": value})
        elif " " in value:
            out.append({"name": name, "valueString": value})
        else:
            out.append({"name": name, "valueCode": value})
    return {"resourceType": "Parameters", "parameter": out}


def output(task: dict, code: str):
    for item in task.get("output", []):
        if item["type"]["coding"][0]["code"] == code:
            return next(v for k, v in item.items() if k.startswith("value"))
    return None


def clocks_of(api, child: str, code: str) -> list[dict]:
    found = api.get(f"/fhir/Task?patient={child}&code={BASE}/CodeSystem/ehcp-task-code|{code}", api.la()).json()
    return [e["resource"] for e in found.get("entry", [])]


def one_clock(api, child: str, code: str, status: str = "requested") -> dict:
    open_ = [t for t in clocks_of(api, child, code) if t["status"] == status]
    assert len(open_) == 1, (code, [t["status"] for t in clocks_of(api, child, code)])
    return open_[0]


def complete(api, task_id: str, **values) -> dict:
    response = api.post(f"/fhir/Task/{task_id}/$complete-step", params(**values), api.la())
    assert response.status_code == 200, response.text
    return response.json()


def worklist(api, as_of: str, within: int = 14) -> list[dict]:
    body = api.get(f"/fhir/$worklist?asOf={as_of}&within={within}", api.la()).json()
    assert body["resourceType"] == "Parameters", body
    items = []
    for p in body["parameter"]:
        if p["name"] == "item":
            values = {part["name"]: next(v for k, v in part.items() if k.startswith("value")) for part in p["part"]}
            items.append({k: v["reference"] if isinstance(v, dict) else v for k, v in values.items()})
    return items


def new_family(api, name: str, birth: str = "2017-02-01", **fields):
    child = api.new_child(birthDate=birth, name=[{"family": "Example", "given": [name]}], **fields)
    mum = api.post("/fhir/RelatedPerson", parent(child["id"], f"{name}'s parent"), api.la()).json()
    return child["id"], api.token("parent", None, fhir_user=f"RelatedPerson/{mum['id']}")


def request(api, child: str, received: str, requester: str, **more) -> dict:
    response = api.post(f"/fhir/Patient/{child}/$request-assessment",
                        params(received=received, requester=requester, **more), api.la())
    assert response.status_code == 201, response.text
    return response.json()


SCHOOL = {"resourceType": "Organization", "id": "school-100001", "name": "Example Primary School",
          "identifier": [{"system": f"{BASE}/NamingSystem/urn", "value": "100001"}]}
PLACEMENT = f"{BASE}/StructureDefinition/ehcp-placement"


def placement(start: str, pattern: str, end: str | None = None, setting: str | None = None, **flags) -> list[dict]:
    """The ehcp-placement extension of a section I entry (SEN2 placement details)."""
    parts = [{"url": "start", "valueDate": start},
             {"url": "attendancePattern", "valueCoding": {"system": f"{BASE}/CodeSystem/sen2-attendance-pattern",
                                                          "code": pattern}}]
    parts += [{"url": "end", "valueDate": end}] if end else []
    parts += [{"url": "setting", "valueCoding": {"system": f"{BASE}/CodeSystem/sen2-setting", "code": setting}}] if setting else []
    parts += [{"url": name, "valueBoolean": value} for name, value in flags.items()]
    return [{"url": PLACEMENT, "extension": parts}]


def issue_plan(api, child: str, mum: str, clock: Clock, drafted: str, answered: str, issued: str,
               school: dict | None = None, entries: list[dict] | None = None, budget: list[dict] | None = None) -> dict:
    """The draft (reg 13(1)), the family's comment within 15 days, and $issue; section I names
    `school` (an establishment with its URN) and holds `entries` when given; section J records
    `budget` (the ehcp-personal-budget parts)."""
    clock.at(drafted)
    bundle = draft_plan_bundle(child)
    plan = bundle["entry"][-1]["resource"]
    section = {s["title"]: s for s in plan["section"]}
    if school is not None:
        assert api.put(f"/fhir/Organization/{school['id']}", school, api.la()).status_code in (200, 201)
    if entries is not None:
        section["I"]["entry"] = entries
    if budget is not None:
        section["J"]["extension"] = [{"url": f"{BASE}/StructureDefinition/ehcp-personal-budget", "extension": budget}]
    created = api.post("/fhir", bundle, api.la())
    assert created.status_code == 200, created.text
    ids = ids_by_type(created.json())
    task = api.post(f"/fhir/Composition/{ids['Composition']}/$propose", proposal_from_current(api, ids, lambda r: None),
                    api.la()).json()
    clock.at(answered)
    assert respond(api, task["id"], mum, "comment", "Please add speech therapy in the holidays").status_code == 200
    clock.at(issued)
    plan = api.post(f"/fhir/Task/{task['id']}/$issue", None, api.la())
    assert plan.status_code == 200, plan.text
    return {"ids": ids, "plan": plan.json()}


def test_the_statutory_timeline(api, clock):
    la = api.la()

    # ---- child 1: a school's request received on Monday 5 January 2026
    ethnicity = {"url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory",
                 "valueCodeableConcept": {"coding": [{"system": f"{BASE}/CodeSystem/sen2-ethnicity", "code": "WBRI"}]}}
    sam, sam_mum = new_family(api, "Sam", extension=[ethnicity])
    clock.at("2026-01-05")
    req = request(api, sam, "2026-01-05", "school", inRelevantYouthAccommodation=False)
    assert req["restriction"]["period"] == {"start": "2026-01-05", "end": "2026-05-25"}  # reg 13(2): 20 weeks
    decision = one_clock(api, sam, "assessment-decision")
    assert decision["restriction"]["period"]["end"] == "2026-02-16"  # reg 5(1): 6 weeks
    again = api.post(f"/fhir/Patient/{sam}/$request-assessment", params(received="2026-01-05", requester="parent"), la)
    assert again.status_code == 409 and outcome_code(again) == "business-rule"

    # advice cannot be sought before the decision to assess
    early = api.post(f"/fhir/Task/{req['id']}/$request-advice", params(adviceType="health", requested="2026-01-06"), la)
    assert early.status_code == 409

    clock.at("2026-02-09")
    done = complete(api, decision["id"], date="2026-02-09", decision="assess")
    assert done["status"] == "completed" and output(done, "on-time") is True
    assert one_clock(api, sam, "issue-decision")["restriction"]["period"]["end"] == "2026-04-27"  # reg 10(1): 16 weeks

    clock.at("2026-02-10")
    advice = {}
    for kind in ("educational", "health", "social-care", "educational-psychology"):
        response = api.post(f"/fhir/Task/{req['id']}/$request-advice", params(adviceType=kind, requested="2026-02-10"), la)
        assert response.status_code == 201, response.text
        advice[kind] = response.json()
        assert advice[kind]["restriction"]["period"]["end"] == "2026-03-24"  # reg 8(1): 6 weeks

    # the worklist on 20 March: four advice returns due in 4 days
    due = [i for i in worklist(api, "2026-03-20") if i["patient"] == f"Patient/{sam}"]
    assert sorted((i["clock"], i["daysLeft"], i["state"]) for i in due) == [("advice", 4, "due")] * 4

    clock.at("2026-03-20")
    for kind in ("educational", "social-care", "educational-psychology"):
        assert output(complete(api, advice[kind]["id"], date="2026-03-20"), "on-time") is True
    # on 30 March the health advice is 6 days overdue
    late = [i for i in worklist(api, "2026-03-30") if i["patient"] == f"Patient/{sam}"]
    assert [(i["clock"], i["daysLeft"], i["state"], i["focus"]) for i in late] == [
        ("advice", -6, "overdue", f"Task/{advice['health']['id']}")]
    clock.at("2026-04-01")
    health = complete(api, advice["health"]["id"], date="2026-04-01")
    assert output(health, "on-time") is False and "8 days late" in health["businessStatus"]["text"]

    # the draft in week 14, the family's comment, the final plan in week 19
    clock.at("2026-04-10")
    complete(api, one_clock(api, sam, "issue-decision")["id"], date="2026-04-10", decision="issue")
    on_paper = api.post(f"/fhir/Task/{one_clock(api, sam, 'final-plan')['id']}/$complete-step",
                        params(date="2026-04-10"), la)
    assert on_paper.status_code == 409 and "$issue" in on_paper.text  # the final plan is met by sending it
    sam_school = {"reference": f"Organization/{SCHOOL['id']}",
                  "extension": placement("2026-06-01", "FT", senUnit=True, resourcedProvision=False)}
    issued = issue_plan(api, sam, sam_mum, clock, "2026-04-10", "2026-04-20", "2026-05-14", SCHOOL, [sam_school],
                        [{"url": "takenUp", "valueBoolean": True}, {"url": "directPayments", "valueBoolean": True}])
    # $issue sent the finalised plan, which met the final-plan clock (regs 13(2), 14(2))
    final = one_clock(api, sam, "final-plan", "completed")
    assert output(final, "on-time") is True and final["executionPeriod"]["end"] == "2026-05-14"
    assert output(final, "plan-version")["reference"] == f"Composition/{issued['ids']['Composition']}/_history/{issued['plan']['meta']['versionId']}"
    notice_ref = output(final, "notice")["reference"]
    notice = api.get(f"/fhir/{notice_ref}", sam_mum).json()
    assert notice["category"][0]["coding"][0]["code"] == "plan-issued"
    assert ext(notice, "ehcp-appeal-deadline") == "2026-07-14"  # Tribunal Rules r20(1)(c): 2 months
    assert notice["recipient"][0]["reference"].startswith("RelatedPerson/")
    assert notice["sent"].startswith("2026-05-14T10:00")
    assert api.get(f"/fhir/Task/{req['id']}", la).json()["status"] == "completed"

    # the family's app: delivered at noon, read the next morning (times are the server's)
    clock.at("2026-05-14", 12)
    assert notice_event(api, sam, sam_mum, notice_ref, "delivered").status_code == 200
    clock.at("2026-05-15", 9)
    read = notice_event(api, sam, sam_mum, notice_ref, "read").json()
    assert read["received"].startswith("2026-05-14T12:00") and ext(read, "ehcp-notice-read").startswith("2026-05-15T09:00")
    assert notice_event(api, sam, la, notice_ref, "read").status_code == 409  # receipts come from the family
    forged = {k: v for k, v in notice.items() if k not in ("id", "meta")}
    assert api.post("/fhir/Communication", forged, la).status_code == 405  # server-written only
    # the family disputes section I: a mediation certificate on the issued plan's notice (SEN2 OtherMediation)
    clock.at("2026-07-01")
    assert notice_event(api, sam, la, notice_ref, "mediation-certificate", day="2026-07-01").status_code == 200

    # ---- child 2: late, with an exception that applies (absent 5 weeks, reg 10(4)(d))
    ali, ali_mum = new_family(api, "Ali")
    clock.at("2026-01-12")
    request(api, ali, "2026-01-12", "parent")
    complete(api, one_clock(api, ali, "assessment-decision")["id"], date="2026-01-12", decision="assess")
    final_clock = one_clock(api, ali, "final-plan")
    clock.at("2026-04-10")
    short = api.post(f"/fhir/Task/{final_clock['id']}/$clock-exception",
                     params(reason="absent-from-area", start="2026-03-01", end="2026-03-20"), la)
    assert short.status_code == 422 and "at least 28 days" in short.json()["issue"][0]["diagnostics"]
    wrong = api.post(f"/fhir/Task/{final_clock['id']}/$clock-exception",
                     params(reason="missed-appointment", start="2026-03-01", end="2026-03-02"), la)
    assert wrong.status_code == 422 and "reg 8(2)(c)" in wrong.json()["issue"][0]["diagnostics"]
    noted = api.post(f"/fhir/Task/{final_clock['id']}/$clock-exception",
                     params(reason="absent-from-area", start="2026-03-01", end="2026-04-05",
                            note="Family abroad caring for a relative"), la)
    assert noted.status_code == 200, noted.text
    clock.at("2026-04-20")
    complete(api, one_clock(api, ali, "issue-decision")["id"], date="2026-04-20", decision="issue")
    # the worklist on 3 June: Ali's final plan (due 1 June) is overdue, the exception shown
    overdue = {i["clock"]: i for i in worklist(api, "2026-06-03") if i["patient"] == f"Patient/{ali}"}
    assert overdue["final-plan"]["daysLeft"] == -2 and overdue["final-plan"]["state"] == "overdue"
    assert overdue["final-plan"]["exception"] == "absent-from-area"
    tuition = {"display": "Specialist tuition at home arranged by the local authority (CFA 2014 s61)",
               "extension": placement("2026-06-10", "PT", end="2026-12-18", setting="OLA")}
    issue_plan(api, ali, ali_mum, clock, "2026-05-20", "2026-06-01", "2026-06-10", entries=[tuition])
    late_final = one_clock(api, ali, "final-plan", "completed")
    assert output(late_final, "on-time") is False
    assert output(late_final, "exception-applied") == {"coding": [{"system": f"{BASE}/CodeSystem/ehcp-clock-exception",
                                                                   "code": "absent-from-area"}]}
    assert "did not apply" in late_final["businessStatus"]["text"]
    ali_notice = output(late_final, "notice")["reference"]
    # never read: on the overdue list once 5 working days have passed (10 June + 5 = 17 June)
    unread = [i for i in worklist(api, "2026-06-18") if i["clock"] == "notice-unread"]
    assert [(i["focus"], i["due"], i["daysLeft"]) for i in unread] == [(ali_notice, "2026-06-17", -1)]

    # ---- child 3: late with no exception
    kim, kim_mum = new_family(api, "Kim")
    clock.at("2026-01-05")
    request(api, kim, "2026-01-05", "young-person")
    clock.at("2026-02-20")
    complete(api, one_clock(api, kim, "assessment-decision")["id"], date="2026-02-20", decision="assess")
    late_decision = [t for t in clocks_of(api, kim, "assessment-decision")][0]
    assert output(late_decision, "on-time") is False  # 20 Feb is after 16 Feb
    clock.at("2026-04-20")
    complete(api, one_clock(api, kim, "issue-decision")["id"], date="2026-04-20", decision="issue")
    issue_plan(api, kim, kim_mum, clock, "2026-05-01", "2026-05-10", "2026-06-05")
    kim_final = one_clock(api, kim, "final-plan", "completed")
    assert output(kim_final, "on-time") is False and output(kim_final, "exception-applied") is None
    assert kim_final["businessStatus"]["text"].startswith("done 11 days late")

    # ---- child 4: a refusal to assess, with a notice and a mediation certificate
    jo, jo_mum = new_family(api, "Jo")
    clock.at("2026-02-02")
    request(api, jo, "2026-02-02", "parent")
    missing_reason = api.post(f"/fhir/Task/{one_clock(api, jo, 'assessment-decision')['id']}/$complete-step",
                              params(date="2026-02-02", decision="not-assess"), la)
    assert missing_reason.status_code == 400
    refused = complete(api, one_clock(api, jo, "assessment-decision")["id"], date="2026-02-02", decision="not-assess",
                       reason="Needs can be met from the school's own resources with SEN support")
    jo_notice_ref = output(refused, "notice")["reference"]
    jo_notice = api.get(f"/fhir/{jo_notice_ref}", jo_mum).json()
    assert jo_notice["category"][0]["coding"][0]["code"] == "not-to-assess"
    assert ext(jo_notice, "ehcp-appeal-deadline") == "2026-04-02"
    assert "SEN support" in jo_notice["payload"][1]["contentString"]
    assert [t["status"] for t in clocks_of(api, jo, "final-plan")] == ["cancelled"]
    clock.at("2026-03-20")
    certified = notice_event(api, jo, jo_mum, jo_notice_ref, "mediation-certificate", day="2026-03-20").json()
    assert ext(certified, "ehcp-appeal-deadline") == "2026-04-20"  # 1 month from the certificate, the later

    # ---- child 1, a year on: the annual review with progress on every outcome, an amendment
    review = one_clock(api, sam, "review-due")
    assert review["restriction"]["period"]["end"] == "2027-05-13"  # CFA s44(1): 12 months beginning 14 May 2026
    clock.at("2027-04-26")
    goal = issued["ids"]["Goal"]
    held = complete(api, review["id"], date="2027-04-26", adviceCirculated="2027-04-10", stepDownDiscussed=True,
                    ceaseDiscussed=False,
                    progress=[[{"name": "goal", "valueReference": {"reference": f"Goal/{goal}"}},
                               {"name": "achievementStatus", "valueCode": "improving"},
                               {"name": "note", "valueString": "Uses 3-word sentences in most lessons"}]])
    assert output(held, "step-down-discussed") is True and output(held, "cease-discussed") is False
    recorded = api.get(f"/fhir/Goal/{goal}", sam_mum).json()
    assert recorded["achievementStatus"]["coding"][0]["code"] == "improving"
    assert recorded["note"][-1]["time"] == "2027-04-26" and recorded["note"][-1]["authorReference"]["reference"]
    assert one_clock(api, sam, "review-report")["restriction"]["period"]["end"] == "2027-05-10"  # reg 20(7)
    decision_task = one_clock(api, sam, "annual-review")
    assert decision_task["restriction"]["period"]["end"] == "2027-05-24"  # reg 20(10): 4 weeks
    assert one_clock(api, sam, "review-due")["restriction"]["period"]["end"] == "2028-04-25"
    clock.at("2027-05-05")
    complete(api, one_clock(api, sam, "review-report")["id"], date="2027-05-05")
    clock.at("2027-05-10")
    complete(api, decision_task["id"], date="2027-05-10", decision="amend")

    def amend(resource):
        if resource["resourceType"] == "Goal":
            resource["description"]["text"] = "Sam will hold a short conversation with a peer"
    amendment = api.post(f"/fhir/Composition/{issued['ids']['Composition']}/$propose",
                         proposal_from_current(api, issued["ids"], amend), la).json()
    amendment_clock = one_clock(api, sam, "amendment")
    pending = [i for i in worklist(api, "2027-05-12", within=60) if i["clock"] == "amendment"]
    assert [(i["focus"], i["due"]) for i in pending] == [(f"Task/{amendment_clock['id']}", "2027-07-05")]  # reg 22(3)
    clock.at("2027-05-20")
    assert respond(api, amendment["id"], sam_mum, "agree").status_code == 200
    assert api.post(f"/fhir/Task/{amendment['id']}/$issue", None, la).json()["status"] == "amended"
    amended = api.get(f"/fhir/Task/{amendment_clock['id']}", la).json()  # met by $issue (reg 22(3))
    assert amended["status"] == "completed" and output(amended, "on-time") is True
    amended_notice = api.get(f"/fhir/{output(amended, 'notice')['reference']}", sam_mum).json()
    assert amended_notice["category"][0]["coding"][0]["code"] == "plan-amended"
    assert ext(amended_notice, "ehcp-appeal-deadline") == "2027-07-20"
    assert not [i for i in worklist(api, "2027-05-21", within=60) if i["clock"] == "amendment"]

    # ---- phase transfer to secondary school in September 2028 (reg 18(1)(b): before 15 February)
    clock.at("2027-09-15")
    transfer = api.post(f"/fhir/Patient/{sam}/$phase-transfer", params(transferYear=2028), la)
    assert transfer.status_code == 201, transfer.text
    assert transfer.json()["restriction"]["period"]["end"] == "2028-02-14"
    clock.at("2028-01-20")
    assert output(complete(api, transfer.json()["id"], date="2028-01-20"), "on-time") is True

    # ---- child 2: ceasing, appealed; the plan is maintained until the Tribunal decides
    clock.at("2027-03-01")
    ceasing = api.post(f"/fhir/Patient/{ali}/$cease", params(consulted="2027-02-15", decided="2027-03-01",
                                                              reason="needs-met"), la)
    assert ceasing.status_code == 201, ceasing.text
    cease_task = ceasing.json()
    assert cease_task["restriction"]["period"]["end"] == "2027-05-01"
    cease_notice = _notice_input(cease_task)
    clock.at("2027-04-20")
    assert notice_event(api, ali, ali_mum, cease_notice, "appeal-lodged", day="2027-04-20").status_code == 200
    clock.at("2027-05-10")
    blocked = api.post(f"/fhir/Task/{cease_task['id']}/$complete-step", params(date="2027-05-10", decision="ceased"), la)
    assert blocked.status_code == 409 and "maintained until the Tribunal decides" in blocked.text
    clock.at("2027-07-01")
    assert notice_event(api, ali, la, cease_notice, "appeal-decided", day="2027-07-01", outcome="dismissed").status_code == 200
    clock.at("2027-07-02")
    ceased = complete(api, cease_task["id"], date="2027-07-02", decision="ceased")
    assert "plan ceased on 2027-07-02 after the appeal was dismissed on 2027-07-01" == ceased["businessStatus"]["text"]

    # ---- SEN2: the January 2027 return (census 21 January 2027, requests of 2026), by hand
    ret = sen2(api, 2027, la)
    assert ret["censusDate"] == "2027-01-21"
    order = {sam: 0, ali: 1, kim: 2, jo: 3}
    mine = lambda rows: sorted((r for r in rows if r["person_id"] in order), key=lambda r: order[r["person_id"]])  # noqa: E731
    assert mine(ret["requests"]) == [
        {"person_id": sam, "received_date": "2026-01-05", "request_source": "school", "rya": "N", "request_outcome": "assess",
         "request_outcome_date": "2026-02-09", "request_outcome_code": "Y", "request_mediation": "",
         "request_tribunal": ""},
        {"person_id": ali, "received_date": "2026-01-12", "request_source": "parent", "rya": "", "request_outcome": "assess",
         "request_outcome_date": "2026-01-12", "request_outcome_code": "Y", "request_mediation": "",
         "request_tribunal": ""},
        {"person_id": kim, "received_date": "2026-01-05", "request_source": "young-person", "rya": "",
         "request_outcome": "assess", "request_outcome_date": "2026-02-20", "request_outcome_code": "Y", "request_mediation": "",
         "request_tribunal": ""},
        {"person_id": jo, "received_date": "2026-02-02", "request_source": "parent", "rya": "", "request_outcome": "not-assess",
         "request_outcome_date": "2026-02-02", "request_outcome_code": "N", "request_mediation": "Y",
         "request_tribunal": "N"}]  # Jo: a mediation certificate, no appeal
    assert mine(ret["assessments"]) == [
        {"person_id": sam, "received_date": "2026-01-05", "assessment_outcome": "issue",
         "assessment_outcome_date": "2026-04-10", "final_plan_date": "2026-05-14", "twenty_week_met": "Y",
         "exception": "", "assessment_outcome_code": "Y", "assessment_mediation": "",
         "assessment_tribunal": "", "other_mediation": "Y", "other_tribunal": "N"},  # the plan's notice disputed
        {"person_id": ali, "received_date": "2026-01-12", "assessment_outcome": "issue",
         "assessment_outcome_date": "2026-04-20", "final_plan_date": "2026-06-10", "twenty_week_met": "N",
         "exception": "absent-from-area", "assessment_outcome_code": "Y", "assessment_mediation": "",
         "assessment_tribunal": "", "other_mediation": "N", "other_tribunal": "N"},
        {"person_id": kim, "received_date": "2026-01-05", "assessment_outcome": "issue",
         "assessment_outcome_date": "2026-04-20", "final_plan_date": "2026-06-05", "twenty_week_met": "N",
         "exception": "", "assessment_outcome_code": "Y", "assessment_mediation": "",
         "assessment_tribunal": "", "other_mediation": "N", "other_tribunal": "N"}]
    plans = {r["person_id"]: r for r in mine(ret["named-plans"])}
    assert plans[sam] == {"person_id": sam, "plan_start_date": "2026-05-14", "plan_res": "", "pb": "Y", "oa": "N",
                          "dp": "Y", "last_review_date": "",
                          "cease_date": "", "cease_reason": "", "transfer_la": "", "review_outcome_code": "",
                          "cease_reason_code": ""}  # the review in April 2027 is after the census
    assert plans[ali]["plan_start_date"] == "2026-06-10" and plans[ali]["cease_date"] == "" and jo not in plans
    assert (plans[ali]["pb"], plans[ali]["oa"], plans[ali]["dp"]) == ("", "", "")  # section J records no budget
    assert {(r["person_id"], r["sen_type"], r["sen_type_rank"]) for r in mine(ret["needs"])} == {
        (sam, "SLCN", "1"), (ali, "SLCN", "1"), (kim, "SLCN", "1")}
    person = {r["person_id"]: r for r in mine(ret["person"])}
    assert person[sam] == {"person_id": sam, "upn": "", "uln": "", "surname": "Example", "forename": "Sam",
                           "birth_date": "2017-02-01", "sex": "", "postcode": "", "ethnicity": "WBRI"}
    assert person[ali]["ethnicity"] == ""
    assert ret["la"] == [{"la": "866", "year": "2027", "reference_date": "2027-01-21"}]
    assert mine(ret["placements"]) == [  # Sam at a school with a URN; Ali in EOTAS (DfE SENsetting OLA) until December
        {"person_id": sam, "urn": "100001", "ukprn": "", "sen_setting": "", "sen_setting_other": "",
         "placement_rank": "1", "entry_date": "2026-06-01", "leaving_date": "", "attendance_pattern": "FT",
         "sen_unit": "Y", "resourced_provision": "N", "residential": ""},
        {"person_id": ali, "urn": "", "ukprn": "", "sen_setting": "OLA", "sen_setting_other": "",
         "placement_rank": "1", "entry_date": "2026-06-10", "leaving_date": "2026-12-18", "attendance_pattern": "PT",
         "sen_unit": "N", "resourced_provision": "N", "residential": ""}]
    problems = {(r["person_id"], r["module"], r["problem"][:30]) for r in mine(ret["validation"])}
    assert (sam, "person", "no UPN (or ULN) recorded for t") in problems
    assert (kim, "placements", "no placement in the collection") in problems
    assert (ali, "named-plans", "section J does not record whet") in problems
    assert {p[0] for p in problems if p[1] == "requests"} == {ali, kim, jo}  # RYA not recorded
    assert not [p for p in problems if p[1] == "placements" and p[0] in (sam, ali)]
    assert (ali, "person", "no ethnicity recorded (UK Core") in problems
    assert not [p for p in problems if p[0] == sam and p[1] == "person" and "ethnicity" in p[2]]

    # the next return: Ali's plan ceased in 2027 (after the appeal), Sam's review on 26 April 2027
    next_return = sen2(api, 2028, la)
    later = {r["person_id"]: r for r in next_return["named-plans"]}
    # Ali's placement ended on 18 December 2026, before the 2027 collection year: not reported again
    assert [r["person_id"] for r in next_return["placements"] if r["person_id"] in (sam, ali)] == [sam]
    assert later[ali]["cease_date"] == "2027-07-02" and later[ali]["cease_reason"] == "needs-met"
    assert later[ali]["cease_reason_code"] == "2"  # SEN2: needs met without an EHC plan
    assert later[sam]["last_review_date"] == "2027-04-26" and later[sam]["review_outcome_code"] == "A"
    # another organisation's caller gets an empty return (only the custodian's records are in it)
    assert sen2(api, 2027, api.token("school", "Organization/school-1"))["person"] == []


def sen2(api, year: int, token: str) -> dict:
    import base64
    import csv
    import io

    response = api.get(f"/fhir/$sen2?year={year}", token)
    assert response.status_code == 200, response.text
    out = {}
    for p in response.json()["parameter"]:
        if "resource" in p:
            out[p["name"]] = list(csv.DictReader(io.StringIO(base64.b64decode(p["resource"]["data"]).decode())))
        else:
            out[p["name"]] = next(v for k, v in p.items() if k.startswith("value"))
    return out


def _notice_input(task: dict) -> str:
    return next(i["valueReference"]["reference"] for i in task["input"]
                if i.get("valueReference", {}).get("reference", "").startswith("Communication/"))


def ext(resource: dict, name: str):
    url = f"{BASE}/StructureDefinition/{name}"
    return next((next(v for k, v in e.items() if k.startswith("value")) for e in resource.get("extension", [])
                 if e["url"] == url), None)


def notice_event(api, child: str, token: str, notice: str, kind: str, day: str | None = None, outcome: str | None = None):
    values = {"notice": {"reference": notice}, "kind": kind}
    if day:
        values["date"] = day
    if outcome:
        values["outcome"] = outcome
    return api.post(f"/fhir/Patient/{child}/$notice-event", params(**values), token)


def test_the_command_line_writes_the_same_return(api, clock, tmp_path, monkeypatch):
    """`ehcp-record sen2 --year 2027`: the CSVs the API serves, as files (after the scenario above)."""
    from api.cli import main

    settings = api.services.settings
    for name, value in (("EHCP_MONGODB_URI", settings.mongodb_uri), ("EHCP_DATABASE", settings.database),
                        ("EHCP_DATA_DIR", str(settings.data_dir)), ("EHCP_ENV", "test")):
        monkeypatch.setenv(name, value)
    assert main(["sen2", "--year", "2027", "--organization", "Organization/la-866", "--out", str(tmp_path)]) == 0
    served = sen2(api, 2027, api.la())
    import csv

    for module in ("la", "person", "requests", "assessments", "named-plans", "needs", "placements", "validation"):
        written = list(csv.DictReader((tmp_path / f"sen2-2027-{module}.csv").open(encoding="utf-8")))
        assert written == served[module], module
    assert len(served["requests"]) == 4 and len(served["assessments"]) == 3
    assert main(["sen2", "--year", "1999", "--organization", "Organization/la-866", "--out", str(tmp_path)]) == 2
