"""Disclosure control (ehcp_record/analytics/disclosure.py) as properties over random tables:
no cell of 1 to 4 children is published, and no hidden cell is the difference between a
published margin and the published cells of its line."""

from __future__ import annotations

from itertools import product

from hypothesis import given, settings
from hypothesis import strategies as st

from ehcp_record.analytics.disclosure import Cell, lines, recoverable, suppress


def _table(grid: list[list[int]]) -> dict:
    """A two-way table of child counts with its margins and total (every child in one cell)."""
    cells = {}
    rows, cols = len(grid), len(grid[0])
    for i, j in product(range(rows), range(cols)):
        cells[(f"r{i}", f"c{j}")] = Cell(grid[i][j], grid[i][j])
    for i in range(rows):
        total = sum(grid[i])
        cells[(f"r{i}", None)] = Cell(total, total)
    for j in range(cols):
        total = sum(grid[i][j] for i in range(rows))
        cells[(None, f"c{j}")] = Cell(total, total)
    everything = sum(map(sum, grid))
    cells[(None, None)] = Cell(everything, everything)
    return cells


grids = st.integers(1, 6).flatmap(lambda cols: st.lists(
    st.lists(st.one_of(st.integers(0, 6), st.integers(0, 60)), min_size=cols, max_size=cols), min_size=1, max_size=7))


@settings(max_examples=150, deadline=None)
@given(grids)
def test_no_small_cell_is_published_and_none_hidden_can_be_recovered(grid):
    cells = suppress(_table(grid))
    assert all(c.suppressed for c in cells.values() if 0 < c.children < 5)
    assert recoverable(cells) == []


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=12))
def test_one_way_tables_too(values):
    cells = {(f"v{i}",): Cell(v, v) for i, v in enumerate(values)}
    cells[(None,)] = Cell(sum(values), sum(values))
    suppress(cells)
    assert all(c.suppressed for c in cells.values() if 0 < c.children < 5)
    assert recoverable(cells) == []


def test_a_single_small_cell_takes_the_next_smallest_with_it():
    cells = _table([[3, 20, 30], [40, 50, 60]])
    suppress(cells)
    hidden = {k for k, c in cells.items() if c.suppressed}
    assert ("r0", "c0") in hidden and ("r0", "c1") in hidden  # row 0: 3 and then 20
    assert ("r1", "c0") in hidden and ("r1", "c1") in hidden  # so that columns c0, c1 hide two each
    assert not cells[(None, None)].suppressed


def test_children_decide_not_rows():
    cells = {("a",): Cell(12, 1), ("b",): Cell(30, 20), ("c",): Cell(25, 18), (None,): Cell(67, 39)}
    suppress(cells)
    assert cells[("a",)].suppressed and sum(c.suppressed for c in cells.values()) == 2


def test_lines_of_a_two_way_table():
    found = lines(_table([[1, 2], [3, 4]]))
    assert (("r0", None), [("r0", "c0"), ("r0", "c1")]) in found
    totals = sorted((sorted(members, key=str) for total, members in found if total == (None, None)), key=str)
    assert totals == [[("r0", None), ("r1", None)], [(None, "c0"), (None, "c1")]]  # two lines, not one
