"""k-anonymity of a release cut (ehcp_record/analytics/release.py) as properties over random
table-years: every released signature is shared by at least k children; a child is either
released with all its rows (some values perhaps suppressed) or left out; nothing is invented."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from ehcp_record.analytics.release import anonymise, generalise, load_policy, signatures

POLICY = load_policy()
NEEDS = ["ASD", "SLCN", "SEMH", "MLD", "MSI", "PMLD"]
BANDS = ["0-4", "5-10", "11-15", "16-19", "20-25"]
SETTINGS = ["MS", "SS", "FE", "AP"]


def _plan_year(n: int, la: str, band: str, need: str, setting: str, urn: bool) -> dict:
    return {"child": f"c{n}", "la": la, "year": 2025, "age_band": band, "primary_need": need,
            "setting_type": setting, "setting": f"1000{n % 3}" if urn else setting}


children = st.lists(st.tuples(st.sampled_from(["866", "855"]), st.sampled_from(BANDS), st.sampled_from(NEEDS),
                              st.sampled_from(SETTINGS), st.booleans()), min_size=0, max_size=120)


@settings(max_examples=60, deadline=None)
@given(children, st.integers(min_value=2, max_value=7))
def test_every_released_plan_year_signature_is_shared_by_k_children(people, k):
    rows = [_plan_year(n, *person) for n, person in enumerate(people)]
    table = POLICY.tables["plan_years"]
    cut = anonymise(POLICY, table, [dict(r) for r in rows], k)
    sizes = Counter(signatures(cut.rows, table.quasi_identifiers).values())
    assert all(size >= k for size in sizes.values())
    released = {r["child"] for r in cut.rows}
    assert len(released) + cut.left_out == len(rows)
    assert cut.smallest == (min(sizes.values()) if sizes else 0)
    originals = {r["child"]: r for r in rows}
    for row in cut.rows:  # a value is the original, a generalisation of it, or suppressed
        before = originals[row["child"]]
        assert row["la"] in (before["la"], None)
        assert row["primary_need"] in (before["primary_need"], generalise(POLICY, "need", before["primary_need"], 1),
                                       None)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.sampled_from(NEEDS), min_size=1, max_size=3, unique=True), max_size=80))
def test_a_childs_set_of_needs_is_its_signature(needs):
    rows = [{"child": f"c{n}", "la": "866", "year": 2025, "need": need, "rank": rank}
            for n, mine in enumerate(needs) for rank, need in enumerate(mine, start=1)]
    table = POLICY.tables["needs"]
    cut = anonymise(POLICY, table, rows, 5)
    assert all(size >= 5 for size in Counter(signatures(cut.rows, table.quasi_identifiers).values()).values())
    kept = Counter(r["child"] for r in cut.rows)
    assert all(kept[c] == len(needs[int(c[1:])]) for c in kept)  # all of a child's rows, or none


def test_months_become_quarters_then_years():
    assert [generalise(POLICY, "month", "2025-11", level) for level in (0, 1, 2)] == ["2025-11", "2025-Q4", "2025"]
    assert generalise(POLICY, "age_band", "16-19", 2) == "0-25" and generalise(POLICY, "age_band", None, 1) is None
