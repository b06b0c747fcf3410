"""A server killed (SIGKILL) in the middle of writes leaves no half version behind.

Each version, its history row and its audit entry commit in one transaction: after the kill,
every current version has exactly versions 1..n in history, and every history version is in
the record's audit chain, which still verifies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import requests
from pymongo import MongoClient

from api.auth import issue_dev_token
from ehcp_record.audit.verify import trusted_keys, verify_record
from ehcp_record.store.mongod import uri_for
from ehcp_record.store.crypto import FieldCipher
from ehcp_record.store.repository import Repository
from ehcp_record.wiring import master_keys
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
    repo = Repository.connect(mongo.uri, database, master_keys=master_keys(settings))  # opens sealed content
    db = MongoClient(mongo.uri)[database]
    for child in children:
        current = db.current.find_one({"_id": f"Patient/{child['id']}"})
        vids = sorted(d["vid"] for d in db.history.find({"type": "Patient", "rid": child["id"]}))
        assert vids == list(range(1, current["vid"] + 1))
        verdict = verify_record(repo, child["id"], trusted_keys(settings))
        assert verdict.valid, verdict.reason
        assert verdict.entries >= current["vid"]


# --- the API SIGKILLed three times on its own embedded mongod, restarted in the same data dir ---

KILLS = 3


class _Writers:
    """Two threads creating Patients, two updating their own Patient (If-Match); every
    acknowledged create (201) and update (200) is kept: id, or (id, version, family name)."""

    def __init__(self, base: str, token: str, updated: list[dict]) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
        self.created: list[str] = []
        self.updates: list[tuple[str, int, str]] = []
        self.statuses: dict[int, int] = {}
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._create, args=(n,), daemon=True) for n in range(2)]
        self.threads += [threading.Thread(target=self._update, args=(child,), daemon=True) for child in updated]

    def start(self) -> "_Writers":
        for thread in self.threads:
            thread.start()
        return self

    def join(self) -> None:
        for thread in self.threads:
            thread.join(20)
        assert not any(t.is_alive() for t in self.threads), "a writer is stuck"

    def _count(self, status: int) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def _create(self, writer: int) -> None:
        session, n = requests.Session(), 0
        while True:
            n += 1
            body = {"resourceType": "Patient", "birthDate": "2015-01-01", "name": [{"family": f"C{writer}-{n}"}]}
            try:
                response = session.post(self.base + "/fhir/Patient", json=body, headers=self.headers, timeout=15)
            except requests.RequestException:
                return  # the server is gone: this request was never acknowledged
            self._count(response.status_code)
            if response.status_code == 201:
                with self.lock:
                    self.created.append(response.json()["id"])

    def _update(self, child: dict) -> None:
        session = requests.Session()
        version = int(child["meta"]["versionId"])
        while True:
            family = f"U{uuid.uuid4().hex[:8]}"
            body = dict(child, name=[{"family": family}])
            body.pop("meta", None)
            try:
                response = session.put(f"{self.base}/fhir/Patient/{child['id']}", json=body,
                                       headers={**self.headers, "If-Match": f'W/"{version}"'}, timeout=15)
            except requests.RequestException:
                return
            self._count(response.status_code)
            if response.status_code == 200:
                version = int(response.json()["meta"]["versionId"])
                with self.lock:
                    self.updates.append((child["id"], version, family))


def test_api_sigkilled_three_times_mid_write_loses_no_acknowledged_write(tmp_path, capsys):
    """`ehcp-record serve` with its own embedded mongod; three times: writers going, every API
    process SIGKILLed (gunicorn's master and workers; mongod is left behind), a restart in the
    same data dir (the launcher takes the left mongod over). Then every acknowledged create and
    update is there, versions are whole (1..n in history), and `ehcp-record audit verify` exits 0."""
    env = {"EHCP_MONGODB_URI": ""}
    token = issue_dev_token(load_settings({"data_dir": str(tmp_path)}), "la", organization=LA)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    server = server_process.start(tmp_path, env)
    created, updates, statuses, restarts = [], [], {}, []
    try:
        updated = [requests.post(server.base + "/fhir/Patient", json={"resourceType": "Patient",
                                                                      "birthDate": "2015-01-01"},
                                 headers=headers, timeout=10).json() for _ in range(2)]
        for _ in range(KILLS):
            # resume each updater at the version the store holds now (an unacknowledged write may have landed)
            updated = [requests.get(f"{server.base}/fhir/Patient/{c['id']}", headers=headers, timeout=10).json()
                       for c in updated]
            writers = _Writers(server.base, token, updated).start()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(writers.created) + len(writers.updates) < 150:
                time.sleep(0.1)
            killed = server.kill_api_only()
            assert killed >= 2, killed  # the master and at least one worker
            writers.join()
            assert writers.created and writers.updates, "no write acknowledged before the kill"
            created += writers.created
            updates += writers.updates
            for status, count in writers.statuses.items():
                statuses[status] = statuses.get(status, 0) + count
            started = time.monotonic()
            server = server_process.start(tmp_path, env)
            restarts.append(time.monotonic() - started)

        assert set(statuses) <= {200, 201}, statuses
        # every acknowledged create reads back through the restarted API ...
        missing = []
        for start in range(0, len(created), 100):
            chunk = created[start:start + 100]
            response = requests.get(f"{server.base}/fhir/Patient?_id={','.join(chunk)}&_count=100",
                                    headers=headers, timeout=30)
            assert response.status_code == 200, response.text[:300]
            found = {e["resource"]["id"] for e in response.json().get("entry", [])}
            missing += [i for i in chunk if i not in found]
        # ... and every acknowledged update is its version in history, with the content sent
        uri = uri_for(tmp_path)
        with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
            settings = load_settings({"data_dir": str(tmp_path)})
            db = client[settings.database]
            cipher = FieldCipher(client, settings.database, master_keys(settings))  # content is sealed at rest
            for rid, vid, family in updates:
                row = db.history.find_one({"_id": f"Patient/{rid}/{vid}"}, {"res": 1})
                if row is None or cipher.open(row["res"])["name"][0]["family"] != family:
                    missing.append(f"Patient/{rid}/_history/{vid}")
            for child in updated:
                current = db.current.find_one({"_id": f"Patient/{child['id']}"}, {"vid": 1})
                vids = sorted(d["vid"] for d in db.history.find({"type": "Patient", "rid": child["id"]}, {"vid": 1}))
                assert vids == list(range(1, current["vid"] + 1))
        acknowledged = len(created) + len(updates)
        assert not missing, f"{len(missing)} of {acknowledged} acknowledged writes lost: {missing[:5]}"
    finally:
        server.stop()

    verify = subprocess.run([sys.executable, "-m", "api.cli", "audit", "verify"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "EHCP_DATA_DIR": str(tmp_path), "EHCP_ENV": "test",
                                              "EHCP_MONGODB_URI": ""})
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
    with capsys.disabled():
        print(f"\n[sigkill-api] {KILLS} SIGKILLs: writes acknowledged {acknowledged} ({len(created)} creates, "
              f"{len(updates)} updates), lost 0; restarts took {', '.join(f'{s:.1f}s' for s in restarts)}; "
              f"audit verify exit 0 ({verify.stdout.strip().splitlines()[-1] if verify.stdout.strip() else ''})")
