"""k-anonymity for a released copy of the extract: generalise, then suppress locally, until no
child can be singled out by what someone who knows them could know.

The extract the deployment keeps (extract.py) is pseudonymised microdata: a rare mix of LA, age
band, need and setting can be one child. Measures are evaluated over it, inside the deployment,
and only suppressed aggregates leave (disclosure.py). What a recipient is handed
(`Extract.export`) goes through this module first, one table and one calendar year at a time:

1. The child's pseudonym is a new one for each table and each year (`Pseudonymiser.for_release`):
   rows can be linked within one table-year (so a recipient still counts children, not rows)
   but never across tables or years. Joined across tables and years, almost every child's
   profile is unique (the test measures it), and k-anonymity on that profile would leave
   nothing; unlinked, a child singled out in one table-year would tell only what that
   table-year holds.
2. Quasi-identifiers (`ehcp_record/data/analytics-release.json`, the one place they are named):
   per table, the columns someone who knows the child could know. A child's *signature* in a
   table-year is the set of its rows' quasi-identifier tuples; k-anonymity (Sweeney 2002) asks
   that every signature be shared by at least k children (k = the disclosure threshold).
3. Generalisation (global recoding, as in Samarati's and Sweeney's Datafly): the table's ladder
   is tried rung by rung (months -> quarters -> years, DfE age bands -> wider bands, need ->
   the Code of Practice's four broad areas (SEND Code of Practice 2015, 6.28), a school -> its
   setting type -> its group) and the first rung needing at most `max_suppressed_share` of the
   children suppressed is taken.
4. Local suppression: a child whose signature is still rarer than k has its quasi-identifier
   values set to null (suppressed), column by column in the table's order, until it is not;
   one still rare with all of them null is left out of the release.

Why that suffices: every released signature is shared by >= k children, and whether a row is
consistent with what an attacker knows depends only on its released values (a null being
consistent with anything), so any attempt to match a child selects whole classes: at least k
candidates, or none. Differencing two releases is closed in extract.py (`Extract.released_years`):
a year is cut once, after it has ended, and every later export reuses that cut.

Pure logic, no I/O beyond reading the policy file.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

POLICY_FILE = Path(__file__).resolve().parents[1] / "data" / "analytics-release.json"
Row = dict[str, object]


@dataclass(frozen=True)
class TablePolicy:
    period: str                      # the column giving the row's year ("year", or "month" YYYY-MM)
    quasi_identifiers: tuple[str, ...]
    hierarchy: dict[str, str]        # column -> the hierarchy that generalises it
    ladder: tuple[dict[str, int], ...]  # rungs: column -> generalisation level
    suppress: tuple[str, ...]        # local suppression order


@dataclass(frozen=True)
class Policy:
    hierarchies: dict[str, object]
    tables: dict[str, TablePolicy]
    max_suppressed_share: float


@dataclass
class Cut:
    """One table-year made k-anonymous, and what it cost."""

    rows: list[Row]
    rung: dict[str, int]
    children: int
    suppressed: int = 0   # children with at least one value suppressed
    left_out: int = 0     # children still rare with every suppressible value null
    smallest: int = 0     # the smallest class released (>= k, or 0 when nothing is)

    def summary(self) -> dict:
        return {"rung": self.rung, "children": self.children, "suppressed": self.suppressed,
                "left_out": self.left_out, "smallest_class": self.smallest}


@lru_cache(maxsize=2)
def load_policy(path: Path = POLICY_FILE) -> Policy:
    data = json.loads(path.read_text(encoding="utf-8"))
    tables = {name: TablePolicy(t["period"], tuple(t["quasi_identifiers"]), dict(t["hierarchy"]),
                                tuple(dict(r) for r in t["ladder"]), tuple(t["suppress"]))
              for name, t in data["tables"].items()}
    return Policy(data["hierarchies"], tables, float(data["max_suppressed_share"]))


# --------------------------------------------------------------------------- generalisation

def generalise(policy: Policy, hierarchy: str, value: object, level: int) -> object:
    """`value` raised `level` steps up its hierarchy (None stays None: suppressed is suppressed)."""
    if value is None or level == 0:
        return value
    rule = policy.hierarchies[hierarchy]
    if rule == "calendar":
        text = str(value)
        return f"{text[:4]}-Q{(int(text[5:7]) - 1) // 3 + 1}" if level == 1 else text[:4]
    for mapping in list(rule)[:level]:  # type: ignore[arg-type]
        value = mapping.get(str(value), value)
    return value


def recode(policy: Policy, table: TablePolicy, rows: list[Row], rung: dict[str, int]) -> list[Row]:
    """Every row with the rung's levels applied; a `fold:<column>` hierarchy (a school named
    by URN) takes that column's generalised value, as the small-school folding does."""
    out = []
    for row in rows:
        new = dict(row)
        folds = []
        for column, level in rung.items():
            name = table.hierarchy[column]
            rule = policy.hierarchies[name]
            if isinstance(rule, str) and rule.startswith("fold:"):
                folds.append((column, rule.removeprefix("fold:")))
            else:
                new[column] = generalise(policy, name, row.get(column), level)
        for column, source in folds:
            new[column] = new.get(source) if row.get(column) is not None else None
        out.append(new)
    return out


# --------------------------------------------------------------------------- k-anonymity

def signatures(rows: list[Row], quasi_identifiers: tuple[str, ...]) -> dict[object, tuple]:
    """Each child's signature: the sorted set of its rows' quasi-identifier tuples."""
    found: dict[object, set] = defaultdict(set)
    for row in rows:
        found[row["child"]].add(tuple(row.get(q) for q in quasi_identifiers))
    return {child: tuple(sorted(parts, key=lambda t: tuple("" if v is None else str(v) for v in t)))
            for child, parts in found.items()}


def rare_children(rows: list[Row], quasi_identifiers: tuple[str, ...], k: int) -> set:
    """The children whose signature fewer than k children share."""
    signed = signatures(rows, quasi_identifiers)
    sizes = Counter(signed.values())
    return {child for child, signature in signed.items() if sizes[signature] < k}


def smallest_class(rows: list[Row], quasi_identifiers: tuple[str, ...]) -> int:
    sizes = Counter(signatures(rows, quasi_identifiers).values())
    return min(sizes.values(), default=0)


def anonymise(policy: Policy, table: TablePolicy, rows: list[Row], k: int) -> Cut:
    """One table-year (rows carrying their release pseudonym in `child`) made k-anonymous."""
    children = len({row["child"] for row in rows})
    chosen, rung = rows, table.ladder[-1]
    for candidate in table.ladder:
        chosen = recode(policy, table, rows, candidate)
        rung = candidate
        if len(rare_children(chosen, table.quasi_identifiers, k)) <= policy.max_suppressed_share * children:
            break
    cut = Cut(chosen, dict(rung), children)
    _suppress_locally(cut, table, k)
    cut.smallest = smallest_class(cut.rows, table.quasi_identifiers)
    return cut


def _suppress_locally(cut: Cut, table: TablePolicy, k: int) -> None:
    """Null the rare children's values column by column; leave out any still rare at the end.
    A class of k or more is never touched, so the loop only ever merges rare children."""
    touched: set = set()
    for column in table.suppress:
        rare = rare_children(cut.rows, table.quasi_identifiers, k)
        if not rare:
            break
        touched |= rare
        for row in cut.rows:
            if row["child"] in rare:
                row[column] = None
    rare = rare_children(cut.rows, table.quasi_identifiers, k)
    if rare:
        cut.rows = [row for row in cut.rows if row["child"] not in rare]
    cut.suppressed = len(touched - rare)
    cut.left_out = len(rare)


@dataclass
class YearRelease:
    """Every table of one calendar year, cut once (see extract.Extract.export)."""

    year: int
    tables: dict[str, Cut] = field(default_factory=dict)

    def summary(self) -> dict:
        return {table: cut.summary() for table, cut in self.tables.items()}
