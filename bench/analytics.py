"""The analytics extract at 2,000 and 20,000 children: build time (full and incremental) and
measure evaluation time, printed side by side.

Each size gets a fresh database on one embedded mongod with the deployment's indexes
(Repository.ensure_indexes: without the (record, type) index every feed batch of 500 records
scanned the whole collection, which made the build quadratic), the synthetic cohort of
bench/cohort.py bulk-inserted, then: a full build of the extract (the feed's scan, the
de-identification, the Parquet files), an incremental refresh after 1% of the records changed,
the first export of the release (every ended year cut k-anonymous, release.py),
and every Measure evaluated with DuckDB for each LA and the last whole year (what one
dashboard load asks for), timed over several rounds. Everything talks to 127.0.0.1 only.

    make bench-analytics            (BENCH_ARGS="--sizes 2000" for a quick run)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # before bench/ itself, so `bench` is the package, not bench/bench.py

from bench.cohort import generate, insert  # noqa: E402
from ehcp_record.analytics.extract import Extract  # noqa: E402
from ehcp_record.analytics.measures import Period, evaluate, load_measures  # noqa: E402
from ehcp_record.analytics.pseudonym import Pseudonymiser  # noqa: E402
from ehcp_record.store.analytics_feed import AnalyticsFeed  # noqa: E402
from ehcp_record.store.mongod import EmbeddedMongo  # noqa: E402
from ehcp_record.store.repository import Repository  # noqa: E402

MEASURES = ROOT / "profiles" / "Measure"


def run(mongo: EmbeddedMongo, size: int, work: Path, rounds: int) -> dict[str, float]:
    repo = Repository.connect(mongo.uri, f"bench_analytics_{size}")
    repo.client.drop_database(repo.db.name)
    repo.ensure_indexes()  # the deployment's own indexes: without them each feed batch scans the collection
    db = repo.db
    try:
        started = time.perf_counter()
        cohort = generate(size)
        documents = insert(db, cohort)
        inserted = time.perf_counter() - started
        feed = AnalyticsFeed(db, overlap=timedelta(0))
        extract = Extract(work / f"extract-{size}", feed, Pseudonymiser(b"k" * 32))
        cpu = time.process_time()  # this process's CPU: what other load on the machine does not inflate
        full = extract.refresh(full=True)
        build_cpu = time.process_time() - cpu
        changed = [c.record for c in cohort.facts[:: 100]]
        db.current.update_many({"record": {"$in": changed}, "type": "Patient"},
                               {"$set": {"updated": datetime.now(timezone.utc) + timedelta(seconds=1)}})
        incremental = extract.refresh()
        files = extract.files()
        began, cpu = time.perf_counter(), time.process_time()
        extract.export("bench", work / f"release-{size}")  # every ended year cut (k-anonymous) and written
        released, release_cpu = time.perf_counter() - began, time.process_time() - cpu
        year = Period(cohort.as_of.year - 1)
        measures = load_measures(MEASURES)
        timings = []
        for _ in range(rounds):
            began = time.perf_counter()
            for measure in measures.values():
                for la in ("866", "855"):
                    evaluate(measure, files, la, year)
            timings.append(time.perf_counter() - began)
        evaluations = len(measures) * 2
        size_bytes = sum(p.stat().st_size for p in files.values())
        return {"documents": documents, "insert_s": inserted, "build_s": full.seconds, "build_cpu_s": build_cpu, "release_cpu_s": release_cpu,
                "incremental_s": incremental.seconds, "release_s": released, "incremental_records": incremental.records_rebuilt,
                "rows": sum(full.rows.values()), "parquet_kib": size_bytes / 1024,
                "dashboard_s": statistics.median(timings), "per_measure_ms": statistics.median(timings) / evaluations * 1000}
    finally:
        repo.client.drop_database(db.name)
        repo.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="ehcp-bench-analytics-") as tmp:
        mongo = EmbeddedMongo(Path(tmp) / "mongod").start()
        try:
            results = {size: run(mongo, size, Path(tmp), args.rounds) for size in sizes}
        finally:
            mongo.stop()
    rows = [("current documents", "documents", "{:,.0f}"), ("bulk insert (s)", "insert_s", "{:.1f}"),
            ("extract rows", "rows", "{:,.0f}"), ("Parquet size (KiB)", "parquet_kib", "{:,.0f}"),
            ("extract full build (s)", "build_s", "{:.2f}"),
            ("  CPU of this process (s)", "build_cpu_s", "{:.2f}"),
            ("incremental refresh, 1% changed (s)", "incremental_s", "{:.2f}"),
            ("  records rebuilt", "incremental_records", "{:,.0f}"),
            ("release export, all ended years (s)", "release_s", "{:.2f}"),
            ("  CPU of this process (s)", "release_cpu_s", "{:.2f}"),
            ("all 8 measures x 2 LAs (s, median)", "dashboard_s", "{:.3f}"),
            ("one measure evaluation (ms)", "per_measure_ms", "{:.1f}")]
    header = f"{'children':<40}" + "".join(f"{size:>14,}" for size in sizes)
    print(header)
    print("-" * len(header))
    for label, key, fmt in rows:
        print(f"{label:<40}" + "".join(f"{fmt.format(results[s][key]):>14}" for s in sizes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
