"""How long verifying one sealed record takes: 100,000 audit entries, each naming a resource version.

`python bench/verify.py [--entries 100000] [--resources 1000] [--documents 10]` starts an
embedded mongod in a scratch directory and builds one record in its database exactly as the
store writes one (ehcp_record/store/sealing.py, with a real local master key in the scratch
directory): every version's `res` sealed once under the record's data key and that one value
written to the history and the current document, each write's audit entry naming the version's
content sha256 and the sha256 of its stored bytes, the entry's details sealed before it is
hashed, a signed checkpoint every 1,000 entries (anchored in a scratch anchor log), and a few
sealed stored `$document`s. Then it times `ehcp_record.audit.verify.verify_record`.

Timed, each with the load average and CPU seconds (on a shared machine a wall-clock figure
says little without them):

- **first check, in a fresh process** (a child process started for it, as
  `ehcp-record audit verify` is): nothing remembered, no worker pool yet, no data key cached;
  on 2 cores or more the versions, and the last part of the chain, are read and hashed by a
  child process of the store's beside it (ehcp_record/store/versions_apart.py), whose CPU
  seconds are counted in.
  Target: under 5 seconds for 100,000 entries.
- the next check in that process (a running server answering `$verify-audit` again);
- the first check in this process with its memo dropped (its pool, on 4+ cores, running);
- with `BENCH_VERIFY_PROFILE=1`, the fresh process's first check is run under cProfile and
  the top of its profile printed;
- for comparison, the way every sealed version was checked before entries named stored bytes:
  opened with the record's key and re-hashed from its content, timed on `--old-sample`
  versions and scaled to all of them.

Everything stays on 127.0.0.1 and in the scratch directory.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import multiprocessing
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from ehcp_record.audit import chain as audit_chain  # noqa: E402
from ehcp_record.audit.anchor import FileAnchorLog  # noqa: E402
from ehcp_record.audit.signing import key_id  # noqa: E402
from ehcp_record.audit.verify import verify_record  # noqa: E402
from ehcp_record.store import verify_reader, versions_apart  # noqa: E402
from ehcp_record.store.crypto import local_master_keys  # noqa: E402
from ehcp_record.store.mongod import EmbeddedMongo  # noqa: E402
from ehcp_record.store.repository import Repository  # noqa: E402
from ehcp_record.store.versions import AuditAppend, VersionWrite  # noqa: E402

TARGET_SECONDS = 5.0
RECORD = "bench-child"
DATABASE = "bench_verify"
LA = {"sub": "officer-7", "role": "la", "fhirUser": "Practitioner/officer-7", "organization": "Organization/la-866"}


def _condition(rid: str, vid: int, at: datetime) -> dict:
    return {"resourceType": "Condition", "id": rid, "meta": {"versionId": str(vid), "lastUpdated": at.isoformat()},
            "subject": {"reference": f"Patient/{RECORD}"}, "clinicalStatus": {"coding": [{"code": "active"}]},
            "category": [{"coding": [{"system": "http://ehcp-record.example.org/fhir/CodeSystem/ehcp-section",
                                      "code": "B"}]}],
            "code": {"text": "Speech, language and communication needs"},
            "note": [{"text": f"version {vid} of {rid}: needs support with expressive language"}]}


def _body(at: datetime, vid: int, ref: str, digest: str) -> dict:
    """An audit body as ehcp_record/audit/entries.py writes one for a create or update."""
    return {"at": audit_chain.iso_instant(at), "action": "create" if vid == 1 else "update", "outcome": "permit",
            "reason": "update", "agent": LA, "source": {"ip": "127.0.0.1", "client": "bench"},
            "resources": [{"ref": ref, "sha256": digest}], "consent": []}


def _connect(uri: str, scratch: Path, key: Ed25519PrivateKey | None = None) -> Repository:
    return Repository.connect(uri, DATABASE, key, FileAnchorLog(scratch / "anchor"),
                              master_keys=lambda: local_master_keys(scratch / "keys"))


def _sealed_slice(uri: str, scratch: str, first: int, last: int, resources: int) -> list[tuple]:
    """Versions `first`..`last`-1 sealed as the store seals them (`Sealing.envelope`), and their
    audit bodies naming the stored bytes (`Repository.naming_stored`) with their details sealed
    (`Repository.sealed_append`): (history doc, current doc key, body, resource) each. Run in a
    build worker: sealing is most of the build."""
    repo = _connect(uri, Path(scratch))
    start, out = datetime(2025, 1, 1, tzinfo=timezone.utc), []
    try:
        for n in range(first, last):
            rid, vid = f"need-{n % resources}", n // resources + 1
            at = start + timedelta(seconds=n)
            resource = _condition(rid, vid, at)
            digest = audit_chain.content_hash(resource)
            write = VersionWrite("Condition", rid, vid, at, resource, RECORD, "B", {}, digest, vid - 1 or None)
            doc = repo.seal.envelope(write)  # sealed once: the same value goes to history and current
            ref = f"Condition/{rid}/_history/{vid}"
            [append] = repo.naming_stored([AuditAppend(RECORD, _body(at, vid, ref, digest))], [write], [doc])
            out.append((dict(doc, _id=f"Condition/{rid}/{vid}"), doc, repo.sealed_append(append).body, resource))
    finally:
        repo.close()
    return out


def build(repo: Repository, key: Ed25519PrivateKey, uri: str, scratch: Path, entries: int, resources: int,
          documents: int) -> None:
    """The record, sealed as the store seals, in build worker processes; the chain linked here;
    everything inserted in bulk."""
    repo.seal.cipher.seal(RECORD, "make the record's data key")  # once, before the workers use it
    step = 2_000
    slices = [(n, min(n + step, entries)) for n in range(0, entries, step)]
    head: audit_chain.ChainHead | None = None
    audit, current, kept = [], {}, []
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        for part in pool.map(_sealed_slice, *zip(*[(uri, str(scratch), a, b, resources) for a, b in slices])):
            repo.history.insert_many([history for history, _, _, _ in part], ordered=False)
            for history, doc, body, resource in part:
                current[doc["_id"]] = doc
                entry = audit_chain.next_entry(RECORD, head, body)
                audit.append(entry)
                head = audit_chain.ChainHead.of(entry)
                if len(audit) % 1001 == 1000:
                    checkpoint = audit_chain.next_checkpoint_entry(key, RECORD, head, body["at"])
                    audit.append(checkpoint)
                    head = audit_chain.ChainHead.of(checkpoint)
                kept = (kept + [(history["_id"], resource)])[-documents:] if documents else []
    repo.current.insert_many(list(current.values()), ordered=False)
    for offset in range(0, len(audit), 10_000):
        repo.audit.insert_many(audit[offset:offset + 10_000], ordered=False)
    repo.note_audit_entries(None, audit)  # the anchor: high-water mark and signed checkpoints
    for doc_key, resource in kept:  # stored $documents, sealed: the version it renders first
        bundle = {"resourceType": "Bundle", "type": "document", "entry": [{"resource": resource}]}
        data = audit_chain.canonical_json(bundle)
        repo.store_document(doc_key, RECORD, data, hashlib.sha256(data).hexdigest())


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


def _children_cpu() -> float:
    """CPU seconds of this process's finished child processes (the store's version readers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(work):
    """(result, wall seconds, CPU seconds of this process, of the hashing workers and of the
    version readers it started, load)."""
    began, cpu, workers, children = time.perf_counter(), time.process_time(), _worker_cpu(), _children_cpu()
    result = work()
    took = time.perf_counter() - began
    used = time.process_time() - cpu + _worker_cpu() - workers + _children_cpu() - children
    return result, took, used, os.getloadavg()[0]


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def check_in_fresh_process(uri: str, scratch: Path, public_pem: bytes) -> dict:
    """Run in the child process: connect as the CLI does and time a first and a second check."""
    began = time.perf_counter()
    repo = _connect(uri, scratch)
    public = serialization.load_pem_public_key(public_pem)
    keys = {key_id(public): public}
    connected = time.perf_counter() - began
    profile = cProfile.Profile() if os.environ.get("BENCH_VERIFY_PROFILE") else None
    if profile is not None:
        profile.enable()
    first, took, cpu, load = _timed(lambda: verify_record(repo, RECORD, keys))
    if profile is not None:
        profile.disable()
        pstats.Stats(profile, stream=sys.stderr).sort_stats("cumulative").print_stats(30)
    second, again, again_cpu, again_load = _timed(lambda: verify_record(repo, RECORD, keys))
    repo.close()
    return {"connect": connected, "first": [first.valid, first.entries, first.reason, took, cpu, load],
            "next": [second.valid, again, again_cpu, again_load]}


def old_path(repo: Repository, sample: int) -> tuple[float, float, int]:
    """Seconds and CPU seconds to open and re-hash `sample` sealed versions, as every one was
    checked before entries named stored bytes (the memo of unchanged bytes dropped first)."""
    verify_reader.forget()
    ids = [d["_id"] for d in repo.history.find({"record": RECORD}, {"_id": 1}).limit(sample)]
    digests, took, cpu, _ = _timed(lambda: list(repo.opened_digests(RECORD, ids)))
    assert all(d[3] == d[4] for d in digests), "an old-path re-hash disagreed with the recorded sha256"
    return took, cpu, len(ids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--resources", type=int, default=1_000)
    parser.add_argument("--documents", type=int, default=10)
    parser.add_argument("--old-sample", type=int, default=5_000)
    parser.add_argument("--keep", help="build in this directory and keep it; run again, reuse what is built there")
    parser.add_argument("--check", nargs=3, metavar=("URI", "SCRATCH", "PEM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.check:
        uri, scratch, pem = args.check
        print(json.dumps(check_in_fresh_process(uri, Path(scratch), Path(pem).read_bytes())))
        return 0
    with tempfile.TemporaryDirectory(prefix="ehcp-bench-verify-") as scratch_dir:
        scratch = Path(args.keep or scratch_dir)
        built_before = (scratch / "checkpoint.key").exists()
        mongo = EmbeddedMongo(scratch / "mongod").start()
        try:
            if built_before:
                key = serialization.load_pem_private_key((scratch / "checkpoint.key").read_bytes(), None)
            else:
                key = Ed25519PrivateKey.generate()
            pem = scratch / "checkpoint.pub"
            pem.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
            repo = _connect(mongo.uri, scratch, key)
            began = time.perf_counter()
            if not built_before:
                build(repo, key, mongo.uri, scratch, args.entries, args.resources, args.documents)
                if args.keep:
                    (scratch / "checkpoint.key").write_bytes(key.private_bytes(
                        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            built = time.perf_counter() - began
            print(f"built {args.entries:,} sealed entries with their versions ({args.resources:,} resources, "
                  f"{args.documents} sealed $documents) in {built:.1f} s; load average {_load()}", flush=True)
            fresh = subprocess.run([sys.executable, __file__, "--check", mongo.uri, str(scratch), str(pem)],
                                   capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if fresh.returncode != 0:
                print(fresh.stdout + fresh.stderr)
                return 2
            if os.environ.get("BENCH_VERIFY_PROFILE"):
                print(fresh.stderr)
            child = json.loads(fresh.stdout.strip().splitlines()[-1])
            keys = {key_id(key.public_key()): key.public_key()}
            verify_record(repo, RECORD, keys)  # mongod's cache, this process's data key (and pool, on 4+ cores)
            verify_reader.forget()
            here, here_took, here_cpu, here_load = _timed(lambda: verify_record(repo, RECORD, keys))
            sample = min(args.old_sample, args.entries)
            old_took, old_cpu, opened = old_path(repo, sample)
            if not args.keep:
                repo.client.drop_database(DATABASE)
            repo.close()
        finally:
            mongo.stop()
    valid, entries, reason, took, cpu, load = child["first"]
    next_valid, again, again_cpu, again_load = child["next"]
    scale = args.entries / max(opened, 1)
    pool = (f"worker pool from {verify_reader.PARALLEL_FROM:,} documents" if verify_reader.PARALLEL_FROM < sys.maxsize
            else "no worker pool (fewer than 4 cores)")
    apart = (f"versions and the last {versions_apart.CHAIN_SHARE:.0%} of the chain read by a child process from "
             f"{versions_apart.APART_FROM:,} entries (store/versions_apart.py)"
             if versions_apart.APART_FROM < sys.maxsize else "versions read in the checking process (1 core)")
    print(f"machine: {os.cpu_count()} cores; {pool}; {apart}")
    print(f"first check in a fresh process (as `ehcp-record audit verify`): {entries:,} entries, valid={valid}, "
          f"{took:.2f} s (target < {TARGET_SECONDS:.0f} s), {cpu:.1f} CPU s, load {load:.1f}"
          f" (connecting took {child['connect']:.2f} s more)")
    print(f"  {reason}")
    print(f"next check in that process (a running server): valid={next_valid}, {again:.2f} s, "
          f"{again_cpu:.1f} CPU s, load {again_load:.1f}")
    pooled = "pool running" if args.entries >= verify_reader.PARALLEL_FROM else "no pool below 4 cores"
    print(f"first check in this process, memo dropped ({pooled}): valid={here.valid}, {here_took:.2f} s, "
          f"{here_cpu:.1f} CPU s, load {here_load:.1f}")
    print(f"before entries named stored bytes, every sealed version was opened and re-hashed: {opened:,} took "
          f"{old_took:.2f} s ({old_cpu:.1f} CPU s), so ~{old_took * scale:.0f} s for {args.entries:,} versions, "
          "before the chain walk")
    status = "ok" if valid and next_valid and here.valid and took < TARGET_SECONDS else "MISS"
    print(f"target: {status}; load average now {_load()}")
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
