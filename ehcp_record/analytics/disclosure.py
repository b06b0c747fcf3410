"""Disclosure control: primary and secondary suppression of small cells.

Official statistics on children with SEND (DfE's statistical disclosure control policy, the
Code of Practice for Statistics T6.4) suppress counts that could identify a child, and then
suppress further cells so that none of the hidden ones can be worked out from the totals.

- Primary: a cell describing at least one but fewer than `threshold` children (default 5) is
  suppressed. Children, not rows, decide: ten provisions of one child are one child.
- Secondary: a table is published with its margins (each stratifier alone, and the total).
  Every "line" (the cells that add up to one published margin) must hide either none or at
  least two of its cells; a line hiding one gets its smallest other cell hidden too (a
  non-zero one when there is one), or, when there is none, its margin. Repeated until no line
  changes, so no hidden cell equals a published total minus published cells.
Differences between periods are closed off by the periods themselves (measures.py): only
whole, disjoint calendar years are evaluated, so no two reports differ by a few children.

Pure logic, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Iterable

DEFAULT_THRESHOLD = 5
Key = tuple[str | None, ...]  # one value per dimension; None = all values (a margin)


@dataclass
class Cell:
    count: int       # what is reported (children, plans, provisions ...)
    children: int    # distinct children behind it: what decides primary suppression
    suppressed: bool = False


def lines(keys: Iterable[Key]) -> list[tuple[Key, list[Key]]]:
    """Each published margin with the keys that add up to it, one line per dimension that
    varies: the row margins add up to the total, and so, separately, do the column margins."""
    found: dict[tuple[Key, int], list[Key]] = {}
    for key in keys:
        for position, value in enumerate(key):
            if value is not None:
                total = key[:position] + (None,) + key[position + 1:]
                found.setdefault((total, position), []).append(key)
    return [(total, members) for (total, _), members in found.items()]


def suppress(cells: dict[Key, Cell], threshold: int = DEFAULT_THRESHOLD) -> dict[Key, Cell]:
    """Mark suppressed cells in place (primary, then secondary until stable); returns `cells`."""
    for cell in cells.values():
        cell.suppressed = 0 < cell.children < threshold
    table = [(total, members) for total, members in lines(cells) if total in cells]
    changed = True
    while changed:
        changed = False
        for total, members in table:
            if cells[total].suppressed:
                continue
            hidden = [k for k in members if cells[k].suppressed]
            if len(hidden) != 1:
                continue
            _hide_complement(cells, total, [k for k in members if not cells[k].suppressed])
            changed = True
    return cells


def _hide_complement(cells: dict[Key, Cell], total: Key, shown: list[Key]) -> None:
    if not shown:
        cells[total].suppressed = True
        return
    nonzero = [k for k in shown if cells[k].count > 0] or shown
    smallest = min(nonzero, key=lambda k: (cells[k].count, tuple(str(v) for v in k)))
    cells[smallest].suppressed = True


def recoverable(cells: dict[Key, Cell]) -> list[Key]:
    """Suppressed cells that a published line gives away (the check the tests make)."""
    given: list[Key] = []
    for total, members in lines(cells):
        if total in cells and not cells[total].suppressed:
            hidden = [k for k in members if cells[k].suppressed]
            if len(hidden) == 1:
                given.append(hidden[0])
    return given


def complete(cells: dict[Key, Cell], dimensions: list[list[str]]) -> dict[Key, Cell]:
    """Every combination of the observed values, zero where no row exists (a zero is known
    anyway, and counting it in a line keeps the arithmetic of the margins exact)."""
    for key in product(*dimensions):
        cells.setdefault(tuple(key), Cell(0, 0))
    return cells
