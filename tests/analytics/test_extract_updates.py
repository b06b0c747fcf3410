"""The extract kept up to date incrementally with what the statutory process and the store do
between full rebuilds: erasure and custody changes, and progress recorded at each review."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.cohort import ACHIEVEMENT, ChildFacts, _envelope, resources

LA_NUMBER = {"Organization/la-866": "866", "Organization/la-855": "855"}


def _rows_of(extract, record: str) -> dict[str, int]:
    own = extract.pseudonyms.own(record)
    tables = {t: pq.read_table(p) for t, p in extract.files().items()}
    return {t: data.filter(pc.equal(data.column("child"), own)).num_rows for t, data in tables.items()}


def test_an_erased_or_transferred_childs_rows_leave_at_the_next_incremental_refresh(cohort_api):
    """$erase marks documents without touching their `updated`, a transfer changes custody: the
    incremental refresh (not only the next full rebuild) must still drop their earlier rows."""
    api, cohort = cohort_api
    extract = api.services.analytics.extract
    with_plans = [c for c in cohort.facts if c.start.year < cohort.as_of.year - 1 and not c.ceased]
    moved, away = with_plans[-1], next(c for c in reversed(with_plans) if c.transfer)
    erased = ChildFacts(**{**with_plans[-2].__dict__, "record": "d" * 8 + "-0000-4000-8000-" + "c" * 12})
    feed = extract.feed
    overlap, feed.overlap = feed.overlap, timedelta(0)
    db = api.services.repo.db  # a child of its own to erase: the cohort stays whole for the other tests
    db.current.insert_many([_envelope(r, erased.record, erased.custodian, api.services.records.clock())
                            for r in resources(erased)])
    db.records.insert_one({"_id": erased.record, "custodian": erased.custodian, "parents": []})
    try:
        extract.refresh()  # up to date: what follows is the only change
        assert _rows_of(extract, erased.record)["plan_years"] >= 2
        response = api.post(f"/fhir/Patient/{erased.record}/$erase",
                            {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "test"}]},
                            api.token("la", erased.custodian))
        assert response.status_code == 200, response.text
        other = "Organization/la-855" if moved.custodian == "Organization/la-866" else "Organization/la-866"
        db.records.update_one({"_id": moved.record}, {"$set": {"custodian": other}})  # a transfer within the deployment
        db.records.update_one({"_id": away.record}, {"$set": {"transferred_out": True}})  # acknowledged by another
        report = extract.refresh()
        assert not report.full and report.records_rebuilt == 3
        assert set(_rows_of(extract, erased.record).values()) == {0}
        years = pq.read_table(extract.files()["plan_years"]).to_pylist()
        own = extract.pseudonyms.own(moved.record)
        assert {r["la"] for r in years if r["child"] == own} == {LA_NUMBER[other]}
        left = _rows_of(extract, away.record)
        assert left["transfers"] == 1 and sum(left.values()) == 1
    finally:
        db.current.delete_many({"record": erased.record})
        db.records.delete_one({"_id": erased.record})
        db.records.update_one({"_id": moved.record}, {"$set": {"custodian": moved.custodian}})
        db.records.update_one({"_id": away.record}, {"$unset": {"transferred_out": ""}})
        extract.refresh()
        feed.overlap = overlap


def _review(record: str, goal: str, due: date, held: date, la: str) -> dict:
    task_input = "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-task-input"
    typed = lambda code, **value: {"type": {"coding": [{"system": task_input, "code": code}]}, **value}
    return {"resourceType": "Task", "id": f"{record}-review-{held.year}", "status": "completed", "intent": "order",
            "code": {"coding": [{"system": "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-task-code",
                                 "code": "review-due"}]},
            "for": {"reference": f"Patient/{record}"}, "requester": {"reference": la}, "owner": {"reference": la},
            "restriction": {"period": {"start": (due - timedelta(days=365)).isoformat(), "end": due.isoformat()}},
            "executionPeriod": {"start": (due - timedelta(days=365)).isoformat(), "end": held.isoformat()},
            "input": [], "output": [typed("completed-on", valueDate=held.isoformat()),
                                    typed("meeting-date", valueDate=held.isoformat()),
                                    typed("progress", valueReference={"reference": f"Goal/{goal}"})]}


def test_an_outcome_reviewed_in_two_years_counts_in_each(cohort_api):
    """A Goal reviewed in one year (not achieved) and again the next (achieved), as
    operations/reviews.py writes it: each review a new Goal version with a note dated the
    meeting. The extract has one outcome row per review, each with what that review recorded."""
    api, cohort = cohort_api
    extract = api.services.analytics.extract
    first, second = date(cohort.as_of.year - 2, 5, 14), date(cohort.as_of.year - 1, 6, 3)
    template = next(c for c in cohort.facts if c.start.year <= first.year - 1 and not c.ceased)
    child = ChildFacts(**{**template.__dict__, "record": "c" * 8 + "-0000-4000-8000-" + "d" * 12, "reviews": [],
                          "outcomes": [], "last_review_held": None})
    goal_id = f"{child.record}-outcome-0"
    docs = [r for r in resources(child) if r["resourceType"] != "Goal" and "-review-" not in r["id"]]
    base = next(r for r in resources(child) if r["resourceType"] == "Goal")
    note = lambda day, code: {"time": day.isoformat(), "authorReference": {"reference": child.custodian},
                              "text": f"Progress at the review on {day}: {code}"}
    v2 = dict(base, meta={"versionId": "2"}, achievementStatus={"coding": [{"system": ACHIEVEMENT, "code": "not-achieved"}]},
              note=[note(first, "not-achieved")])
    v3 = dict(v2, meta={"versionId": "3"}, achievementStatus={"coding": [{"system": ACHIEVEMENT, "code": "achieved"}]},
              note=[note(first, "not-achieved"), note(second, "achieved")])
    docs += [v3, _review(child.record, goal_id, first, first, child.custodian),
             _review(child.record, goal_id, second, second, child.custodian)]
    db = api.services.repo.db
    clock = api.services.records.clock()
    db.current.insert_many([_envelope(r, child.record, child.custodian, clock) for r in docs])
    db.history.insert_many([dict(_envelope(v, child.record, child.custodian, clock), _id=f"Goal/{goal_id}/{n}", vid=n)
                            for n, v in ((1, dict(base, meta={"versionId": "1"})), (2, v2), (3, v3))])
    db.records.insert_one({"_id": child.record, "custodian": child.custodian, "parents": []})
    feed = extract.feed
    overlap, feed.overlap = feed.overlap, timedelta(0)
    try:
        extract.refresh()
        own = extract.pseudonyms.own(child.record)
        rows = [r for r in pq.read_table(extract.files()["outcomes"]).to_pylist() if r["child"] == own]
        assert sorted((r["month"], r["progress"]) for r in rows) == [
            (first.strftime("%Y-%m"), "not-progressing"), (second.strftime("%Y-%m"), "achieved")]
    finally:
        for collection in (db.current, db.history):
            collection.delete_many({"record": child.record})
        db.records.delete_one({"_id": child.record})
        extract.refresh()
        feed.overlap = overlap


def test_a_refresh_rebuilds_each_version_once_though_every_scan_overlaps_the_last(cohort_api):
    """Every scan starts `overlap` (5 minutes) before the resume point, so that a version
    committed late with an earlier `updated` is still seen. The versions the last scan saw
    there are not rebuilt again: after a bulk load, each 5-minute refresh in a worker rebuilt
    the whole last 5 minutes of it (4,850 records, 19 s at 20,000) until newer writes came."""
    api, cohort = cohort_api
    extract = api.services.analytics.extract
    db = api.services.repo.db
    late = ChildFacts(**{**cohort.facts[0].__dict__, "record": "e" * 8 + "-0000-4000-8000-" + "d" * 12})
    extract.refresh()  # up to date; the whole cohort was written within the overlap of its resume point
    try:
        settled = extract.refresh()
        assert (settled.full, settled.records_rebuilt) == (False, 0)
        assert settled.generation == extract.manifest()["generation"]  # nothing rewritten
        resume = datetime.fromisoformat(extract.manifest()["resume"])
        db.current.insert_many([_envelope(r, late.record, late.custodian, resume - timedelta(minutes=1))
                                for r in resources(late)])  # committed after the last scan, stamped before it
        db.records.insert_one({"_id": late.record, "custodian": late.custodian, "parents": []})
        caught = extract.refresh()
        assert (caught.full, caught.records_rebuilt) == (False, 1)
        assert caught.generation != settled.generation and _rows_of(extract, late.record)["plan_years"] >= 1
        again = extract.refresh()
        assert (again.records_rebuilt, again.generation) == (0, caught.generation)
    finally:
        db.current.delete_many({"record": late.record})
        db.records.delete_one({"_id": late.record})
        extract.refresh()
