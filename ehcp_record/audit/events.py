"""Render a stored audit-chain entry as a FHIR R4 AuditEvent shaped like IHE BALP.

The chain entry is the record of truth; the AuditEvent is a view of it, built on every read
(`GET /fhir/AuditEvent`, `$access-log`), never stored. The shape follows IHE Basic Audit Log
Patterns (https://profiles.ihe.net/ITI/BALP/), profiles Read / Create / Update / Query and their
Patient* variants:

- type `rest` (audit-event-type) with subtype from restful-interaction; searches use DICOM
  110112 "Query" as the type, as the IHE ATNA query audits do (BALP 1.1 itself uses `rest`
  there; the subtype `search-type` says the same thing either way);
- three agents as BALP slices them: the user from the access token (requestor, IRCP for reads,
  AUT for writes, `policy` = the Consents that allowed it), the client (DICOM 110152/110153
  depending on the direction of data, with its IP address as network type 2), the server;
  plus the user's organisation (v3 RESP), which R4 AuditEvent.agent has no other place for;
- entities: the record's Patient (type 1, role 1), each resource touched (type 2, role 4,
  with the SHA-256 of the version as a `detail`), the query (role 24, base64), and the
  X-Request-Id (BALP BasicAuditEntityType#XrequestId);
- outcome 0 / 4 / 8 for permit / deny / error, with the reason as outcomeDesc.

An extension carries "seq:hash" of the chain entry, so a client holding an AuditEvent can
check it against `$verify-audit` or its own copy of the chain.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ehcp_record.fhir.canonical import code_system, structure_definition

__all__ = ["AUDIT_ACTION_SYSTEM", "AUDIT_CHAIN_EXTENSION", "to_audit_event"]

#: valueString "seq:hash" of the chain entry the AuditEvent renders.
AUDIT_CHAIN_EXTENSION = structure_definition("audit-chain")
#: Our own action names (propose, issue, transfer...), kept as a second subtype coding so the
#: exact step survives where restful-interaction only says "operation".
AUDIT_ACTION_SYSTEM = code_system("audit-action")

_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_INTERACTION = "http://hl7.org/fhir/restful-interaction"
_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_NETWORK_TYPE_IP = "2"  # http://hl7.org/fhir/network-type: IP address
_NETWORK_TYPE_URI = "5"
_BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"

_REST = {"system": _EVENT_TYPE, "code": "rest", "display": "Restful Operation"}
_QUERY = {"system": _DCM, "code": "110112", "display": "Query"}
_APPLICATION_ACTIVITY = {"system": _DCM, "code": "110100", "display": "Application Activity"}
_SOURCE_ROLE = {"system": _DCM, "code": "110153", "display": "Source Role ID"}
_DESTINATION_ROLE = {"system": _DCM, "code": "110152", "display": "Destination Role ID"}
_RECIPIENT = {"system": _PARTICIPATION, "code": "IRCP", "display": "information recipient"}
_AUTHOR = {"system": _PARTICIPATION, "code": "AUT", "display": "author (originator)"}
_RESPONSIBLE = {"system": _PARTICIPATION, "code": "RESP", "display": "responsible party"}

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR R4 `id` datatype
#: audit-event-outcome: 0 success, 4 minor failure (refused), 8 serious failure (error).
_OUTCOMES = {"permit": "0", "deny": "4", "error": "8"}


@dataclass(frozen=True, slots=True)
class _Kind:
    """How one body action maps onto BALP: event type, interaction, CRUDE action, direction."""

    type: dict
    interaction: str
    crude: str
    to_client: bool  # data flows server -> client (a read): the client is the Destination
    user_reads: bool  # the user receives data (IRCP) rather than authors it (AUT)


_READ_OPERATIONS = frozenset(
    {"export", "document", "everything", "access-log", "audit-read", "diff", "verify-audit"}
)
_KINDS: dict[str, _Kind] = {
    "create": _Kind(_REST, "create", "C", False, False),
    "read": _Kind(_REST, "read", "R", True, True),
    "vread": _Kind(_REST, "vread", "R", True, True),
    "update": _Kind(_REST, "update", "U", False, False),
    "patch": _Kind(_REST, "patch", "U", False, False),
    "delete": _Kind(_REST, "delete", "D", False, False),
    "history": _Kind(_REST, "history-instance", "R", True, True),
    # BALP Query: the client is the Source (its parameters flow to the server), the user IRCP.
    "search": _Kind(_QUERY, "search-type", "E", False, True),
}


def _kind(action: str) -> _Kind:
    if action in _KINDS:
        return _KINDS[action]
    if action == "checkpoint":
        return _Kind(_APPLICATION_ACTIVITY, "", "E", False, False)
    reads = action in _READ_OPERATIONS
    return _Kind(_REST, "operation", "E", reads, reads)


def to_audit_event(entry: Mapping[str, Any], base_id: str, names: Mapping[str, str] | None = None) -> dict:
    """The AuditEvent (R4 JSON dict) for one stored chain entry.

    `names` gives the display of references the reader may see named ("Organization/la-916"
    -> "Local authority 916"): rendering only, the chain entry names the reference.

    `base_id` names this server as the observer: its FHIR base URL (preferred, it then also
    appears as the server agent's network address) or a deployment id. The id is
    "{record}-{seq}", unique because each record has one chain; FHIR ids hold at most 64
    characters, so record ids should stay within 56 (a UUID's 36 leaves room for any seq).
    """
    record, seq, body = entry["record"], entry["seq"], entry["body"]
    action = str(body.get("action", ""))
    kind = _kind(action)
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"{record}-{seq}",
        "meta": {"versionId": "1", "lastUpdated": body["at"]},  # rendered, never changes
        "extension": [{"url": AUDIT_CHAIN_EXTENSION, "valueString": f"{seq}:{entry['hash']}"}],
        "type": dict(kind.type),
        "subtype": _subtypes(kind, action),
        "action": kind.crude,
        "recorded": body["at"],
        "outcome": _OUTCOMES.get(str(body.get("outcome")), "8"),
        "agent": _agents(body, kind, base_id, checkpoint=action == "checkpoint", names=names or {}),
        "source": {
            "observer": {"display": base_id},
            "type": [{"system": _SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
        "entity": _entities(record, body),
    }
    if body.get("reason"):
        event["outcomeDesc"] = str(body["reason"])
    return event


def _subtypes(kind: _Kind, action: str) -> list[dict]:
    codings = []
    if kind.interaction:
        codings.append(
            {"system": _INTERACTION, "code": kind.interaction, "display": kind.interaction}
        )
    if action:
        codings.append({"system": AUDIT_ACTION_SYSTEM, "code": action})
    return codings


# --- agents ----------------------------------------------------------------------------------


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def named_in(entry: Mapping[str, Any]) -> list[str]:
    """The references an entry's agents name (the user's fhirUser, the organisation)."""
    who = _mapping(_mapping(entry.get("body")).get("agent"))
    return [str(who[k]) for k in ("fhirUser", "organization") if who.get(k)]


def _agents(body: Mapping[str, Any], kind: _Kind, base_id: str, checkpoint: bool,
            names: Mapping[str, str]) -> list[dict]:
    """User, client, organisation, server - whichever are known. The requestor is the first
    known of user, client, organisation (the server itself for a checkpoint or when nothing
    else is known), and carries the Consents that allowed the request as `policy`."""
    who, source = _mapping(body.get("agent")), _mapping(body.get("source"))
    server = _server_agent(base_id, kind)
    present = [
        a for a in (_user_agent(who, kind, names), _client_agent(source, kind), _org_agent(who, names)) if a
    ]
    requestor = server if checkpoint or not present else present[0]
    requestor["requestor"] = True
    policies = _policies(body.get("consent"))
    if policies:
        requestor["policy"] = policies
    return [*present, server]


def _user_agent(who: Mapping[str, Any], kind: _Kind, names: Mapping[str, str]) -> dict | None:
    """BALP agent[user]: who the access token names. Users are not network devices (BALP).
    Shown by name where the reader may see the person, else by the token's subject."""
    if not (who.get("sub") or who.get("fhirUser")):
        return None
    reference: dict[str, Any] = {}
    if who.get("fhirUser"):
        reference["reference"] = str(who["fhirUser"])
        if names.get(str(who["fhirUser"])):
            reference["display"] = names[str(who["fhirUser"])]
    if who.get("sub"):
        reference.setdefault("display", str(who["sub"]))
        reference["identifier"] = {"value": str(who["sub"])}
        if who.get("iss"):
            reference["identifier"]["system"] = str(who["iss"])
    agent: dict[str, Any] = {
        "type": {"coding": [_RECIPIENT if kind.user_reads else _AUTHOR]},
        "who": reference,
        "requestor": False,
    }
    if who.get("role"):
        agent["role"] = [{"text": str(who["role"])}]
    return agent


def _client_agent(source: Mapping[str, Any], kind: _Kind) -> dict | None:
    """BALP agent[client]: the calling machine; Destination when it receives the data."""
    ip, user_agent = source.get("ip"), source.get("user_agent")
    if not (ip or user_agent):
        return None
    agent: dict[str, Any] = {
        "type": {"coding": [_DESTINATION_ROLE if kind.to_client else _SOURCE_ROLE]},
        "who": {"display": str(user_agent or ip)},
        "requestor": False,
    }
    if ip:
        agent["network"] = {"address": str(ip), "type": _NETWORK_TYPE_IP}
    return agent


def _org_agent(who: Mapping[str, Any], names: Mapping[str, str]) -> dict | None:
    """The organisation the user acts for (R4 AuditEvent.agent has no field for it)."""
    if not who.get("organization"):
        return None
    reference = {"reference": str(who["organization"])}
    if names.get(reference["reference"]):
        reference["display"] = names[reference["reference"]]
    return {
        "type": {"coding": [_RESPONSIBLE]},
        "who": reference,
        "requestor": False,
    }


def _server_agent(base_id: str, kind: _Kind) -> dict:
    agent: dict[str, Any] = {
        "type": {"coding": [_SOURCE_ROLE if kind.to_client else _DESTINATION_ROLE]},
        "who": {"display": base_id},
        "requestor": False,
    }
    if "://" in base_id:
        agent["network"] = {"address": base_id, "type": _NETWORK_TYPE_URI}
    return agent


def _policies(consent: Any) -> list[str]:
    """The Consents that decided, as references (agent.policy is a uri)."""
    if not isinstance(consent, list):
        return []
    return [c if "/" in c else f"Consent/{c}" for c in map(str, consent) if c]


# --- entities --------------------------------------------------------------------------------


def _entities(record: str, body: Mapping[str, Any]) -> list[dict]:
    entities = []
    if _FHIR_ID.fullmatch(record):  # not for chains of no child, e.g. "_directory"
        entities.append(
            {
                "what": {"reference": f"Patient/{record}"},
                "type": {"system": _ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": _OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    for item in body.get("resources") or []:
        if isinstance(item, Mapping) and item.get("ref"):
            entities.append(_resource_entity(item))
    if body.get("query"):
        entities.append(_query_entity(str(body["query"])))
    if isinstance(body.get("checkpoint"), Mapping):
        entities.append(_checkpoint_entity(body["checkpoint"]))
    request_id = _mapping(body.get("source")).get("request_id")
    if request_id:
        entities.append(
            {
                "what": {"identifier": {"value": str(request_id)}},
                "type": {
                    "system": _BALP_ENTITY_TYPE,
                    "code": "XrequestId",
                    "display": "X-Request-Id",
                },
            }
        )
    return entities


def _resource_entity(item: Mapping[str, Any]) -> dict:
    entity: dict[str, Any] = {
        "what": {"reference": str(item["ref"])},
        "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": _OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
    }
    if item.get("sha256"):
        entity["detail"] = [{"type": "sha256", "valueString": str(item["sha256"])}]
    return entity


def _query_entity(query: str) -> dict:
    """BALP entity[query]: the raw search, base64 so hostile input is kept exactly as sent."""
    return {
        "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": _OBJECT_ROLE, "code": "24", "display": "Query"},
        "query": base64.b64encode(query.encode("utf-8")).decode("ascii"),
    }


def _checkpoint_entity(checkpoint: Mapping[str, Any]) -> dict:
    details = [
        {"type": name, "valueString": str(checkpoint[name])}
        for name in ("seq", "hash", "kid", "signature")
        if checkpoint.get(name) not in (None, "")
    ]
    return {
        "type": {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": _OBJECT_ROLE, "code": "13", "display": "Security Resource"},
        "description": "Ed25519-signed checkpoint of the audit chain",
        "detail": details,
    }
