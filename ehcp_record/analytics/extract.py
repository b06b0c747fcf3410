"""The de-identified extract: Parquet files (pyarrow), one per table of `rows.TABLES`.

Layout under the extract's directory (in the data dir, one per database):
    manifest.json          the generation in use, the feed's resume point, when it was built
    gen-000042/<table>.parquet
A refresh writes a whole new generation and then switches the manifest (os.replace), so a
reader (DuckDB in measures.py) always sees one consistent set of files; the generation before
stays for readers still on it.

Incremental: only records the feed reports changed since the resume point are rebuilt (their
rows dropped by pseudonym and made again), and those whose custody changed since the last build
(`custody.parquet` beside the tables: erased, transferred out, moved to another LA) or that are
gone: an erased record's rows leave at the next refresh, a record transferred out keeps only
its `transfers` row (the sending LA's duty, reg 15). Open clocks are judged as of the day, so the first
refresh of a new day rebuilds everything, as does `refresh(full=True)`.

Settings (schools) are named by URN only when at least `banding.SMALL_SETTING` children in
the extract attend them; otherwise the row says only the setting type. A school folded once is
named again only at the next full rebuild; one that shrinks is folded at once.

These files are internal: the Measures are evaluated over them inside the deployment, and they
never leave it. What leaves is `export(recipient, directory)`: every ended year cut once and
made k-anonymous (release.py), with pseudonyms unlinkable across tables and years and the
recipient's own (pseudonym.py). That release is what a national warehouse loads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ehcp_record.analytics.banding import SMALL_SETTING, la_number
from ehcp_record.analytics.disclosure import DEFAULT_THRESHOLD
from ehcp_record.analytics.pseudonym import Pseudonymiser
from ehcp_record.analytics.release import anonymise, load_policy
from ehcp_record.analytics.rows import INTEGER_COLUMNS, LA_NUMBER_SYSTEM, TABLES, child_rows


class Snapshot(Protocol):
    record: str
    custodian: str | None
    transferred_out: bool
    resources: tuple[dict, ...]
    history: tuple[dict, ...]


class Changes(Protocol):
    """A scan's answer (store/analytics_feed.py `Changes`): records to rebuild, the next
    resume point, and the versions near it that the next scan may skip."""

    records: list[str]
    newest: datetime | None
    window: frozenset[str]


class Feed(Protocol):
    """What the extract needs from the store (ehcp_record/store/analytics_feed.py)."""

    def changed_records(self, since: datetime | None, seen: frozenset[str] = frozenset()) -> Changes: ...

    def custody(self) -> dict[str, str]: ...

    def snapshots(self, records: list[str]) -> Iterator[Snapshot]: ...

    def directory(self) -> dict[str, dict]: ...


def schema(table: str) -> pa.Schema:
    return pa.schema([(c, pa.int32() if c in INTEGER_COLUMNS else pa.string()) for c in TABLES[table]])


@dataclass(frozen=True)
class RefreshReport:
    generation: str
    records_rebuilt: int
    full: bool
    seconds: float
    rows: dict[str, int]


class Extract:
    def __init__(self, root: Path, feed: Feed, pseudonyms: Pseudonymiser,
                 today: Callable[[], date] = lambda: datetime.now(timezone.utc).date()) -> None:
        self.root = root
        self.feed = feed
        self.pseudonyms = pseudonyms
        self.today = today
        self._lock = threading.Lock()
        self._pseudonyms: dict[str, str] = {}

    # --- reading ---------------------------------------------------------------------

    def manifest(self) -> dict | None:
        try:
            return json.loads((self.root / "manifest.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None

    def files(self) -> dict[str, Path] | None:
        """The Parquet file of each table in the generation in use (None before the first build)."""
        manifest = self.manifest()
        if manifest is None:
            return None
        directory = self.root / manifest["generation"]
        return {table: directory / f"{table}.parquet" for table in TABLES}

    def _tables(self) -> dict[str, pa.Table]:
        files = self.files()
        if files is None:
            return {t: schema(t).empty_table() for t in TABLES}
        return {t: pq.read_table(path, schema=schema(t)) for t, path in files.items()}

    # --- refreshing ------------------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self, wait: bool) -> Iterator[bool]:
        """One refresh at a time, across threads and across processes sharing the data dir
        (gunicorn workers, `ehcp-record analytics refresh`): a lock file beside the manifest."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.root / "refresh.lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def refresh(self, full: bool = False, wait: bool = True) -> RefreshReport | None:
        """Bring the extract up to date with the record; None when `wait` is False and another
        process is refreshing already."""
        with self._exclusive(wait) as mine:
            if not mine:
                return None
            started = time.perf_counter()
            manifest = self.manifest()
            today = self.today()
            full = full or manifest is None or manifest.get("as_of") != today.isoformat()
            since = None if full else datetime.fromisoformat(manifest["resume"]) if manifest.get("resume") else None
            changes = self.feed.changed_records(since, frozenset() if full else self._window())
            custody = {self._own(r): state for r, state in self.feed.custody().items()}
            records, gone = self._custody_changes(changes.records, custody, full)
            if not (full or records or gone or changes.newest != since):
                # nothing to rebuild: the generation in use stays (no rewrite of every table)
                return RefreshReport(manifest["generation"], 0, False, time.perf_counter() - started,
                                     dict(manifest.get("rows", {})))
            directory = self.feed.directory()
            fresh = self._rows_of(records, directory, today)
            tables = self._merged(fresh, {self._own(r) for r in records} | gone, full)
            generation = self._write(tables, changes, today, _local_authorities(directory), custody)
            return RefreshReport(generation, len(records), full, time.perf_counter() - started,
                                 {t: tables[t].num_rows for t in TABLES})

    def _own(self, record: str) -> str:
        """The record's pseudonym, remembered (every refresh compares every record's custody)."""
        found = self._pseudonyms.get(record)
        if found is None:
            found = self._pseudonyms[record] = self.pseudonyms.own(record)
        return found

    def _custody_changes(self, records: list[str], custody: dict[str, str], full: bool) -> tuple[list[str], set[str]]:
        """The records to rebuild (changed resources, or custody changed since the last build:
        erased, transferred out, moved to another LA) and the pseudonyms of records gone."""
        if full:
            return records, set()
        before = self._custody()
        by_pseudonym = {pseudonym: record for record, pseudonym in self._pseudonyms.items()}
        moved = {by_pseudonym[p] for p, state in custody.items() if p in before and before[p] != state}
        return sorted(set(records) | moved), set(before) - set(custody)

    def _custody(self) -> dict[str, str]:
        files = self.files()
        path = files and files["plan_years"].with_name("custody.parquet")
        if not path or not path.exists():
            return {}
        table = pq.read_table(path)
        return dict(zip(table.column("child").to_pylist(), table.column("state").to_pylist()))

    def _rows_of(self, records: list[str], directory: dict[str, dict], today: date) -> dict[str, pa.Table]:
        """The de-identified rows of these records, table by table (rows.py). Kept as columns
        while they accumulate, not as a dict per row: half a million live dicts made each of
        Python's full garbage collections longer, and the build super-linear."""
        columns: dict[str, dict[str, list]] = {t: {c: [] for c in TABLES[t]} for t in TABLES}
        for snapshot in self.feed.snapshots(records):
            rows = child_rows(self._own(snapshot.record), snapshot.custodian, snapshot.resources, directory, today,
                              snapshot.history)
            for table, items in rows.tables.items():
                if snapshot.transferred_out and table != "transfers":
                    continue  # the record now lives with the new LA's deployment; only the sending is ours
                for column, values in columns[table].items():
                    values.extend(row.get(column) for row in items)
        return {t: pa.Table.from_pydict(columns[t], schema=schema(t)) for t in TABLES}

    def _merged(self, fresh: dict[str, pa.Table], changed: set[str], full: bool) -> dict[str, pa.Table]:
        old = {t: schema(t).empty_table() for t in TABLES} if full else self._tables()
        merged = {}
        for table in TABLES:
            kept = old[table]
            if changed and kept.num_rows:
                kept = kept.filter(pc.invert(pc.is_in(kept.column("child"), value_set=pa.array(sorted(changed)))))
            new = fresh[table]
            merged[table] = pa.concat_tables([kept, new]) if kept.num_rows else new
        merged["plan_years"] = _fold_small_settings(merged["plan_years"])
        return merged

    def _window(self) -> frozenset[str]:
        """The versions the last scan saw near its resume point (`window.json`, internal)."""
        files = self.files()
        try:
            return frozenset(json.loads(files["plan_years"].with_name("window.json").read_text(encoding="utf-8")))
        except (TypeError, FileNotFoundError, ValueError):
            return frozenset()  # none kept (an older generation): those versions are rebuilt once more

    def _write(self, tables: dict[str, pa.Table], changes: Changes, today: date, las: dict[str, str],
               custody: dict[str, str]) -> str:
        manifest = self.manifest() or {}
        number = int(str(manifest.get("generation", "gen-0")).split("-")[1]) + 1
        generation = f"gen-{number:06d}"
        directory = self.root / generation
        directory.mkdir(parents=True, exist_ok=True)
        for table, data in tables.items():
            pq.write_table(data, directory / f"{table}.parquet", compression="zstd")
        pq.write_table(pa.table({"child": list(custody), "state": list(custody.values())}),
                       directory / "custody.parquet", compression="zstd")  # internal: never exported
        (directory / "window.json").write_text(json.dumps(sorted(changes.window)), encoding="utf-8")  # internal too
        resume = changes.newest
        body = {"generation": generation, "resume": resume.isoformat() if resume else None,
                "as_of": today.isoformat(), "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "rows": {t: tables[t].num_rows for t in TABLES}, "local_authorities": las}
        temporary = self.root / ".manifest.json.tmp"
        temporary.write_text(json.dumps(body, indent=1), encoding="utf-8")
        os.replace(temporary, self.root / "manifest.json")
        previous = manifest.get("generation")
        for stale in self.root.glob("gen-*"):
            if stale.name not in (generation, previous):
                shutil.rmtree(stale, ignore_errors=True)
        return generation

    def refresh_in_background(self, seconds: int, log: Callable[[str], None]) -> threading.Thread:
        """Refresh now and then every `seconds`, in a daemon thread. Of several processes sharing
        the data dir (gunicorn workers), only the one holding the lock file refreshes."""
        def loop() -> None:
            while True:
                try:
                    self.refresh(wait=False)  # another process refreshing: this one skips a turn
                except Exception as exc:  # noqa: BLE001 - a failed refresh is retried next time
                    log(f"analytics extract refresh failed: {exc}")
                time.sleep(seconds)

        thread = threading.Thread(target=loop, name="analytics-refresh", daemon=True)
        thread.start()
        return thread

    # --- handing over ----------------------------------------------------------------

    def export(self, recipient: str, directory: Path, k: int = DEFAULT_THRESHOLD) -> dict[str, Path]:
        """A release for one recipient: every calendar year that has ended, each cut once and
        k-anonymous (release.py), with the recipient's own pseudonyms. The year still running
        is not released (its rows change daily: two exports would differ by a few children)."""
        years = self.released_years(k)
        directory.mkdir(parents=True, exist_ok=True)
        written = {}
        for table in TABLES:
            parts = [cut[table] for cut in years.values()]
            data = pa.concat_tables(parts) if parts else schema(table).empty_table()
            data = data.set_column(data.schema.get_field_index("child"), "child",
                                   _mapped(data.column("child"), lambda c: self.pseudonyms.for_recipient(c, recipient)))
            written[table] = directory / f"{table}.parquet"
            pq.write_table(data, written[table], compression="zstd")
        summary = {"k": k, "years": sorted(years), "tables": {
            str(year): json.loads((self._release_dir(k, year) / "release.json").read_text(encoding="utf-8"))["tables"]
            for year in years}}
        (directory / "release.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        return written

    def _release_dir(self, k: int, year: int) -> Path:
        return self.root / "releases" / f"k{k}" / "extract" / str(year)

    def released_years(self, k: int = DEFAULT_THRESHOLD) -> dict[int, dict[str, pa.Table]]:
        """Every ended year's cut, made now if it was never made, else read back as it was:
        a year is released once, so two exports (or two recipients) never differ by a child
        recorded late, erased, or moved since (differencing, docs/analytics.md)."""
        with self._exclusive(wait=True):
            internal = self._tables()
            found = {}
            for year in self._ended_years(internal):
                place = self._release_dir(k, year)
                if not (place / "release.json").exists():
                    self._cut({t: _of_year(t, data, year) for t, data in internal.items()}, year, k, place)
                found[year] = {t: pq.read_table(place / f"{t}.parquet", schema=schema(t)) for t in TABLES}
            return found

    def _ended_years(self, internal: dict[str, pa.Table]) -> list[int]:
        years: set[int] = set()
        for table, data in internal.items():
            policy = load_policy().tables[table]
            column = data.column(policy.period).to_pylist()
            years |= {int(v) if policy.period == "year" else int(str(v)[:4]) for v in column if v is not None}
        return sorted(y for y in years if y < self.today().year)

    def _cut(self, rows_of_year: dict[str, list[dict]], year: int, k: int, place: Path) -> None:
        policy = load_policy()
        staging = place.with_name(f".{year}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        summary = {}
        for table in TABLES:
            pseudonym: dict[str, str] = {}  # a child's rows in a table-year share one
            rows = [dict(r, child=pseudonym.get(r["child"]) or pseudonym.setdefault(
                r["child"], self.pseudonyms.for_release(str(r["child"]), table, year))) for r in rows_of_year.get(table, [])]
            cut = anonymise(policy, policy.tables[table], rows, k)
            pq.write_table(pa.Table.from_pylist(cut.rows, schema=schema(table)), staging / f"{table}.parquet",
                           compression="zstd")
            summary[table] = cut.summary()
        (staging / "release.json").write_text(json.dumps({"year": year, "k": k, "tables": summary}, indent=1),
                                              encoding="utf-8")
        os.replace(staging, place)


def _mapped(column: pa.ChunkedArray, change: Callable[[str], str]) -> pa.Array:
    """`change` applied to each distinct value once (a child has many rows)."""
    encoded = column.combine_chunks().dictionary_encode()
    values = pa.array([change(v) for v in encoded.dictionary.to_pylist()], pa.string())
    return pc.take(values, encoded.indices)


def _of_year(table: str, data: pa.Table, year: int) -> list[dict]:
    """The internal rows of one table in one calendar year (a release is cut a year at a time)."""
    period = load_policy().tables[table].period
    column = data.column(period)
    keep = pc.equal(column, year) if period == "year" else pc.starts_with(column, f"{year}-")
    return data.filter(pc.fill_null(keep, False)).to_pylist()


def _local_authorities(directory: dict[str, dict]) -> dict[str, str]:
    """LA Organization reference -> DfE LA number, so a request can name its LA without
    reading the record store (the extract is all a measure evaluation reads)."""
    found = {}
    for reference in directory:
        number = la_number(reference, directory, LA_NUMBER_SYSTEM)
        if number != "unknown":
            found[reference] = number
    return found


def _fold_small_settings(plan_years: pa.Table) -> pa.Table:
    """A URN attended by fewer than SMALL_SETTING children becomes its setting type."""
    named = plan_years.filter(pc.and_(pc.is_valid(plan_years.column("setting")),
                                      pc.not_equal(plan_years.column("setting"), plan_years.column("setting_type"))))
    counts = named.group_by("setting").aggregate([("child", "count_distinct")])
    big = counts.filter(pc.greater_equal(counts.column("child_count_distinct"), SMALL_SETTING)).column("setting")
    keep = pc.fill_null(pc.is_in(plan_years.column("setting"), value_set=big.combine_chunks()), False)
    folded = pc.if_else(keep, plan_years.column("setting"), plan_years.column("setting_type"))
    return plan_years.set_column(plan_years.schema.get_field_index("setting"), "setting", folded)
