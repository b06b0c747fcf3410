"""Storage for transfers across deployments (part of the repository layer: pymongo here only).

Receiving side: the one transaction that imports a record, and the receipt of each transfer
(idempotency: transfer id -> bundle hash, sender, signed acknowledgement).
Sending side: the export (an audit entry and a signed checkpoint that the transferred chain ends
at), and the delivery state (the hash of every bundle sent for a transfer), so that an
acknowledgement of an earlier bundle can be recognised.
"""

from __future__ import annotations

from datetime import datetime, timezone

from pymongo import ASCENDING
from pymongo.client_session import ClientSession
from pymongo.errors import DuplicateKeyError

from ehcp_record.errors import conflict
from ehcp_record.store.repository import Repository, is_nhs_number_race
from ehcp_record.store.versions import AuditAppend, ImportedRecord, VersionWrite  # noqa: F401


def key_of(write: VersionWrite) -> str:
    return f"{write.type}/{write.id}"


class TransferStore:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.received = repo.db.transfers_received
        self.deliveries = repo.db.transfer_deliveries

    # --- receiving ----------------------------------------------------------------------

    def received_ack(self, transfer_id: str) -> dict | None:
        return self.received.find_one({"_id": transfer_id})

    def import_record(self, imported: ImportedRecord) -> None:
        """All of it or none of it: versions, chain, custody, documents, and the receipt."""

        def work(session: ClientSession) -> None:
            try:
                self.received.insert_one({"_id": imported.transfer_id, "sha256": imported.bundle_sha256,
                                          "sender": imported.sender, "ack": imported.ack, "record": imported.record},
                                         session=session)
            except DuplicateKeyError:
                raise conflict("this transfer has already been received") from None
            if self.repo.current.find_one({"record": imported.record}, {"_id": 1}, session=session):
                raise conflict(f"a record {imported.record} already exists here (a plan coming back to a deployment "
                               "that held it before is not supported yet)")
            self._insert_versions(session, imported.history, only_if_absent=False)
            self._insert_versions(session, imported.directory, only_if_absent=True)
            if imported.audit_entries:
                self.repo.audit.insert_many([dict(e) for e in imported.audit_entries], session=session)
                self.repo.note_audit_entries(session, [dict(e) for e in imported.audit_entries])
            self.repo.records.insert_one({"_id": imported.record, **imported.record_state}, session=session)
            for key, data in imported.documents.items():
                self.repo.db.documents.insert_one({"_id": key, "record": imported.record,
                                                   "data": self.repo.seal.bytes_in(imported.record, data)}, session=session)
            docs = [self.repo.seal.envelope(write) for write in imported.new_versions]
            for write, doc in zip(imported.new_versions, docs):
                self.repo._write_version(session, write, doc)
            if imported.import_audit is not None:
                [append] = self.repo.naming_stored([imported.import_audit], imported.new_versions, docs)
                self.repo._append(session, append)
            self.repo.move_custody_of_versions(session, imported.record, imported.record_state.get("custodian"))
            self.repo.share_within(session, [imported.record])

        self.repo.in_transaction(work)

    def _insert_versions(self, session: ClientSession, writes: list[VersionWrite], only_if_absent: bool) -> None:
        """History rows, and each resource's newest as its current document: the very value
        sealed for that history row (sealed once), so current and newest history hold the same
        stored bytes, as the verifier expects of every record."""
        latest: dict[str, tuple[VersionWrite, dict]] = {}
        for write in writes:
            key = f"{write.type}/{write.id}"
            if only_if_absent and self.repo.current.find_one({"_id": key}, {"_id": 1}, session=session):
                continue
            doc = self.repo.seal.envelope(write)
            self.repo.history.insert_one(dict(doc, _id=f"{key}/{write.vid}"), session=session)
            if key not in latest or latest[key][0].vid < write.vid:
                latest[key] = (write, doc)
        for write, doc in latest.values():
            try:
                self.repo.current.insert_one(doc, session=session)
            except DuplicateKeyError as exc:
                if not is_nhs_number_race(exc):
                    raise
                # One record per NHS number holds here too: a child already recorded on this
                # deployment under another record is not imported a second time beside it.
                raise conflict("this deployment already holds another record of the child with the NHS number of the "
                               f"transferred {key_of(write)}; nothing was imported: the two local authorities must "
                               "reconcile the records before the transfer is sent again", "duplicate") from None

    # --- sending ------------------------------------------------------------------------

    def version_count(self, record: str, excluding: str) -> int:
        """How many versions the record holds, not counting one resource's (the transfer Task's
        own bookkeeping): history is insert-only, so a change anywhere else raises the count."""
        resource_type, _, resource_id = excluding.partition("/")
        return self.repo.history.count_documents(
            {"record": record, "$nor": [{"type": resource_type, "rid": resource_id}]})

    def export_chain(self, record: str, body: dict) -> list[dict]:
        """Record the export in the chain with a signed checkpoint right after it, and return the
        chain up to that checkpoint: the transferred chain ends at a signature, whatever is
        appended here later (reads go on while the transfer waits)."""

        def work(session: ClientSession) -> int:
            return self.repo._append(session, AuditAppend(record, body, checkpoint=True))["seq"]

        seq = self.repo.in_transaction(work)
        last = seq + 1 if self.repo.signing_key is not None else seq
        cursor = self.repo.audit.find({"record": record, "seq": {"$lte": last}}, {"_id": 0, "cp_at": 0})
        return list(cursor.sort("seq", ASCENDING))

    def note_sent(self, transfer_id: str, sha256: str, key: str) -> None:
        """Remember every bundle built for a transfer: the receiver may hold any one of them."""
        self.deliveries.update_one({"_id": transfer_id},
                                   {"$set": {f"bundles.{sha256}": {"key": key, "at": datetime.now(timezone.utc)}}},
                                   upsert=True)

    def sent(self, transfer_id: str) -> dict[str, str]:
        """Bundle hash -> storage key of every bundle built for this transfer."""
        doc = self.deliveries.find_one({"_id": transfer_id}) or {}
        return {sha: value["key"] for sha, value in (doc.get("bundles") or {}).items()}
