"""Transfer to an LA served by another deployment, over real HTTP between two apps.

Two deployments (each its own database, data dir, signing key and dev issuer) on the session's
mongod; each trusts the other. The receiver can be taken down and brought back on its port.
The full two-process run (gunicorn, embedded mongods) is tests/e2e/test_transfer_two_servers.py.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from datetime import date, timedelta
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from api import create_app
from ehcp_record.net.outbound import Fence
from ehcp_record.store.mongod import free_port
from ehcp_record.audit.signing import load_or_create_private_key, public_key_pem
from ehcp_record.transfer.remote import ack_values, delivery_session, encode_bundle, signed_headers
from tests.consent_support import grant, load_issued_example
from tests.support import Api

OLD_LA, NEW_LA = "Organization/la-866", "Organization/la-916"
TASK_INPUT = "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-task-input"


class Deployment:
    def __init__(self, root: Path, name: str, organization: str) -> None:
        self.data = root / name
        self.key = load_or_create_private_key(self.data / "keys" / "server-signing.pem")
        self.organization = organization
        self.port = free_port()
        self.server = None

    def trust_entry(self) -> dict:
        return {"organization": self.organization, "base_url": f"http://127.0.0.1:{self.port}/fhir",
                "public_key": public_key_pem(self.key)}

    def build(self, mongo, peer: "Deployment") -> None:
        app = create_app({"mongodb_uri": mongo.uri, "database": f"t_{uuid.uuid4().hex[:12]}", "data_dir": str(self.data),
                          "env": "test", "organization": self.organization, "trust_list": [peer.trust_entry()],
                          "outbound_allow": "127.0.0.1"})
        fence = Fence.from_settings(app.extensions["ehcp"].settings)
        app.extensions["ehcp"].transfers.session_factory = lambda: delivery_session(retries=1, backoff=0, fence=fence)
        self.api = Api(f"http://127.0.0.1:{self.port}", app.extensions["ehcp"].settings, app)

    @property
    def db(self):
        return self.api.services.repo.db

    def up(self) -> None:
        if self.server is None:
            self.server = make_server("127.0.0.1", self.port, self.api.app, threaded=True)
            threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def counts(self) -> dict[str, int]:
        return {name: self.db[name].count_documents({}) for name in ("current", "history", "audit", "records",
                                                                       "transfers_received", "media.files")}


@pytest.fixture(scope="module")
def deployments(mongo, tmp_path_factory):
    root = tmp_path_factory.mktemp("deployments")
    origin, destination = Deployment(root, "origin", OLD_LA), Deployment(root, "destination", NEW_LA)
    origin.build(mongo, destination)
    destination.build(mongo, origin)
    origin.up()
    destination.up()
    yield origin, destination
    for deployment in (origin, destination):
        deployment.down()
        deployment.api.services.repo.client.drop_database(deployment.api.settings.database)
        deployment.api.services.repo.close()


@pytest.fixture()
def receiver_down(deployments):
    _, destination = deployments
    destination.down()
    yield
    destination.up()


def _parameters(destination: str = NEW_LA) -> dict:
    return {"resourceType": "Parameters", "parameter": [
        {"name": "destination", "valueReference": {"reference": destination}},
        {"name": "moveDate", "valueDate": (date.today() + timedelta(days=30)).isoformat()},
        {"name": "notifiedDate", "valueDate": date.today().isoformat()}]}


def _transfer(origin: Deployment, child: str, destination: str = NEW_LA) -> requests.Response:
    return origin.api.post(f"/fhir/Patient/{child}/$transfer", _parameters(destination), origin.api.la())


def _outputs(task: dict) -> dict:
    return {o["type"]["coding"][0]["code"]: next(v for k, v in o.items() if k.startswith("value")) for o in task["output"]}


def _stored_bundle(origin: Deployment, task_id: str) -> bytes:
    """The newest bundle the origin built for this transfer, as it would send it."""
    store = origin.api.services.records.transfers
    key = max(store.sent(task_id).values(), key=lambda k: int(k.rsplit(".", 1)[1]))
    return origin.api.services.repo.outbound_transfer(key)


def _post_bundle(destination: Deployment, body: bytes, key, transfer_id: str) -> requests.Response:
    return requests.post(f"{destination.api.base}/fhir/$receive-transfer", data=body,
                         headers=signed_headers(body, key, transfer_id), timeout=60)


def test_delivered_on_acknowledgement_and_custody_leaves(deployments):
    origin, destination = deployments
    record = load_issued_example(origin.api)
    child, plan = record["Patient"][0]["id"], record["Composition"][0]["id"]
    response = _transfer(origin, child)
    assert response.status_code == 201, response.text
    task = response.json()
    assert task["status"] == "completed" and "not-carried" not in _outputs(task)
    ack = json.loads(_outputs(task)["acknowledgement"])
    assert ack["receiver"] == NEW_LA and ack["transfer"] == task["id"]

    # the origin: the old LA has lost the plan (no reads, no writes, no second transfer)
    old_la = origin.api.la()
    assert origin.api.get(f"/fhir/Composition/{plan}", old_la).status_code == 404
    assert _transfer(origin, child).status_code == 404

    # the destination: the new LA holds it, the family is told, the old LA is a stranger there
    new_la = destination.api.token("la", NEW_LA)
    assert destination.api.get(f"/fhir/Composition/{plan}", new_la).status_code == 200
    assert destination.api.get(f"/fhir/Composition/{plan}", destination.api.token("la", OLD_LA)).status_code == 404
    notice = destination.api.get(f"/fhir/Task?patient={child}&code=notice-to-family", new_la).json()
    assert notice["total"] == 1
    verdict = destination.api.get(f"/fhir/Patient/{child}/$verify-audit", new_la).json()
    assert {p["name"]: p for p in verdict["parameter"]}["valid"]["valueBoolean"] is True
    log = destination.api.get(f"/fhir/Patient/{child}/$access-log?_count=100", new_la).json()
    assert log["total"] > 0


def test_changes_made_while_the_receiver_is_down_travel(deployments, receiver_down):
    origin, destination = deployments
    record = load_issued_example(origin.api)
    child, mum = record["Patient"][0]["id"], record["RelatedPerson"][0]["id"]
    waiting = _transfer(origin, child)
    assert waiting.status_code == 201 and waiting.json()["status"] == "requested"
    assert "delivery pending" in waiting.json()["businessStatus"]["text"]
    consent = origin.api.post("/fhir/Consent", grant(child, f"RelatedPerson/{mum}", "Organization/school-1", ["A"]),
                              record["parent_token"]).json()

    destination.up()
    delivered = _transfer(origin, child)
    assert delivered.status_code == 201 and delivered.json()["status"] == "completed", delivered.text
    assert "not-carried" not in _outputs(delivered.json())
    shown = destination.api.get(f"/fhir/Consent/{consent['id']}", destination.api.token("la", NEW_LA))
    assert shown.status_code == 200 and shown.json() == consent


def test_a_lost_acknowledgement_is_recognised_and_what_stayed_behind_is_named(deployments, receiver_down):
    origin, destination = deployments
    record = load_issued_example(origin.api)
    child, mum = record["Patient"][0]["id"], record["RelatedPerson"][0]["id"]
    task = _transfer(origin, child).json()
    assert task["status"] == "requested"
    destination.up()
    # an attempt reached the receiver, but its answer never came back
    first = _stored_bundle(origin, task["id"])
    assert _post_bundle(destination, first, origin.key, task["id"]).status_code == 201
    # the family shares the plan at the origin after that bundle left
    consent = origin.api.post("/fhir/Consent", grant(child, f"RelatedPerson/{mum}", "Organization/school-1", ["A"]),
                              record["parent_token"]).json()

    done = _transfer(origin, child)
    assert done.status_code == 201, done.text
    task = done.json()
    assert task["status"] == "completed" and "did not travel" in task["businessStatus"]["text"]
    outputs = _outputs(task)
    assert json.loads(outputs["acknowledgement"])["bundleSha256"] == hashlib.sha256(first).hexdigest()
    assert outputs["not-carried"] == f"Consent/{consent['id']}/_history/1"
    assert destination.db.transfers_received.count_documents({"_id": task["id"]}) == 1
    assert destination.api.get(f"/fhir/Consent/{consent['id']}", destination.api.token("la", NEW_LA)).status_code == 404


def test_replay_answers_the_same_acknowledgement_and_another_bundle_under_that_id_is_refused(deployments):
    origin, destination = deployments
    record = load_issued_example(origin.api)
    task = _transfer(origin, record["Patient"][0]["id"]).json()
    body = _stored_bundle(origin, task["id"])
    before = destination.counts()

    replay = _post_bundle(destination, body, origin.key, task["id"])
    assert replay.status_code == 200
    assert ack_values(replay.json()) == json.loads(_outputs(task)["acknowledgement"])

    other = json.loads(body)
    other["timestamp"] = "2026-01-01T00:00:00Z"
    other_body = encode_bundle(other)
    refused = _post_bundle(destination, other_body, origin.key, task["id"])
    assert refused.status_code == 409
    held = refused.json()["contained"][0]
    assert ack_values(held)["bundleSha256"] == hashlib.sha256(body).hexdigest()

    stranger = load_or_create_private_key(destination.data.parent / "stranger.pem")
    assert _post_bundle(destination, other_body, stranger, task["id"]).status_code == 403
    assert destination.counts() == before


def test_nothing_is_stored_unless_every_check_passes(deployments, receiver_down):
    origin, destination = deployments
    record = load_issued_example(origin.api)
    child = record["Patient"][0]["id"]
    task = _transfer(origin, child).json()
    body = _stored_bundle(origin, task["id"])
    destination.up()
    before = destination.counts()

    def altered(change) -> bytes:
        bundle = json.loads(body)
        for entry in bundle["entry"]:
            change(entry.get("resource") or {})
        return encode_bundle(bundle)

    def edit_need(resource: dict) -> None:
        if resource.get("resourceType") == "Condition":
            resource["note"] = [{"text": "added on the way"}]

    def transfer_task(field: str, value: str):
        def change(resource: dict) -> None:
            if resource.get("resourceType") == "Task" and resource.get("id") == task["id"]:
                resource[field] = {"reference": value}
        return change

    # signed by the sender, but a version is not the one its audit chain recorded
    tampered = _post_bundle(destination, altered(edit_need), origin.key, task["id"])
    assert tampered.status_code == 422 and "integrity" in tampered.json()["issue"][0]["diagnostics"], tampered.text
    # a plan the sending LA does not hold; an LA this deployment does not serve
    assert _post_bundle(destination, altered(transfer_task("requester", "Organization/la-855")), origin.key,
                        task["id"]).status_code == 403
    assert _post_bundle(destination, altered(transfer_task("owner", "Organization/la-855")), origin.key,
                        task["id"]).status_code == 422
    # one byte changed after signing; no signature at all
    flipped = bytearray(body)
    flipped[len(body) // 2] ^= 0x01
    signed_for_original = signed_headers(body, origin.key, task["id"])
    assert requests.post(f"{destination.api.base}/fhir/$receive-transfer", data=bytes(flipped),
                         headers=signed_for_original, timeout=60).status_code == 403
    assert requests.post(f"{destination.api.base}/fhir/$receive-transfer", data=body, timeout=30).status_code == 403
    assert destination.counts() == before

    # the genuine bundle still goes through afterwards
    assert _transfer(origin, child).json()["status"] == "completed"


def test_a_waiting_transfer_is_not_accepted_locally_nor_redirected(deployments, receiver_down):
    origin, _ = deployments
    record = load_issued_example(origin.api)
    child = record["Patient"][0]["id"]
    task = _transfer(origin, child).json()
    inputs = {i["type"]["coding"][0]["code"]: i for i in task["input"]}
    assert inputs["deployment"]["valueUrl"].endswith("/fhir")
    accepted = origin.api.post(f"/fhir/Task/{task['id']}/$accept", None, origin.api.token("la", NEW_LA))
    assert accepted.status_code == 409 and "another deployment" in accepted.json()["issue"][0]["diagnostics"]
    other = _transfer(origin, child, "Organization/la-855")
    assert other.status_code == 409 and "waiting" in other.json()["issue"][0]["diagnostics"]
    assert origin.api.get(f"/fhir/Composition/{record['Composition'][0]['id']}", origin.api.la()).status_code == 200


def test_a_received_record_once_erased_still_verifies(deployments):
    """The destination sealed the sender's versions again under its own key, so the chain
    names other bytes for them than it stores; once the key is destroyed they cannot be opened,
    and the verifier finds their recorded sha256 in the chain instead of calling them altered
    (while a version written after the transfer is still checked by its bytes)."""
    origin, destination = deployments
    record = load_issued_example(origin.api)
    child = record["Patient"][0]["id"]
    assert _transfer(origin, child).status_code == 201
    new_la = destination.api.token("la", NEW_LA)
    erased = destination.api.post(f"/fhir/Patient/{child}/$erase",
                                  {"resourceType": "Parameters",
                                   "parameter": [{"name": "reason", "valueString": "retention schedule reached"}]}, new_la)
    assert erased.status_code == 200, erased.text
    verdict = {p["name"]: p for p in destination.api.get(f"/fhir/Patient/{child}/$verify-audit", new_la).json()["parameter"]}
    assert verdict["valid"]["valueBoolean"] is True, verdict
    assert {p["name"] for p in verdict["erased"]["part"]} >= {"at", "reason"}
