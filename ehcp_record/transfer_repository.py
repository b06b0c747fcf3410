"""Storage for transfers across deployments: the one transaction that imports a record, and
the record of what was received (idempotency). Part of the repository layer (pymongo here only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pymongo.client_session import ClientSession
from pymongo.errors import DuplicateKeyError

from ehcp_record.errors import conflict
from ehcp_record.repository import AuditAppend, Repository, VersionWrite, envelope


@dataclass
class ImportedRecord:
    """Everything a received transfer stores, prepared and checked before the transaction."""

    transfer_id: str
    bundle_sha256: str
    ack: dict
    record: str
    history: list[VersionWrite]
    audit_entries: list[dict]
    record_state: dict
    documents: dict[str, bytes]
    directory: list[VersionWrite]
    new_versions: list[VersionWrite] = field(default_factory=list)
    import_audit: AuditAppend | None = None


class TransferStore:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.received = repo.db.transfers_received

    def received_ack(self, transfer_id: str) -> dict | None:
        return self.received.find_one({"_id": transfer_id})

    def import_record(self, imported: ImportedRecord) -> None:
        """All of it or none of it: versions, chain, custody, documents, and the receipt."""

        def work(session: ClientSession) -> None:
            try:
                self.received.insert_one({"_id": imported.transfer_id, "sha256": imported.bundle_sha256,
                                          "ack": imported.ack, "record": imported.record}, session=session)
            except DuplicateKeyError:
                raise conflict("this transfer has already been received") from None
            if self.repo.current.find_one({"record": imported.record}, {"_id": 1}, session=session):
                raise conflict(f"a record {imported.record} already exists here")
            self._insert_versions(session, imported.history, only_if_absent=False)
            self._insert_versions(session, imported.directory, only_if_absent=True)
            if imported.audit_entries:
                self.repo.audit.insert_many([dict(e) for e in imported.audit_entries], session=session)
            self.repo.records.insert_one({"_id": imported.record, **imported.record_state}, session=session)
            for key, data in imported.documents.items():
                self.repo.db.documents.insert_one({"_id": key, "record": imported.record, "data": data}, session=session)
            for write in imported.new_versions:
                self.repo._write_version(session, write)
            if imported.import_audit is not None:
                self.repo._append(session, imported.import_audit)

        self.repo.in_transaction(work)

    def _insert_versions(self, session: ClientSession, writes: list[VersionWrite], only_if_absent: bool) -> None:
        latest: dict[str, VersionWrite] = {}
        for write in writes:
            key = f"{write.type}/{write.id}"
            if only_if_absent and self.repo.current.find_one({"_id": key}, {"_id": 1}, session=session):
                continue
            doc = envelope(write)
            self.repo.history.insert_one(dict(doc, _id=f"{key}/{write.vid}"), session=session)
            if key not in latest or latest[key].vid < write.vid:
                latest[key] = write
        for write in latest.values():
            self.repo.current.insert_one(envelope(write), session=session)
