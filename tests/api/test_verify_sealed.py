"""Verifying a sealed record by its stored bytes (docs/encryption.md, "Verifying sealed versions").

Each write's audit entry names, beside the content sha256, the SHA-256 of the ciphertext stored
as the version's `res`; the verifier hashes the bytes it reads instead of opening them. These
tests tamper with the sealed bytes the ways an attacker could (bytes edited, a ciphertext moved
from another version, other content sealed under the record's own key, a stored `$document`
re-sealed), and check that `$verify-audit` and `ehcp-record audit verify` name the resource and
version; that entries written before entries named stored bytes, and a database written clear,
still verify the old way (opened and re-hashed); and that an erased record, whose key is gone,
is still checked byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from bson.binary import Binary
from pymongo import MongoClient

from ehcp_record.fhir.parameters import parameters
from tests.support import need


def _db(api):
    return MongoClient(api.settings.mongodb_uri)[api.settings.database]


def _verdict(api, child: str) -> dict:
    body = api.get(f"/fhir/Patient/{child}/$verify-audit", api.la()).json()
    return {p["name"]: next((v for k, v in p.items() if k.startswith("value")), None) for p in body["parameter"]}


def _reason(api, child: str) -> str:
    """How the verifier checked each version (the API gives the reason only for a fault)."""
    from ehcp_record.audit.verify import trusted_keys, verify_record

    verdict = verify_record(api.services.repo, child, trusted_keys(api.settings))
    assert verdict.valid, verdict
    return verdict.reason


def _cli(api, record: str) -> subprocess.CompletedProcess:
    env = {"EHCP_DATABASE": api.settings.database, "EHCP_DATA_DIR": str(api.settings.data_dir), "PATH": "",
           "EHCP_MONGODB_URI": api.settings.mongodb_uri}
    return subprocess.run([sys.executable, "-m", "api.cli", "audit", "verify", "--record", record], env=env,
                          capture_output=True, text=True, timeout=120)


def _record(api) -> dict:
    """A child with two needs, each written twice (versions 1 and 2)."""
    child, token = api.new_child(), api.la()
    needs = []
    for n in range(2):
        created = api.post("/fhir/Condition", need(child["id"], note=[{"text": f"need {n}"}]), token)
        assert created.status_code == 201, created.text
        resource = dict(created.json(), note=[{"text": f"need {n}, revised"}])
        updated = api.put(f"/fhir/Condition/{resource['id']}", resource, token, **{"If-Match": 'W/"1"'})
        assert updated.status_code == 200, updated.text
        needs.append(resource["id"])
    return {"child": child["id"], "needs": needs}


@pytest.fixture()
def record(api) -> dict:
    return _record(api)


def _flip(value: Binary, at: int = -40) -> Binary:
    """The ciphertext with one byte changed (in the AES-CBC part, before the HMAC tag)."""
    data = bytearray(value)
    data[at] ^= 0x01
    return Binary(bytes(data), value.subtype)


def _set_res(api, collection: str, key: str, value: Binary) -> None:
    assert _db(api)[collection].update_one({"_id": key}, {"$set": {"res": value}}).modified_count == 1


#: record -> the start of the fault the CLI must print for it (test_the_cli_reports_every_fault)
_FOUND: dict[str, str] = {}


def _expect_fault(api, child: str, resource: str, starts: str) -> dict:
    verdict = _verdict(api, child)
    assert verdict["valid"] is False and verdict["firstInvalid"] == 0, verdict
    assert verdict["resource"] == resource and verdict["differs"] == "content", verdict
    assert verdict["reason"].startswith(starts), verdict["reason"]
    _FOUND[child] = starts
    return verdict


def test_a_sealed_record_verifies_by_its_stored_bytes(api, record):
    db, condition = _db(api), record["needs"][0]
    current = db.current.find_one({"_id": f"Condition/{condition}"})
    history = db.history.find_one({"_id": f"Condition/{condition}/2"})
    assert current["res"].subtype == 6 and current["res"] == history["res"]  # sealed once, one value in both
    [write] = [e for e in db.audit.find({"record": record["child"], "body.action": "update"})
               if e["body"]["resources"][0]["ref"] == f"Condition/{condition}/_history/2"]
    named = write["body"]["resources"][0]
    assert named["sha256"] == current["hash"]
    assert named["stored"] == hashlib.sha256(current["res"]).hexdigest()
    verdict = _verdict(api, record["child"])
    assert verdict["valid"] is True, verdict
    versions = db.history.count_documents({"record": record["child"]})
    assert f"{versions} by their sealed bytes as stored, 0 re-hashed" in _reason(api, record["child"])
    assert _cli(api, record["child"]).returncode == 0


def test_edited_ciphertext_of_a_current_document(api, record):
    key = f"Condition/{record['needs'][0]}"
    _set_res(api, "current", key, _flip(_db(api).current.find_one({"_id": key})["res"]))
    verdict = _expect_fault(api, record["child"], f"{key}/_history/2", f"the current document of {key} (version 2)")
    assert "cannot be opened" in verdict["reason"]


def test_edited_ciphertext_of_a_history_document(api, record):
    key = f"Condition/{record['needs'][0]}"
    _set_res(api, "history", f"{key}/1", _flip(_db(api).history.find_one({"_id": f"{key}/1"})["res"]))
    verdict = _expect_fault(api, record["child"], f"{key}/_history/1", f"history version {key}/_history/1 was altered")
    assert "the audit chain records" in verdict["reason"]


def test_current_and_history_ciphertext_edited_alike(api, record):
    key = f"Condition/{record['needs'][1]}"
    edited = _flip(_db(api).current.find_one({"_id": key})["res"], at=-60)
    _set_res(api, "current", key, edited)
    _set_res(api, "history", f"{key}/2", edited)
    _expect_fault(api, record["child"], f"{key}/_history/2", f"history version {key}/_history/2 was altered")


def test_a_ciphertext_moved_from_another_version(api, record):
    """Version 1's own valid ciphertext put in place of version 2 (current and history): it
    opens, under the right key, to content the chain never recorded for version 2."""
    db, key = _db(api), f"Condition/{record['needs'][0]}"
    older = db.history.find_one({"_id": f"{key}/1"})["res"]
    _set_res(api, "current", key, older)
    _set_res(api, "history", f"{key}/2", older)
    verdict = _expect_fault(api, record["child"], f"{key}/_history/2", f"history version {key}/_history/2 was altered")
    assert "its stored content hashes to" in verdict["reason"]
    assert "need 0, revised" not in api.get(f"/fhir/{key}", api.la()).text  # what a reader would now be served


def test_a_ciphertext_moved_from_another_record(api, record):
    other = _record(api)
    db, key = _db(api), f"Condition/{record['needs'][1]}"
    foreign = db.history.find_one({"_id": f"Condition/{other['needs'][1]}/2"})["res"]
    _set_res(api, "history", f"{key}/2", foreign)
    _expect_fault(api, record["child"], f"{key}/_history/2", f"history version {key}/_history/2 was altered")
    assert _verdict(api, other["child"])["valid"] is True


def test_other_content_sealed_with_the_records_own_key(api, record):
    """The strongest tamperer: holds the record's data key (the store's own crypto), seals other
    content and writes it to current and history, leaving the recorded `hash` alone."""
    from ehcp_record.store.sealing import key_name

    repo, db, key = api.services.repo, _db(api), f"Condition/{record['needs'][0]}"
    res = repo.seal.open(db.history.find_one({"_id": f"{key}/2"})["res"], key)
    res["note"] = [{"text": "no needs"}]
    sealed = repo.cipher.seal(key_name(record["child"]), res)
    _set_res(api, "current", key, sealed)
    _set_res(api, "history", f"{key}/2", sealed)
    assert "no needs" in api.get(f"/fhir/{key}", api.la()).text
    _expect_fault(api, record["child"], f"{key}/_history/2", f"history version {key}/_history/2 was altered")


def test_an_edited_sealed_stored_document(api, record):
    """A stored `$document` (sealed under the record's key), opened and re-sealed with other content."""
    repo, db = api.services.repo, _db(api)
    condition = record["needs"][0]
    key = f"Condition/{condition}/2"
    content = repo.seal.open(db.history.find_one({"_id": key})["res"], key)
    document = {"resourceType": "Bundle", "type": "document", "entry": [{"resource": content}]}
    repo.store_document(key, record["child"], json.dumps(document).encode(), "")
    assert db.documents.find_one({"_id": key})["data"].subtype == 6
    assert _verdict(api, record["child"])["valid"] is True
    document["entry"][0]["resource"]["note"] = [{"text": "no needs"}]
    db.documents.update_one({"_id": key}, {"$set": {"data": repo.seal.bytes_in(record["child"], json.dumps(document).encode())}})
    verdict = _verdict(api, record["child"])
    assert verdict["valid"] is False and verdict["resource"] == f"$document of Condition/{condition}/_history/2", verdict
    assert "does not match that version" in verdict["reason"]
    _FOUND[record["child"]] = f"the stored $document of Condition/{condition}/_history/2"


def test_entries_written_before_stored_bytes_were_named_still_verify(api, monkeypatch):
    """A record written by the previous build (its entries name content sha256s only) is
    checked as then: every version opened and re-hashed; an edit is still found."""
    from ehcp_record.store.repository import Repository

    monkeypatch.setattr(Repository, "naming_stored", staticmethod(lambda audits, writes, docs: audits))
    old = _record(api)
    monkeypatch.undo()
    db = _db(api)
    assert not any(r.get("stored") for e in db.audit.find({"record": old["child"]}) for r in e["body"].get("resources", []))
    verdict = _verdict(api, old["child"])
    versions = db.history.count_documents({"record": old["child"]})
    assert verdict["valid"] is True, verdict
    assert f"0 by their sealed bytes as stored, {versions} re-hashed" in _reason(api, old["child"])
    key = f"Condition/{old['needs'][0]}"
    _set_res(api, "history", f"{key}/1", db.history.find_one({"_id": f"{key}/2"})["res"])
    _expect_fault(api, old["child"], f"{key}/_history/1", f"history version {key}/_history/1 was altered")


def test_an_erased_record_is_checked_by_its_stored_bytes(api, record):
    child = record["child"]
    erased = api.post(f"/fhir/Patient/{child}/$erase", parameters(reason=("string", "retention schedule reached")),
                      api.la())
    assert erased.status_code == 200, erased.text
    db = _db(api)
    verdict = _verdict(api, child)
    versions = db.history.count_documents({"record": child})
    assert verdict["valid"] is True, verdict
    assert f"{versions} by their sealed bytes as stored, 0 re-hashed" in _reason(api, child)
    key = f"Condition/{record['needs'][1]}"
    _set_res(api, "history", f"{key}/1", _flip(db.history.find_one({"_id": f"{key}/1"})["res"]))
    verdict = _expect_fault(api, child, f"{key}/_history/1", f"history version {key}/_history/1 was altered")
    assert "the record was erased" in verdict["reason"]


def test_versions_read_in_a_process_of_their_own_find_what_this_one_finds(api, record, monkeypatch):
    """A long sealed record's versions are read and digested by a child process of their own
    (store/versions_apart.py), forced here for a short record: the child answers (no quiet
    fall-back), an edited history `res` is reported exactly as when this process reads the
    versions, and a child that fails costs speed, not the answer."""
    from ehcp_record.store import versions_apart

    started, start = [], versions_apart.start
    monkeypatch.setattr(versions_apart, "APART_FROM", 1)
    monkeypatch.setattr(versions_apart, "start", lambda *args: started.append(start(*args)) or started[-1])
    child, key = record["child"], f"Condition/{record['needs'][0]}"
    assert _verdict(api, child)["valid"] is True
    versions = _db(api).history.count_documents({"record": child})
    assert len(started) == 1 and started[0].failed is None and len(started[0]._read["history"]) == versions
    _set_res(api, "history", f"{key}/1", _flip(_db(api).history.find_one({"_id": f"{key}/1"})["res"]))
    apart = _expect_fault(api, child, f"{key}/_history/1", f"history version {key}/_history/1 was altered")
    assert len(started) == 2 and started[1].failed is None
    monkeypatch.setattr(versions_apart, "APART_FROM", 10 ** 9)  # the same check, read in this process
    here = _verdict(api, child)
    assert len(started) == 2
    assert {k: v for k, v in apart.items() if not k.startswith("head") and k != "entries"} == \
        {k: v for k, v in here.items() if not k.startswith("head") and k != "entries"}
    monkeypatch.setattr(versions_apart, "APART_FROM", 1)
    monkeypatch.setattr(versions_apart, "__name__", "ehcp_record.store.no_such_module")  # the child cannot start
    failed = _verdict(api, child)
    assert len(started) == 3 and started[2].failed and "exited 1" in started[2].failed
    assert {k: v for k, v in failed.items() if not k.startswith("head") and k != "entries"} == \
        {k: v for k, v in here.items() if not k.startswith("head") and k != "entries"}


def test_the_chain_shared_with_the_version_process_is_checked_as_if_read_here(api, record, monkeypatch):
    """A long chain's last part is hashed by the process that reads the versions
    (`versions_apart.chain_share`), forced here from entry 3 on: the child hashes the rest, an
    entry edited in that part or in the first is reported at the same entry as when this
    process reads the whole chain (or when the child cannot start), and a chain read whole once
    is read here again (its memo holds it) instead of being shared out."""
    from ehcp_record.store import verify_reader, versions_apart

    started, start = [], versions_apart.start
    monkeypatch.setattr(versions_apart, "APART_FROM", 1)
    monkeypatch.setattr(versions_apart, "chain_share", lambda entries: 2)
    monkeypatch.setattr(versions_apart, "start", lambda *args: started.append(start(*args)) or started[-1])
    child, db = record["child"], _db(api)

    def check() -> dict:
        verify_reader.forget()
        return _verdict(api, child)

    assert check()["valid"] is True
    entries = db.audit.count_documents({"record": child}) - 1  # the check itself was audited after it
    assert started[-1].failed is None
    assert sum(len(results) for _, results in started[-1]._read["chain"]) == entries - 2
    _verdict(api, child)  # the whole chain is in this process's memo now: read here, not shared
    assert started[-1]._read["chain"] == []
    for seq in (entries - 1, 1):  # the child's part, then this process's
        original = db.audit.find_one({"record": child, "seq": seq})
        db.audit.update_one({"_id": original["_id"]}, {"$set": {"body.outcome": "nothing to see"}})
        shared = check()
        assert started[-1]._read["chain"] and shared["valid"] is False and shared["firstInvalid"] == seq, shared
        assert shared["reason"] == f"entry {seq} was altered (its hash does not match its content)"
        monkeypatch.setattr(versions_apart, "APART_FROM", 10 ** 9)  # the same check, the chain read here
        here = check()
        monkeypatch.setattr(versions_apart, "APART_FROM", 1)
        assert {k: v for k, v in shared.items() if k != "entries"} == {k: v for k, v in here.items() if k != "entries"}
        if seq == 1:  # a child that cannot start: the rest of the chain is read here, the same answer
            name = versions_apart.__name__
            monkeypatch.setattr(versions_apart, "__name__", "ehcp_record.store.no_such_module")
            failed = check()
            monkeypatch.setattr(versions_apart, "__name__", name)
            assert started[-1].failed and "exited 1" in started[-1].failed
            assert {k: v for k, v in failed.items() if k != "entries"} == {k: v for k, v in here.items() if k != "entries"}
        db.audit.replace_one({"_id": original["_id"]}, original)


def test_a_clear_database_verifies_by_re_hashing(mongo):
    """No cipher (the benchmark's clear baseline): content is stored clear and re-hashed."""
    from datetime import datetime, timezone

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ehcp_record.audit import entries
    from ehcp_record.audit.chain import content_hash
    from ehcp_record.audit.signing import key_id
    from ehcp_record.audit.verify import verify_record
    from ehcp_record.store.repository import Repository
    from ehcp_record.store.versions import AuditAppend, VersionWrite

    signing = Ed25519PrivateKey.generate()
    repo = Repository(MongoClient(mongo.uri), "t_clear_verify", signing)
    keys = {key_id(signing.public_key()): signing.public_key()}
    try:
        at = datetime(2025, 3, 1, tzinfo=timezone.utc)
        for vid in (1, 2):
            resource = {"resourceType": "Condition", "id": "n1", "meta": {"versionId": str(vid)}, "note": [{"text": f"v{vid}"}]}
            write = VersionWrite("Condition", "n1", vid, at, resource, "child-1", "B", {}, content_hash(resource),
                                 None if vid == 1 else 1)
            body = entries.body(None, "update", "permit", at, "", [(f"Condition/n1/_history/{vid}", write.hash)])
            repo.commit([write], [AuditAppend("child-1", body)])
        assert isinstance(repo.history.find_one({"_id": "Condition/n1/1"})["res"], dict)
        verdict = verify_record(repo, "child-1", keys)
        assert verdict.valid and "0 by their sealed bytes as stored, 2 re-hashed" in verdict.reason, verdict
        repo.history.update_one({"_id": "Condition/n1/1"}, {"$set": {"res.note": [{"text": "edited"}]}})
        verdict = verify_record(repo, "child-1", keys)
        assert not verdict.valid and verdict.resource == "Condition/n1/_history/1", verdict
        assert verdict.reason.startswith("history version Condition/n1/_history/1 was altered")
    finally:
        repo.client.drop_database("t_clear_verify")
        repo.close()


def test_the_cli_reports_every_fault(api):
    """`ehcp-record audit verify` (a fresh process: nothing remembered) over the whole database
    names, for every record tampered with above, the same first fault; exit 1."""
    if not _FOUND:
        pytest.skip("run with the tampering tests above")
    env = {"EHCP_DATABASE": api.settings.database, "EHCP_DATA_DIR": str(api.settings.data_dir), "PATH": "",
           "EHCP_MONGODB_URI": api.settings.mongodb_uri}
    bad = subprocess.run([sys.executable, "-m", "api.cli", "audit", "verify"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    lines = {line.split(":", 1)[0]: line for line in bad.stdout.splitlines()}
    for child, starts in _FOUND.items():
        assert f"INVALID at entry 0: {starts}" in lines[child], (child, lines.get(child))
