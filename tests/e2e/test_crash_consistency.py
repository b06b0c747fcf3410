"""A server killed (SIGKILL) in the middle of writes leaves no half version behind.

Each version, its history row and its audit entry commit in one transaction: after the kill,
every current version has exactly versions 1..n in history, and every history version is in
the record's audit chain, which still verifies.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid

import requests
from pymongo import MongoClient

from api.auth import issue_dev_token
from ehcp_record.audit.verify import trusted_keys, verify_record
from ehcp_record.store.repository import Repository
from ehcp_record.config import load_settings
from tests.e2e import server_process
from tests.support import LA


def test_kill_during_writes_leaves_whole_versions_only(mongo, tmp_path):
    database = f"crash_{uuid.uuid4().hex[:8]}"
    server = server_process.start(tmp_path, {"EHCP_MONGODB_URI": mongo.uri, "EHCP_DATABASE": database})
    token = issue_dev_token(load_settings({"data_dir": str(tmp_path)}), "la", organization=LA)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    children = [requests.post(server.base + "/fhir/Patient", json={"resourceType": "Patient", "birthDate": "2015-01-01"},
                              headers=headers, timeout=10).json() for _ in range(4)]
    stop = threading.Event()
    written = []

    def writer(child: dict) -> None:
        version = 1
        session = requests.Session()
        while not stop.is_set():
            body = dict(child, name=[{"family": f"V{version}"}])
            try:
                response = session.put(f"{server.base}/fhir/Patient/{child['id']}", json=body,
                                       headers={**headers, "If-Match": f'W/"{version}"'}, timeout=5)
            except requests.RequestException:
                return
            if response.status_code == 200:
                version += 1
                written.append(version)

    threads = [threading.Thread(target=writer, args=(c,)) for c in children]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    server.stop(signal.SIGKILL)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert written, "no write happened before the kill"

    settings = load_settings({"data_dir": str(tmp_path), "mongodb_uri": mongo.uri, "database": database})
    repo = Repository.connect(mongo.uri, database)
    db = MongoClient(mongo.uri)[database]
    for child in children:
        current = db.current.find_one({"_id": f"Patient/{child['id']}"})
        vids = sorted(d["vid"] for d in db.history.find({"type": "Patient", "rid": child["id"]}))
        assert vids == list(range(1, current["vid"] + 1))
        verdict = verify_record(repo, child["id"], trusted_keys(settings))
        assert verdict.valid, verdict.reason
        assert verdict.entries >= current["vid"]
