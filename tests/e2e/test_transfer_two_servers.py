"""A child's record moves between two deployments (two servers, two embedded mongods).

The receiver is down when the transfer starts; when it comes back, one more attempt delivers
exactly once. The record arrives identical (every version, the issued document byte for byte,
the audit chain verifying across the hop), the family reads it at the new deployment, the old
LA can no longer write at the origin, a replay creates nothing and a tampered copy is refused.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import requests
from pymongo import MongoClient

from ehcp_record.config import load_settings
from ehcp_record.store.crypto import FieldCipher, local_master_keys
from ehcp_record.store.mongod import free_port, uri_for
from ehcp_record.store.repository import Repository
from ehcp_record.transfer.remote import ack_values, signed_headers
from ehcp_record.store.transfers import TransferStore
from ehcp_record.audit.signing import load_or_create_private_key, public_key_pem
from tests.consent_support import grant, load_issued_example
from tests.e2e import server_process
from tests.support import Api

OLD_LA, NEW_LA = "Organization/la-866", "Organization/la-916"


def _deployment(root: Path, name: str) -> tuple[Path, str, int]:
    data = root / name
    (data / "keys").mkdir(parents=True)
    key = load_or_create_private_key(data / "keys" / "server-signing.pem")
    return data, public_key_pem(key), free_port()


def _env(organization: str, peer_org: str, peer_port: int, peer_pem: str) -> dict[str, str]:
    trust = [{"organization": peer_org, "base_url": f"http://127.0.0.1:{peer_port}/fhir", "public_key": peer_pem}]
    return {"EHCP_ORGANIZATION": organization, "EHCP_TRUST_LIST": json.dumps(trust)}


def _client(data: Path, port: int) -> Api:
    return Api(f"http://127.0.0.1:{port}", load_settings({"data_dir": str(data)}), None)


def test_record_moves_between_deployments(tmp_path):
    a_dir, a_pem, a_port = _deployment(tmp_path, "origin")
    b_dir, b_pem, b_port = _deployment(tmp_path, "destination")
    origin = server_process.start(a_dir, _env(OLD_LA, NEW_LA, b_port, b_pem), port=a_port)
    destination = None
    try:
        a = _client(a_dir, a_port)
        record = load_issued_example(a)
        child = record["Patient"][0]["id"]
        plan = record["Composition"][0]["id"]
        mum = record["RelatedPerson"][0]["id"]
        parameters = {"resourceType": "Parameters", "parameter": [
            {"name": "destination", "valueReference": {"reference": NEW_LA}},
            {"name": "moveDate", "valueDate": (date.today() + timedelta(days=30)).isoformat()},
            {"name": "notifiedDate", "valueDate": date.today().isoformat()}]}

        # the receiver is down: the transfer waits, custody stays
        waiting = a.post(f"/fhir/Patient/{child}/$transfer", parameters, a.la())
        assert waiting.status_code == 201, waiting.text
        assert waiting.json()["status"] == "requested"
        assert "delivery pending" in waiting.json()["businessStatus"]["text"]
        assert a.get(f"/fhir/Composition/{plan}", a.la()).status_code == 200

        # the family shares the plan with the school meanwhile: that travels too
        parent_a = a.token("parent", None, fhir_user=f"RelatedPerson/{mum}")
        consent = a.post("/fhir/Consent", grant(child, f"RelatedPerson/{mum}", "Organization/school-1", ["A", "B"]), parent_a)
        assert consent.status_code == 201, consent.text

        # the receiver comes back: the next attempt delivers, once
        destination = server_process.start(b_dir, _env(NEW_LA, OLD_LA, a_port, a_pem), port=b_port)
        delivered = a.post(f"/fhir/Patient/{child}/$transfer", parameters, a.la())
        assert delivered.status_code == 201, delivered.text
        assert delivered.json()["status"] == "completed", delivered.json().get("businessStatus")

        b = _client(b_dir, b_port)
        parent_b = b.token("parent", None, fhir_user=f"RelatedPerson/{mum}")
        carried = [r for t in ("Patient", "Composition", "Condition", "Goal", "CarePlan", "DocumentReference")
                   for r in record[t]] + [consent.json()]
        for item in carried:
            path = f"/fhir/{item['resourceType']}/{item['id']}/_history"
            history_a, history_b = a.get(path, parent_a).json(), b.get(path, parent_b).json()
            assert [e["resource"] for e in history_a["entry"]] == [e["resource"] for e in history_b["entry"]]
        document_a = a.get(f"/fhir/Composition/{plan}/$document", parent_a).content
        document_b = b.get(f"/fhir/Composition/{plan}/$document", parent_b).content
        assert document_a == document_b
        verdict = b.get(f"/fhir/Patient/{child}/$verify-audit", parent_b).json()
        assert {p["name"]: p for p in verdict["parameter"]}["valid"]["valueBoolean"] is True
        assert b.get(f"/fhir/Composition/{plan}", b.token("la", NEW_LA)).status_code == 200
        notices = b.get(f"/fhir/Task?patient={child}&code=notice-to-family", parent_b).json()
        assert notices["total"] == 1

        # the old LA can no longer write (or read) at the origin
        patient = a.get(f"/fhir/Patient/{child}", parent_a).json()
        refused = a.put(f"/fhir/Patient/{child}", patient, a.la(), **{"If-Match": f'W/"{patient["meta"]["versionId"]}"'})
        assert refused.status_code == 404

        # a replayed delivery creates nothing; a tampered copy is refused and stores nothing
        b_db = MongoClient(uri_for(b_dir),
                           directConnection=True)["ehcp_record"]
        a_db = MongoClient(uri_for(a_dir),
                           directConnection=True)["ehcp_record"]
        task_id = delivered.json()["id"]

        cipher = FieldCipher(a_db.client, "ehcp_record", lambda: local_master_keys(a_dir / "keys" / "master" / "ehcp_record"))
        origin_repo = Repository(a_db.client, "ehcp_record", load_or_create_private_key(a_dir / "keys" / "server-signing.pem"),
                                 cipher=cipher)  # the kept bundles are sealed under the record's key
        sent = TransferStore(origin_repo).sent(task_id)
        assert len(sent) == 2  # the consent given while the receiver was down made a new bundle
        acknowledgement = json.loads(delivered.json()["output"][1]["valueString"])
        received = acknowledgement["bundleSha256"]
        body = origin_repo.outbound_transfer(sent[received])
        headers = signed_headers(body, origin_repo.signing_key, task_id)
        counts = {name: b_db[name].count_documents({}) for name in ("current", "history", "audit")}
        replay = requests.post(f"{b.base}/fhir/$receive-transfer", data=body, headers=headers, timeout=60)
        assert replay.status_code == 200 and ack_values(replay.json()) == acknowledgement  # the same signed answer
        tampered = bytearray(body)
        index = body.index(b'"birthDate"') + 15
        tampered[index] = ord("9") if tampered[index] != ord("9") else ord("8")
        refused = requests.post(f"{b.base}/fhir/$receive-transfer", data=bytes(tampered), headers=headers, timeout=60)
        assert refused.status_code == 403
        assert {name: b_db[name].count_documents({}) for name in ("current", "history", "audit")} == counts
        assert b_db.transfers_received.count_documents({}) == 1
    finally:
        origin.stop()
        if destination is not None:
            destination.stop()
