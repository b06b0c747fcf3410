"""Stored documents read in raw batches, and a batch of audit entries re-hashed, wherever it is
done: in the verifying process, in its hashing workers (store/verify_reader.py) or in the
child that reads a long record's versions and the tail of its chain (store/versions_apart.py).

One module so that all three read in the same batches, hash the same way and key the same
memo the same way: a batch's results can be worked out in one process and remembered in
another (`batch_key`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo.collection import Collection

from ehcp_record.audit import chain as audit_chain
from ehcp_record.gc_pause import paused_gc

BATCH = 2_500  # documents per server batch, per task sent to a worker, per memo key
_DECODE = CodecOptions()  # no BSON date read is used (an entry's cp_at is not hashed), so tz is moot
_RAW = CodecOptions(document_class=RawBSONDocument)
#: The chain's order, read by one query or two (a prefix here, the rest in another process):
#: the unique index (record, seq) serves it, so the order is total and a `skip` walks keys only.
CHAIN_ORDER = [("seq", 1)]


def raw_batches(collection: Collection, query: dict, projection: dict | None = None,
                sort: list[tuple[str, int]] | None = None, skip: int = 0, limit: int = 0) -> Iterator[list[bytes]]:
    """The documents a find returns, `BATCH` at a time, each as its raw BSON bytes.

    A cursor of RawBSONDocuments (pymongo keeps each reply as one raw document and slices the
    documents out of it): `find_raw_batches` builds a RawBSONDocument for every document of
    every reply twice over before handing back the bytes, which was a third of a repeated check
    of a long record."""
    cursor = collection.with_options(codec_options=_RAW).find(query, projection, batch_size=BATCH,
                                                              skip=skip, limit=limit)
    if sort:
        cursor = cursor.sort(sort)
    batch: list[bytes] = []
    for doc in cursor:
        batch.append(doc.raw)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def entry_salt(record: str) -> bytes:
    """What a batch of `record`'s entries is keyed with beside its bytes: the same bytes
    hashed as a member of another record's chain give another result."""
    return record.encode() + b"\0"


def batch_key(salt: bytes, raw: bytes) -> bytes:
    """The memo's key for a batch: the SHA-256 of its documents' exact bytes, one after the
    other (each BSON document starts with its length, so the bytes say where each begins).
    One key a batch, not one a document: an unchanged chain reads in the same batches, and
    hashing 2 MB at once costs a tenth of hashing 2,500 documents one by one."""
    digest = hashlib.sha256(salt)
    digest.update(raw)
    return digest.digest()


def hash_entry_batch(record: str, raw: bytes, sending: bool = False) -> list[Any]:
    """A `HashedEntry` per entry of the BSON documents `raw`; `sending` (the results go to
    another process, pickled), (slim entry, recomputed hash, error) instead, as tuples pickle
    faster than dataclasses, and a recomputed hash equal to the stored one, and a `prev` equal
    to the hash before it, given as that one string object, which pickle then writes once (a
    third less to send)."""
    out: list[Any] = []
    last = None
    with paused_gc():
        for entry in bson.decode_all(raw, _DECODE):
            hashed = audit_chain.hash_entry(record, entry)
            if not sending:
                out.append(hashed)
                continue
            slim, computed = hashed.entry, hashed.computed
            if isinstance(slim, dict):
                stored = slim.get("hash")
                if computed is not None and computed == stored:
                    computed = stored
                if last is not None and slim.get("prev") == last:
                    slim["prev"] = last
                last = stored if type(stored) is str else None
            out.append((slim, computed, hashed.error))
    return out

