"""Sharding readiness, checked rather than promised (DESIGN "Scale": shard key = record id).

pymongo's command monitoring records every command the server sends while it serves the
statutory process through HTTP. Every transaction must touch exactly one child's record, and
each of its writes must carry that record id in its filter or its documents, so on a sharded
cluster each transaction stays on one shard. Reads outside transactions either carry the
record id or are one of the listed exceptions, each with how a sharded deployment serves it.
"""

from __future__ import annotations

import threading
from collections import defaultdict

import pytest
from pymongo import monitoring

from ehcp_record.audit.entries import DIRECTORY_CHAIN
from tests.consent_support import load_issued_example
from tests.support import need

#: Collections keyed by the record: the field that carries the shard key in each.
DIRECTORY = "<directory>"
RECORD_FIELD = {"current": "record", "history": "record", "audit": "record", "documents": "record",
                "records": "_id"}
#: Reads that cannot carry the record id, and how a sharded cluster serves them.
EXCEPTIONS = {
    "by FHIR id": "a read names Type/id, not the record: served from an unsharded locator (Type/id -> record) "
                  "or by the _id index on each shard (targeted once the locator is added)",
    "by custody or link": "searches across the records an LA holds, a parent's children or the consents naming "
                          "a caller: scatter-gather reads outside any transaction, on indexed fields",
    "directory": "organisations and practitioners (record null) live in an unsharded collection; a transaction "
                 "Bundle that writes them with a child's record spans two shards (MongoDB 4.2+ distributed transaction)",
    "chain tips": "the tips of the chains a search returned, one $in over their record ids (targeted)",
    "service": "server bookkeeping outside children's records (subscriptions cache, transfer receipts, GridFS)",
    "by identifier": "one record per NHS number: writing a Patient looks its number up across every record "
                     "(scatter-gather on the indexed idx.identifier, outside any transaction)",
}


class Recorder(monitoring.CommandListener):
    def __init__(self) -> None:
        self.on = False
        self.commands: list[dict] = []
        self.lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if (self.on and event.database_name not in ("admin", "config", "local")
                and threading.current_thread().name != "subscription-cache"):  # the cache's change stream
            with self.lock:
                self.commands.append(dict(event.command, _name=event.command_name))

    def succeeded(self, event) -> None: ...

    def failed(self, event) -> None: ...


RECORDER = Recorder()
monitoring.register(RECORDER)  # at import: the module's server client (conftest `api`) has it


def _records_in(command: dict) -> set[str] | None:
    """The record ids a write names, or None when one of its statements names none."""
    name, collection = command["_name"], command.get(command["_name"])
    key = RECORD_FIELD.get(collection)
    if key is None:
        return set()
    if name == "insert":
        targets = command.get("documents", [])
    elif name == "update":
        targets = [u.get("q") or {} for u in command.get("updates", [])]
    elif name in ("findAndModify", "delete"):
        targets = [command.get("query") or command.get("q") or {}]
    else:
        return set()
    if any(key not in t or (t[key] is not None and not isinstance(t[key], str)) for t in targets):
        return None  # a statement that does not name its record: it could not be routed to one shard
    return {t[key] if t[key] not in (None, DIRECTORY_CHAIN) else DIRECTORY for t in targets}


@pytest.fixture(scope="module")
def traffic(api):
    """The statutory process through HTTP, with every command recorded."""
    RECORDER.commands = []
    RECORDER.on = True
    try:
        record = load_issued_example(api)                                      # transaction, propose, respond, issue
        child = record["Patient"][0]["id"]
        draft = api.new_child()["id"]                                           # a record with no issued plan
        created = api.post("/fhir/Condition", need(draft), api.la())           # create
        assert created.status_code == 201, created.text
        updated = api.put(f"/fhir/Condition/{created.json()['id']}", dict(created.json(), note=[{"text": "reviewed"}]),
                          api.la(), **{"If-Match": 'W/"1"'})                   # update
        assert updated.status_code == 200, updated.text
        api.get(f"/fhir/Composition/{record['Composition'][0]['id']}/$document", api.la())
        api.get(f"/fhir/Patient/{child}/$everything", api.la())
        api.get(f"/fhir/Condition?patient={child}", api.la())
        api.get(f"/fhir/Patient/{child}/$access-log", record["parent_token"])
    finally:
        RECORDER.on = False
    return list(RECORDER.commands), child


def test_every_transaction_stays_in_one_record(traffic):
    commands, _ = traffic
    transactions: dict[tuple, list[dict]] = defaultdict(list)
    for command in commands:
        if "txnNumber" in command and command.get("autocommit") is False:
            transactions[(str(command["lsid"]["id"]), command["txnNumber"])].append(command)
    assert len(transactions) >= 6  # the process above commits at least that many changes
    problems, directory_with_record = [], []
    for key, members in transactions.items():
        touched: set[str] = set()
        for command in members:
            records = _records_in(command)
            if records is None:
                problems.append(f"{command['_name']} on {command.get(command['_name'])} names no record id: "
                            f"{repr(command.get('query') or command.get('updates') or '')[:200]}")
            else:
                touched |= records
        children = touched - {DIRECTORY}
        if len(children) > 1:
            problems.append(f"one transaction touches {sorted(children)}")
        if DIRECTORY in touched and children:
            directory_with_record.append(sorted({c.get(c["_name"]) + ":" + str([d.get("_id") for d in c.get("documents", [])])[:80]
                                                 for c in members if c["_name"] == "insert"}))
    assert problems == []
    # A Bundle that also writes directory entries (an Organization, a Practitioner) is the one
    # transaction that would span two shards: the record's and the unsharded directory's.
    assert len(directory_with_record) <= 1, directory_with_record


def _filter_of(command: dict) -> dict:
    if command["_name"] == "aggregate":
        first = (command.get("pipeline") or [{}])[0]
        return first.get("$match", {})
    return command.get("filter") or command.get("query") or {}


def _clauses(query: dict) -> list[dict]:
    """The query and every clause nested under $and / $or, flattened."""
    found = [query]
    for operator in ("$and", "$or"):
        for clause in query.get(operator, []):
            found += _clauses(clause)
    return found


def _read_kind(command: dict) -> str | None:
    """Which exception an un-keyed read is, or None when it names one record."""
    collection = command.get(command["_name"])
    pipeline = command.get("pipeline") or [{}]
    if collection not in RECORD_FIELD or "$changeStream" in pipeline[0]:
        return "service"
    clauses = _clauses(_filter_of(command))
    if any(c.get("type") == "Subscription" for c in clauses):
        return "service"  # the subscriptions cache (loaded at start and on change)
    key = RECORD_FIELD[collection]
    if any(isinstance(c.get(key), str) for c in clauses):
        return None
    if collection == "audit" and any(isinstance(c.get("record"), dict) for c in clauses):
        return "chain tips"
    if any(f in c for c in clauses for f in ("custodian", "parents", "recipients")) or \
            any(isinstance(c.get("record"), dict) or ("record" in c and c["record"] is None) for c in clauses):
        return "by custody or link"
    if any("_id" in c for c in clauses):
        return "by FHIR id"
    if any(c.get("type") == "Patient" and "idx.identifier" in c for c in clauses):
        return "by identifier"
    return "unclassified"


def test_every_read_carries_the_record_or_is_a_listed_exception(traffic):
    commands, _ = traffic
    reads = [c for c in commands if c["_name"] in ("find", "aggregate", "count", "distinct")
             and "txnNumber" not in c]
    kinds = defaultdict(list)
    for command in reads:
        kind = _read_kind(command)
        if kind is not None:
            kinds[kind].append(f"{command['_name']} {command.get(command['_name'])}: "
                               f"{repr(command.get('filter') or command.get('pipeline'))[:160]}")
    assert set(kinds) <= set(EXCEPTIONS), kinds.get("unclassified")
    assert reads and len(reads) > sum(len(v) for v in kinds.values())  # most reads are keyed by record
