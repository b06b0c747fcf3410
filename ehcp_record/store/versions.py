"""The store's value types: what a version, a write and an audit append are.

Plain dataclasses with no database driver, so every layer may name them; only the scoped
store (and the store package itself) talks to the repository that reads and writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


@dataclass(frozen=True)
class Version:
    """One stored version of a resource, as the service sees it."""

    type: str
    id: str
    vid: int
    updated: datetime
    resource: dict
    record: str | None
    section: str | None
    hash: str
    owner: str | None = None  # Subscriptions: who created it (issuer|subject)
    owner_actor: dict | None = None
    #: a delete marker (R4 http §3.1.0.7.1: a deleted Subscription's last version): no content
    deleted: bool = False


@dataclass
class VersionWrite:
    """A version the service has built and checked; `expected` is the If-Match (None = create)."""

    type: str
    id: str
    vid: int
    updated: datetime
    resource: dict
    record: str | None
    section: str | None
    index: dict[str, list]
    hash: str
    expected: int | None
    extra: dict[str, Any] = field(default_factory=dict)
    custodian: str | None = None  # the record's custodian LA, kept on each version for search


@dataclass
class AuditAppend:
    """An audit body for one record's chain; appended in the same transaction as the change.

    `checkpoint` asks for a signed checkpoint right after this entry (an issued plan version);
    otherwise one is added when the chain's last checkpoint is over an hour old.
    """

    chain: str
    body: dict
    checkpoint: bool = False


@dataclass(frozen=True)
class Visibility:
    """What a caller may see in a search, as an indexable filter.

    `custodian`: every record in that LA's custody, matched on the `custodian` field each
    current document carries (one index range, not one consent read per record in custody);
    `shared_with`: the caller's recipient keys, matched on the `shared` field each current
    document carries (the keys its record's Consents name: `Repository.share_within`);
    `per_record`: the few records seen through the family link or a consent, with the stored
    sections each may match (None = all);
    `consents`: the current-document ids ("Consent/<id>") of the Consents that grant the
    caller its access, which it may see although governance is outside its sections;
    `addressed`: (owner references, records) of the Tasks addressed to the caller, which it
    may see in those records (any record when none are named) without reading the record;
    `exact` is False when the filter is a superset (records not yet decided): each match
    must then still pass the caller's decision, and a full page is not a true total.
    """

    everything: bool = False
    per_record: dict[str, frozenset[str] | None] = field(default_factory=dict)
    directory: bool = True
    owner: str | None = None  # Subscriptions are seen by their owner only
    custodian: str | None = None
    shared_with: tuple[str, ...] = ()
    consents: tuple[str, ...] = ()
    addressed: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    exact: bool = True


@dataclass(frozen=True)
class RecordContext:
    """What one read needs beside the resource, fetched with it in one round trip."""

    version: Version | None
    state: dict | None
    consents: list[Version]


@dataclass
class ImportedRecord:
    """Everything a received transfer stores, prepared and checked before the transaction."""

    transfer_id: str
    bundle_sha256: str
    sender: str
    ack: dict
    record: str
    history: list[VersionWrite]
    audit_entries: list[dict]
    record_state: dict
    documents: dict[str, bytes]
    directory: list[VersionWrite]
    new_versions: list[VersionWrite] = field(default_factory=list)
    import_audit: AuditAppend | None = None


class TooLarge(Exception):
    """A media upload went past the size limit; nothing was kept."""


@dataclass(frozen=True)
class StoredMedia:
    """A file kept in GridFS for one Binary version."""

    file_id: str
    size: int
    sha256: str


def utc_now() -> datetime:
    """Mongo keeps milliseconds; truncate so what we return equals what we stored."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)

