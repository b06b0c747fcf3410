"""The audit trail: tamper-evident, never forked, readable by the family, verifiable by anyone."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from pymongo import MongoClient

from tests.support import LA, need


def _verdict(api, child_id: str, token: str | None = None) -> dict:
    body = api.get(f"/fhir/Patient/{child_id}/$verify-audit", token or api.la()).json()
    return {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in body["parameter"]}


@pytest.fixture()
def busy_record(api):
    child = api.new_child()
    token = api.la()
    for n in range(6):
        assert api.post("/fhir/Condition", need(child["id"], note=[{"text": f"need {n}"}]), token).status_code == 201
    api.get(f"/fhir/Condition?patient={child['id']}", token)
    return child


def _db(api):
    return MongoClient(api.settings.mongodb_uri)[api.settings.database]


def test_untampered_chain_verifies(api, busy_record):
    verdict = _verdict(api, busy_record["id"])
    assert verdict["valid"] is True and verdict["entries"] >= 8


def test_edited_entry_is_found(api, busy_record):
    db = _db(api)
    db.audit.update_one({"record": busy_record["id"], "seq": 3}, {"$set": {"body.reason": "nothing to see"}})
    verdict = _verdict(api, busy_record["id"])
    assert verdict["valid"] is False and verdict["firstInvalid"] == 3


def test_deleted_entry_is_found(api, busy_record):
    _db(api).audit.delete_one({"record": busy_record["id"], "seq": 4})
    verdict = _verdict(api, busy_record["id"])
    assert verdict["valid"] is False and verdict["firstInvalid"] == 4


def test_reordered_entries_are_found(api, busy_record):
    db = _db(api)
    a = db.audit.find_one({"record": busy_record["id"], "seq": 3})
    b = db.audit.find_one({"record": busy_record["id"], "seq": 4})
    db.audit.update_one({"_id": a["_id"]}, {"$set": {"seq": -1}})
    db.audit.update_one({"_id": b["_id"]}, {"$set": {"seq": 3}})
    db.audit.update_one({"_id": a["_id"]}, {"$set": {"seq": 4}})
    verdict = _verdict(api, busy_record["id"])
    assert verdict["valid"] is False and verdict["firstInvalid"] == 3


def test_inserted_entry_is_found(api, busy_record):
    db = _db(api)
    forged = db.audit.find_one({"record": busy_record["id"], "seq": 2}, {"_id": 0})
    db.audit.update_many({"record": busy_record["id"], "seq": {"$gte": 3}}, {"$inc": {"seq": 1000}})
    forged["seq"] = 3
    forged["body"]["reason"] = "forged"
    db.audit.insert_one(forged)
    verdict = _verdict(api, busy_record["id"])
    assert verdict["valid"] is False and verdict["firstInvalid"] == 3


def test_history_version_missing_from_chain_is_found(api, busy_record):
    db = _db(api)
    row = db.history.find_one({"record": busy_record["id"], "type": "Condition"})
    db.history.update_one({"_id": row["_id"]}, {"$set": {"res.note": [{"text": "rewritten"}], "hash": "f" * 64}})
    verdict = _verdict(api, busy_record["id"])
    assert verdict["valid"] is False and "Condition/" in verdict["reason"]


def test_fifty_concurrent_writers_make_one_unbroken_chain(api):
    child = api.new_child()
    token = api.la()

    def write(n: int) -> int:
        body = need(child["id"], note=[{"text": str(n)}])
        return api.post("/fhir/Condition", body, token).status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(write, range(50)))
    assert statuses == [201] * 50
    seqs = sorted(d["seq"] for d in _db(api).audit.find({"record": child["id"]}, {"seq": 1}))
    assert seqs == list(range(1, len(seqs) + 1))
    verdict = _verdict(api, child["id"])
    assert verdict["valid"] is True and verdict["entries"] >= 51, verdict


def test_family_sees_who_looked(api):
    from tests.e2e.plan_builders import parent

    child = api.new_child()
    mum = api.post("/fhir/RelatedPerson", parent(child["id"], "Alex"), api.la()).json()
    api.get(f"/fhir/Patient/{child['id']}", api.token("la", LA, fhir_user="Practitioner/officer-7"))
    token = api.token("parent", None, fhir_user=f"RelatedPerson/{mum['id']}")
    log = api.get(f"/fhir/Patient/{child['id']}/$access-log", token).json()
    readers = [a.get("who", {}).get("reference") for e in log["entry"] for a in e["resource"]["agent"]]
    assert "Practitioner/officer-7" in readers
    filtered = api.get(f"/fhir/AuditEvent?patient={child['id']}&agent=Practitioner/officer-7", token).json()
    assert filtered["total"] == 1
    school = api.token("school", "Organization/school-1")
    assert api.get(f"/fhir/Patient/{child['id']}/$access-log", school).status_code == 404


def test_cli_audit_verify_exit_codes(api, busy_record, tmp_path):
    env = {"EHCP_MONGODB_URI": api.settings.mongodb_uri, "EHCP_DATABASE": api.settings.database,
           "EHCP_DATA_DIR": str(api.settings.data_dir), "PATH": ""}
    command = [sys.executable, "-m", "api.cli", "audit", "verify", "--record", busy_record["id"]]
    ok = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok" in ok.stdout
    _db(api).audit.update_one({"record": busy_record["id"], "seq": 2}, {"$set": {"body.outcome": "deny"}})
    bad = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "INVALID at entry 2" in bad.stdout
