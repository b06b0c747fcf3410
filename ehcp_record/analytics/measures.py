"""The dashboard's figures as FHIR R4 Measures (profiles/Measure/*.json), evaluated over the
extract with DuckDB into summary MeasureReports (https://hl7.org/fhir/R4/measure.html,
https://hl7.org/fhir/R4/measurereport.html, operation $evaluate-measure).

A Measure is data: each group's `initial-population` criteria is a DuckDB SQL query over the
extract's tables (language `application/x-duckdb-sql`) with the parameters `$la`, `$year`,
`$month_from` and `$month_to`; an optional `numerator` criteria is a SQL condition on those
rows, making the group's measureScore a proportion; each stratifier component's criteria is a
column of the population. The group's widest stratifier is the table, the one-component
stratifiers its margins; all of them, and the group's population count, are suppressed
together (disclosure.py) so that no hidden cell follows from the published ones.

Periods are whole calendar years (1 January to 31 December), one at a time: disjoint periods
cannot be differenced to expose a few children.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import duckdb

from ehcp_record.analytics.disclosure import DEFAULT_THRESHOLD, Cell, Key, suppress
from ehcp_record.analytics.rows import INTEGER_COLUMNS, TABLES
from ehcp_record.fhir.canonical import naming_system

SQL = "application/x-duckdb-sql"
COLUMN = "application/x-extract-column"
POPULATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-population"
DATA_ABSENT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
LA_NUMBER_SYSTEM = naming_system("dfe-la-number")


@dataclass(frozen=True)
class Period:
    """One whole calendar year."""

    year: int

    @property
    def start(self) -> str:
        return f"{self.year}-01-01"

    @property
    def end(self) -> str:
        return f"{self.year}-12-31"


@lru_cache(maxsize=4)
def load_measures(directory: Path) -> dict[str, dict]:
    """Every Measure in profiles/Measure, by id."""
    found = {}
    for path in sorted(directory.glob("*.json")):
        measure = json.loads(path.read_text(encoding="utf-8"))
        if measure.get("resourceType") == "Measure":
            found[measure["id"]] = measure
    return found


def _population(group: dict, code: str) -> dict | None:
    return next((p for p in group.get("population", []) if _code(p.get("code")) == code), None)


def _code(concept: object) -> str | None:
    codings = concept.get("coding", []) if isinstance(concept, dict) else []
    return codings[0].get("code") if codings else None


def _components(stratifier: dict) -> list[str]:
    return [c["criteria"]["expression"] for c in stratifier.get("component", [])]


def evaluate(measure: dict, files: dict[str, Path] | None, la: str, period: Period,
             threshold: int = DEFAULT_THRESHOLD) -> dict:
    """The summary MeasureReport of one LA for one year, with small cells suppressed.
    `files` None (no extract built yet) gives a `pending` report over empty tables."""
    connection = _database().cursor()  # a connection of its own; TEMP views stay in it
    used = " ".join(p["criteria"]["expression"] for g in measure.get("group", []) for p in g.get("population", []))
    try:
        for table, columns in TABLES.items():
            if not re.search(rf"\b{table}\b", used):
                continue  # only the tables the Measure reads
            if files is None:
                typed = ", ".join(f'"{c}" {"INTEGER" if c in INTEGER_COLUMNS else "VARCHAR"}' for c in columns)
                connection.execute(f"CREATE TEMP TABLE {table} ({typed})")
            else:
                connection.execute(f"CREATE TEMP VIEW {table} AS SELECT * FROM read_parquet('{_quoted(files[table])}')")
        groups = [_group(connection, group, la, period, threshold) for group in measure.get("group", [])]
    finally:
        connection.close()
    return _without_none({
        "resourceType": "MeasureReport", "status": "pending" if files is None else "complete", "type": "summary",
        "measure": measure["url"],
        "subject": {"identifier": {"system": LA_NUMBER_SYSTEM, "value": la}, "display": f"Local authority {la}"},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "period": {"start": period.start, "end": period.end},
        "improvementNotation": measure.get("improvementNotation"), "group": groups})


_DUCKDB: duckdb.DuckDBPyConnection | None = None
_DUCKDB_LOCK = threading.Lock()


def _database() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB per process (opening one costs tens of milliseconds); each
    evaluation takes a cursor of it, which is a connection of its own (DuckDB Python API)."""
    global _DUCKDB
    with _DUCKDB_LOCK:
        if _DUCKDB is None:
            _DUCKDB = duckdb.connect(":memory:")
        return _DUCKDB


def _without_none(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if v is not None}


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")


def _group(connection: duckdb.DuckDBPyConnection, group: dict, la: str, period: Period, threshold: int) -> dict:
    population = _population(group, "initial-population")["criteria"]["expression"]
    numerator = _population(group, "numerator")
    dimensions = max((_components(s) for s in group.get("stratifier", [])), key=len, default=[])
    cells, scored = _cells(connection, population, numerator["criteria"]["expression"] if numerator else None,
                           dimensions, la, period)
    suppress(cells, threshold)
    total = cells.get((None,) * len(dimensions), Cell(0, 0))
    out: dict = {"code": group.get("code"), "population": [_population_count("initial-population", total)],
                 "stratifier": [_stratifier(s, dimensions, cells) for s in group.get("stratifier", [])]}
    if numerator is not None:
        hit, miss = scored
        expression = numerator["criteria"]["expression"]
        score = _score(total, hit, miss, threshold) if _numerator_shown(expression, dimensions, cells) else None
        out["population"].append(_population_count("numerator", Cell(hit.count, hit.children, score is None)))
        if score is not None:
            out["measureScore"] = score
    if group.get("id"):
        out = {"id": group["id"], **out}
    return out


def _cells(connection: duckdb.DuckDBPyConnection, population: str, numerator: str | None, dimensions: list[str],
           la: str, period: Period) -> tuple[dict[Key, Cell], tuple[Cell, Cell]]:
    """Counts and distinct children for every cell and margin (GROUPING SETS), and the score's parts."""
    offered = {"la": la, "year": period.year, "month_from": f"{period.year}-01", "month_to": f"{period.year}-12"}
    parameters = {name: value for name, value in offered.items() if f"${name}" in population}
    keys = ", ".join(f'"{d}"' for d in dimensions)
    sets = ", ".join(f"({', '.join(chr(34) + d + chr(34) for d in subset)})" for subset in _subsets(dimensions))
    group_by = f"GROUP BY GROUPING SETS ({sets})" if dimensions else ""
    select = f"{keys}, " if dimensions else ""
    flags = ", ".join(f'GROUPING("{d}")' for d in dimensions)
    sql = (f"SELECT {select}count(*), count(DISTINCT child){', ' + flags if flags else ''} "
           f"FROM ({population}) AS population {group_by}")
    cells: dict[Key, Cell] = {}
    for row in connection.execute(sql, parameters).fetchall():
        values, count, children = row[:len(dimensions)], row[len(dimensions)], row[len(dimensions) + 1]
        grouped = row[len(dimensions) + 2:]
        key = tuple(None if flag else _text(value) for value, flag in zip(values, grouped))
        cells[key] = Cell(int(count), int(children))
    hit = miss = Cell(0, 0)
    if numerator is not None:
        sql = (f"SELECT count(*) FILTER (WHERE {numerator}), count(DISTINCT child) FILTER (WHERE {numerator}), "
               f"count(*) FILTER (WHERE NOT ({numerator})), count(DISTINCT child) FILTER (WHERE NOT ({numerator})) "
               f"FROM ({population}) AS population")
        a, b, c, d = connection.execute(sql, parameters).fetchone()
        hit, miss = Cell(int(a), int(b)), Cell(int(c), int(d))
    return cells, (hit, miss)


def _text(value: object) -> str:
    return "unknown" if value is None else str(value)


def _subsets(dimensions: list[str]) -> list[list[str]]:
    """(a, b), (a), (b), (): the table, each margin and the total."""
    subsets = [[]]
    for dimension in dimensions:
        subsets += [s + [dimension] for s in subsets]
    return sorted(subsets, key=len, reverse=True)


def _population_count(code: str, cell: Cell) -> dict:
    entry: dict = {"code": {"coding": [{"system": POPULATION_SYSTEM, "code": code}]}}
    if cell.suppressed:
        entry["extension"] = [{"url": DATA_ABSENT, "valueCode": "masked"}]
    else:
        entry["count"] = cell.count
    return entry


_ONE_VALUE = re.compile(r"\s*(\w+)\s*=\s*'([^']*)'\s*")


def _numerator_shown(expression: str, dimensions: list[str], cells: dict[Key, Cell]) -> bool:
    """Would the numerator tell more than the table? A numerator `column = 'value'` on a
    stratifier column is that column's margin cell: it may be shown only where that cell is.
    Any other numerator is shown only when the table hides nothing (secondary suppression
    cannot account for a sum it does not know)."""
    match = _ONE_VALUE.fullmatch(expression)
    if match and match.group(1) in dimensions:
        position = dimensions.index(match.group(1))
        key = tuple(match.group(2) if i == position else None for i in range(len(dimensions)))
        return key not in cells or not cells[key].suppressed
    return not any(cell.suppressed for cell in cells.values())


def _score(total: Cell, hit: Cell, miss: Cell, threshold: int) -> dict | None:
    """A proportion, published only when neither its numerator nor its complement is small."""
    small = lambda cell: 0 < cell.children < threshold  # noqa: E731
    if total.suppressed or total.count == 0 or small(hit) or small(miss):
        return None
    return {"value": round(hit.count / total.count, 4), "unit": "1", "system": "http://unitsofmeasure.org", "code": "1"}


def _stratifier(stratifier: dict, dimensions: list[str], cells: dict[Key, Cell]) -> dict:
    """One Measure stratifier's strata: the cells whose key fixes exactly its components."""
    mine = _components(stratifier)
    strata = []
    for key, cell in sorted(cells.items(), key=lambda item: tuple(str(v) for v in item[0])):
        fixed = [d for d, v in zip(dimensions, key) if v is not None]
        if fixed != mine:
            continue
        values = {d: v for d, v in zip(dimensions, key) if v is not None}
        stratum: dict = {"population": [_population_count("initial-population", cell)]}
        if len(mine) == 1:
            stratum["value"] = {"text": values[mine[0]]}
        else:
            stratum["component"] = [{"code": {"text": d}, "value": {"text": values[d]}} for d in mine]
        strata.append(stratum)
    return {"code": [{"text": " x ".join(mine)}], "stratum": strata}
