"""`ehcp-record keys rotate` (docs/encryption.md): every data key is re-wrapped under a new
master key while the server takes reads and writes; no request fails and nothing is lost."""

from __future__ import annotations

import threading
import time

import pytest

from ehcp_record.store.crypto import FieldCipher
from ehcp_record.store.repository import Repository
from ehcp_record.wiring import master_keys, rotate_master_key
from tests.conftest import start_server
from tests.support import need


@pytest.fixture(scope="module")
def server(mongo, tmp_path_factory):
    client, http = start_server(mongo, tmp_path_factory.mktemp("rotation"))  # its own key files
    yield client
    http.shutdown()
    client.session.close()
    client.services.repo.client.drop_database(client.services.settings.database)
    client.services.repo.close()


def _traffic(api, child: str, stop: threading.Event, failures: list, written: list) -> None:
    """Writes, reads and new records (each a new data key) until told to stop."""
    token = api.la()
    while not stop.is_set():
        created = api.post("/fhir/Condition", need(child, note=[{"text": f"need {len(written)}"}]), token)
        if created.status_code != 201:
            failures.append(("create", created.status_code, created.text[:200]))
            continue
        written.append((created.json()["id"], created.json()["note"][0]["text"]))
        read = api.get(f"/fhir/Condition/{created.json()['id']}", token)
        if read.status_code != 200:
            failures.append(("read", read.status_code, read.text[:200]))
        found = api.get(f"/fhir/Condition?patient={child}&_count=5", token)
        if found.status_code != 200:
            failures.append(("search", found.status_code, found.text[:200]))
        if len(written) % 5 == 0:
            try:
                written.append((api.new_child()["id"], None))
            except AssertionError as error:
                failures.append(("new record", str(error)[:200]))


def test_rotation_under_load_fails_no_request_and_loses_nothing(server):
    api, settings = server, server.services.settings
    children = [api.new_child()["id"] for _ in range(3)]
    old = {d["masterKey"]["provider"] for d in api.services.repo.cipher.vault.find()}
    # a process started before the rotation, which has opened nothing yet
    stale = FieldCipher(api.services.repo.client, settings.database, master_keys(settings))
    stop, failures, written = threading.Event(), [], []
    workers = [threading.Thread(target=_traffic, args=(api, child, stop, failures, written)) for child in children]
    for worker in workers:
        worker.start()
    time.sleep(1.0)
    lines = rotate_master_key(settings)
    time.sleep(1.0)  # traffic goes on under the new master key
    deadline = time.monotonic() + 20  # and, on a loaded machine, until it has written enough to tell
    while len(written) <= 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for worker in workers:
        worker.join(timeout=30)
    assert not failures, failures[:3]
    assert len(written) > 20 and any(text is None for _, text in written), lines  # new records meanwhile too
    vault = api.services.repo.cipher.vault
    new = {d["masterKey"]["provider"] for d in vault.find()}
    assert len(new) == 1 and not (new & old), (old, new, lines)
    assert [f.name for f in settings.master_key_dir.glob("*.key")] == [sorted(new)[0].replace("local:k", "local-") + ".key"]
    sealed = api.services.repo.db.current.find_one({"_id": f"Patient/{children[0]}"})["res"]
    assert stale.open(sealed)["id"] == children[0]  # it finds the new master key file by itself
    after = api.new_child()["id"]  # the running server wraps a new record's key under the new master key
    assert vault.find_one({"keyAltNames": after})["masterKey"]["provider"] in new
    # a fresh process, holding only the new key file, opens everything that was written
    fresh = Repository.connect(settings.mongodb_uri, settings.database, master_keys=master_keys(settings))
    try:
        for resource_id, text in written:
            version = fresh.read("Condition" if text else "Patient", resource_id)
            assert version is not None and (text is None or version.resource["note"][0]["text"] == text)
    finally:
        fresh.close()
