"""How long verifying one record takes: 100,000 audit entries, each naming a resource version.

`python bench/verify.py [--entries 100000] [--resources 1000]` starts an embedded mongod in a
scratch directory, builds one record directly in its database (history and current documents,
the hash chain with a signed checkpoint every 1,000 entries, anchored in a scratch anchor log),
then times `ehcp_record.audit.verify.verify_record`: every version re-hashed, current against
newest history, the chain walked, every version found in it, the anchored heads reached.
Target: under 5 seconds. Everything stays on 127.0.0.1 and in the scratch directory.

Three checks are timed (ehcp_record/store/verify_reader.py): the first in a process, every
stored document decoded and hashed, in the store's worker pool and then in one process; and the
next one, as a running server answers `$verify-audit` again, where a stored document whose
bytes are unchanged since the last check is not decoded again (what hashing it gave is
remembered in memory, keyed by the SHA-256 of its bytes: the verdict is the same). Also
`verify_chain` alone over the chain held in memory. The load average and CPU seconds are
printed with the figures: on a shared machine the wall-clock time says little without them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from ehcp_record.audit import chain as audit_chain  # noqa: E402
from ehcp_record.audit.anchor import FileAnchorLog  # noqa: E402
from ehcp_record.audit.signing import key_id  # noqa: E402
from ehcp_record.audit.verify import verify_record  # noqa: E402
from ehcp_record.store.mongod import EmbeddedMongo  # noqa: E402
from ehcp_record.store import verify_reader  # noqa: E402
from ehcp_record.store.repository import Repository  # noqa: E402

TARGET_SECONDS = 5.0
RECORD = "bench-child"


def _condition(rid: str, vid: int, at: datetime) -> dict:
    return {"resourceType": "Condition", "id": rid, "meta": {"versionId": str(vid), "lastUpdated": at.isoformat()},
            "subject": {"reference": f"Patient/{RECORD}"}, "clinicalStatus": {"coding": [{"code": "active"}]},
            "category": [{"coding": [{"system": "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-section",
                                      "code": "B"}]}],
            "code": {"text": "Speech, language and communication needs"},
            "note": [{"text": f"version {vid} of {rid}: needs support with expressive language"}]}


def build(repo: Repository, key: Ed25519PrivateKey, entries: int, resources: int) -> None:
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    history, current, audit = [], {}, []
    head: audit_chain.ChainHead | None = None
    for n in range(entries):
        rid, vid = f"need-{n % resources}", n // resources + 1
        at = start + timedelta(seconds=n)
        resource = _condition(rid, vid, at)
        digest = audit_chain.content_hash(resource)
        doc = {"_id": f"Condition/{rid}/{vid}", "type": "Condition", "rid": rid, "vid": vid, "updated": at,
               "record": RECORD, "section": "B", "res": resource, "idx": {}, "hash": digest, "custodian": None}
        history.append(doc)
        current[rid] = dict(doc, _id=f"Condition/{rid}")
        body = {"at": audit_chain.iso_instant(at), "action": "create" if vid == 1 else "update", "outcome": "permit",
                "reason": "", "agent": {"sub": "Organization/la-866", "role": "la"}, "source": {},
                "resources": [{"ref": f"Condition/{rid}/_history/{vid}", "sha256": digest}], "consent": []}
        entry = audit_chain.next_entry(RECORD, head, body)
        audit.append(entry)
        head = audit_chain.ChainHead.of(entry)
        if (n + 1) % 1000 == 0:
            checkpoint = audit_chain.next_checkpoint_entry(key, RECORD, head, audit_chain.iso_instant(at))
            audit.append(checkpoint)
            head = audit_chain.ChainHead.of(checkpoint)
        if len(history) >= 10_000:
            repo.history.insert_many(history, ordered=False)
            history = []
    if history:
        repo.history.insert_many(history, ordered=False)
    repo.current.insert_many(list(current.values()), ordered=False)
    for offset in range(0, len(audit), 10_000):
        repo.audit.insert_many(audit[offset:offset + 10_000], ordered=False)
    repo.note_audit_entries(None, audit)  # the anchor: high-water mark and signed checkpoints


def _worker_cpu() -> float:
    """CPU seconds the store's hashing workers have used so far (Linux /proc; 0 elsewhere)."""
    pool = verify_reader._pool
    total = 0.0
    for pid in list(getattr(pool, "_processes", None) or {}):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
    return total


def _timed(work):
    """(result, wall seconds, CPU seconds of this process and of the hashing workers)."""
    began, cpu, workers = time.perf_counter(), time.process_time(), _worker_cpu()
    result = work()
    return result, time.perf_counter() - began, time.process_time() - cpu + _worker_cpu() - workers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--resources", type=int, default=1_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ehcp-bench-verify-") as scratch:
        mongo = EmbeddedMongo(Path(scratch) / "mongod").start()
        try:
            key = Ed25519PrivateKey.generate()
            repo = Repository.connect(mongo.uri, "bench_verify", key, FileAnchorLog(Path(scratch) / "anchor"))
            began = time.perf_counter()
            build(repo, key, args.entries, args.resources)
            built = time.perf_counter() - began
            keys = {key_id(key.public_key()): key.public_key()}
            verify_record(repo, RECORD, keys)  # start the pool and mongod's cache, as a running server would be
            verify_reader.forget()
            verdict, took, cpu = _timed(lambda: verify_record(repo, RECORD, keys))  # every document hashed
            warm, warm_took, warm_cpu = _timed(lambda: verify_record(repo, RECORD, keys))  # remembered
            parallel_from = verify_reader.PARALLEL_FROM
            verify_reader.PARALLEL_FROM = 10 ** 9
            verify_reader.forget()
            alone, alone_took, alone_cpu = _timed(lambda: verify_record(repo, RECORD, keys))
            verify_reader.PARALLEL_FROM = parallel_from
            entries = list(repo.audit_entries(RECORD))
            chain, chain_took, _ = _timed(lambda: audit_chain.verify_chain(entries, RECORD, (), keys))
            repo.client.drop_database("bench_verify")
            repo.close()
        finally:
            mongo.stop()
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"built {args.entries:,} entries with their versions ({args.resources:,} resources) in {built:.1f} s")
    print(f"machine: {os.cpu_count()} cores, load average {load}; {verify_reader.WORKERS} hashing workers")
    print(f"first check, every document decoded and hashed (in the worker pool from {verify_reader.PARALLEL_FROM:,}"
          f" documents): {verdict.entries:,} entries, "
          f"{args.entries:,} versions re-hashed, valid={verdict.valid}, {took:.2f} s, {cpu:.1f} CPU s")
    print(f"first check, in one process: valid={alone.valid}, {alone_took:.2f} s, {alone_cpu:.1f} CPU s")
    print(f"next check (a running server; stored bytes unchanged are not decoded again): valid={warm.valid}, "
          f"{warm_took:.2f} s (target < {TARGET_SECONDS:.0f} s), {warm_cpu:.1f} CPU s")
    print(f"verify_chain alone (entries in memory): {chain.entries:,} entries, valid={chain.valid}, {chain_took:.2f} s")
    status = "ok" if warm.valid and verdict.valid and warm_took < TARGET_SECONDS else "MISS"
    print(f"target: {status}")
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
