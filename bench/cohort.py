"""A synthetic cohort of children with EHC plans, written straight into MongoDB in bulk.

The need mix follows the national picture of EHC plans (DfE "Education, health and care
plans" 2024: autism the most common primary need, then speech, language and communication,
then SEMH); ages 0-25; provision in sections F-H2; outcomes with progress recorded at annual
reviews (some late or overdue); final plans within and beyond 20 weeks, some with an
exception; a few transfers to another LA and plans ceased. Every child also has the things
the extract must never carry: a name, an NHS number, a UPN, a postcode, an exact birth date
and free text.

`facts` keeps what was generated in plain terms, so the tests can compute each figure on
their own (never through ehcp_record.analytics) and compare.

Used by tests/analytics (2,000 children) and bench/analytics.py (2,000 and 20,000).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

BASE = "http://ehcp-record.example.org/fhir"
TASK = f"{BASE}/CodeSystem/ehcp-task-code"
INPUT = f"{BASE}/CodeSystem/ehcp-task-input"
SECTION = f"{BASE}/CodeSystem/ehcp-section"
NEED = f"{BASE}/CodeSystem/sen-primary-need"
SETTING = f"{BASE}/CodeSystem/ehcp-setting-type"
CATEGORY = f"{BASE}/CodeSystem/provision-category"
CEASE = f"{BASE}/CodeSystem/ehcp-cease-reason"
EXCEPTION_SYSTEM = f"{BASE}/CodeSystem/ehcp-clock-exception"
EXCEPTION_EXTENSION = f"{BASE}/StructureDefinition/ehcp-clock-exception"
ACHIEVEMENT = "http://terminology.hl7.org/CodeSystem/goal-achievement"

NEEDS = {"ASD": 30, "SLCN": 21, "SEMH": 14, "MLD": 9, "SLD": 6, "PD": 4, "SPLD": 4, "OTH": 3, "HI": 2, "PMLD": 2,
         "VI": 1, "MSI": 1, "NSA": 1}
LAS = {"Organization/la-866": ("866", "E06000030", "Swindon Borough Council", 0.7),
       "Organization/la-855": ("855", "E10000018", "Leicestershire County Council", 0.3)}
SETTINGS = {"MS": 45, "SS": 30, "MSR": 6, "MSU": 4, "FE": 8, "EY": 3, "AP": 2, "EOTAS": 1, "OTH": 1}
SECTIONS = {"F": ("educational", "therapy", "equipment"), "G": ("health", "therapy"), "H1": ("social-care-csdpa",),
            "H2": ("social-care-other",)}
ACHIEVEMENTS = {"achieved": 30, "sustaining": 5, "in-progress": 25, "improving": 15, "no-change": 10,
                "worsening": 5, "not-achieved": 5, "no-progress": 5}
CEASE_REASONS = ("needs-met", "education-ended", "employment", "moved-abroad", "other")
FIRST_NAMES = ("Amara", "Jamie", "Priya", "Oliver", "Zainab", "Theo", "Isla", "Kofi", "Maja", "Rory")
SURNAMES = ("Morgan", "Okafor", "Nowak", "Patel", "Hughes", "Khan", "Ellis", "Byrne", "Lewis", "Shah")


@dataclass
class ChildFacts:
    """What was generated for one child, in plain terms (the tests' independent truth)."""

    record: str
    name: str
    nhs_number: str
    upn: str
    postcode: str
    birth: date
    custodian: str
    needs: list[str]
    start: date
    final_due: date
    final_exception: bool
    school: str
    setting: str
    provisions: list[tuple[str, str]]
    outcomes: list[str]  # goal-achievement codes, recorded at the last review held
    last_review_held: date | None
    reviews: list[tuple[date, date | None]]  # (due, held)
    ceased: tuple[date, str] | None = None
    transfer: tuple[date, date | None, str] | None = None  # (due, done, sending LA)
    note: str = ""


@dataclass
class Cohort:
    as_of: date
    facts: list[ChildFacts] = field(default_factory=list)
    schools: dict[str, tuple[str, str]] = field(default_factory=dict)  # ref -> (urn, setting)


def _pick(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _nhs_number(rng: random.Random) -> str:
    while True:
        digits = [rng.randrange(10) for _ in range(9)]
        check = 11 - sum(d * w for d, w in zip(digits, range(10, 1, -1))) % 11
        check = 0 if check == 11 else check
        if check != 10:
            return "".join(map(str, digits)) + str(check)


def generate(count: int, seed: int = 2026, as_of: date | None = None) -> Cohort:
    rng = random.Random(seed)
    as_of = as_of or datetime.now(timezone.utc).date()
    cohort = Cohort(as_of)
    for n in range(60):  # schools of every size; some will be small enough to be folded
        setting = _pick(rng, SETTINGS)
        cohort.schools[f"Organization/school-{n}"] = (f"{100000 + n * 37}", setting)
    school_refs = list(cohort.schools)
    school_weights = [1 + (i % 7) ** 2 for i in range(len(school_refs))]
    for i in range(count):
        cohort.facts.append(_child(rng, i, as_of, school_refs, school_weights, cohort))
    return cohort


def _child(rng: random.Random, i: int, as_of: date, school_refs: list[str], school_weights: list[int],
           cohort: Cohort) -> ChildFacts:
    custodian = "Organization/la-866" if rng.random() < 0.7 else "Organization/la-855"
    birth = as_of - timedelta(days=rng.randint(3 * 365, 24 * 365))
    request = max(birth + timedelta(days=2 * 365), as_of - timedelta(days=rng.randint(150, 7 * 365)))
    final_due = request + timedelta(weeks=20)
    start = request + timedelta(days=rng.choice([rng.randint(70, 140)] * 3 + [rng.randint(141, 260)]))
    start = min(start, as_of - timedelta(days=1))
    primary = _pick(rng, NEEDS)
    needs = [primary] + rng.sample([n for n in NEEDS if n != primary], rng.choice([0, 0, 1, 1, 2]))
    school = rng.choices(school_refs, weights=school_weights)[0]
    provisions = [(s, rng.choice(SECTIONS[s])) for s in rng.choices(list(SECTIONS), weights=[6, 2, 1, 1],
                                                                    k=rng.randint(1, 4))]
    ceased = None
    if rng.random() < 0.08 and (as_of - start).days > 200:
        ceased = (start + timedelta(days=rng.randint(150, (as_of - start).days - 1)), rng.choice(CEASE_REASONS))
    end = ceased[0] if ceased else as_of
    reviews, due = [], start + timedelta(days=365)
    while due < end:
        held = None if rng.random() < 0.08 else due + timedelta(days=rng.choice([-30, -10, -3, 0, 5, 25, 60]))
        held = held if held is None or held < end else None
        reviews.append((due, held))
        due = (held or due) + timedelta(days=365)
    held_reviews = [h for _, h in reviews if h]
    outcomes = [_pick(rng, ACHIEVEMENTS) for _ in range(rng.randint(2, 4))] if held_reviews else []
    transfer = None
    if rng.random() < 0.05:
        transfer_due = as_of - timedelta(days=rng.randint(1, 900))
        done = None if rng.random() < 0.1 else transfer_due + timedelta(days=rng.choice([-5, 0, 0, 3, 20]))
        transfer = (transfer_due, done if done is None or done <= as_of else None, custodian)
    return ChildFacts(
        record=str(uuid.UUID(int=rng.getrandbits(128))), name=f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}-{i}",
        nhs_number=_nhs_number(rng), upn=f"A{rng.choice(['866', '855'])}{rng.randint(1000, 9999)}{rng.randint(10, 25)}"
        f"{rng.randint(100, 999)}", postcode=f"SN{rng.randint(1, 25)} {rng.randint(1, 9)}{rng.choice('ABDEFGHJ')}"
        f"{rng.choice('LNPQRSTU')}", birth=birth, custodian=custodian, needs=needs, start=start, final_due=final_due,
        final_exception=start > final_due and rng.random() < 0.3, school=school, setting=cohort.schools[school][1],
        provisions=provisions, outcomes=outcomes, last_review_held=max(held_reviews) if held_reviews else None,
        reviews=reviews, ceased=ceased, transfer=transfer,
        note=f"{rng.choice(FIRST_NAMES)} loves trains and lives at {rng.randint(1, 99)} Station Road")


# --------------------------------------------------------------------------- FHIR resources

def _coding(system: str, code: str) -> dict:
    return {"coding": [{"system": system, "code": code}]}


def _typed(code: str, **value: object) -> dict:
    return {"type": _coding(INPUT, code), **value}


def _clock(record: str, code: str, start: date, due: date, done: date | None, la: str, outputs: list | None = None,
           **extra: object) -> dict:
    task = {"resourceType": "Task", "id": str(uuid.uuid4()), "status": "completed" if done else "requested",
            "intent": "order", "code": _coding(TASK, code), "for": {"reference": f"Patient/{record}"},
            "requester": {"reference": la}, "owner": {"reference": la},
            "restriction": {"period": {"start": start.isoformat(), "end": due.isoformat()}},
            "input": [], "output": list(outputs or []), **extra}
    if done:
        task["executionPeriod"] = {"start": start.isoformat(), "end": done.isoformat()}
        task["output"].insert(0, _typed("completed-on", valueDate=done.isoformat()))
    return task


def resources(child: ChildFacts) -> list[dict]:
    """The child's record as the API would hold it (issued plan, clocks, progress)."""
    r, patient_ref = child.record, {"reference": f"Patient/{child.record}"}
    given, family = child.name.split(" ", 1)
    out: list[dict] = [{"resourceType": "Patient", "id": r, "name": [{"family": family, "given": [given]}],
                        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": child.nhs_number},
                                       {"system": f"{BASE}/NamingSystem/upn", "value": child.upn}],
                        "birthDate": child.birth.isoformat(), "gender": "female",
                        "address": [{"use": "home", "postalCode": child.postcode, "line": ["1 Station Road"]}]}]
    needs = [{"resourceType": "Condition", "id": f"{r}-need-{k}", "subject": patient_ref,
              "category": [_coding(SECTION, "B")], "code": {**_coding(NEED, code), "text": child.note},
              "note": [{"text": child.note}]} for k, code in enumerate(child.needs)]
    goals = [{"resourceType": "Goal", "id": f"{r}-outcome-{k}", "lifecycleStatus": "active", "subject": patient_ref,
              "description": {"text": f"{child.name.split()[0]} will read a short story aloud by July"},
              "achievementStatus": _coding(ACHIEVEMENT, status)} for k, status in enumerate(child.outcomes)]
    if not goals:
        goals = [{"resourceType": "Goal", "id": f"{r}-outcome-0", "lifecycleStatus": "active", "subject": patient_ref,
                  "description": {"text": "an outcome not yet reviewed"}}]
    plans = [{"resourceType": "CarePlan", "id": f"{r}-provision-{k}", "status": "active", "intent": "plan",
              "subject": patient_ref, "category": [_coding(SECTION, section)], "title": child.note,
              "activity": [{"detail": {"status": "scheduled", "code": _coding(CATEGORY, category),
                                       "description": child.note}}]} for k, (section, category) in enumerate(child.provisions)]
    sections = {"B": needs, "E": goals, "F": [p for p, (s, _) in zip(plans, child.provisions) if s == "F"],
                "G": [p for p, (s, _) in zip(plans, child.provisions) if s == "G"],
                "H1": [p for p, (s, _) in zip(plans, child.provisions) if s == "H1"],
                "H2": [p for p, (s, _) in zip(plans, child.provisions) if s == "H2"]}
    composition = {"resourceType": "Composition", "id": f"{r}-plan", "status": "final", "date": child.start.isoformat(),
                   "type": _coding(f"{BASE}/CodeSystem/ehcp-document-type", "ehcp"), "subject": patient_ref,
                   "title": f"EHC plan for {child.name}",
                   "section": [{"code": _coding(SECTION, code), "entry": [{"reference": f"{x['resourceType']}/{x['id']}"}
                                                                          for x in items]} for code, items in sections.items()]
                   + [{"code": _coding(SECTION, "I"), "entry": [{"reference": child.school}]}]}
    out += needs + goals + plans + [composition]
    out += _clocks(child, goals)
    return out


def _clocks(child: ChildFacts, goals: list[dict]) -> list[dict]:
    r, la = child.record, child.custodian
    request = child.final_due - timedelta(weeks=20)
    extra = {}
    if child.final_exception:
        extra["extension"] = [{"url": EXCEPTION_EXTENSION, "extension": [
            {"url": "reason", "valueCoding": {"system": EXCEPTION_SYSTEM, "code": "exceptional-circumstances"}},
            {"url": "period", "valuePeriod": {"start": (request + timedelta(days=30)).isoformat(),
                                              "end": (request + timedelta(days=60)).isoformat()}}]}]
    tasks = [_clock(r, "final-plan", request, child.final_due, child.start, la, **extra)]
    last_held = child.last_review_held
    for due, held in child.reviews:
        progress = [_typed("progress", valueReference={"reference": f"Goal/{g['id']}"})
                    for g in goals if held and held == last_held and child.outcomes]
        tasks.append(_clock(r, "review-due", (held or due) - timedelta(days=365), due, held, la, progress))
    if child.ceased:
        day, reason = child.ceased
        tasks.append(_clock(r, "cease", day - timedelta(days=60), day - timedelta(days=1), day, la,
                            input=[_typed("cease-reason", valueCodeableConcept=_coding(CEASE, reason))],
                            businessStatus={"text": f"plan ceased on {day}"}))
    if child.transfer:
        due, done, sender = child.transfer
        task = {"resourceType": "Task", "id": str(uuid.uuid4()), "status": "completed" if done else "requested",
                "intent": "order", "code": _coding(TASK, "transfer"), "for": {"reference": f"Patient/{r}"},
                "requester": {"reference": sender}, "owner": {"reference": "Organization/la-916"},
                "input": [_typed("transfer-due", valueDate=due.isoformat())],
                "output": [_typed("transferred-on", valueDate=done.isoformat())] if done else []}
        tasks.append(task)
    return tasks


def directory(cohort: Cohort) -> list[dict]:
    """The LAs and schools (directory resources: no record)."""
    las = [{"resourceType": "Organization", "id": ref.split("/")[1], "name": name,
            "identifier": [{"system": f"{BASE}/NamingSystem/dfe-la-number", "value": number},
                           {"system": f"{BASE}/NamingSystem/ons-gss-code", "value": gss}]}
           for ref, (number, gss, name, _) in LAS.items()]
    schools = [{"resourceType": "Organization", "id": ref.split("/")[1], "name": f"School {urn}",
                "identifier": [{"system": f"{BASE}/NamingSystem/urn", "value": urn}],
                "type": [_coding(SETTING, setting)]} for ref, (urn, setting) in cohort.schools.items()]
    return las + schools


# --------------------------------------------------------------------------- bulk insert

def _envelope(resource: dict, record: str | None, custodian: str | None, updated: datetime) -> dict:
    return {"_id": f"{resource['resourceType']}/{resource['id']}", "type": resource["resourceType"],
            "rid": resource["id"], "vid": 1, "updated": updated, "record": record, "section": None,
            "res": resource, "idx": {}, "hash": "", "custodian": custodian}


def insert(db, cohort: Cohort, batch: int = 5000) -> int:
    """Bulk-insert the cohort's records (current documents and custody state) into `db`."""
    now = datetime.now(timezone.utc)
    docs = [_envelope(o, None, None, now) for o in directory(cohort)]
    db.current.insert_many(docs, ordered=False)
    written, pending, states = len(docs), [], []
    for child in cohort.facts:
        pending += [_envelope(res, child.record, child.custodian, now) for res in resources(child)]
        states.append({"_id": child.record, "custodian": child.custodian, "parents": [],
                       "birth_date": child.birth.isoformat()})
        if len(pending) >= batch:
            db.current.insert_many(pending, ordered=False)
            written, pending = written + len(pending), []
    if pending:
        db.current.insert_many(pending, ordered=False)
        written += len(pending)
    db.records.insert_many(states, ordered=False)
    return written
