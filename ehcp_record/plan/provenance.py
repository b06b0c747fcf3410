"""Signed Provenance for each issued plan version: who issued it, on whose response, from what.

The signature is Ed25519 over the canonical JSON of the Provenance without its `signature`
element (FHIR R4 Signature, `sigFormat` application/jose is not used: the raw Ed25519 signature
is carried base64-encoded in `data`, the key id in `who.identifier`).
"""

from __future__ import annotations

import base64
import copy
import uuid
from datetime import datetime
from typing import Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ehcp_record.audit import chain as audit_chain

from ehcp_record.audit import signing
from ehcp_record.access.caller import Caller
from ehcp_record.fhir.canonical import naming_system
from ehcp_record.fhir.dates import instant
from ehcp_record.store.versions import Version
from ehcp_record.workflow.task_values import task_output

_AGENT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
_SIGNATURE_TYPE = "urn:iso-astm:E1762-95:2013"
KEY_ID_SYSTEM = naming_system("signing-key")


def signed_provenance(key: Ed25519PrivateKey, writes: Iterable, caller: Caller, task: Version, now: datetime) -> dict:
    targets = [{"reference": f"{w.write.type}/{w.write.id}/_history/{w.write.vid}"} for w in writes]
    responder = task_output(task.resource, "responder")
    provenance = {
        "resourceType": "Provenance", "id": str(uuid.uuid4()), "target": targets, "recorded": instant(now),
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "UPDATE"}],
                     "text": "plan issued after the family's response"},
        "agent": [
            {"type": _agent_type("author"), "who": _who(caller)},
            {"type": _agent_type("informant"), "who": {"reference": responder} if responder else {"display": "family"}},
        ],
        "entity": [{"role": "source", "what": {"reference": f"Task/{task.id}/_history/{task.vid}"}}],
    }
    focus = (task.resource.get("focus") or {}).get("reference")
    if focus:
        provenance["entity"].append({"role": "source", "what": {"reference": focus}})
    provenance["signature"] = [_signature(key, provenance, caller, now)]
    return provenance


def verify_provenance(public_key: Ed25519PublicKey, provenance: dict) -> bool:
    signatures = provenance.get("signature") or []
    if not signatures:
        return False
    unsigned = {k: v for k, v in copy.deepcopy(provenance).items() if k not in ("signature", "meta", "id")}
    return signing.verify(public_key, audit_chain.canonical_json(unsigned),
                          base64.urlsafe_b64encode(base64.b64decode(signatures[0].get("data", ""))).decode().rstrip("="))


def _signature(key: Ed25519PrivateKey, provenance: dict, caller: Caller, now: datetime) -> dict:
    unsigned = {k: v for k, v in provenance.items() if k not in ("signature", "meta", "id")}
    signature_b64url = signing.sign(key, audit_chain.canonical_json(unsigned))
    raw = base64.urlsafe_b64decode(signature_b64url + "=" * (-len(signature_b64url) % 4))
    return {
        "type": [{"system": _SIGNATURE_TYPE, "code": "1.2.840.10065.1.12.1.1", "display": "Author's Signature"}],
        "when": instant(now),
        "who": {"identifier": {"system": KEY_ID_SYSTEM, "value": signing.key_id(key.public_key())},
                "display": "EHCP Record server signing key"},
        "onBehalfOf": _who(caller),
        "targetFormat": "application/fhir+json",
        "data": base64.b64encode(raw).decode(),
    }


def _agent_type(code: str) -> dict:
    return {"coding": [{"system": _AGENT_TYPE, "code": code}]}


def _who(caller: Caller) -> dict:
    reference = caller.actor.fhir_user or caller.actor.organization
    return {"reference": reference} if reference and "/" in reference else {"display": caller.actor.sub}
