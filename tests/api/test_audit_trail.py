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


def _edit_res(api, collection: str, key: str, change) -> dict:
    """Edit a stored resource as someone holding the record's data key would (the strongest
    tamperer: content is sealed at rest, docs/encryption.md): open it, change it, seal it again."""
    from ehcp_record.store.sealing import key_name

    repo, db = api.services.repo, _db(api)
    doc = db[collection].find_one({"_id": key})
    res = repo.seal.open(doc["res"], key)
    change(res)
    assert db[collection].update_one({"_id": key}, {"$set": {"res": repo.cipher.seal(key_name(doc["record"]), res)}}
                                     ).modified_count == 1
    return res


def _schedule(text: str):
    def change(res: dict) -> None:
        res["activity"][0]["detail"]["scheduledString"] = text
    return change


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
    _edit_res(api, "history", row["_id"], lambda res: res.__setitem__("note", [{"text": "rewritten"}]))
    db.history.update_one({"_id": row["_id"]}, {"$set": {"hash": "f" * 64}})
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


def test_the_access_log_names_organisations_and_people_the_reader_may_see(api):
    """A family reads "Local authority 866", not "Organization/la-866"; an LA missing from the
    directory still has its DfE name; a person is named only to whoever may read them."""
    from tests.e2e.plan_builders import parent

    child = api.new_child()
    mum = api.post("/fhir/RelatedPerson", parent(child["id"], "Alex"), api.la()).json()
    mum_ref = f"RelatedPerson/{mum['id']}"
    token = api.token("parent", None, fhir_user=mum_ref)
    api.get(f"/fhir/Patient/{child['id']}", token)
    api.get(f"/fhir/Patient/{child['id']}", api.token("la", "Organization/la-916"))  # refused: not its record
    log = api.get(f"/fhir/Patient/{child['id']}/$access-log", token).json()
    shown = {a["who"]["reference"]: a["who"].get("display") for e in log["entry"] for a in e["resource"]["agent"]
             if "reference" in a.get("who", {})}
    assert shown["Organization/la-866"] == "Local authority 866"  # the directory's name
    assert shown["Organization/la-916"] == "Gloucestershire"      # not in the directory: the DfE name
    assert shown[mum_ref] == " ".join([*mum["name"][0]["given"], mum["name"][0]["family"]])
    # the LA may read the parent; an auditor sees the trail but not the person, so no name
    auditor = api.get(f"/fhir/Patient/{child['id']}/$access-log", api.token("auditor", None)).json()
    people = [a["who"] for e in auditor["entry"] for a in e["resource"]["agent"] if a.get("who", {}).get("reference") == mum_ref]
    assert people and all(who.get("display") != shown[mum_ref] for who in people)


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


def test_audit_search_pages_like_every_search(api, busy_record):
    """self, next and previous links as any searchset has them; no next link at _count=0."""
    token = api.la()
    first = api.get(f"/fhir/AuditEvent?patient={busy_record['id']}&_count=2", token).json()
    links = {l["relation"]: l["url"] for l in first["link"]}
    assert first["total"] > 4 and len(first["entry"]) == 2 and set(links) == {"self", "next"}
    second = api.session.get(links["next"], headers=api.headers(token)).json()
    assert {l["relation"] for l in second["link"]} == {"self", "next", "previous"}
    counted = api.get(f"/fhir/AuditEvent?patient={busy_record['id']}&_count=0", token).json()
    assert [l["relation"] for l in counted["link"]] == ["self"]


# --- tampering with the plan itself, and with the tail of the chain --------------------------



@pytest.fixture()
def issued_record(api):
    """A child with an issued plan (its signed $document stored) and a school's read."""
    from tests.e2e.plan_builders import draft_plan_bundle, ids_by_type, parent
    from tests.e2e.test_statutory_process import proposal_from_current, respond

    child = api.new_child()
    mum = api.post("/fhir/RelatedPerson", parent(child["id"], "Alex"), api.la()).json()
    plan = api.post("/fhir", draft_plan_bundle(child["id"]), api.la())
    assert plan.status_code == 200, plan.text
    ids = ids_by_type(plan.json())
    mum_token = api.token("parent", None, fhir_user=f"RelatedPerson/{mum['id']}")
    task = api.post(f"/fhir/Composition/{ids['Composition']}/$propose",
                    proposal_from_current(api, ids, lambda r: None), api.la()).json()
    assert respond(api, task["id"], mum_token, "agree").status_code == 200
    issued = api.post(f"/fhir/Task/{task['id']}/$issue", None, api.la())
    assert issued.status_code == 200, issued.text
    assert api.get(f"/fhir/CarePlan/{ids['CarePlan']}", api.la()).status_code == 200
    return {"child": child["id"], "ids": ids, "mum": mum_token, "plan_vid": int(issued.json()["meta"]["versionId"])}


def _all(api, child_id: str, token: str | None = None) -> dict:
    body = api.get(f"/fhir/Patient/{child_id}/$verify-audit", token or api.la()).json()
    return {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in body["parameter"]}


def _cli(api, record: str | None = None, data_dir=None) -> subprocess.CompletedProcess:
    env = {"EHCP_DATABASE": api.settings.database, "EHCP_DATA_DIR": str(data_dir or api.settings.data_dir), "PATH": ""}
    if data_dir is None:
        env["EHCP_MONGODB_URI"] = api.settings.mongodb_uri
    command = [sys.executable, "-m", "api.cli", "audit", "verify"] + (["--record", record] if record else [])
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def _edit_provision(api, collection: str, care_plan: str, vid: int | None = None) -> None:
    _edit_res(api, collection, f"CarePlan/{care_plan}" + (f"/{vid}" if vid else ""), _schedule("1 hour per week"))


def test_issued_record_verifies_and_hands_back_a_signed_head(api, issued_record):
    verdict = _all(api, issued_record["child"])
    assert verdict["valid"] is True, verdict
    assert verdict["headSeq"] >= 1 and verdict["head"] and verdict["headKid"]
    log = api.get(f"/fhir/Patient/{issued_record['child']}/$access-log", issued_record["mum"]).json()
    [link] = [link for link in log["link"] if link["relation"] == "signed-head"]
    assert "$verify-audit?head=" in link["url"]
    assert _cli(api, issued_record["child"]).returncode == 0


def test_edited_current_document_is_found(api, issued_record):
    care_plan = issued_record["ids"]["CarePlan"]
    _edit_provision(api, "current", care_plan)
    assert "1 hour per week" in api.get(f"/fhir/CarePlan/{care_plan}", api.la()).text  # what a reader is served
    verdict = _all(api, issued_record["child"])
    assert verdict["valid"] is False and verdict["firstInvalid"] == 0
    assert verdict["resource"].startswith(f"CarePlan/{care_plan}/_history/") and verdict["differs"] == "content"
    assert verdict["reason"].startswith(f"the current document of CarePlan/{care_plan}")
    bad = _cli(api, issued_record["child"])
    assert bad.returncode == 1 and f"the current document of CarePlan/{care_plan}" in bad.stdout, bad.stdout + bad.stderr


def test_edited_history_document_is_found(api, issued_record):
    care_plan = issued_record["ids"]["CarePlan"]
    db = _db(api)
    vid = db.current.find_one({"_id": f"CarePlan/{care_plan}"})["vid"]
    _edit_provision(api, "history", care_plan, vid)
    verdict = _all(api, issued_record["child"])
    assert verdict["valid"] is False and verdict["resource"] == f"CarePlan/{care_plan}/_history/{vid}"
    assert verdict["reason"].startswith(f"history version CarePlan/{care_plan}/_history/{vid} was altered")
    bad = _cli(api, issued_record["child"])
    assert bad.returncode == 1 and f"history version CarePlan/{care_plan}/_history/{vid} was altered" in bad.stdout


def test_edited_current_and_history_documents_are_found(api, issued_record):
    """Both edited alike (stored hash left): read and vread agree, and still it is found."""
    care_plan = issued_record["ids"]["CarePlan"]
    db = _db(api)
    vid = db.current.find_one({"_id": f"CarePlan/{care_plan}"})["vid"]
    _edit_provision(api, "current", care_plan)
    _edit_provision(api, "history", care_plan, vid)
    assert "1 hour per week" in api.get(f"/fhir/CarePlan/{care_plan}/_history/{vid}", api.la()).text
    verdict = _all(api, issued_record["child"])
    assert verdict["valid"] is False and verdict["resource"] == f"CarePlan/{care_plan}/_history/{vid}"
    assert "was altered" in verdict["reason"]
    assert _cli(api, issued_record["child"]).returncode == 1


def test_edited_hash_and_content_together_is_found_by_the_chain(api, issued_record):
    """Recomputing the stored hash too does not help: the chain names the original."""
    from ehcp_record.audit.chain import content_hash

    care_plan = issued_record["ids"]["CarePlan"]
    db = _db(api)
    for collection, key in (("current", f"CarePlan/{care_plan}"),):
        res = _edit_res(api, collection, key, _schedule("1 hour per week"))
        db[collection].update_one({"_id": key}, {"$set": {"hash": content_hash(res)}})
        vid = db[collection].find_one({"_id": key})["vid"]
        _edit_res(api, "history", f"{key}/{vid}", _schedule("1 hour per week"))
        db.history.update_one({"_id": f"{key}/{vid}"}, {"$set": {"hash": content_hash(res)}})
    verdict = _all(api, issued_record["child"])
    # the signed $document of the issued plan still holds the original provision
    assert verdict["valid"] is False and f"holds CarePlan/{care_plan} content that is no stored version" in verdict["reason"]
    _db(api).documents.delete_many({"record": issued_record["child"]})
    verdict = _all(api, issued_record["child"])
    assert verdict["valid"] is False and f"CarePlan/{care_plan}/_history/{vid}" in verdict["reason"]
    assert "not recorded in the audit chain" in verdict["reason"]


def test_edited_stored_document_is_found(api, issued_record):
    db = _db(api)
    plan, vid = issued_record["ids"]["Composition"], issued_record["plan_vid"]
    key = f"Composition/{plan}/{vid}"
    stored = db.documents.find_one({"_id": key})
    assert stored is not None
    import json

    seal = api.services.repo.seal  # stored documents are sealed: edit as the key holder would
    document = json.loads(seal.bytes_out(stored["data"], key))
    document["entry"][0]["resource"]["title"] = "A different plan"
    db.documents.update_one({"_id": key}, {"$set": {"data": seal.bytes_in(stored["record"], json.dumps(document).encode())}})
    verdict = _all(api, issued_record["child"])
    assert verdict["valid"] is False and verdict["resource"] == f"$document of Composition/{plan}/_history/{vid}"
    assert "does not match that version" in verdict["reason"]
    bad = _cli(api, issued_record["child"])
    assert bad.returncode == 1 and f"$document of Composition/{plan}/_history/{vid}" in bad.stdout


def test_deleted_newest_entry_is_found_and_its_seq_never_reused(api, issued_record):
    child = issued_record["child"]
    school = api.token("school", "Organization/school-1")
    api.get(f"/fhir/Patient/{child}", api.la())
    db = _db(api)
    newest = db.audit.find_one({"record": child}, sort=[("seq", -1)])
    db.audit.delete_one({"_id": newest["_id"]})
    verdict = _all(api, child)
    assert verdict["valid"] is False and verdict["firstInvalid"] == newest["seq"], verdict
    assert f"entries {newest['seq']} to {newest['seq']} are missing" in verdict["reason"]
    api.get(f"/fhir/Patient/{child}", school)  # the next entry does not take the freed seq
    assert db.audit.find_one({"record": child, "seq": newest["seq"]}) is None
    assert _all(api, child)["valid"] is False
    bad = _cli(api, child)
    assert bad.returncode == 1 and f"INVALID at entry {newest['seq']}" in bad.stdout


def test_deleted_tail_after_a_head_the_family_kept_is_found(api, issued_record, tmp_path):
    child = issued_record["child"]
    kept = _all(api, child, issued_record["mum"])
    token, seq = kept["head"], kept["headSeq"]
    for _ in range(3):
        api.get(f"/fhir/Patient/{child}", api.la())
    extends = {p["name"]: p for p in api.get(f"/fhir/Patient/{child}/$verify-audit?head={token}",
                                               issued_record["mum"]).json()["parameter"]}
    assert extends["valid"]["valueBoolean"] is True and extends["extendsHead"]["valueBoolean"] is True

    # cut the whole tail from just before the kept head; the database alone now looks like a
    # shorter chain, and with the anchor files gone too only the family's copy can tell
    db = _db(api)
    db.audit.delete_many({"record": child, "seq": {"$gt": seq - 3}})
    anchor = api.settings.data_dir / "anchor" / api.settings.database
    for path in anchor.glob(f"{child}.*"):
        path.unlink()
    verdict = {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in api.get(
        f"/fhir/Patient/{child}/$verify-audit?head={token}", issued_record["mum"]).json()["parameter"]}
    assert verdict["valid"] is False and verdict["firstInvalid"] == seq - 2, verdict
    assert verdict["reason"] == (f"entries {seq - 2} to {seq} are missing from the end of the chain "
                                 f"(the signed head you kept records entry {seq}): deleted")
    assert verdict["extendsHead"] is False


def test_deleted_tail_after_an_anchored_checkpoint_is_found(api, issued_record):
    """The anchor log outside the database holds the signed checkpoint (even with the
    high-water mark gone)."""
    child = issued_record["child"]
    seq = _all(api, child)["headSeq"]
    (api.settings.data_dir / "anchor" / api.settings.database / f"{child}.seq").unlink()
    _db(api).audit.delete_many({"record": child, "seq": {"$gt": seq - 2}})
    verdict = _all(api, child)
    assert verdict["valid"] is False and verdict["firstInvalid"] == seq - 1, verdict
    assert "the signed checkpoint in the anchor log" in verdict["reason"]
    bad = _cli(api, child)  # ($verify-audit itself appended an entry meanwhile)
    assert bad.returncode == 1 and "the signed checkpoint in the anchor log" in bad.stdout


def test_a_forged_head_is_refused(api, issued_record):
    child = issued_record["child"]
    response = api.get(f"/fhir/Patient/{child}/$verify-audit?head=bm90LWEtaGVhZA", issued_record["mum"])
    assert response.status_code == 400


def test_cli_unknown_record_and_no_database(api, tmp_path):
    unknown = _cli(api, "no-such-record")
    assert unknown.returncode == 2 and "no-such-record" in unknown.stdout
    env = {"EHCP_MONGODB_URI": "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300", "EHCP_DATABASE": "x",
           "EHCP_DATA_DIR": str(tmp_path), "PATH": ""}
    down = subprocess.run([sys.executable, "-m", "api.cli", "audit", "verify"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert down.returncode == 2 and down.stdout.startswith("could not check"), down.stdout + down.stderr
    assert "Traceback" not in down.stdout + down.stderr


def test_cli_runs_beside_a_running_server(api, mongo, busy_record, tmp_path):
    """The data dir of a running server (its mongod's pid, port and credentials, its keys and anchor): the
    CLI connects to that mongod instead of starting another on the same files."""
    import shutil

    beside = tmp_path / "var"
    beside.mkdir()
    for name in ("mongod.pid", "mongod.port", "mongod.credentials"):
        shutil.copy(mongo.data_dir / name, beside / name)
    (beside / "keys").symlink_to(api.settings.data_dir / "keys")
    (beside / "anchor").symlink_to(api.settings.data_dir / "anchor")
    ok = _cli(api, busy_record["id"], data_dir=beside)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().endswith("ok") and len(ok.stdout.strip().splitlines()) == 1


@pytest.fixture()
def in_worker_processes(monkeypatch):
    """Every record counts as long: the store hashes versions and entries in its process pool
    (ehcp_record.store.verify_reader), in batches of 7 documents."""
    from ehcp_record.store import verify_reader

    monkeypatch.setattr(verify_reader, "PARALLEL_FROM", 1)
    monkeypatch.setattr(verify_reader, "BATCH", 7)
    verify_reader.forget()  # nothing remembered: every document is hashed again
    assert verify_reader._shared_pool() is not None  # this machine can run the pool
    yield verify_reader
    verify_reader.forget()


def test_the_worker_pool_finds_what_one_process_finds(api, issued_record, in_worker_processes, monkeypatch):
    child, care_plan = issued_record["child"], issued_record["ids"]["CarePlan"]
    pooled = _all(api, child)
    assert pooled["valid"] is True and pooled["entries"] > 7, pooled
    assert in_worker_processes._pool._processes  # it was hashed in worker processes
    db = _db(api)
    vid = db.current.find_one({"_id": f"CarePlan/{care_plan}"})["vid"]
    _edit_provision(api, "history", care_plan, vid)
    newest = db.audit.find_one({"record": child}, sort=[("seq", -1)])
    db.audit.update_one({"_id": newest["_id"]}, {"$set": {"body.reason": "edited"}})
    pooled = _all(api, child)
    monkeypatch.setattr(in_worker_processes, "PARALLEL_FROM", 10 ** 9)  # the same check in this process
    in_worker_processes.forget()
    alone = _all(api, child)
    assert pooled["valid"] is False and pooled["resource"] == f"CarePlan/{care_plan}/_history/{vid}"
    assert {k: v for k, v in pooled.items() if not k.startswith("head") and k != "entries"} == \
        {k: v for k, v in alone.items() if not k.startswith("head") and k != "entries"}
    db.history.delete_many({"record": child})  # now only the chain is at fault: the edited entry
    db.current.delete_many({"record": child})
    db.documents.delete_many({"record": child})
    monkeypatch.setattr(in_worker_processes, "PARALLEL_FROM", 1)
    in_worker_processes.forget()
    pooled = _all(api, child)
    assert pooled["valid"] is False and pooled["firstInvalid"] == newest["seq"], pooled
    assert pooled["reason"] == f"entry {newest['seq']} was altered (its hash does not match its content)"


def test_a_killed_worker_costs_speed_not_the_answer(api, issued_record, in_worker_processes):
    import os
    import signal
    import time

    child = issued_record["child"]
    assert _all(api, child)["valid"] is True
    killed = in_worker_processes._pool
    for pid in list(killed._processes):
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    in_worker_processes.forget()
    verdict = _all(api, child)  # the batches are hashed in the server's own process instead
    assert verdict["valid"] is True, verdict
    in_worker_processes.forget()
    assert _all(api, child)["valid"] is True  # and a fresh pool serves the next check
    assert in_worker_processes._pool is not None and in_worker_processes._pool is not killed


def test_a_document_edited_after_a_check_is_found_by_the_next(api, issued_record):
    """The store remembers what hashing each stored document's exact bytes gave (in memory):
    a document edited since is other bytes, and is decoded and hashed again."""
    child, care_plan = issued_record["child"], issued_record["ids"]["CarePlan"]
    assert _all(api, child)["valid"] is True
    assert _all(api, child)["valid"] is True  # the second check reuses what the first worked out
    db = _db(api)
    vid = db.current.find_one({"_id": f"CarePlan/{care_plan}"})["vid"]
    original = db.history.find_one({"_id": f"CarePlan/{care_plan}/{vid}"})["res"]
    _edit_provision(api, "history", care_plan, vid)
    verdict = _all(api, child)
    assert verdict["valid"] is False and verdict["resource"] == f"CarePlan/{care_plan}/_history/{vid}", verdict
    db.history.update_one({"_id": f"CarePlan/{care_plan}/{vid}"}, {"$set": {"res": original}})
    assert _all(api, child)["valid"] is True  # put back byte for byte: valid again
    oldest = db.audit.find_one({"record": child, "seq": 2})
    db.audit.update_one({"_id": oldest["_id"]}, {"$set": {"body.reason": oldest["body"]["reason"] + "!"}})
    verdict = _all(api, child)
    assert verdict["valid"] is False and verdict["firstInvalid"] == 2, verdict
    assert verdict["reason"] == "entry 2 was altered (its hash does not match its content)"


def test_an_empty_head_is_refused_not_ignored(api, issued_record):
    response = api.get(f"/fhir/Patient/{issued_record['child']}/$verify-audit?head=", issued_record["mum"])
    assert response.status_code == 400
    assert response.json()["issue"][0]["diagnostics"].startswith("head is empty")
