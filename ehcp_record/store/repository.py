"""The repository: the only module that talks to MongoDB.

Collections (shard key = record id wherever a record exists, so every transaction is
single-shard):
- `current`   the newest version of each resource, `_id` "Type/id"
- `history`   every version ever written, insert-only, unique (type, id, version)
- `audit`     one hash chain per record, unique (record, seq): the index is what stops a fork
- `records`   the custody state of each child's record (custodian, parents, birth date)

Every change is one transaction with majority write concern: the version, its history row and
its audit entry are all there after a crash, or none of them is.

At rest every child's content is sealed under that record's data key (store/sealing.py says
what; store/crypto.py holds the keys; docs/encryption.md): documents are sealed before the
transaction and opened as they are read, and an erased record (`erase_record`) answers 410.
- `keyvault`  the data keys, wrapped by the master key; `keyring` the sealed blind-index secret
"""

from __future__ import annotations

import io
import logging
import re
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, Iterator, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.client_session import ClientSession
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.read_preferences import ReadPreference
from pymongo.write_concern import WriteConcern

from ehcp_record.audit import chain as audit_chain
from ehcp_record.audit.anchor import AnchorLog, NoAnchor
from ehcp_record.errors import FhirError, conflict, precondition_failed
from ehcp_record.fhir.identifiers import nhs_number_taken, nhs_numbers
from ehcp_record.fhir.search import Criterion, SearchQuery, SortKey
from ehcp_record.store import verify_reader, versions_apart
from ehcp_record.store.client_options import CLIENT_OPTIONS
from ehcp_record.store.crypto import FieldCipher, MasterKeys
from ehcp_record.store.group_commit import GroupCommit
from ehcp_record.store.media import MediaStore
from ehcp_record.store.sealed_bytes import stored_digest
from ehcp_record.store.sealing import Sealing, gone, key_name, name_stored
from ehcp_record.store.subscriptions import SubscriptionCache
from ehcp_record.store.versions import (AuditAppend, RecordContext, Version, VersionWrite, Visibility,  # noqa: F401
                                         utc_now)

log = logging.getLogger("ehcp_record.store")
T = TypeVar("T")
#: The unique partial index behind "one record per NHS number" (`_ensure_one_patient_per_nhs_number`).
NHS_NUMBER_INDEX = "one_patient_per_nhs_number"
_MAJORITY = WriteConcern("majority")
_RETRIES = 200


CHECKPOINT_INTERVAL = timedelta(hours=1)


def _consent_stages() -> list[dict]:
    """Each result's record's Consents; a result in no record (the directory) looks up
    `_NO_RECORD`, which the (record, type) index answers with nothing, where a null would
    match every document outside a record."""
    return [{"$addFields": {"_consents_of": {"$ifNull": ["$record", _NO_RECORD]}}},
            {"$lookup": {"from": "current", "localField": "_consents_of", "foreignField": "record", "as": "_consents",
                         "pipeline": [{"$match": {"type": "Consent"}}, {"$project": _VERSION}]}}]


#: No record's id (FHIR ids have no spaces): a lookup key that matches nothing.
_NO_RECORD = " "


class Repository:
    def __init__(self, client: MongoClient, database: str, signing_key: Ed25519PrivateKey | None = None,
                 anchor: AnchorLog | None = None, cipher: FieldCipher | None = None, uri: str | None = None) -> None:
        self.client = client
        #: the connection string `connect` was given: a long record's versions are read with it
        #: in a process of their own when verifying (`record_reading`); None: never
        self.uri = uri
        #: seals content at rest (store/crypto.py); None only for the benchmark's clear baseline
        #: and tools that never read a record's content
        self.cipher = cipher
        self.seal = Sealing(cipher)
        self.signing_key = signing_key
        #: chain heads kept outside MongoDB: signed checkpoints and each chain's high-water mark
        self.anchor: AnchorLog = anchor or NoAnchor()
        self._pending: dict[int, list[dict]] = {}
        self.db = client.get_database(database, write_concern=_MAJORITY, read_concern=ReadConcern("majority"))
        self.current = self.db.current
        self.history = self.db.history
        self.audit = self.db.audit
        self.records = self.db.records
        self.subscriptions = SubscriptionCache(self.current, self._version)
        self._together: GroupCommit[AuditAppend] = GroupCommit(self._append_together)
        self._outbound = MediaStore(self.db, self.seal, bucket="outbound")
        #: what an operator must know about this database (start-up checks that could not pass)
        self.warnings: list[str] = []

    @classmethod
    def connect(cls, uri: str, database: str, signing_key: Ed25519PrivateKey | None = None,
                anchor: AnchorLog | None = None, master_keys: Callable[[], MasterKeys] | None = None) -> "Repository":
        """Every wait is bounded, so an unreachable database fails fast (the API answers 503)
        rather than hanging: finding a primary, connecting, each socket read, a slot in the
        pool. The API also bounds each request as a whole with `pymongo.timeout` (a client-wide
        `timeoutMS` would replace the 3 s server selection by one long limit, and would not cap a
        transaction's retries). Single reads and writes are retried once on a network error."""
        client: MongoClient = MongoClient(uri, **CLIENT_OPTIONS)
        records = client.get_database(database).records
        cipher = None if master_keys is None else FieldCipher(  # an erased record never gets a new key
            client, database, master_keys, lambda name: records.find_one(
                {"_id": name, "erased": {"$exists": True}}, {"_id": 1}) is None)
        repo = cls(client, database, signing_key, anchor, cipher, uri)
        repo.ensure_indexes()
        return repo

    def close(self) -> None:
        self.subscriptions.close()
        self.client.close()

    def ensure_indexes(self) -> None:
        self.history.create_index([("type", ASCENDING), ("rid", ASCENDING), ("vid", DESCENDING)], unique=True)
        self.history.create_index([("record", ASCENDING), ("type", ASCENDING)])
        self.current.create_index([("type", ASCENDING), ("updated", DESCENDING)])
        self.current.create_index([("record", ASCENDING), ("type", ASCENDING)])
        self.current.create_index([("type", ASCENDING), ("recipients", ASCENDING)])
        # Search visibility through consents (`share_within`), the default sort after it.
        self.current.create_index([("shared", ASCENDING), ("type", ASCENDING), ("updated", DESCENDING),
                                   ("_id", ASCENDING)])
        # Search visibility by custody; also serves the default sort (newest first) per type.
        self.current.create_index([("custodian", ASCENDING), ("type", ASCENDING), ("updated", DESCENDING),
                                   ("_id", ASCENDING)])
        self.current.create_index([("type", ASCENDING), ("updated", DESCENDING), ("_id", ASCENDING)])
        # string parameters too: their blind prefix tokens (store/sealing.py) are equality lookups
        for param in ("identifier", "patient", "subject", "status", "code", "category", "owner", "focus", "actor",
                      "name", "family", "given", "address-postalcode"):
            self.current.create_index([("type", ASCENDING), (f"idx.{param}", ASCENDING)], sparse=True)
        self.audit.create_index([("record", ASCENDING), ("seq", ASCENDING)], unique=True)
        self._ensure_one_patient_per_nhs_number()
        self._backfill_custodians()
        self._backfill_sharing()
        self.records.create_index([("custodian", ASCENDING)])
        self.records.create_index([("parents", ASCENDING)])

    def _ensure_one_patient_per_nhs_number(self) -> None:
        """The unique partial index that makes "one record per NHS number" hold under
        concurrency: two creates that both pass the scoped store's early check cannot both
        commit, since each Patient's current document carries its number's blind token.

        Patients stored before the field existed get it first (opened with their record's key).
        A database that already holds two Patients with one number cannot take the index: the
        server still starts, with the early check only, and says which Patients collide (log
        and /readyz) so the custodians can merge them or erase one; the next start builds it."""
        if NHS_NUMBER_INDEX in self.current.index_information():
            return  # built before: every Patient written since carries its token (Sealing.envelope)
        self._backfill_nhs_tokens()
        try:
            self.current.create_index([("nhs_token", ASCENDING)], name=NHS_NUMBER_INDEX, unique=True,
                                      partialFilterExpression={"type": "Patient", "nhs_token": {"$type": "binData"}})
        except OperationFailure as error:
            if error.code not in (11000, 11001):
                raise
            groups = self.duplicate_nhs_numbers()
            warning = ("one record per NHS number is not enforced by the database: these Patients share an NHS number "
                       f"({'; '.join(', '.join(g) for g in groups)}); merge or erase the duplicates, then restart to "
                       "build the unique index (until then only the early check refuses a second record)")
            log.error(warning)
            self.warnings.append(warning)

    def _backfill_nhs_tokens(self) -> None:
        pending = {"type": "Patient", "nhs_token": {"$exists": False}, "erased": {"$exists": False}}
        for doc in self.current.find(pending, {"res": 1, "rid": 1}):
            try:
                resource = self.seal.open(doc["res"], f"Patient/{doc['rid']}")
            except FhirError:  # its key is gone: nothing of it can be matched any more
                continue
            self.current.update_one({"_id": doc["_id"], "nhs_token": {"$exists": False}},
                                    {"$set": {"nhs_token": self.seal.nhs_tokens(resource)}})

    def duplicate_nhs_numbers(self) -> list[list[str]]:
        """Groups of Patient ids (current, not erased) that share an NHS number's token."""
        pipeline = [{"$match": {"type": "Patient", "nhs_token": {"$type": "binData"}}}, {"$unwind": "$nhs_token"},
                    {"$group": {"_id": "$nhs_token", "ids": {"$addToSet": "$_id"}}},
                    {"$match": {"ids.1": {"$exists": True}}}, {"$limit": 20}]
        return sorted(sorted(d["ids"]) for d in self.current.aggregate(pipeline))

    def _backfill_custodians(self) -> None:
        """Current documents stored before they carried `custodian` get it from custody state."""
        if self.current.find_one({"record": {"$ne": None}, "custodian": {"$exists": False}}, {"_id": 1}) is None:
            return
        for state in self.records.find({}, {"custodian": 1, "transferred_out": 1}):
            custodian = None if state.get("transferred_out") else state.get("custodian")
            self.current.update_many({"record": state["_id"], "custodian": {"$exists": False}},
                                     {"$set": {"custodian": custodian}})

    def _backfill_sharing(self) -> None:
        """Current documents of a record stored before they carried `shared` get it from the
        record's Consents (a document written since, by any process, already has it)."""
        if self.current.find_one({"record": {"$ne": None}, "shared": {"$exists": False}}, {"_id": 1}) is None:
            return
        pipeline = [{"$match": {"type": "Consent", "record": {"$nin": [None, ""]}}}, {"$unwind": "$recipients"},
                    {"$group": {"_id": "$record", "named": {"$addToSet": "$recipients"}}}]
        for found in self.current.aggregate(pipeline):
            self.current.update_many({"record": found["_id"], "shared": {"$exists": False}},
                                     {"$set": {"shared": sorted(found["named"])}})
        self.current.update_many({"record": {"$ne": None}, "shared": {"$exists": False}}, {"$set": {"shared": []}})

    def ping(self) -> bool:
        try:
            self.client.admin.command("ping")
            return True
        except PyMongoError:
            return False

    # --- transactions -------------------------------------------------------------------

    def in_transaction(self, work: Callable[[ClientSession], T]) -> T:
        """Run `work` in one majority transaction, retrying write conflicts and chain races.

        Audit entries appended by `work` (through `_append`) reach the anchor only once the
        transaction has committed, so the high-water mark never runs ahead of the chain."""
        for attempt in range(_RETRIES):
            try:
                with self.client.start_session() as session:
                    def attempt_work(s: ClientSession) -> T:
                        self._pending_anchor(s).clear()
                        return work(s)

                    try:
                        result = session.with_transaction(
                            attempt_work, read_concern=ReadConcern("snapshot"), write_concern=_MAJORITY,
                            read_preference=ReadPreference.PRIMARY,
                        )
                        committed = self._pending.pop(id(session), [])
                    finally:
                        self._pending.pop(id(session), None)
                    self._anchored(committed)
                    return result
            except DuplicateKeyError as exc:
                if not _is_chain_race(exc) or attempt == _RETRIES - 1:
                    raise
            except OperationFailure as exc:
                # past the request's deadline pymongo keeps the transient label: do not retry then
                if getattr(exc, "timeout", False) or not exc.has_error_label("TransientTransactionError") \
                        or attempt == _RETRIES - 1:
                    raise
            time.sleep(min(0.002 * (attempt + 1), 0.05))
        raise RuntimeError("unreachable")

    def commit(self, writes: list[VersionWrite], audits: list[AuditAppend],
               record_updates: list[tuple[str, dict]] | None = None,
               custody: tuple[str, str | None] | None = None) -> None:
        """Store versions, their history rows, record-state changes and audit entries atomically.

        `custody` (record, new custodian) moves the searchable custodian of every current
        document of the record in the same transaction (reg 15 transfers)."""

        docs = [self.seal.envelope(write) for write in writes]  # sealed once, outside the retries
        audits = [self.sealed_append(a) for a in self.naming_stored(audits, writes, docs)]

        def work(session: ClientSession) -> None:
            if custody is not None:
                self.move_custody_of_versions(session, *custody)
            for write, doc in zip(writes, docs):
                self._write_version(session, write, doc)
            for record, changes in record_updates or []:
                self.records.update_one({"_id": record}, changes, upsert=True, session=session)
            self.share_within(session, [write.record for write in writes])
            for append in audits:
                self._append(session, append)

        self.in_transaction(work)
        if any(write.type == "Subscription" for write in writes):
            self.subscriptions.refresh()

    def append_audit(self, audits: list[AuditAppend]) -> None:
        """Audit entries with no version change (reads, searches, refusals), stored before it
        returns: sealed here, then written with those of any other request of this process
        ending at the same moment (`group_commit`: one insert, one majority wait)."""
        if audits:
            self._together.submit([self.sealed_append(a) for a in audits])

    def _append_together(self, audits: list[AuditAppend]) -> None:
        """Sealed entries, written together.

        Each chain's tip is the anchor's mark (`_known_tips`, no query), one `insert_many` adds
        the first entry of each chain, a second adds the signed checkpoints that fell due. No
        transaction is needed: the unique (record, seq) index makes a racing writer fail, and
        only the chains that lost a race are appended again one by one at the tip the database
        holds, so a chain never forks; so are a chain's second and later entries here.
        """
        first: dict[str, AuditAppend] = {}
        later: list[AuditAppend] = []
        for append in audits:
            (later.append(append) if append.chain in first else first.__setitem__(append.chain, append))
        known, marked = self._known_tips(list(first))
        entries, checkpoints, lost = [], [], []
        for chain, append in first.items():
            entry, checkpoint = self._next(append, known.get(chain), marked=chain in marked)
            entries.append(entry)
            if checkpoint is not None:
                checkpoints.append(checkpoint)
        failed = self._insert_unordered(entries)
        lost = [first[e["record"]] for e in entries if e["record"] in failed]
        signed = [c for c in checkpoints if c["record"] not in failed]
        signed_failed = self._insert_unordered(signed)
        self._anchored([e for e in entries if e["record"] not in failed]
                       + [c for c in signed if c["record"] not in signed_failed])
        for append in lost + later:
            self._append_retrying(append)

    @staticmethod
    def naming_stored(audits: list[AuditAppend], writes: list[VersionWrite], docs: list[dict]) -> list[AuditAppend]:
        """The appends with each version written here also named by its sealed bytes as stored
        (`sealing.name_stored`): the one value `docs` holds goes to current and history alike,
        so the verifier can check both by hashing what it reads."""
        stored = {(f"{w.type}/{w.id}/_history/{w.vid}", w.hash): digest
                  for w, doc in zip(writes, docs) if (digest := stored_digest(doc.get("res")))}
        return [replace(a, body=name_stored(a.body, stored)) if stored else a for a in audits]

    def sealed_append(self, append: AuditAppend) -> AuditAppend:
        """The append with its body in stored form (store/sealing.py), so the chain hashes
        what is stored."""
        if append.body.get("sealed") is not None or self.cipher is None:
            return append
        return replace(append, body=self.seal.body_in(append.chain, append.body))

    def _pending_anchor(self, session: ClientSession) -> list[dict]:
        """Entries appended in `session`'s transaction so far (one list per session)."""
        return self._pending.setdefault(id(session), [])

    def note_audit_entries(self, session: ClientSession | None, entries: list[dict]) -> None:
        """Entries just inserted: anchored now, or when `session`'s transaction commits."""
        if session is not None and session.in_transaction:
            self._pending_anchor(session).extend(entries)
        else:
            self._anchored(entries)

    def _anchored(self, entries: list[dict]) -> None:
        """Raise each chain's high-water mark and keep every signed checkpoint outside MongoDB."""
        highest: dict[str, dict] = {}
        for entry in entries:
            record = entry["record"]
            if record not in highest or entry["seq"] > highest[record]["seq"]:
                highest[record] = entry
            checkpoint = (entry.get("body") or {}).get("checkpoint")
            if isinstance(checkpoint, dict) and checkpoint.get("signature"):
                self.anchor.append_head(dict(checkpoint))
        for record, entry in highest.items():
            signed = entry.get("cp_at")
            self.anchor.raise_high_water(record, entry["seq"], entry["hash"], _aware(signed) if signed else None)

    def _known_tips(self, chains: list[str]) -> tuple[dict[str, dict | None], set[str]]:
        """Each chain's tip as the anchor's mark keeps it after the last append (it is raised
        only once an entry has committed), and from the database for the chains it has no mark
        of. A mark behind the database (an append from a host with another anchor) makes the
        insert collide on (record, seq), which `append_audit` retries at the database's tip.
        Also which chains' tips are the mark itself."""
        tips: dict[str, dict | None] = {}
        for chain in chains:
            marked = self.anchor.marked_tip(chain)
            if marked is not None:
                tips[chain] = {"seq": marked.head.seq, "hash": marked.head.hash, "cp_at": marked.signed_at}
        from_marks = set(tips)
        missing = [chain for chain in chains if chain not in from_marks]
        return ({**tips, **self._chain_tips(missing)} if missing else tips), from_marks

    def _chain_tips(self, chains: list[str]) -> dict[str, dict | None]:
        pipeline = [{"$match": {"record": {"$in": chains}}}, {"$sort": {"record": 1, "seq": -1}},
                    {"$group": {"_id": "$record", "seq": {"$first": "$seq"}, "hash": {"$first": "$hash"},
                                "cp_at": {"$first": "$cp_at"}}}]
        found = {d["_id"]: d for d in self.audit.aggregate(pipeline)}
        return {chain: found.get(chain) for chain in chains}

    def _next(self, append: AuditAppend, last: dict | None, marked: bool = False) -> tuple[dict, dict | None]:
        """The entry after `last`, and the signed checkpoint to follow it when one is due
        (`marked`: `last` is the anchor's mark already, so it is not read again)."""
        head = audit_chain.ChainHead(last["seq"], last["hash"]) if last else None
        mark = None if marked else self.anchor.high_water(append.chain)
        if mark is not None and (head is None or mark.seq > head.seq):
            # The chain reached `mark` once (marks are raised only after the entry committed):
            # either this read saw an older snapshot, and the next entry links to `mark` exactly,
            # or the entries after our tip were deleted, and their seqs are never reused (the
            # verifier reports the gap).
            head = mark
        checkpoint_at = _aware(last["cp_at"]) if last and last.get("cp_at") else None
        entry = audit_chain.next_entry(append.chain, head, append.body)
        now = datetime.now(timezone.utc)
        due = append.checkpoint or checkpoint_at is None or now - checkpoint_at >= CHECKPOINT_INTERVAL
        if self.signing_key is None or not due:
            return dict(entry, cp_at=checkpoint_at), None
        tip = audit_chain.ChainHead(entry["seq"], entry["hash"])
        checkpoint = audit_chain.next_checkpoint_entry(self.signing_key, append.chain, tip, audit_chain.iso_instant(now))
        return dict(entry, cp_at=now), dict(checkpoint, cp_at=now)

    def _insert_unordered(self, docs: list[dict]) -> set[str]:
        """Insert independent entries (one per chain); the chains whose entry lost a race."""
        if not docs:
            return set()
        if len(docs) == 1:  # the usual case; insert_one is the cheaper command for mongod
            try:
                self.audit.insert_one(docs[0])
            except DuplicateKeyError:
                return {docs[0]["record"]}
            return set()
        try:
            self.audit.insert_many(docs, ordered=False)
        except BulkWriteError as error:
            errors = error.details.get("writeErrors", [])
            if any(e.get("code") != 11000 for e in errors):
                raise
            return {docs[e["index"]]["record"] for e in errors}
        return set()

    def _append_retrying(self, append: AuditAppend) -> None:
        for attempt in range(_RETRIES):
            try:
                self._append(None, append)
                return
            except DuplicateKeyError:
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(min(0.001 * (attempt + 1), 0.02))

    def _write_version(self, session: ClientSession, write: VersionWrite, doc: dict | None = None) -> None:
        doc = doc if doc is not None else self.seal.envelope(write)
        if write.expected is None:
            try:
                self.current.insert_one(doc, session=session)
            except DuplicateKeyError as exc:
                raise _duplicate(exc, write) from None
        else:
            try:
                found = self.current.find_one_and_replace(  # the record id: the shard key (DESIGN "Scale")
                    {"_id": doc["_id"], "vid": write.expected, "record": write.record}, doc, session=session,
                    return_document=ReturnDocument.BEFORE, projection={"_id": 1},
                )
            except DuplicateKeyError as exc:
                raise _duplicate(exc, write) from None
            if found is None:
                raise precondition_failed(
                    f"{write.type}/{write.id} is no longer at version {write.expected}; read it again and retry"
                )
        history = dict(doc, _id=f"{write.type}/{write.id}/{write.vid}")
        self.history.insert_one(history, session=session)

    def _append(self, session: ClientSession | None, append: AuditAppend) -> dict:
        """Add one entry (and a signed checkpoint when due) at the tip of the record's chain."""
        append = self.sealed_append(append)
        last = self.audit.find_one({"record": append.chain}, sort=[("seq", DESCENDING)], session=session)
        entry, checkpoint = self._next(append, last)
        self.audit.insert_one(entry, session=session)
        inserted = [entry]
        if checkpoint is not None:
            try:
                self.audit.insert_one(checkpoint, session=session)
                inserted.append(checkpoint)
            except DuplicateKeyError:
                if session is not None:
                    raise
                # another writer took the next place first; the next append signs instead
        self.note_audit_entries(session, inserted)
        return entry

    # --- reads --------------------------------------------------------------------------

    def _version(self, doc: dict) -> Version:
        """A stored document as a Version: opened with its record's key; 410 once erased."""
        return self.seal.version(doc)

    def _context_of(self, doc: dict) -> RecordContext:
        """A document as an aggregate brought it: opened, with its `_STATE_LOOKUP` state and the
        consents `_consent_stages` looked up (none when they were not asked)."""
        return RecordContext(self._version(doc), (doc.get("_state") or [None])[0],
                             [self._version(c) for c in doc.get("_consents", ())])

    def read_in_context(self, resource_type: str, resource_id: str, vid: int | None = None) -> RecordContext:
        """A resource (current, or version `vid`) with its record's custody state and consents,
        in one round trip, so a read costs this and its audit insert (whose chain tip is the
        anchor's mark: `_known_tips`)."""
        collection = self.current if vid is None else self.history
        key = f"{resource_type}/{resource_id}" if vid is None else f"{resource_type}/{resource_id}/{vid}"
        pipeline = [
            {"$match": {"_id": key}},
            {"$project": _VERSION},
            _STATE_LOOKUP,
            *_consent_stages(),
        ]
        docs = list(collection.aggregate(pipeline))
        if not docs:
            return RecordContext(None, None, [])
        return self._context_of(docs[0])

    def record_states(self, records: list[str]) -> dict[str, dict]:
        """Custody state of many records in one query (a search's results)."""
        if not records:
            return {}
        return {d["_id"]: d for d in self.records.find({"_id": {"$in": records}}, _STATE_FIELDS)}

    def consents_of_records(self, records: list[str]) -> dict[str, list[Version]]:
        found: dict[str, list[Version]] = {r: [] for r in records}
        if records:
            for doc in self.current.find({"type": "Consent", "record": {"$in": records}}, _VERSION):
                found[doc["record"]].append(self._version(doc))
        return found

    def move_custody_of_versions(self, session: ClientSession, record: str, custodian: str | None) -> None:
        """Keep the searchable `custodian` of every current document in step with custody."""
        self.current.update_many({"record": record}, {"$set": {"custodian": custodian}}, session=session)

    def share_within(self, session: ClientSession, records: Iterable[str | None]) -> None:
        """Keep the searchable `shared` of every current document of each record in step with
        its Consents: every recipient key (`recipients`) any current Consent of the record
        names, so a school's or a trust's search finds the records shared with it through one
        index, as an LA's finds its custody through `custodian`, not through a list of every
        record a consent names it in. A superset, like `custodian`: each match is still decided
        against the consents fetched with it, so a consent since expired or withdrawn only
        widens what is decided, never what is shown.

        Called in every transaction that writes versions of a record, after the writes: a new
        or replaced document takes the record's sharing, and a Consent written here changes
        it for all. Each call also raises the record state's `sharing_rev`, so two such
        transactions on one record always write the same document and the later one conflicts
        and is retried from a fresh snapshot: snapshot isolation alone would let a plain write
        keep the sharing its snapshot saw while a concurrent Consent changed it. (The record's
        audit chain does not serialise them: an entry may link to the anchor's mark, past the
        tip its snapshot saw, so both transactions can append without colliding.)"""
        for record in sorted({r for r in records if r}):
            consents = self.current.find({"record": record, "type": "Consent"}, {"recipients": 1}, session=session)
            named = sorted({key for consent in consents for key in consent.get("recipients") or ()})
            self.current.update_many({"record": record, "shared": {"$ne": named}}, {"$set": {"shared": named}},
                                     session=session)
            self.records.update_one({"_id": record}, {"$inc": {"sharing_rev": 1}}, session=session)

    def read(self, resource_type: str, resource_id: str) -> Version | None:
        doc = self.current.find_one({"_id": f"{resource_type}/{resource_id}"}, _VERSION)
        return self._version(doc) if doc else None

    def read_version(self, resource_type: str, resource_id: str, vid: int) -> Version | None:
        doc = self.history.find_one({"_id": f"{resource_type}/{resource_id}/{vid}"}, _VERSION)
        return self._version(doc) if doc else None

    def history_of(self, resource_type: str, resource_id: str, offset: int, count: int) -> tuple[int, list[Version]]:
        query = {"type": resource_type, "rid": resource_id}
        total = self.history.count_documents(query)
        docs = self.history.find(query, _VERSION).sort("vid", DESCENDING).skip(offset).limit(count)
        return total, [self._version(d) for d in docs]

    def history_search(self, types: list[str], visibility: Visibility, since: datetime | None,
                       offset: int, count: int) -> tuple[int, list[Version]]:
        """Type- and system-level history (R4 http §3.1.0.11), newest first, limited to what
        `visibility` allows. History rows keep the custodian they were written under, so an
        LA's custody is matched by the records it holds now, from the custody state."""
        clauses: list[dict] = [{"type": {"$in": types}}, {"erased": {"$exists": False}}]
        if "Subscription" in types:
            clauses.append({"$or": [{"type": {"$ne": "Subscription"}}, {"owner": visibility.owner}]})
        if since is not None:
            clauses.append({"updated": {"$gte": since}})
        if not visibility.everything:
            held = visibility.custodian
            now = replace(visibility, custodian=None)
            allowed = _visibility_filter(now)
            if held:
                records = self.records.distinct("_id", {"custodian": held, "transferred_out": {"$ne": True}})
                allowed = {"$or": [allowed, {"record": {"$in": records}}]}
            clauses.append(allowed)
        query = {"$and": clauses}
        total = self.history.count_documents(query)
        docs = self.history.find(query, _VERSION).sort([("updated", DESCENDING), ("_id", ASCENDING)]).skip(offset).limit(count)
        return total, [self._version(d) for d in docs]

    def versions_of_record(self, record: str) -> Iterator[Version]:
        for doc in self.history.find({"record": record}, _VERSION).sort([("type", 1), ("rid", 1), ("vid", 1)]):
            yield self._version(doc)

    def current_of_record(self, record: str) -> list[Version]:
        return [self._version(d) for d in self.current.find({"record": record}, _VERSION).sort([("type", 1), ("rid", 1)])]

    def current_of_type(self, record: str, resource_type: str) -> list[Version]:
        return [self._version(d) for d in self.current.find({"record": record, "type": resource_type}, _VERSION)]

    def version_at(self, resource_type: str, resource_id: str, at: datetime) -> Version | None:
        """The version that was current at `at` (the newest written at or before it)."""
        doc = self.history.find_one({"type": resource_type, "rid": resource_id, "updated": {"$lte": at}}, _VERSION,
                                    sort=[("vid", DESCENDING)])
        return self._version(doc) if doc else None

    def active_subscriptions(self, resource_types: set[str]) -> list[Version]:
        """From memory, kept in step by a change stream (no query per commit)."""
        return self.subscriptions.active(resource_types)

    def note_delivery(self, resource_type: str, resource_id: str, delivered: bool) -> int:
        """Count a subscription's failed notifications in a row on its current document (one
        atomic update, so every API process adds to the same tally; a success, or any new
        version the owner writes, starts it again). Returns the count now."""
        change = {"$set": {"failures": 0}} if delivered else {"$inc": {"failures": 1}}
        doc = self.current.find_one_and_update({"_id": f"{resource_type}/{resource_id}", "deleted": {"$exists": False}},
                                               change, projection={"failures": 1}, return_document=ReturnDocument.AFTER)
        return int((doc or {}).get("failures", 0))

    def delete_subscription(self, current: Version, at: datetime, audit: AuditAppend) -> Version:
        """FHIR delete of a Subscription (R4 http §3.1.0.7): in one transaction the current
        document becomes a delete marker one version on (no content, no search index, so no
        search or notification finds it), the marker joins its history (earlier versions stay
        readable, `_history` shows the delete), and the audit entry is appended. A Subscription
        is no child's record, so nothing statutory is deleted. 412 when it moved meanwhile."""
        marker = {"_id": f"{current.type}/{current.id}", "type": current.type, "rid": current.id,
                  "vid": current.vid + 1, "updated": at, "record": None, "section": None, "hash": "",
                  "custodian": None, "owner": current.owner, "owner_actor": current.owner_actor, "deleted": True}

        def work(session: ClientSession) -> None:
            replaced = self.current.find_one_and_replace(
                {"_id": marker["_id"], "vid": current.vid, "deleted": {"$exists": False}}, marker,
                session=session, projection={"_id": 1})
            if replaced is None:
                raise precondition_failed(f"{marker['_id']} is no longer at version {current.vid}; read it again")
            self.history.insert_one(dict(marker, _id=f"{marker['_id']}/{marker['vid']}"), session=session)
            self._append(session, audit)

        self.in_transaction(work)
        self.subscriptions.refresh()  # this process stops notifying at once; others by the change stream
        return self._version(marker)

    def documents_of_record(self, record: str) -> dict[str, bytes]:
        return {d["_id"]: self.seal.bytes_out(d["data"], d["_id"]) for d in self.db.documents.find({"record": record})}

    def outbound_transfer(self, transfer_id: str) -> bytes | None:
        doc = self.db.outbound_transfers.find_one({"_id": transfer_id})
        if doc is None:
            return None
        return self._outbound.read_all(str(doc["file"]))

    def keep_outbound_transfer(self, transfer_id: str, body: bytes, record: str | None = None) -> bytes:
        """The signed bytes of a transfer, kept (sealed under the record's key, like media) so
        every delivery attempt sends the same ones."""
        stored = self._outbound.save(body, io.BytesIO(), len(body), "application/fhir+json", record or "")
        try:
            self.db.outbound_transfers.insert_one({"_id": transfer_id, "file": ObjectId(stored.file_id)})
        except DuplicateKeyError:
            self._outbound.delete(stored.file_id)
            return self.outbound_transfer(transfer_id) or body
        return body

    def media_info(self, resource_type: str, resource_id: str, vid: int) -> dict | None:
        doc = self.history.find_one({"_id": f"{resource_type}/{resource_id}/{vid}"}, {"media": 1})
        return (doc or {}).get("media")

    def stored_document(self, key: str) -> bytes | None:
        doc = self.db.documents.find_one({"_id": key})
        return self.seal.bytes_out(doc["data"], "the issued document") if doc else None

    def store_document(self, key: str, record: str, data: bytes, sha256: str) -> bytes:
        """Keep an issued document once; a concurrent first render keeps the first copy."""
        try:
            self.db.documents.insert_one({"_id": key, "record": record, "data": self.seal.bytes_in(record, data), "sha256": sha256,
                                          "stored": datetime.now(timezone.utc)})
        except DuplicateKeyError:
            pass
        return self.stored_document(key) or data

    def read_many(self, refs: list[str]) -> dict[str, Version]:
        if not refs:
            return {}
        found = self.current.find({"_id": {"$in": refs}, "erased": {"$exists": False}, "deleted": {"$exists": False}},
                                  _VERSION)
        return {d["_id"]: self._version(d) for d in found}

    def search(self, query: SearchQuery, visibility: Visibility) -> tuple[int, list[Version]]:
        total, found = self.search_in_context(query, visibility)
        return total, [c.version for c in found if c.version is not None]

    def search_in_context(self, query: SearchQuery, visibility: Visibility) -> tuple[int, list[RecordContext]]:
        """A page of matches, each with its record's custody state (and, when the filter is a
        superset still to be decided, its consents) in one aggregate, and the
        total: counted only when the first page is full, since a page that is not full from
        offset 0 already is the total (FHIR R4 search: Bundle.total)."""
        mongo_filter = _search_filter(query, visibility, self.seal)
        if query.summary_count or query.count == 0:
            return self.current.count_documents(mongo_filter), []
        pipeline = [{"$match": mongo_filter}, {"$sort": dict(_sort_spec(query.sort))}]
        if query.offset:
            pipeline.append({"$skip": query.offset})
        pipeline += [{"$limit": query.count}, {"$project": _VERSION}, _STATE_LOOKUP]
        if not visibility.exact and visibility.custodian is None:
            pipeline += _consent_stages()
        docs = list(self.current.aggregate(pipeline))
        found = [self._context_of(d) for d in docs]
        if not visibility.exact and visibility.custodian is not None:
            found = self._with_consents_beyond_custody(docs, found, visibility.custodian)
        if (query.offset == 0 and len(found) < query.count) or not visibility.exact:
            return len(found), found  # a superset's full page is asked again exactly
        return self.current.count_documents(mongo_filter), found

    def _with_consents_beyond_custody(self, docs: list[dict], found: list[RecordContext],
                                      custodian: str) -> list[RecordContext]:
        """An LA's superset page with the Consents of the matches outside its custody (shared
        with it, or its own family's): custody decides without a consent, so the page's
        aggregate looks none up, and `consents_of_records` fetches them only when such a match
        is there. (A lookup per match of an LA's page cost mongod about as much as its state
        lookup.) Custody is the documents' own `custodian`, as the search filter matched it."""
        outside = sorted({d["record"] for d in docs if d.get("record") and d.get("custodian") != custodian})
        if not outside:
            return found
        consents = self.consents_of_records(outside)
        return [replace(context, consents=consents[d["record"]]) if d.get("record") in consents else context
                for d, context in zip(docs, found)]

    # --- custody state ------------------------------------------------------------------

    def ids_with_identifier(self, resource_type: str, token: str) -> list[str]:
        """Ids of current resources of a type carrying an identifier token (`system|value`),
        whoever may see them: for uniqueness rules such as one record per NHS number."""
        value = self.seal.token_values("idx.identifier", [token])[0] if self.cipher else token
        return [d["rid"] for d in self.current.find({"type": resource_type, "idx.identifier": value}, {"rid": 1})]

    def record_state(self, record: str) -> dict | None:
        return self.records.find_one({"_id": record})

    def records_of_parent(self, reference: str) -> list[str]:
        return [d["_id"] for d in self.records.find({"parents": reference}, {"_id": 1})]

    def consents_naming(self, recipients: list[str]) -> list[tuple[str | None, str, int, str]]:
        """(record, id, version, hash) of every Consent naming a recipient: keys only, since
        a search asks this on every request and a version, once parsed, never changes."""
        return [(d.get("record"), d["rid"], d["vid"], d.get("hash", ""))
                for d in self.current.find({"type": "Consent", "recipients": {"$in": recipients}, "erased": {"$exists": False}},
                                           {"_id": 0, "record": 1, "rid": 1, "vid": 1, "hash": 1})]

    def consents_of_record(self, record: str) -> list[Version]:
        return [self._version(d) for d in self.current.find({"type": "Consent", "record": record}, _VERSION)]

    # --- audit --------------------------------------------------------------------------

    def audit_entries(self, chain: str, offset: int = 0, count: int = 0, newest_first: bool = False) -> Iterator[dict]:
        cursor = self.audit.find({"record": chain}, {"_id": 0, "cp_at": 0}).sort("seq", DESCENDING if newest_first else ASCENDING)
        if offset:
            cursor = cursor.skip(offset)
        if count:
            cursor = cursor.limit(count)
        for entry in cursor:
            yield self.seal.entry_out(entry)

    def audit_search(self, chain: str, seq: int | None = None, agent: str | None = None,
                     at_range: tuple[str, str] | None = None, offset: int = 0, count: int = 20) -> tuple[int, list[dict]]:
        """Entries of one chain, newest first; `agent` matches the user, organisation or subject."""
        query: dict = {"record": chain}
        if seq is not None:
            query["seq"] = seq
        if agent:
            reference = str(agent)
            query["$or"] = [{"body.agent.fhirUser": reference}, {"body.agent.organization": reference},
                            {"body.agent.sub": reference}]
        if at_range:
            query["body.at"] = {"$gte": at_range[0], "$lt": at_range[1]}
        total = self.audit.count_documents(query)
        cursor = self.audit.find(query, {"_id": 0, "cp_at": 0}).sort("seq", DESCENDING).skip(offset).limit(count)
        return total, [self.seal.entry_out(e) for e in cursor]

    def chains(self) -> list[str]:
        return sorted(self.audit.distinct("record"))

    def version_digests(self, record: str, current: bool = False) -> Iterator[tuple]:
        """Every stored version of a record (history, or the current documents) as stored:
        (type, rid, vid, sha256 re-hashed from clear content or None, recorded sha256, sha256 of
        the sealed bytes or None). Sealed content is not opened (verify_reader)."""
        return verify_reader.version_digests(self.current if current else self.history, record,
                                             sealed=self.cipher is not None)

    def record_reading(self, record: str) -> tuple[Iterable[tuple], Iterable[tuple], Iterator]:
        """What verifying a record reads: every stored version, history and current, as
        `version_digests` yields them, and the chain as `hashed_entries` does. A long sealed
        record's versions, and the last part of its chain (`versions_apart.chain_share`), are
        read in a child process of their own, with this repository's connection string, while
        this process reads the chain (store/versions_apart.py says why and how); else here,
        when the caller iterates. A chain this process read whole before is read here again, as
        its memo holds it (`verify_reader.remembers_chain`)."""
        entries = self._chain_length(record) if self.cipher is not None and self.uri is not None else 0
        if entries < versions_apart.APART_FROM:
            return (self.version_digests(record), self.version_digests(record, current=True),
                    self.hashed_entries(record))
        first = None if verify_reader.remembers_chain(record) else versions_apart.chain_share(entries)
        reading = versions_apart.start(self.uri, self.db.name, record,
                                       lambda name: self.version_digests(record, current=name == "current"), first)
        entries_read = verify_reader.hashed_entries(self.audit, record, first, reading.chain)
        return reading.history(), reading.current(), entries_read

    def _chain_length(self, record: str) -> int:
        """About how many entries `record`'s chain holds, to choose how to read it (never to
        judge it): the high-water mark kept outside the database, which costs no query (a
        count of a long chain in a cold cache took 0.1 s), else a count."""
        mark = self.anchor.high_water(record)
        return mark.seq if mark is not None else self.audit.count_documents({"record": record})

    def opened_digests(self, record: str, ids: list[str], current: bool = False) -> Iterator[tuple]:
        """The stored versions `ids` (`_id`s, of `record`) opened with the record's key and
        re-hashed from their content, as `version_digests` yields them: the verifier's way for a
        version the chain does not name by its stored bytes."""
        opener = lambda value: self.seal.open(value, record)  # noqa: E731
        return verify_reader.opened_digests(self.current if current else self.history, record, ids, opener)

    # --- retention and erasure (crypto-shredding) --------------------------------------------

    def erasure(self, record: str) -> dict | None:
        """Who erased the record, when and why (None while it is readable), and whether the
        record came here by transfer (its earlier versions were sealed again on arrival)."""
        state = self.records.find_one({"_id": record}, {"erased": 1, "transferred_from": 1}) or {}
        if not state.get("erased"):
            return None
        return {**state["erased"], "received_by_transfer": bool(state.get("transferred_from"))}

    def retention_state(self, record: str) -> dict:
        """The record's birth date, legal hold and erasure, for the retention rule."""
        return self.records.find_one({"_id": record}, {"birth_date": 1, "legal_hold": 1, "erased": 1,
                                                       "custodian": 1}) or {}

    def retention_candidates(self, custodian: str) -> list[dict]:
        """The records in `custodian`'s custody that are not erased, with birth date and hold."""
        return list(self.records.find({"custodian": custodian, "transferred_out": {"$ne": True},
                                       "erased": {"$exists": False}},
                                      {"birth_date": 1, "legal_hold": 1}))

    def place_legal_hold(self, record: str, hold: dict) -> bool:
        """A legal hold blocks erasure until lifted (litigation, an inquiry, a complaint)."""
        done = self.records.update_one({"_id": record, "erased": {"$exists": False}}, {"$set": {"legal_hold": hold}})
        return done.matched_count == 1

    def lift_legal_hold(self, record: str) -> bool:
        return self.records.update_one({"_id": record}, {"$unset": {"legal_hold": ""}}).modified_count == 1

    def erase_record(self, record: str, erasure: dict, audit: AuditAppend) -> None:
        """Crypto-shred one child's record: in one transaction mark the custody state, every
        current and history document erased (so every path answers 410, search omits it, and
        the search tokens go, the NHS number's too, so it no longer blocks a new record: a token
        kept would be a keyed hash of the number outliving the erasure) and append the erasure to the chain, wholly clear; then destroy the
        record's data key, after which no copy of its content (backups included) can be opened.

        Refused (409) under a legal hold; a second call finishes an erasure whose key deletion
        was interrupted. The clear audit chain, the recorded version hashes and ids remain."""
        assert self.cipher is not None, "erasure destroys a key: this repository has none"

        def work(session: ClientSession) -> bool:
            state = self.records.find_one({"_id": record}, {"legal_hold": 1, "erased": 1}, session=session)
            if state is None:
                raise gone(f"Patient/{record}")
            if state.get("erased"):
                return False
            if state.get("legal_hold"):
                raise conflict(f"Patient/{record} is under a legal hold ({state['legal_hold'].get('reason', '')}); "
                               "lift it before erasing", "business-rule")
            self.records.update_one({"_id": record}, {"$set": {"erased": erasure}, "$unset": {
                "birth_date": "", "parents": "", "representative": "", "lacks_capacity": ""}}, session=session)
            for collection in (self.current, self.history):
                collection.update_many({"record": record}, {"$set": {"erased": True},
                                                             "$unset": {"idx": "", "nhs_token": ""}}, session=session)
            self._append(session, audit)
            return True

        fresh = self.in_transaction(work)
        destroyed = self.cipher.destroy(key_name(record))
        if not fresh and not destroyed:
            raise gone(f"Patient/{record}")

    def hashed_entries(self, chain: str) -> Iterator:
        """A chain in seq order for verify_chain, each entry's hash recomputed (verify_reader)."""
        return verify_reader.hashed_entries(self.audit, chain)

    def latest_checkpoint(self, record: str) -> dict | None:
        """The newest signed checkpoint stored in a record's chain."""
        entry = self.audit.find_one({"record": record, "body.action": audit_chain.CHECKPOINT_ACTION},
                                    {"body.checkpoint": 1}, sort=[("seq", DESCENDING)])
        return ((entry or {}).get("body") or {}).get("checkpoint")

    def has_record(self, record: str) -> bool:
        """Is anything of `record` stored (custody state, a version or an audit entry)?"""
        return bool(self.records.find_one({"_id": record}, {"_id": 1})
                    or self.audit.find_one({"record": record}, {"_id": 1})
                    or self.history.find_one({"record": record}, {"_id": 1}))

    def version_hashes(self, record: str) -> Iterator[tuple[str, str]]:
        for doc in self.history.find({"record": record}, {"type": 1, "rid": 1, "vid": 1, "hash": 1}):
            yield f"{doc['type']}/{doc['rid']}/_history/{doc['vid']}", doc["hash"]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


#: A version as read: everything but its search index (blind tokens are many and never read back).
_VERSION = {"idx": 0}

#: What an access decision reads of a record's custody state (consent.model.RecordState).
_STATE_FIELDS = {f: 1 for f in ("custodian", "birth_date", "parents", "lacks_capacity", "representative",
                                "transferred_out", "former_custodians")}

#: Each result's record's custody state, fetched with it: the whole state document (a few
#: fields), not a projection of it, since a `$lookup` with no sub-pipeline costs mongod less
#: (each read's and search's aggregate: about 0.1 ms less).
_STATE_LOOKUP = {"$lookup": {"from": "records", "localField": "record", "foreignField": "_id", "as": "_state"}}


def _is_chain_race(exc: DuplicateKeyError) -> bool:
    return "audit" in str(exc)


def is_nhs_number_race(exc: DuplicateKeyError) -> bool:
    """Did the unique index on Patients' NHS number tokens refuse this write?"""
    details = exc.details or {}
    return "nhs_token" in (details.get("keyPattern") or {}) or NHS_NUMBER_INDEX in str(details.get("errmsg", exc))


def _duplicate(exc: DuplicateKeyError, write: VersionWrite) -> FhirError:
    """The 409 a write refused by a unique index gets: the NHS number's own answer (the same
    as the early check's), or, for the same id created twice, that it exists."""
    if is_nhs_number_race(exc):
        return nhs_number_taken(nhs_numbers(write.resource) or ["(withheld)"])
    return conflict(f"{write.type}/{write.id} already exists")


def _search_filter(query: SearchQuery, visibility: Visibility, seal: Sealing | None = None) -> dict:
    seal = seal or Sealing(None)
    clauses: list[dict] = [{"type": query.resource_type}, {"erased": {"$exists": False}}]
    clauses.extend(_criterion_filter(c, seal) for c in query.criteria)
    if query.resource_type == "Subscription":
        clauses.extend([{"owner": visibility.owner}, {"deleted": {"$exists": False}}])
    if not visibility.everything:
        clauses.append(_visibility_filter(visibility))
    return {"$and": clauses}


def _visibility_filter(visibility: Visibility) -> dict:
    allowed: list[dict] = []
    if visibility.custodian:
        allowed.append({"custodian": visibility.custodian})
    if visibility.shared_with:
        allowed.append({"shared": {"$in": list(visibility.shared_with)}})
    if visibility.directory:
        allowed.append({"record": None})
    if visibility.consents:
        allowed.append({"_id": {"$in": sorted(visibility.consents)}})
    owners, in_records = visibility.addressed
    if owners:
        addressed: dict = {"type": "Task", "idx.owner": {"$in": list(owners)}}
        if in_records:
            addressed["record"] = {"$in": list(in_records)}
        allowed.append(addressed)
    everything = [r for r, sections in visibility.per_record.items() if sections is None]
    if everything:
        allowed.append({"record": {"$in": everything}})
    # Records seen through consents mostly share a few section sets (a school's A and B): one
    # clause per distinct set, not one per record, keeps the filter small as consents grow.
    by_sections: dict[frozenset[str], list[str]] = {}
    for record, sections in visibility.per_record.items():
        if sections is not None:
            by_sections.setdefault(frozenset(sections), []).append(record)
    for sections, records in by_sections.items():
        allowed.append({"record": records[0] if len(records) == 1 else {"$in": sorted(records)},
                        "section": {"$in": sorted(sections)}})
    return {"$or": allowed} if allowed else {"_id": {"$exists": False}}


def _criterion_filter(criterion: Criterion, seal: Sealing) -> dict:
    if criterion.kind == "id":
        return {"rid": {"$in": [str(v) for v in criterion.values]}}
    if criterion.kind == "date":
        field_name = "updated" if criterion.field == "_lastUpdated" else criterion.field
        return {"$or": [_date_clause(field_name, v, criterion.field == "_lastUpdated") for v in criterion.values]}
    if criterion.kind == "string":
        if seal.is_blind(criterion.field, "string"):
            return seal.string_clause(criterion.field, criterion.mode, [str(v) for v in criterion.values])
        return _string_filter(criterion)
    values = [str(v) for v in criterion.values]
    if seal.is_blind(criterion.field, criterion.kind):
        values = seal.token_values(criterion.field, values)  # type: ignore[assignment]
    if criterion.negate:
        return {criterion.field: {"$nin": values}}
    return {criterion.field: {"$in": values}}


def _string_filter(criterion: Criterion) -> dict:
    """FHIR string search (R4 search §3.1.1.5.3) over the normalised index: starts-with is an
    anchored prefix regex (an index range), :contains unanchored, :exact the text as written.
    Every value is escaped, so a client's text is never a pattern."""
    values = [str(v) for v in criterion.values]
    if criterion.mode == "exact":
        return {criterion.field: {"$in": values}}
    anchor = "" if criterion.mode == "contains" else "^"
    return {criterion.field: {"$in": [re.compile(anchor + re.escape(v)) for v in values]}}


def _date_clause(field_name: str, value: tuple[str, datetime, datetime], point: bool) -> dict:
    """FHIR R4 date prefixes over [lo, hi) ranges; `_lastUpdated` is a point in time."""
    prefix, lo, hi = value
    if point:
        conditions = {
            "eq": {"$gte": lo, "$lt": hi}, "lt": {"$lt": lo}, "le": {"$lt": hi}, "gt": {"$gte": hi},
            "ge": {"$gte": lo}, "sa": {"$gte": hi}, "eb": {"$lt": lo},
        }
        if prefix == "ne":
            return {"$or": [{field_name: {"$lt": lo}}, {field_name: {"$gte": hi}}]}
        return {field_name: conditions[prefix]}
    element = {
        "eq": {"lo": {"$gte": lo}, "hi": {"$lte": hi}}, "lt": {"lo": {"$lt": lo}}, "le": {"lo": {"$lt": hi}},
        "gt": {"hi": {"$gt": hi}}, "ge": {"hi": {"$gt": lo}}, "sa": {"lo": {"$gte": hi}}, "eb": {"hi": {"$lte": lo}},
    }
    if prefix == "ne":
        return {field_name: {"$not": {"$elemMatch": element["eq"]}}}
    return {field_name: {"$elemMatch": element[prefix]}}


def _sort_spec(keys: list[SortKey]) -> list[tuple[str, int]]:
    spec: list[tuple[str, int]] = []
    for key in keys:
        field_name = {"_lastUpdated": "updated", "_id": "rid"}.get(key.field, f"{key.field}.lo")
        spec.append((field_name, DESCENDING if key.descending else ASCENDING))
    spec.append(("_id", ASCENDING))
    if not keys:
        spec.insert(0, ("updated", DESCENDING))
    return spec
