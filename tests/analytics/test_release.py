"""Trying to single out a child of the 2,000-child cohort from a *released* extract (the Parquet
files `ehcp-record analytics export` hands a recipient), with DuckDB, and failing.

The attacker knows, for every child of the cohort, what a neighbour or a school would: the LA,
the exact date of birth, the primary need, the school (URN and setting type), the month the
plan started, the months of its reviews, of a cessation and of a transfer. They know the
published generalisation scheme (ehcp_record/data/analytics-release.json) and treat a
suppressed (null) value as matching anything. Three attacks:
- a unique match: for each child, each table and each year, the rows consistent with what is
  known about them must belong to at least k children, or to none;
- linking: joining tables (or years) on the child's pseudonym must join nothing;
- differencing: two exports made before and after a child is recorded late for an ended year
  differ in nothing, and two years' releases share no pseudonym.
Each attack is also run against the internal extract, where it must succeed (so the test would
notice if the release stopped protecting anyone)."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.cohort import ChildFacts, _envelope, resources
from ehcp_record.analytics.release import POLICY_FILE
from ehcp_record.analytics.rows import TABLES

K = 5
POLICY = json.loads(POLICY_FILE.read_text(encoding="utf-8"))
LA_NUMBER = {"Organization/la-866": "866", "Organization/la-855": "855"}


def _band(birth: date, year: int) -> str | None:
    age = year - birth.year - ((1, 1) < (birth.month, birth.day))
    if age > 25:
        return None
    return "0-4" if age < 5 else "5-10" if age < 11 else "11-15" if age < 16 else "16-19" if age < 20 else "20-25"


def _chain(hierarchy: str, value: str) -> list[str]:
    """What the attacker's exact value may have been published as, at every level."""
    forms = [value]
    for mapping in POLICY["hierarchies"][hierarchy]:
        forms.append(mapping.get(forms[-1], forms[-1]))
    return forms


def _months(day: date) -> list[str]:
    return [day.strftime("%Y-%m"), f"{day.year}-Q{(day.month - 1) // 3 + 1}", str(day.year)]


def _probes(cohort, table: str, years: list[int]) -> list[dict]:
    """One row per (child, what is known of them for this table): each column a list of the
    values a consistent released row may show."""
    out = []
    for n, c in enumerate(cohort.facts):
        la, need = [LA_NUMBER[c.custodian]], _chain("need", c.needs[0])
        urn, setting = cohort.schools[c.school]
        if table == "plan_years":
            for year in years:
                if _band(c.birth, year):
                    out.append({"probe": f"{n}/{year}", "la": la, "year": [year],
                                "age_band": _chain("age_band", _band(c.birth, year)), "primary_need": need,
                                "setting_type": _chain("setting_type", setting),
                                "setting": [urn] + _chain("setting_type", setting)})
        elif table == "needs":
            out += [{"probe": f"{n}/{y}", "la": la, "year": [y], "need": need, "rank": [1]} for y in years]
        elif table == "provisions":
            out += [{"probe": f"{n}/{y}", "la": la, "year": [y]} for y in years]
        else:
            known = {"assessments": [c.start], "reviews": [due for due, _ in c.reviews],
                     "outcomes": [c.last_review_held] if c.last_review_held else [],
                     "cessations": [c.ceased[0]] if c.ceased else [],
                     "transfers": [c.transfer[0]] if c.transfer else []}[table]
            for day in known:
                probe = {"probe": f"{n}/{day}", "la": la, "month": _months(day)}
                if table == "transfers":
                    probe["la"] = [LA_NUMBER[c.transfer[2]]]
                else:
                    probe["primary_need"] = need
                out.append(probe)
    return out


def _candidates(path: Path, cohort, table: str, years: list[int]) -> list[int]:
    """For each probe, how many children's released rows are consistent with it (DuckDB)."""
    distinct: dict[str, dict] = {}  # children known alike are one attempt: the answer is the same
    for probe in _probes(cohort, table, years):
        distinct.setdefault(json.dumps({k: v for k, v in probe.items() if k != "probe"}, sort_keys=True), probe)
    probes = list(distinct.values())
    if not probes:
        return []
    columns = [c for c in probes[0] if c != "probe"]
    connection = duckdb.connect()
    connection.register("probes", pa.Table.from_pylist(probes))
    match = " AND ".join(f'(r."{c}" IS NULL OR list_contains(p."{c}", r."{c}"))' for c in columns)
    if "year" in columns:  # never suppressed: lets DuckDB hash-join by year before the rest
        match = f"r.year = p.year[1] AND {match}"
    sql = (f"SELECT p.probe, count(DISTINCT r.child) FROM probes p JOIN read_parquet('{path}') r ON {match} "
           "GROUP BY p.probe")
    counts = [n for _, n in connection.execute(sql).fetchall()]
    connection.close()
    return counts


@pytest.fixture(scope="module")
def released(cohort_api, tmp_path_factory):
    api, cohort = cohort_api
    out = tmp_path_factory.mktemp("release-dfe")
    files = api.services.analytics.extract.export("dfe", out, K)
    return api, cohort, files, json.loads((out / "release.json").read_text())


def test_the_release_covers_the_ended_years_and_says_what_it_generalised(released):
    _, cohort, files, summary = released
    assert summary["k"] == K and summary["years"][-1] == cohort.as_of.year - 1
    assert cohort.as_of.year not in summary["years"]  # the running year is never released
    for year, tables in summary["tables"].items():
        for table, cut in tables.items():
            assert cut["smallest_class"] == 0 or cut["smallest_class"] >= K, (year, table, cut)
    years = pq.read_table(files["plan_years"]).column("year").to_pylist()
    assert max(years) == cohort.as_of.year - 1 and len(years) > 3000


@pytest.mark.parametrize("table", list(TABLES))
def test_no_child_is_a_unique_match_in_the_release(released, table):
    _, cohort, files, summary = released
    counts = _candidates(files[table], cohort, table, summary["years"])
    few = [n for n in counts if 0 < n < K]
    assert few == [], f"{table}: {len(few)} attempts narrowed a child to fewer than {K} candidates"
    if table in ("plan_years", "assessments", "reviews"):
        assert len(counts) > 500  # the attack found rows to try: it is not vacuous


def test_the_same_attack_singles_children_out_of_the_internal_extract(released):
    """The extract kept inside the deployment is microdata: the attack works on it, which is why
    it never leaves (and why the release above is what leaves)."""
    api, cohort, _, summary = released
    internal = api.services.analytics.extract.files()
    for table in ("plan_years", "assessments"):
        counts = _candidates(internal[table], cohort, table, summary["years"])
        assert sum(1 for n in counts if n == 1) > 20, table


def test_tables_and_years_cannot_be_joined_on_the_pseudonym(released):
    api, _, files, summary = released
    connection = duckdb.connect()
    seen: dict[tuple[str, int], set] = {}
    for table, path in files.items():
        period = "year" if "year" in TABLES[table] else "CAST(substr(month, 1, 4) AS INTEGER)"
        for child, year in connection.execute(f"SELECT DISTINCT child, {period} FROM read_parquet('{path}')").fetchall():
            seen.setdefault((table, year), set()).add(child)
    keys = sorted(seen, key=str)  # a suppressed month has no year: its own key
    shared = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1:] if seen[a] & seen[b]]
    assert shared == [], f"pseudonyms shared between {shared[:3]}"
    joined = connection.execute(f"SELECT count(*) FROM read_parquet('{files['plan_years']}') p "
                                f"JOIN read_parquet('{files['outcomes']}') o USING (child)").fetchone()[0]
    assert joined == 0
    internal = api.services.analytics.extract.files()  # inside, the same join links every child
    linked = connection.execute(f"SELECT count(DISTINCT child) FROM read_parquet('{internal['plan_years']}') p "
                                f"JOIN read_parquet('{internal['outcomes']}') o USING (child)").fetchone()[0]
    assert linked > 100 and len(summary["years"]) >= 2
    connection.close()


def test_a_child_recorded_late_is_not_found_by_differencing_two_exports(released, tmp_path):
    """Build A, then a child with a rare mix (MSI, 16-19) is recorded late for the last ended
    year, the extract refreshed (build B) and exported again: the ended year's release is the
    one cut before, so the two exports differ in nothing, and the newcomer is in neither."""
    api, cohort, before, _ = released
    year = cohort.as_of.year - 1
    template = cohort.facts[0]
    newcomer = ChildFacts(**{**template.__dict__, "record": "e" * 8 + "-0000-4000-8000-" + "b" * 12,
                             "custodian": "Organization/la-855", "needs": ["MSI"], "start": date(year, 4, 7),
                             "final_due": date(year, 4, 20), "final_exception": False, "ceased": None,
                             "transfer": None, "reviews": [], "outcomes": [], "last_review_held": None,
                             "birth": date(year - 18, 2, 9), "school": "Organization/school-0"})
    db = api.services.repo.db
    docs = [_envelope(r, newcomer.record, newcomer.custodian, api.services.records.clock()) for r in resources(newcomer)]
    db.current.insert_many(docs)
    db.records.insert_one({"_id": newcomer.record, "custodian": newcomer.custodian, "parents": []})
    extract = api.services.analytics.extract
    feed = extract.feed
    overlap, feed.overlap = feed.overlap, timedelta(0)
    try:
        assert extract.refresh().records_rebuilt >= 1
        internal = pq.read_table(extract.files()["assessments"]).to_pylist()
        assert any(r["la"] == "855" and r["month"] == f"{year}-04" and r["primary_need"] == "MSI" for r in internal)
        after = extract.export("dfe", tmp_path / "b", K)
        connection = duckdb.connect()
        for table in TABLES:
            for a, b in ((before[table], after[table]), (after[table], before[table])):
                extra = connection.execute(f"SELECT count(*) FROM (SELECT * FROM read_parquet('{a}') "
                                           f"EXCEPT ALL SELECT * FROM read_parquet('{b}'))").fetchone()[0]
                assert extra == 0, f"{table}: the two exports differ by {extra} rows"
        connection.close()
        solo = type(cohort)(cohort.as_of, [newcomer], cohort.schools)
        for table in ("plan_years", "assessments", "needs"):
            assert all(n == 0 or n >= K for n in _candidates(after[table], solo, table, [year])), table
    finally:
        db.current.delete_many({"record": newcomer.record})
        db.records.delete_one({"_id": newcomer.record})
        extract.refresh()
        feed.overlap = overlap
