"""What the audit verifier reads, re-hashed: every stored version and every chain entry of a record.

Verifying a record checks all of it from what is stored (ehcp_record.audit.verify). A sealed
version is checked by the SHA-256 of its stored bytes, which the chain names (no key, no
decoding of its content: `version_digests` with `sealed`); only a version the chain does not
name so is opened and re-hashed (`opened_digests`). For a long record nearly all the time goes
on decoding BSON into Python and writing canonical JSON for the entries, not on MongoDB, so the
store reads the server's batches as raw BSON (`entry_hashing.raw_batches`) and:

- remembers, per batch of stored documents read, the SHA-256 of their exact bytes and what
  hashing them gave (`store.memo.Memo`, in this process's memory only, bounded by
  `MEMO_LIMIT`). Documents whose bytes are identical to ones already decoded and hashed here
  decode to identical content, so their results are reused instead of decoded again; a batch
  with one byte changed is a different key and is decoded and hashed in full. An unchanged
  chain is read in the same batches every time (only the last grows as entries are added), so
  one key a batch serves as well as one a document, at a tenth of the hashing. The verdict is
  the same as without the memo, only faster: a running server re-checks a long record in a
  fraction of the first check's time. The memo lives in no file and no database, so whoever
  can edit MongoDB cannot touch it; the CLI (`ehcp-record audit verify`), a new process,
  always checks everything from scratch.
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

import contextvars
import itertools
import multiprocessing
import os
import queue
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

import bson
from bson.codec_options import CodecOptions
from pymongo.collection import Collection

from ehcp_record.audit import chain as audit_chain
from ehcp_record.gc_pause import paused_gc
from ehcp_record.store.entry_hashing import (
    BATCH,
    CHAIN_ORDER,
    batch_key,
    entry_salt,
    hash_entry_batch,
    raw_batches,
)
from ehcp_record.store.memo import Memo
from ehcp_record.store.sealed_bytes import stored_digest
from ehcp_record.store.versions_apart import VERSION_FIELDS as _VERSION_FIELDS
from ehcp_record.store.versions_apart import (
    VersionDigest,
    sealed_digests,
    version_digest,
)

#: Documents in the collection's part of the record from which the pool hashes them. Only
#: with 4 cores or more: on 2 shared cores bench/verify.py measured the pool slower and dearer
#: (100,000 sealed entries: 12.9 s and 10.2 CPU s pooled, 8.0 s and 6.7 CPU s in one process),
#: as sending the slim entries back costs about what hashing them does.
PARALLEL_FROM = 20_000 if (os.cpu_count() or 1) >= 4 else sys.maxsize
WORKERS = max(1, min(4, os.cpu_count() or 1))
MEMO_LIMIT = 60         # remembered batches per kind (versions, entries): 150,000 documents, some 50 MB each at most
_DECODE = CodecOptions()  # versions hold no BSON dates in the fields read, so tz is moot
#: Entries are read whole: `hash_entry` reads only what the chain hashes, and an exclusion
#: projection made mongod rebuild every document (0.25 s of its CPU per 100,000 entries).
_ENTRY_FIELDS = None

AHEAD = 4               # batches read ahead of the hashing in this process (`_read_ahead`)
_READERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ehcp-verify-read-ahead")
_pool: Executor | None = None
_pool_lock = threading.Lock()


_VERSIONS = Memo(MEMO_LIMIT)
_ENTRIES = Memo(MEMO_LIMIT)
_REMEMBERED: set[str] = set()  # records whose whole chain was read here (`remembers_chain`)


def forget() -> None:
    """Drop everything remembered, so the next check decodes and hashes every document (the
    benchmark times both; nothing else needs it)."""
    _VERSIONS.clear()
    _ENTRIES.clear()
    _REMEMBERED.clear()


def version_digests(collection: Collection, record: str, sealed: bool = False) -> Iterator[VersionDigest]:
    """Every stored version of `record` in `collection` (history or current), as stored.

    A sealed `res` is not opened: what is checked is the digest of its bytes as stored
    (`sealed_bytes.stored_digest`), which the audit chain names, so a sealed record needs no key,
    no decoding of its content and no canonical JSON (a few microseconds a version, here, not in
    the pool). A clear `res` is re-hashed from its content (`content_hash`), in the pool for a
    long record, with the memo of unchanged bytes. `sealed`: the deployment seals content, so
    its versions are read the cheap way (a clear one among them is still re-hashed)."""
    query = {"record": record}
    if sealed:
        return _sealed_digests(sealed_digests(collection, record))
    batches = raw_batches(collection, query, _VERSION_FIELDS)
    pooled = collection.count_documents(query) >= PARALLEL_FROM
    return _hashed(batches, _VERSIONS, b"", _digest_version_batch, (), pooled)


def _sealed_digests(digests: Iterable[VersionDigest]) -> Iterator[VersionDigest]:
    """Decoded once, by the driver (no memo: hashing the stored bytes is all the work)."""
    with paused_gc():
        yield from digests


def opened_digests(collection: Collection, record: str, ids: list[str], opener: Callable[[Any], Any]
                   ) -> Iterator[VersionDigest]:
    """The stored versions `ids` (their `_id`s) opened and re-hashed from their content: for a
    sealed version the chain does not name by its stored bytes (an entry written before it
    named them, a record transferred in and sealed here again, or bytes that were changed).
    The memo skips documents whose stored bytes were opened and hashed before."""
    for start in range(0, len(ids), BATCH):
        query = {"record": record, "_id": {"$in": ids[start:start + BATCH]}}
        batches = raw_batches(collection, query, _VERSION_FIELDS)
        yield from _hashed(batches, _VERSIONS, b"sealed\0", _digest_opened_batch, (opener,), False)


def hashed_entries(collection: Collection, record: str, first: int | None = None,
                   rest: Callable[[], list | None] | None = None) -> Iterator[audit_chain.HashedEntry]:
    """The chain of `record` in seq order, each entry's hash recomputed from its stored bytes.

    With `first`, only that many entries are read here and the rest are what `rest()` gives
    when they are needed: the batches another process read and hashed beside this one
    (`versions_apart`), each (its memo key, its results), remembered here as if hashed here.
    When `rest()` gives None (that process failed), they are read here after all."""
    query = {"record": record}
    pooled = first is None and collection.count_documents(query) >= PARALLEL_FROM
    batches = raw_batches(collection, query, _ENTRY_FIELDS, CHAIN_ORDER, limit=first or 0)
    hashed = _hashed(batches, _ENTRIES, entry_salt(record), _hash_entry_batch, (record,), pooled)
    if first is not None:
        hashed = itertools.chain(hashed, _rest_of_chain(collection, record, first, rest or (lambda: None)))
    return _remembering(record, _entries(hashed))


def _rest_of_chain(collection: Collection, record: str, skip: int, rest: Callable[[], list | None]) -> Iterator:
    batches = rest()
    if batches is None:
        read = raw_batches(collection, {"record": record}, _ENTRY_FIELDS, CHAIN_ORDER, skip=skip)
        yield from _hashed(read, _ENTRIES, entry_salt(record), _hash_entry_batch, (record,), False)
        return
    for key, results in batches:  # remembered as sent, as a worker's are: `_entries` makes them HashedEntries
        _ENTRIES.put(key, results)
        yield from results


def _entries(hashed: Iterable[tuple | audit_chain.HashedEntry]) -> Iterator[audit_chain.HashedEntry]:
    """HashedEntries: as hashed in this process, or made from the tuples another process sent
    (a worker, or the child that hashed the rest of the chain)."""
    entry = audit_chain.HashedEntry
    with paused_gc():
        for fields in hashed:
            yield fields if type(fields) is entry else entry(*fields)


def _remembering(record: str, entries: Iterator[audit_chain.HashedEntry]) -> Iterator[audit_chain.HashedEntry]:
    """The entries, and once all were read, `record` noted as one whose chain the memo holds."""
    yield from entries
    with _pool_lock:
        if len(_REMEMBERED) >= MEMO_LIMIT:
            _REMEMBERED.clear()
        _REMEMBERED.add(record)


def remembers_chain(record: str) -> bool:
    """Whether this process read the whole chain of `record` before, so that the memo holds it
    (unless pushed out since): reading it all here again is then cheaper than sharing it out."""
    return record in _REMEMBERED


def _hashed(batches: Iterable[list[bytes]], memo: Memo, salt: bytes, work: Callable, args: tuple,
            pooled: bool) -> Iterator:
    """Each stored document's result, in the order read: remembered, or worked out (in the pool
    when `pooled`). Every batch is read and submitted before the first result is used, so
    reading overlaps hashing and the reads happen in the order the verifier asks for them.
    Without the pool, a thread reads the batches ahead while this one hashes (`_read_ahead`)."""
    pool = _shared_pool() if pooled else None
    if pool is None:
        return _hashed_here(_read_ahead(batches), memo, salt, work, args)
    pending: list[tuple[bytes, Any, Future | None, bytes]] = []
    for docs in batches:
        raw = b"".join(docs)
        key = batch_key(salt, raw)
        known = memo.get(key)
        future = None
        if known is None and pool is not None:
            try:
                future = pool.submit(work, *args, raw)
            except (BrokenProcessPool, RuntimeError):
                pool = _discard_pool()
        pending.append((key, known, future, raw))
    return _in_order(pending, memo, work, args)


def _hashed_here(batches: Iterable[list[bytes]], memo: Memo, salt: bytes, work: Callable, args: tuple
                 ) -> Iterator:
    for docs in batches:
        raw = b"".join(docs)
        key = batch_key(salt, raw)
        known = memo.get(key)
        if known is None:
            known = work(*args, raw)
            memo.put(key, known)
        yield from known


def _read_ahead(batches: Iterator[list[bytes]]) -> Iterator[list[bytes]]:
    """The batches, read from the server by a thread of their own up to `AHEAD` batches
    ahead of the caller, so the waits on the server overlap the hashing instead of adding to
    it. Started at the first batch asked for, in the caller's context (its database deadline,
    `pymongo.timeout`); a read error is raised here; stopped when the caller stops asking."""
    ready: queue.Queue = queue.Queue(AHEAD)
    stop = threading.Event()
    _READERS.submit(contextvars.copy_context().run, _read_into, batches, ready, stop)
    try:
        while True:
            batch, error = ready.get()
            if error is not None:
                raise error
            if batch is None:
                return
            yield batch
    finally:
        stop.set()


def _read_into(batches: Iterator[list[bytes]], ready: queue.Queue, stop: threading.Event) -> None:
    try:
        for batch in batches:
            if not _put(ready, (batch, None), stop):
                return
    except BaseException as exc:  # noqa: BLE001 - raised again in the reading caller
        _put(ready, (None, exc), stop)
        return
    _put(ready, (None, None), stop)


def _put(ready: queue.Queue, item: tuple, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _in_order(pending: list, memo: Memo, work: Callable, args: tuple) -> Iterator:
    for key, known, future, raw in pending:
        if known is None:
            known = _result(future, work, args, raw)
            memo.put(key, known)
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
    return [version_digest(doc) for doc in bson.decode_all(raw, _DECODE)]


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


def _hash_entry_batch(record: str, raw: bytes) -> list[Any]:
    """`entry_hashing.hash_entry_batch`, sending its results back when run in a worker."""
    return hash_entry_batch(record, raw, sending=multiprocessing.parent_process() is not None)


def _rehash(resource: object) -> str | None:
    try:
        return audit_chain.content_hash(resource)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
