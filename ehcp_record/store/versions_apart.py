"""A long sealed record's stored versions, and the last part of its chain, read and hashed in a
process of their own, beside the rest of the chain.

Verifying a record (ehcp_record.audit.verify) reads two things of about equal weight: every
stored version (history and current) and every audit entry. A sealed version is checked by
the SHA-256 of its bytes as stored (`sealed_bytes.stored_digest`), which the chain names, so
reading it needs no key and gives back little: (type, id, versionId, None, recorded sha256,
sha256 of the stored bytes). From `APART_FROM` entries on, on a machine of two cores or more,
the store reads them in a child process (`python -m ehcp_record.store.versions_apart`) while
its own process reads and re-hashes the chain, so the two halves run at once on two cores and
only those compact digests come back (some 150 bytes a version). Re-hashing the entries is
the heavier half, so the child also hashes the chain's last `CHAIN_SHARE` (`chain_share`),
read in the same order the caller reads the rest (after its first entries, by the unique
index), and sends back the slim entries the walk needs, batch by batch with the memo key the
caller would have given each batch (store/entry_hashing.py). The caller walks the whole chain
in order, its own part and then the child's. bench/verify.py measured it on 2 shared cores,
100,000 sealed entries, a fresh process: docs/encryption.md, "Verifying sealed versions", has
the figures.

Unlike the store's hashing workers (store/verify_reader.py, which hold no connection), this
child reads MongoDB itself, because what would be sent to it (the stored bytes) weighs far
more than what it sends back: sending the work to the data is what makes it pay. So it opens
its own MongoClient, from the connection string the repository was opened with, handed to it
on its stdin (never in its arguments, which any user's `ps` shows), with the repository's
bounds (`client_options.CLIENT_OPTIONS`), read concern "majority", and within what remains of
the caller's database deadline (`pymongo.timeout`). It holds no key and never opens content.
It reads what the in-process path reads, and each digest and hash is made by the same function
(`version_digest`, `entry_hashing.hash_entry_batch`), so the verdict is the same either way
(tests/api/test_verify_sealed.py plants faults in both paths, in the versions and in either
part of the chain). If the child cannot be started, fails, or answers with anything but that,
the versions and the rest of the chain are read in the caller's process instead: slower, the
same answer, and database trouble then surfaces there as it always did (503). It answers
through an unnamed temporary file, which the caller reads once it has exited (`start` says why
not a pipe).

A plain child process rather than a multiprocessing worker: a forkserver or spawn worker
imports its parent's main module again (the server, the CLI) and this package's crypto
(libmongocrypt), a second of CPU before it reads anything; this module imports pymongo, bson
and the chain's hashing (some 0.3 CPU s to start).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import IO, Any, Callable

import pymongo
from bson.codec_options import CodecOptions
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.read_concern import ReadConcern

from ehcp_record.store.client_options import CLIENT_OPTIONS
from ehcp_record.store.entry_hashing import BATCH, CHAIN_ORDER, batch_key, entry_salt, hash_entry_batch, raw_batches
from ehcp_record.store.sealed_bytes import stored_digest

#: (type, id, versionId, sha256 recomputed from the stored content or None, recorded sha256,
#: sha256 of the sealed bytes as stored or None when stored clear). A sealed version is not
#: opened: its content sha256 is None and `stored` is set.
VersionDigest = tuple[object, object, object, "str | None", object, "str | None"]

#: Entries in a record's chain (about: `Repository._chain_length`) from which its versions and the
#: last part of its chain are read in a child process. Only with two cores or more: on one, the
#: child's start (~0.4 CPU s: Python and pymongo) would be added to the same core's work.
APART_FROM = 20_000 if (os.cpu_count() or 1) >= 2 else sys.maxsize
#: The part of a long chain the child hashes (`chain_share`). bench/verify.py on 2 shared cores,
#: 100,000 sealed entries: see docs/encryption.md, "Verifying sealed versions".
CHAIN_SHARE = 0.12
VERSION_FIELDS = {"_id": 0, "type": 1, "rid": 1, "vid": 1, "res": 1, "hash": 1}
COLLECTIONS = ("history", "current")
_DECODE = CodecOptions()  # versions hold no BSON dates in the fields read, so tz is moot
_WAIT_BEYOND_DEADLINE = 5.0  # seconds the caller waits for the child past its own deadline
_NO_DEADLINE_WAIT = 300.0    # ... and without one (a socket read is bounded at 60 s)
_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding this ehcp_record package
_WAITING = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ehcp-versions-apart")
log = logging.getLogger("ehcp_record.store")


def sealed_digests(collection: Collection, record: str) -> Iterator[VersionDigest]:
    """Every stored version of `record` in `collection`, decoded once by the driver and
    digested (`version_digest`), in the order the server returns them. A resource's type and
    id are given as one string object for all its versions: pickled (from the child) each is
    then written, read and freed once, not once a version."""
    cursor = collection.with_options(codec_options=_DECODE).find({"record": record}, VERSION_FIELDS,
                                                                 batch_size=BATCH)
    return _shared_names(version_digest(doc) for doc in cursor)


def _shared_names(digests: Iterable[VersionDigest]) -> Iterator[VersionDigest]:
    names: dict[str, str] = {}
    for kind, rid, vid, rehashed, recorded, stored in digests:
        if type(kind) is str and type(rid) is str:
            kind, rid = names.setdefault(kind, kind), names.setdefault(rid, rid)
        yield kind, rid, vid, rehashed, recorded, stored


def version_digest(doc: dict) -> VersionDigest:
    """A sealed `res` by the SHA-256 of its stored bytes; a clear one re-hashed from its content."""
    res = doc.get("res")
    stored = stored_digest(res)
    return (doc.get("type"), doc.get("rid"), doc.get("vid"), None if stored else _rehash(res), doc.get("hash"), stored)


def _rehash(resource: object) -> str | None:
    from ehcp_record.audit.chain import content_hash  # only for a version stored clear

    try:
        return content_hash(resource)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


class Apart:
    """A record's versions being read in a child process: `history()` and `current()` yield
    what `sealed_digests` yields for each collection, waiting for the child at their first
    item; `fallback(name)` reads the collection in this process when the child gave nothing.
    `failed` says why the child gave nothing (None: it answered)."""

    def __init__(self, answer: Future, fallback: Callable[[str], Iterable[VersionDigest]]) -> None:
        self._answer = answer
        self._fallback = fallback
        self._read: dict[str, list] | None = None
        self.failed: str | None = None

    def history(self) -> Iterator[VersionDigest]:
        return self._digests("history")

    def current(self) -> Iterator[VersionDigest]:
        return self._digests("current")

    def chain(self) -> list | None:
        """The batches of the chain the child hashed (`_chain_from`), or None when it gave nothing."""
        read = self._wait()
        return None if read is None else read["chain"]

    def _digests(self, name: str) -> Iterator[VersionDigest]:
        read = self._wait()
        if read is None:
            yield from self._fallback(name)
        else:
            yield from read[name]

    def _wait(self) -> dict[str, list] | None:
        if self._read is None and self.failed is None:
            try:
                self._read = self._answer.result()
            except Exception as exc:  # noqa: BLE001 - whatever went wrong, this process reads instead
                self.failed = str(exc) or type(exc).__name__
                log.warning("reading versions in a child process failed (%s); reading them here", self.failed)
        return self._read


def start(uri: str, database: str, record: str, fallback: Callable[[str], Iterable[VersionDigest]],
          chain_from: int | None = None) -> Apart:
    """Start the child reading `record`'s versions (and, with `chain_from`, its chain from that
    many entries on: `chain_share`); it runs while the caller reads the chain.

    The child writes its answer (some 16 MB for 100,000 versions) to an unnamed temporary file,
    not a pipe: this process is busy hashing the chain meanwhile, and a thread draining a pipe
    64 KB at a time would wait for the interpreter lock at every read, holding the child up
    (bench/verify.py measured the child answering half a second after the chain was done)."""
    left = _remaining()
    request = json.dumps({"uri": uri, "database": database, "record": record, "timeout": left,
                          "chain_from": chain_from}).encode()
    wait = (left + _WAIT_BEYOND_DEADLINE) if left is not None else _NO_DEADLINE_WAIT
    try:
        answer = tempfile.TemporaryFile(prefix="ehcp-versions-")
        child = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=answer,
                                 stderr=subprocess.PIPE, env=_child_env(), cwd=_ROOT)
    except OSError as exc:
        failed: Future = Future()
        failed.set_exception(exc)
        return Apart(failed, fallback)
    return Apart(_WAITING.submit(_answer, child, answer, request, wait), fallback)


def _answer(child: subprocess.Popen, answer: IO[bytes], request: bytes, wait: float) -> dict[str, list]:
    with answer:
        try:
            _, err = child.communicate(request, timeout=wait)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise TimeoutError(f"the child reading versions did not answer within {wait:.0f} s") from None
        if child.returncode != 0:
            raise RuntimeError(f"the child reading versions exited {child.returncode}: "
                               f"{err.decode(errors='replace').strip()[-500:]}")
        answer.seek(0)
        read = pickle.load(answer)  # written by this module's `main`, in a process this one started
    if not (isinstance(read, dict) and all(isinstance(read.get(name), list) for name in (*COLLECTIONS, "chain"))):
        raise RuntimeError("the child reading versions answered with something else")
    return read


def _child_env() -> dict[str, str]:
    """This process's environment, with this very ehcp_record package first on the path."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": _ROOT + (os.pathsep + path if path else "")}


def _remaining() -> float | None:
    """Seconds left of the caller's `pymongo.timeout` deadline (None: no deadline)."""
    try:
        from pymongo import _csot  # pymongo keeps the deadline of `pymongo.timeout` here

        left = _csot.remaining()
    except (ImportError, AttributeError):
        return None
    return None if left is None else max(left, 0.001)


def chain_share(entries: int) -> int | None:
    """How many of a chain's `entries` the caller hashes itself when the child takes the rest
    (None: it hashes them all). Both processes are then busy for about as long: the child also
    reads every version, and what it hashes must be sent back (`entry_hashing.hash_entry_batch`),
    so it takes `CHAIN_SHARE` of the chain. A whole number of batches, so that the caller's memo
    keys the same batches whichever process hashed them."""
    if entries < APART_FROM:
        return None
    first = int(entries * (1 - CHAIN_SHARE)) // BATCH * BATCH
    return first if 0 < first < entries else None


def _chain_from(audit: Collection, record: str, first: int | None) -> list:
    """The chain of `record` after its first `first` entries, in the caller's order, hashed: a
    (memo key, results) pair a batch. Nothing without `first`."""
    if first is None:
        return []
    salt = entry_salt(record)
    out = []
    for docs in raw_batches(audit, {"record": record}, None, CHAIN_ORDER, skip=first):
        raw = b"".join(docs)
        out.append((batch_key(salt, raw), hash_entry_batch(record, raw, sending=True)))
    return out


def main() -> int:
    """The child: read the request on stdin, write the digests of both collections (pickled)
    on stdout. Nothing else is written there."""
    request: dict[str, Any] = json.loads(sys.stdin.buffer.read())
    gc.disable()  # a short-lived process holding no reference cycles (verify_reader.paused_gc says why)
    client: MongoClient = MongoClient(request["uri"], **CLIENT_OPTIONS)
    try:
        db = client.get_database(request["database"], read_concern=ReadConcern("majority"))
        deadline = pymongo.timeout(request["timeout"]) if request.get("timeout") else nullcontext()
        with deadline:
            read = {name: list(sealed_digests(db[name], request["record"])) for name in COLLECTIONS}
            read["chain"] = _chain_from(db["audit"], request["record"], request.get("chain_from"))
        sys.stdout.buffer.write(pickle.dumps(read, protocol=pickle.HIGHEST_PROTOCOL))
        sys.stdout.buffer.flush()
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
