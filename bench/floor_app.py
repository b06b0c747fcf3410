"""The least a FHIR server on this stack does for one audited, sealed identifier search.

`bench/floor.py` serves this beside EHCP Record on the same mongod, under the same gunicorn
settings (gthread, one socket per worker), to say how much of a request's cost is the stack
itself and how much is ours. Per request it does only what any server keeping the issue's
promises must do on this stack, with none of EHCP Record's rules:

- parse the HTTP request and route it (gunicorn, Flask, werkzeug);
- trust the bearer token from a per-process cache (EHCP Record verifies a token once too);
- find the Patient by its blind identifier token: one query on `current`, the server's sort;
- open its sealed content (pymongo's explicit encryption, remembered by ciphertext);
- seal the audit entry's private part under the record's data key (one `ClientEncryption`
  encrypt, as every audit entry is sealed), hash it, and insert it majority-acknowledged;
- answer a searchset Bundle as JSON.

No consent, no scopes, no chain tip, no redaction, no custody: a floor, not a server. Not
part of the product; never served outside this benchmark (127.0.0.1 only).

    gunicorn -c <config> 'bench.floor_app:create()'   (bench/floor.py starts it)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path

from flask import Flask, Response, request
from pymongo import ASCENDING, DESCENDING, MongoClient, WriteConcern

from ehcp_record.store.crypto import FieldCipher, local_master_keys
from ehcp_record.store.sealing import Sealing, key_name

NHS = "https://fhir.nhs.uk/Id/nhs-number"
SORT = [("updated", DESCENDING), ("_id", ASCENDING)]


def create() -> Flask:
    """The app, from `FLOOR_MONGO_URI` and `FLOOR_KEYS` (the master key directory)."""
    client = MongoClient(os.environ["FLOOR_MONGO_URI"])
    db = client.get_database("ehcp_record")
    cipher = FieldCipher(client, "ehcp_record", lambda: local_master_keys(Path(os.environ["FLOOR_KEYS"]), create=False))
    seal = Sealing(cipher)
    audit = db.get_collection("bench_floor_audit", write_concern=WriteConcern("majority"))
    trusted: set[str] = set()
    app = Flask(__name__)

    @app.get("/fhir/Patient")
    def search() -> Response:
        token = request.headers.get("Authorization", "")
        if token not in trusted:
            trusted.add(token)  # a floor: EHCP Record checks the signature here, once per token
        system, _, value = request.args.get("identifier", "").partition("|")
        blind = seal.token_values("idx.identifier", [f"{system}|{value}"])[0]
        found = list(db.current.find({"type": "Patient", "idx.identifier": blind}).sort(SORT).limit(20))
        resources = [seal.open(d["res"], d["_id"]) for d in found]
        for doc in found:
            private = {"reason": "", "source": {"ip": request.remote_addr, "agent": request.user_agent.string,
                                                "request": request.headers.get("X-Request-ID", "")}}
            body = {"at": time.time(), "action": "search", "outcome": "permit",
                    "resources": [{"ref": doc["_id"]}],
                    "sealed": base64.b64encode(bytes(cipher.seal(key_name(doc["record"]), private))).decode()}
            body["hash"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
            audit.insert_one({"record": doc["record"], "body": body})
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
                  "entry": [{"fullUrl": f"Patient/{r['id']}", "resource": r, "search": {"mode": "match"}} for r in resources]}
        return Response(json.dumps(bundle), mimetype="application/fhir+json")

    return app
