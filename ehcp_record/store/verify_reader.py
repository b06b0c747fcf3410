"""What the audit verifier reads, re-hashed: every stored version and every chain entry of a record.

Verifying a record checks all of it from what is stored (ehcp_record.audit.verify). A sealed
version is checked by the SHA-256 of its stored bytes, which the chain names (no key, no
decoding of its content: `version_digests` with `sealed`); only a version the chain does not
name so is opened and re-hashed (`opened_digests`). For a long record nearly all the time goes
on decoding BSON into Python and writing canonical JSON for the entries, not on MongoDB, so the
store reads the server's batches as raw BSON (`_raw_batches`) and:

- remembers, per stored document, the SHA-256 of its exact bytes and what hashing it gave
  (`store.memo.Memo`, in this process's memory only, bounded by `MEMO_LIMIT`). A document whose bytes
  are identical to ones already decoded and hashed here decodes to identical content, so its
  result is reused instead of decoded again; one changed by a single byte is a different key
  and is decoded and hashed in full. The verdict is the same as without the memo, only
  faster: a running server re-checks a long record in a fraction of the first check's time.
  The memo lives in no file and no database, so whoever can edit MongoDB cannot touch it; the
  CLI (`ehcp-record audit verify`), a new process, always checks everything from scratch.
- on a machine of 4 cores or more, hands the documents not remembered, for a record past
  `PARALLEL_FROM` documents, to a pool of worker processes that decode and hash them
  (`ehcp_record.audit.chain.content_hash` / `hash_entry`), sending back only the digests and
  the slim entries the chain walk needs. The pool is started once per process (forkserver, so
  no MongoClient or server thread is copied into a worker) and reused; workers hold no database
  connection and no key. A batch the pool cannot take or finish (a killed worker) is hashed
  here instead.
- holds off the cyclic garbage collector while it decodes (`paused_gc`).

Results come back in the order read, so the verifier reports the same first fault whichever
way a document was hashed.
"""

from __future__ import annotations

import gc
import hashlib
import multiprocessing
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo.collection import Collection

from ehcp_record.audit import chain as audit_chain
from ehcp_record.store.memo import Memo
from ehcp_record.store.sealing import stored_digest

#: (type, id, versionId, sha256 recomputed from the stored content or None, recorded sha256,
#: sha256 of the sealed bytes as stored or None when stored clear). A sealed version read by
#: `version_digests` is not opened: its content sha256 is None and `stored` is set.
VersionDigest = tuple[object, object, object, "str | None", object, "str | None"]

#: Documents in the collection's part of the record from which the pool hashes them. Only
#: with 4 cores or more: on 2 shared cores bench/verify.py measured the pool slower and dearer
#: (100,000 sealed entries: 12.9 s and 10.2 CPU s pooled, 8.0 s and 6.7 CPU s in one process),
#: as sending the slim entries back costs about what hashing them does.
PARALLEL_FROM = 20_000 if (os.cpu_count() or 1) >= 4 else sys.maxsize
BATCH = 2_500           # documents per server batch, and per task sent to a worker
WORKERS = max(1, min(4, os.cpu_count() or 1))
MEMO_LIMIT = 150_000    # remembered documents per kind (versions, entries): some 50 MB each at most
_DECODE = CodecOptions()  # stored versions and entries hold no BSON dates (cp_at is not read), so tz is moot
_VERSION_FIELDS = {"_id": 0, "type": 1, "rid": 1, "vid": 1, "res": 1, "hash": 1}
_ENTRY_FIELDS = {"_id": 0, "cp_at": 0}

_RAW = CodecOptions(document_class=RawBSONDocument)
_pool: Executor | None = None
_pool_lock = threading.Lock()
_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_resume = False


_VERSIONS = Memo(MEMO_LIMIT)
_ENTRIES = Memo(MEMO_LIMIT)


def forget() -> None:
    """Drop everything remembered, so the next check decodes and hashes every document (the
    benchmark times both; nothing else needs it)."""
    _VERSIONS.clear()
    _ENTRIES.clear()


def version_digests(collection: Collection, record: str, sealed: bool = False) -> Iterator[VersionDigest]:
    """Every stored version of `record` in `collection` (history or current), as stored.

    A sealed `res` is not opened: what is checked is the digest of its bytes as stored
    (`sealing.stored_digest`), which the audit chain names, so a sealed record needs no key,
    no decoding of its content and no canonical JSON (a few microseconds a version, here, not in
    the pool). A clear `res` is re-hashed from its content (`content_hash`), in the pool for a
    long record, with the memo of unchanged bytes. `sealed`: the deployment seals content, so
    its versions are read the cheap way (a clear one among them is still re-hashed)."""
    query = {"record": record}
    if sealed:
        return _sealed_digests(collection.with_options(codec_options=_DECODE).find(query, _VERSION_FIELDS,
                                                                                    batch_size=BATCH))
    batches = _raw_batches(collection, query, _VERSION_FIELDS)
    pooled = collection.count_documents(query) >= PARALLEL_FROM
    return _hashed(batches, _VERSIONS, b"", _digest_version_batch, (), pooled)


def _sealed_digests(docs: Iterable[dict]) -> Iterator[VersionDigest]:
    """Decoded once, by the driver (no memo: hashing the stored bytes is all the work)."""
    with paused_gc():
        for doc in docs:
            yield _version_digest(doc)


def opened_digests(collection: Collection, record: str, ids: list[str], opener: Callable[[Any], Any]
                   ) -> Iterator[VersionDigest]:
    """The stored versions `ids` (their `_id`s) opened and re-hashed from their content: for a
    sealed version the chain does not name by its stored bytes (an entry written before it
    named them, a record transferred in and sealed here again, or bytes that were changed).
    The memo skips documents whose stored bytes were opened and hashed before."""
    for start in range(0, len(ids), BATCH):
        query = {"record": record, "_id": {"$in": ids[start:start + BATCH]}}
        batches = _raw_batches(collection, query, _VERSION_FIELDS)
        yield from _hashed(batches, _VERSIONS, b"sealed\0", _digest_opened_batch, (opener,), False)


def hashed_entries(collection: Collection, record: str) -> Iterator[audit_chain.HashedEntry]:
    """The chain of `record` in seq order, each entry's hash recomputed from its stored bytes."""
    query = {"record": record}
    pooled = collection.count_documents(query) >= PARALLEL_FROM
    batches = _raw_batches(collection, query, _ENTRY_FIELDS, {"seq": 1})
    hashed = _hashed(batches, _ENTRIES, record.encode() + b"\0", _hash_entry_batch, (record,), pooled)
    return _entries(hashed)


def _entries(hashed: Iterable[tuple]) -> Iterator[audit_chain.HashedEntry]:
    with paused_gc():
        for fields in hashed:
            yield audit_chain.HashedEntry(*fields)


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector held off while many small documents are decoded: each of
    its runs walks every object the process holds, and decoding 100,000 entries would start
    hundreds of them (it halves the time of a long check). Nothing here makes reference
    cycles, reference counting still frees everything, and the collector runs again as soon as
    the last check in this process (threads may check records at once) is done."""
    global _gc_pauses, _gc_resume
    with _gc_lock:
        _gc_pauses += 1
        if _gc_pauses == 1:
            _gc_resume = gc.isenabled()
            gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_resume:
                gc.enable()


def _raw_batches(collection: Collection, query: dict, projection: dict, sort: dict | None = None
                 ) -> Iterator[list[bytes]]:
    """The documents a find returns, `BATCH` at a time, each as its raw BSON bytes.

    A cursor of RawBSONDocuments (pymongo keeps each reply as one raw document and slices the
    documents out of it): `find_raw_batches` builds a RawBSONDocument for every document of
    every reply twice over before handing back the bytes, which was a third of a repeated check
    of a long record."""
    cursor = collection.with_options(codec_options=_RAW).find(query, projection, batch_size=BATCH)
    if sort:
        cursor = cursor.sort(list(sort.items()))
    batch: list[bytes] = []
    for doc in cursor:
        batch.append(doc.raw)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _hashed(batches: Iterable[list[bytes]], memo: Memo, salt: bytes, work: Callable, args: tuple,
            pooled: bool) -> Iterator:
    """Each stored document's result, in the order read: remembered, or worked out (in the pool
    when `pooled`). Every batch is read and submitted before the first result is used, so
    reading overlaps hashing and the reads happen in the order the verifier asks for them."""
    pool = _shared_pool() if pooled else None
    pending: list[tuple[list[bytes], list[Any], Future | None, bytes]] = []
    for docs in batches:
        keys = [hashlib.sha256(salt + doc).digest() for doc in docs]
        known = memo.get_many(keys)
        missing = b"".join(doc for doc, value in zip(docs, known) if value is None)
        future = None
        if missing and pool is not None:
            try:
                future = pool.submit(work, *args, missing)
            except (BrokenProcessPool, RuntimeError):
                pool = _discard_pool()
        pending.append((keys, known, future, missing))
    return _in_order(pending, memo, work, args)


def _in_order(pending: list, memo: Memo, work: Callable, args: tuple) -> Iterator:
    for keys, known, future, missing in pending:
        if missing:
            fresh = iter(_result(future, work, args, missing))
            known = [value if value is not None else next(fresh) for value in known]
            memo.put_many(zip(keys, known))
        yield from known


def _result(future: Future | None, work: Callable, args: tuple, missing: bytes) -> list:
    if future is not None:
        try:
            return future.result()
        except BrokenProcessPool:
            _discard_pool()
    return work(*args, missing)


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


def _discard_pool() -> None:
    """Forget a broken pool; the next long record starts a fresh one."""
    global _pool
    with _pool_lock:
        broken, _pool = _pool, None
    if broken is not None:
        broken.shutdown(wait=False, cancel_futures=True)
    return None


# ------------------------------------------------- the hashing (in a worker, or in this process)

def _digest_version_batch(raw: bytes) -> list[VersionDigest]:
    return [_version_digest(doc) for doc in bson.decode_all(raw, _DECODE)]


def _version_digest(doc: dict) -> VersionDigest:
    res = doc.get("res")
    stored = stored_digest(res)
    return (doc.get("type"), doc.get("rid"), doc.get("vid"), None if stored else _rehash(res), doc.get("hash"), stored)


def _digest_opened_batch(opener: Callable[[Any], Any], raw: bytes) -> list[VersionDigest]:
    out: list[VersionDigest] = []
    for doc in bson.decode_all(raw, _DECODE):
        try:
            resource = opener(doc.get("res"))
        except Exception:  # unreadable content is a fault the verifier reports, not a crash
            resource = None
        out.append((doc.get("type"), doc.get("rid"), doc.get("vid"),
                    None if resource is None else _rehash(resource), doc.get("hash"), stored_digest(doc.get("res"))))
    return out


def _hash_entry_batch(record: str, raw: bytes) -> list[tuple]:
    """(slim entry, recomputed hash, error) per entry: tuples pickle faster than dataclasses.
    A recomputed hash equal to the stored one, and a `prev` equal to the hash before it, are
    given as that one string object, which pickle then writes once (a third less to send)."""
    out: list[tuple] = []
    last, sending = None, multiprocessing.parent_process() is not None  # in a worker: pickled back
    with paused_gc():
        for entry in bson.decode_all(raw, _DECODE):
            hashed = audit_chain.hash_entry(record, entry)
            slim, computed = hashed.entry, hashed.computed
            if sending and isinstance(slim, dict):
                stored = slim.get("hash")
                if computed is not None and computed == stored:
                    computed = stored
                if last is not None and slim.get("prev") == last:
                    slim["prev"] = last
                last = stored if type(stored) is str else None
            out.append((slim, computed, hashed.error))
    return out


def _rehash(resource: object) -> str | None:
    try:
        return audit_chain.content_hash(resource)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
