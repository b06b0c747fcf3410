"""`POST /fhir/$receive-transfer`: take in a child's record sent by another deployment.

Nothing is stored until the signature (trust list), the sender (it must hold custody), the
destination (an LA this deployment serves) and the integrity of every version against the
sender's audit chain have all been checked. Then one transaction stores the versions as they
were (ids, versionIds, lastUpdated), the chain (continued here from the sender's head), the
issued documents, and custody for the destination LA.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from datetime import datetime

from consent.model import Actor, RecordState
from consent.scopes import parse_scopes
from consent.sections import section_of
from ehcp_record.audit import entries as audit
from ehcp_record.audit import chain as audit_chain
from ehcp_record.audit import verify as audit_verify
from ehcp_record.fhir import dates as fhir_dates
from ehcp_record.access.caller import Caller
from ehcp_record.errors import FhirError, invalid, unprocessable
from ehcp_record.fhir.model import parse_resource
from ehcp_record.access.scoped import RecordStore, ScopedStore
from ehcp_record.store.versions import AuditAppend, Version, VersionWrite
from ehcp_record.workflow.task_values import TASK_INPUT_SYSTEM, concept, task_input
from ehcp_record.transfer.service import TransferService, arrival_clocks, is_transfer
from ehcp_record.transfer.remote import (AUDIT_URL, DOCUMENT_PREFIX, MEDIA_PREFIX, STATE_URL, already_received,
                                         check_signature, decode, make_ack, parse_bundle)
from ehcp_record.store.versions import ImportedRecord

_VERSION_URL = re.compile(r"^([A-Za-z]+)/([A-Za-z0-9\-.]{1,64})/_history/([0-9]{1,9})$")


@dataclass
class ReceiveTransfer:
    stores: RecordStore
    transfers: TransferService

    def receive(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
        settings = self.transfers.settings
        peer = check_signature(settings, body, headers)
        digest = hashlib.sha256(body).hexdigest()
        bundle = parse_bundle(body)
        answer = self._replay(bundle["id"], digest, peer.organization)
        if answer is not None:
            return answer
        store, imported = self._check_and_build(bundle, peer.organization, digest)
        try:
            store.import_transfer(imported)
        except Exception as failure:
            self._discard_media(store, imported)
            if isinstance(failure, FhirError):  # a concurrent retry of the same delivery got there first?
                answer = self._replay(bundle["id"], digest, peer.organization)
                if answer is not None:
                    return answer
            raise
        return 201, imported.ack

    def _replay(self, transfer_id: str, digest: str, sender: str) -> tuple[int, dict] | None:
        """A transfer already received: the same acknowledgement for the same bytes; for other
        bytes under that id, 409 with the acknowledgement of what is held (to its sender only)."""
        seen = self.stores.receipt_of(transfer_id)
        if seen is None:
            return None
        if seen["sha256"] == digest:
            return 200, seen["ack"]
        if seen.get("sender") != sender:
            raise FhirError(409, "conflict", "a different transfer was already received under this id")
        return 409, already_received(seen["ack"])

    def _discard_media(self, store: ScopedStore, imported: ImportedRecord) -> None:
        for write in imported.history:
            if "media" in write.extra:
                store.media_store.delete(write.extra["media"]["file"])

    def _check_and_build(self, bundle: dict, sender: str, digest: str) -> tuple[ScopedStore, ImportedRecord]:
        versions, directory, extras = _split(bundle)
        record = _record_id(versions)
        task = _transfer_task(versions, bundle["id"])
        destination = (task.resource.get("owner") or {}).get("reference")
        if (task.resource.get("requester") or {}).get("reference") != sender:
            raise FhirError(403, "security", "the transfer was not sent by the local authority holding the plan")
        if destination not in self.transfers.settings.served_organizations:
            raise unprocessable(f"{destination} is not a local authority served by this deployment", "business-rule")
        chain = json.loads(decode(extras[AUDIT_URL]))
        self._check_integrity(record, versions, chain)
        caller = _receiving_caller(destination, sender)
        store = self.stores.for_received_transfer(caller, record)
        now = store.clock()
        writes = self._writes(versions, record)
        state = json.loads(decode(extras[STATE_URL]))
        imported = ImportedRecord(
            transfer_id=bundle["id"], bundle_sha256=digest, sender=sender, record=record,
            ack=make_ack(store.signing_key, bundle["id"], digest, destination, now),
            history=writes, audit_entries=chain, directory=self._writes(directory, None),
            record_state={"custodian": destination, "parents": state.get("parents", []), "birth_date": state.get("birth_date"),
                          "lacks_capacity": bool(state.get("lacks_capacity")), "representative": state.get("representative"),
                          "former_custodians": [sender], "transferred_from": sender},
            documents={url.removeprefix(DOCUMENT_PREFIX): decode(e) for url, e in extras.items() if url.startswith(DOCUMENT_PREFIX)},
        )
        imported.new_versions = self._arrival_versions(store, task, writes, state, destination, record, now,
                                                       _latest_tasks(versions, record))
        arrivals = [(f"{w.type}/{w.id}/_history/{w.vid}", w.hash) for w in imported.new_versions]
        imported.import_audit = AuditAppend(record, audit.body(
            caller, "transfer-received", "permit", now, f"plan received from {sender} (reg 15)",
            [(f"Task/{task.id}/_history/{task.vid}", task.hash), *arrivals]), checkpoint=True)
        self._attach_media(store, imported, extras)  # last: files are the one thing stored before the transaction
        return store, imported

    def _check_integrity(self, record: str, versions: list[Version], chain: list[dict]) -> None:
        """Every version sent must be the one the sender's chain recorded, and the chain whole."""
        hashes = [(f"{v.type}/{v.id}/_history/{v.vid}", v.hash) for v in versions]
        verdict = audit_chain.verify_chain(chain, record, version_hashes=hashes,
                                           public_keys=audit_verify.trusted_keys(self.transfers.settings))
        if not verdict.valid:
            raise unprocessable(f"the transfer failed its integrity check: {verdict.reason}", "invalid")

    def _writes(self, versions: list[Version], record: str | None) -> list[VersionWrite]:
        index, by_ref = self.stores.registry.index, {f"{v.type}/{v.id}": v for v in versions}
        writes = []
        for version in versions:
            section = section_of(version.resource)
            if version.type == "Binary":
                target = (version.resource.get("securityContext") or {}).get("reference", "")
                document = by_ref.get(target)
                section = "governance" if document is None or target.startswith("Composition/") else section_of(document.resource)
            writes.append(VersionWrite(version.type, version.id, version.vid, version.updated, version.resource,
                                       record, section, index(version.resource), version.hash, None))
        return writes

    def _attach_media(self, store: ScopedStore, imported: ImportedRecord, extras: dict[str, dict]) -> None:
        for write in imported.history:
            entry = extras.get(f"{MEDIA_PREFIX}Binary/{write.id}/_history/{write.vid}")
            if entry is not None:
                data = decode(entry)
                stored = store.media_store.save(data, _Empty(), len(data), entry["resource"]["contentType"], imported.record)
                write.extra["media"] = {"file": stored.file_id, "size": stored.size, "sha256": stored.sha256}

    def _arrival_versions(self, store: ScopedStore, task: Version, writes: list[VersionWrite], state: dict,
                          destination: str, record: str, now: datetime, tasks: list[Version]) -> list[VersionWrite]:
        """The transfer Task completed here, the old LA's open clocks as reg 15 leaves them
        (`service.arrival_clocks`), and the family's notice (reg 15(4))."""
        pending = {f"{w.type}/{w.id}": w.record for w in writes}
        done = dict(task.resource, status="completed", lastModified=fhir_dates.instant(now),
                    output=[{"type": concept(TASK_INPUT_SYSTEM, "transferred-on"), "valueDate": now.date().isoformat()}])
        completed = store.prepare_server_task(done, replace(task, record=record), "receive-transfer", "arrival",
                                              pending=pending)
        birth = state.get("birth_date")
        record_state = RecordState(record_id=record, custodian=destination, parents=frozenset(state.get("parents", [])),
                                   birth_date=fhir_dates.parse_date(birth) if birth else None,
                                   lacks_capacity=bool(state.get("lacks_capacity")), representative=state.get("representative"))
        notice = self.transfers._family_notice(store, task, record_state, now, pending=pending)
        moved = arrival_clocks(store, tasks, task, destination, now, pending=pending)
        return [completed.write, *[m.write for m in moved], notice.write]


class _Empty:
    def read(self, _: int) -> bytes:
        return b""


def _latest_tasks(versions: list[Version], record: str) -> list[Version]:
    """The newest version of each Task sent, as the record's current Tasks here."""
    latest: dict[str, Version] = {}
    for version in versions:
        if version.type == "Task" and (version.id not in latest or version.vid > latest[version.id].vid):
            latest[version.id] = replace(version, record=record)
    return list(latest.values())


def _split(bundle: dict) -> tuple[list[Version], list[Version], dict[str, dict]]:
    versions, directory, extras = [], [], {}
    for entry in bundle["entry"]:
        url = entry.get("fullUrl", "")
        match = _VERSION_URL.match(url)
        if match is None:
            extras[url] = entry
            continue
        resource = parse_resource(entry.get("resource"), match.group(1))
        if resource.get("id") != match.group(2) or str((resource.get("meta") or {}).get("versionId")) != match.group(3):
            raise invalid(f"{url} does not match the resource it holds", "invalid")
        updated = fhir_dates.parse_range(resource["meta"]["lastUpdated"])[0]
        version = Version(match.group(1), match.group(2), int(match.group(3)), updated, resource, None, None,
                          audit_chain.content_hash(resource))
        (directory if (entry.get("search") or {}).get("mode") == "include" else versions).append(version)
    for required in (AUDIT_URL, STATE_URL):
        if required not in extras:
            raise invalid(f"the transfer lacks {required}", "required")
    return versions, directory, extras


def _record_id(versions: list[Version]) -> str:
    patients = {v.id for v in versions if v.type == "Patient"}
    if len(patients) != 1:
        raise invalid("a transfer carries exactly one child's record", "invalid")
    return patients.pop()


def _transfer_task(versions: list[Version], transfer_id: str) -> Version:
    candidates = [v for v in versions if v.type == "Task" and v.id == transfer_id and is_transfer(v.resource)]
    if not candidates:
        raise invalid("the transfer does not include its transfer Task", "required")
    task = max(candidates, key=lambda v: v.vid)
    if task_input(task.resource, "destination") is None:
        raise invalid("the transfer Task names no destination", "required")
    return task


def _receiving_caller(destination: str, sender: str) -> Caller:
    actor = Actor(role="la", sub=f"transfer from {sender}", organization=destination)
    return Caller(actor=actor, scopes=parse_scopes("system/*.cruds"), issuer="urn:ehcp-record:transfer")
