"""What the audit verifier reads, re-hashed: every stored version and every chain entry of a record.

Verifying a record re-hashes all of it from what is stored (ehcp_record.audit.verify), and for a
long record nearly all the time goes on decoding BSON into Python and writing canonical JSON,
not on MongoDB. So for a record past `PARALLEL_FROM` documents the store reads the server's
batches as raw BSON (`find_raw_batches`: nothing decoded in this process) and hands them to a pool of worker
processes that decode and hash them (`ehcp_record.audit.chain.content_hash` / `hash_entry`),
sending back only the digests and the slim entries the chain walk needs. Results come back in
the order read, so the verifier reports the same first fault as it would in one process. A
shorter record, or a machine where the pool cannot start, is hashed here in this process: the
check is the same either way, only the speed differs.

The pool is started once per process (forkserver, so no MongoClient or server thread is ever
copied into a worker) and reused; workers hold no database connection.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import bson
from bson.codec_options import CodecOptions
from pymongo.collection import Collection

from ehcp_record.audit import chain as audit_chain

#: (type, id, versionId, sha256 recomputed from the stored content or None, recorded sha256)
VersionDigest = tuple[object, object, object, "str | None", object]

PARALLEL_FROM = 20_000  # documents; below this a pool costs more than it saves
BATCH = 2_500           # documents per task sent to a worker
WORKERS = max(1, min(4, os.cpu_count() or 1))
_DECODE = CodecOptions()  # stored versions and entries hold no BSON dates (cp_at is not read), so tz is moot
_VERSION_FIELDS = {"_id": 0, "type": 1, "rid": 1, "vid": 1, "res": 1, "hash": 1}
_ENTRY_FIELDS = {"_id": 0, "cp_at": 0}

_pool: Executor | None = None
_pool_lock = threading.Lock()


def version_digests(collection: Collection, record: str) -> Iterator[VersionDigest]:
    """Every stored version of `record` in `collection` (history or current), re-hashed."""
    query = {"record": record}
    if collection.count_documents(query) < PARALLEL_FROM:
        return iter(_digest_docs(collection.find(query, _VERSION_FIELDS)))
    raw = collection.find_raw_batches(query, _VERSION_FIELDS, batch_size=BATCH)
    return _in_pool(_digest_version_batch, (), iter(raw))


def hashed_entries(collection: Collection, record: str) -> Iterator[audit_chain.HashedEntry | dict]:
    """The chain of `record` in seq order, each entry's hash recomputed (for a long chain in the
    pool); a short chain is returned as stored, for `verify_chain` to hash as it walks."""
    query = {"record": record}
    if collection.count_documents(query) < PARALLEL_FROM:
        return collection.find(query, _ENTRY_FIELDS).sort("seq", 1)
    raw = collection.find_raw_batches(query, _ENTRY_FIELDS, batch_size=BATCH).sort("seq", 1)
    return (audit_chain.HashedEntry(*fields) for fields in _in_pool(_hash_entry_batch, (record,), iter(raw)))


def _in_pool(work, args: tuple, batches: Iterator[bytes]) -> Iterator:
    """Run `work(*args, batch)` over every batch in the pool, yielding results in order. Every
    batch is submitted as it is read, so reading overlaps hashing; a batch the pool cannot take
    or finish (no pool here, a worker killed) is worked in this process instead."""
    pool = _shared_pool()
    submitted: list[tuple[Future | None, bytes]] = []
    for batch in batches:
        future = None
        if pool is not None:
            try:
                future = pool.submit(work, *args, batch)
            except (BrokenProcessPool, RuntimeError):
                pool = _discard_pool()
        submitted.append((future, batch))
    return _results(work, args, submitted)


def _results(work, args: tuple, submitted: list[tuple[Future | None, bytes]]) -> Iterator:
    for future, batch in submitted:
        if future is not None:
            try:
                result = future.result()
            except BrokenProcessPool:
                _discard_pool()
                result = work(*args, batch)
        else:
            result = work(*args, batch)
        yield from result


def _discard_pool() -> None:
    """Forget a broken pool; the next long record starts a fresh one."""
    global _pool
    with _pool_lock:
        broken, _pool = _pool, None
    if broken is not None:
        broken.shutdown(wait=False, cancel_futures=True)
    return None


def _shared_pool() -> Executor | None:
    global _pool
    with _pool_lock:
        if _pool is None and WORKERS > 1:
            try:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload([__name__])
                _pool = ProcessPoolExecutor(WORKERS, mp_context=context)
            except (OSError, ValueError):
                return None
        return _pool


# ------------------------------------------------------------------- in the worker processes

def _digest_version_batch(raw: bytes) -> list[VersionDigest]:
    return _digest_docs(bson.decode_all(raw, _DECODE))


def _digest_docs(docs: Iterable[dict]) -> list[VersionDigest]:
    return [(doc.get("type"), doc.get("rid"), doc.get("vid"), _rehash(doc.get("res")), doc.get("hash"))
            for doc in docs]


def _hash_entry_batch(record: str, raw: bytes) -> list[tuple]:
    """(slim entry, recomputed hash, error) per entry: tuples pickle faster than dataclasses."""
    out = []
    for entry in bson.decode_all(raw, _DECODE):
        hashed = audit_chain.hash_entry(record, entry)
        out.append((hashed.entry, hashed.computed, hashed.error))
    return out


def _rehash(resource: object) -> str | None:
    try:
        return audit_chain.content_hash(resource)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
