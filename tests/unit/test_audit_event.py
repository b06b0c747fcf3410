"""Chain entries rendered as FHIR R4 AuditEvents shaped like IHE BALP, validated by the model."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ehcp_record.audit.chain import ChainHead, next_checkpoint_entry, next_entry
from ehcp_record.audit.events import (
    AUDIT_ACTION_SYSTEM,
    AUDIT_CHAIN_EXTENSION,
    to_audit_event,
)
from ehcp_record.errors import FhirError
from ehcp_record.fhir.model import parse_resource

RECORD = "9a1c2d3e-0000-4000-8000-000000000001"
BASE = "https://ehcp.example.org/fhir"
AT = "2025-03-01T09:30:00.123Z"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
INTERACTION = "http://hl7.org/fhir/restful-interaction"


def _entry(action: str = "read", outcome: str = "permit", **extra: object) -> dict:
    body = {
        "at": AT,
        "action": action,
        "outcome": outcome,
        "reason": "consent consent-1 grants read of section C",
        "agent": {
            "sub": "user-123",
            "role": "health",
            "fhirUser": "Practitioner/p1",
            "organization": "Organization/rx1",
            "iss": "https://idp.example.org",
        },
        "source": {"ip": "203.0.113.7", "user_agent": "HealthApp/2.1", "request_id": "req-42"},
        "resources": [
            {"ref": "Composition/plan-1/_history/3", "sha256": "a" * 64},
            {"ref": "Condition/c1/_history/1", "sha256": None},
        ],
        "consent": ["consent-1"],
        **extra,
    }
    return next_entry(RECORD, ChainHead(6, "b" * 64), body)


def _validate(event: dict) -> dict:
    """The server's own FHIR R4 structure check (profiles/r4, from the HL7 definitions)."""
    return parse_resource(event, "AuditEvent")


def _agent(event: dict, system: str, code: str) -> dict:
    matches = [
        a
        for a in event["agent"]
        if a["type"]["coding"][0]["code"] == code and a["type"]["coding"][0]["system"] == system
    ]
    assert len(matches) == 1, event["agent"]
    return matches[0]


ACTIONS = [
    "create",
    "read",
    "vread",
    "update",
    "search",
    "history",
    "consent-decision",
    "refusal",
    "propose",
    "respond",
    "issue",
    "transfer",
    "export",
    "accept",
    "something-new",
]


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("outcome", ["permit", "deny", "error"])
def test_every_action_renders_a_valid_r4_audit_event(action: str, outcome: str) -> None:
    event = to_audit_event(_entry(action, outcome), BASE)
    model = _validate(event)
    assert model["id"] == f"{RECORD}-7"
    assert event["outcome"] == {"permit": "0", "deny": "4", "error": "8"}[outcome]


@pytest.mark.parametrize(
    ("action", "interaction", "crude"),
    [
        ("create", "create", "C"),
        ("read", "read", "R"),
        ("vread", "vread", "R"),
        ("update", "update", "U"),
        ("history", "history-instance", "R"),
        ("search", "search-type", "E"),
        ("propose", "operation", "E"),
        ("issue", "operation", "E"),
        ("transfer", "operation", "E"),
        ("consent-decision", "operation", "E"),
    ],
)
def test_type_subtype_and_action_follow_balp(action: str, interaction: str, crude: str) -> None:
    event = to_audit_event(_entry(action), BASE)
    expected_type = (
        {"system": DCM, "code": "110112", "display": "Query"}
        if action == "search"
        else {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "Restful Operation",
        }
    )
    assert event["type"] == expected_type
    assert event["subtype"][0] == {
        "system": INTERACTION,
        "code": interaction,
        "display": interaction,
    }
    assert event["subtype"][1] == {"system": AUDIT_ACTION_SYSTEM, "code": action}
    assert event["action"] == crude


def test_identity_time_outcome_and_chain_link() -> None:
    entry = _entry("read", "deny", reason="no active consent for section C")
    event = to_audit_event(entry, BASE)
    assert event["id"] == f"{RECORD}-7"
    assert event["recorded"] == AT
    assert (event["outcome"], event["outcomeDesc"]) == ("4", "no active consent for section C")
    assert event["extension"] == [
        {"url": AUDIT_CHAIN_EXTENSION, "valueString": f"7:{entry['hash']}"}
    ]
    assert event["source"]["type"][0]["code"] == "4"
    assert event["source"]["observer"] == {"display": BASE}


def test_user_agent_names_the_token_subject() -> None:
    event = to_audit_event(_entry("read"), BASE)
    user = _agent(event, "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "IRCP")
    assert user["requestor"] is True
    assert user["who"] == {
        "reference": "Practitioner/p1",
        "display": "user-123",
        "identifier": {"system": "https://idp.example.org", "value": "user-123"},
    }
    assert user["role"] == [{"text": "health"}]
    assert user["policy"] == ["Consent/consent-1"]
    assert "network" not in user  # BALP: users are not network devices
    writer = to_audit_event(_entry("update"), BASE)
    assert _agent(writer, "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "AUT")[
        "requestor"
    ]


def test_client_agent_carries_the_ip_address_and_direction() -> None:
    read = to_audit_event(_entry("read"), BASE)
    client = _agent(read, DCM, "110152")  # read: data flows to the client, the Destination
    assert client["network"] == {"address": "203.0.113.7", "type": "2"}
    assert client["who"] == {"display": "HealthApp/2.1"}
    assert client["requestor"] is False
    server = _agent(read, DCM, "110153")
    assert server["network"] == {"address": BASE, "type": "5"}
    create = to_audit_event(_entry("create"), BASE)
    assert _agent(create, DCM, "110153")["network"]["address"] == "203.0.113.7"  # client is Source
    assert _agent(create, DCM, "110152")["who"] == {"display": BASE}


def test_organisation_of_the_user_is_recorded() -> None:
    event = to_audit_event(_entry(), BASE)
    org = _agent(event, "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "RESP")
    assert org == {
        "type": org["type"],
        "who": {"reference": "Organization/rx1"},
        "requestor": False,
    }


def test_entities_patient_resources_and_request_id() -> None:
    event = to_audit_event(_entry(), BASE)
    patient, composition, condition, request = event["entity"]
    assert patient["what"] == {"reference": f"Patient/{RECORD}"}
    assert (patient["type"]["code"], patient["role"]["code"]) == ("1", "1")
    assert composition["what"] == {"reference": "Composition/plan-1/_history/3"}
    assert (composition["type"]["code"], composition["role"]["code"]) == ("2", "4")
    assert composition["detail"] == [{"type": "sha256", "valueString": "a" * 64}]
    assert (
        condition["what"] == {"reference": "Condition/c1/_history/1"} and "detail" not in condition
    )
    assert request["what"] == {"identifier": {"value": "req-42"}}
    assert request["type"]["code"] == "XrequestId"


def test_search_records_the_raw_query_in_base64() -> None:
    query = "Condition?patient=Patient/x&category=C&_count=<script>"
    event = to_audit_event(_entry("search", query=query), BASE)
    _validate(event)
    (entity,) = [e for e in event["entity"] if e.get("role", {}).get("code") == "24"]
    assert base64.b64decode(entity["query"]).decode() == query


def test_minimal_body_still_renders_a_valid_event() -> None:
    entry = next_entry(
        RECORD, None, {"at": AT, "action": "transfer", "outcome": "error", "reason": ""}
    )
    event = to_audit_event(entry, "deployment-7")
    _validate(event)
    assert "outcomeDesc" not in event
    assert event["entity"] == [event["entity"][0]] and event["entity"][0]["role"]["code"] == "1"
    (server,) = event["agent"]
    assert server["who"] == {"display": "deployment-7"} and server["requestor"] is True
    assert "network" not in server  # not a URL


def test_client_without_a_user_is_the_requestor() -> None:
    entry = next_entry(
        RECORD,
        None,
        {
            "at": AT,
            "action": "read",
            "outcome": "permit",
            "reason": "system access",
            "source": {"ip": "198.51.100.1"},
            "consent": ["Consent/c9"],
        },
    )
    event = to_audit_event(entry, BASE)
    _validate(event)
    client = _agent(event, DCM, "110152")
    assert client["requestor"] is True and client["policy"] == ["Consent/c9"]


def test_checkpoint_entry_renders_the_signature() -> None:
    entry = next_checkpoint_entry(Ed25519PrivateKey.generate(), RECORD, ChainHead(6, "b" * 64), AT)
    event = to_audit_event(entry, BASE)
    _validate(event)
    assert event["type"]["code"] == "110100"
    assert event["subtype"] == [{"system": AUDIT_ACTION_SYSTEM, "code": "checkpoint"}]
    details = {d["type"]: d["valueString"] for d in event["entity"][1]["detail"]}
    assert details["seq"] == "6" and details["hash"] == "b" * 64
    assert details["signature"] == entry["body"]["checkpoint"]["signature"]


def test_the_model_check_is_real() -> None:
    """The validation used above does reject a broken AuditEvent."""
    event = to_audit_event(_entry(), BASE)
    for broken in (
        {**event, "recorded": "yesterday"},
        {**event, "agent": [{"who": {}}]},
        {**event, "entity": [{"what": "Patient/x"}]},
    ):
        with pytest.raises(FhirError):
            _validate(broken)


_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12).filter(
    str.strip
)


@settings(max_examples=25, deadline=None)
@given(
    action=st.sampled_from(ACTIONS),
    outcome=st.sampled_from(["permit", "deny", "error"]),
    reason=_text,
    agent=st.fixed_dictionaries(
        {},
        optional={
            "sub": _text,
            "role": _text,
            "iss": st.just("https://idp.example.org"),
            "fhirUser": st.sampled_from(["RelatedPerson/r1", "Patient/p1"]),
            "organization": st.just("Organization/la-866"),
        },
    ),
    source=st.fixed_dictionaries(
        {},
        optional={
            "ip": st.ip_addresses().map(str),
            "user_agent": _text,
            "request_id": _text.map(lambda s: s.strip()),
        },
    ),
    refs=st.lists(
        st.sampled_from(["Goal/g1/_history/2", "Task/t1/_history/1", "Consent/c/_history/4"]),
        max_size=3,
    ),
    seq=st.integers(1, 10**6),
)
def test_random_entries_render_valid_events(
    action: str,
    outcome: str,
    reason: str,
    agent: dict,
    source: dict,
    refs: list,
    seq: int,
) -> None:
    body = {
        "at": AT,
        "action": action,
        "outcome": outcome,
        "reason": reason,
        "agent": agent,
        "source": source,
        "resources": [{"ref": r, "sha256": "c" * 64} for r in refs],
    }
    entry = next_entry(RECORD, ChainHead(seq - 1, "d" * 64), body)
    event = to_audit_event(entry, BASE)
    _validate(event)
    assert event["id"] == f"{RECORD}-{seq}"
    assert any(a["requestor"] for a in event["agent"])
    assert [e["what"]["reference"] for e in event["entity"][1 : 1 + len(refs)]] == refs


def test_organisation_alone_is_the_requestor() -> None:
    entry = next_entry(
        RECORD,
        None,
        {
            "at": AT,
            "action": "create",
            "outcome": "permit",
            "reason": "r",
            "agent": {"organization": "Organization/la-866"},
        },
    )
    event = to_audit_event(entry, BASE)
    _validate(event)
    assert [a["requestor"] for a in event["agent"]] == [True, False]
