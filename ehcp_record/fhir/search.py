"""FHIR search: the parameters (data in profiles/SearchParameter), indexing, and query parsing.

Parameters are SearchParameter resources evaluated with fhirpathpy at write time into plain
strings and date ranges stored beside each version (`idx`). A search request is parsed here into
a neutral `SearchQuery`; only the repository turns it into a Mongo filter. Every value the
client sends stays a string, and names are checked against the registry, so operator injection
(`identifier[$ne]=`, `{"$gt": ""}`) has nowhere to go.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

from fhirpathpy import compile as compile_fhirpath

from consent.references import literal_key, ref_key, reference_of
from ehcp_record.fhir import dates as fhir_dates
from ehcp_record.errors import invalid, not_supported, too_costly

DEFAULT_COUNT = 20
MAX_COUNT = 100
MAX_OFFSET = 10_000
_DATE_PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(?::[A-Za-z-]+)?$")
_RESULT_PARAMS = {"_count", "_offset", "_sort", "_include", "_revinclude", "_total", "_summary", "_elements",
                  "_format", "_pretty"}
_FORMATS = {"json", "application/json", "application/fhir+json"}
_SUMMARIES = ("true", "text", "data", "count", "false")
#: String search modifiers (R4 search §3.1.1.5.3): starts-with by default, :exact, :contains.
_STRING_MODIFIERS = ("", "exact", "contains")
#: How many resources a chained or _has parameter may resolve to before we refuse as too costly.
MAX_CHAIN_MATCHES = 1000
MAX_REVINCLUDE = 200


@dataclass(frozen=True)
class SearchParam:
    code: str
    type: str  # token | reference | date | string
    resource_type: str
    evaluate: Callable[[dict], list]
    targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Criterion:
    """One AND-ed condition: the stored field matches any of `values` (OR)."""

    field: str  # "idx.<code>", "_id" or "_lastUpdated"
    kind: str  # "token" | "reference" | "date" | "id" | "string"
    values: tuple[Any, ...]
    negate: bool = False
    mode: str = ""  # string searches: "" (starts with), "exact" or "contains"


@dataclass(frozen=True)
class Chain:
    """A parameter the scoped store resolves by a search of another type first (R4 search
    §3.1.1.4.7 chained parameters, §3.1.1.4.8 _has), so the inner search is as visible as any.

    `field` is where the inner result lands on the outer search: a reference parameter
    (chained: the outer resource points at the inner ones) or "_id" (_has: the inner resources
    point at the outer ones through `inner_param`)."""

    field: str
    inner_types: tuple[str, ...]
    inner_pairs: tuple[tuple[str, str], ...]
    inner_param: str | None = None  # _has: the inner reference parameter that points back


@dataclass(frozen=True)
class SortKey:
    field: str
    descending: bool


@dataclass(frozen=True)
class Include:
    source_type: str
    param: str
    target_type: str | None
    reverse: bool = False  # _revinclude: source_type resources whose `param` points at a match


@dataclass
class SearchQuery:
    resource_type: str
    criteria: list[Criterion] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    offset: int = 0
    sort: list[SortKey] = field(default_factory=list)
    includes: list[Include] = field(default_factory=list)
    summary_count: bool = False
    summary: str = "false"  # _summary: true | text | data | count | false
    elements: tuple[str, ...] = ()  # _elements
    chains: list[Chain] = field(default_factory=list)
    patient_filter: tuple[str, ...] = ()  # record ids named by patient/subject, for consent

    def without_paging(self) -> list[tuple[str, str]]:
        """The parameters that define the result set, for building paging links."""
        return [(k, v) for k, v in self.echo if k not in ("_count", "_offset")]

    echo: list[tuple[str, str]] = field(default_factory=list)


class SearchRegistry:
    """Every search parameter per resource type, compiled once from profiles/SearchParameter."""

    def __init__(self, params: dict[tuple[str, str], SearchParam]) -> None:
        self._params = params

    @classmethod
    def load(cls, directory: Path) -> "SearchRegistry":
        params: dict[tuple[str, str], SearchParam] = {}
        for path in sorted(directory.glob("*.json")):
            definition = json.loads(path.read_text())
            for resource_type, expression in _split_expression(definition):
                params[(resource_type, definition["code"])] = SearchParam(
                    code=definition["code"], type=definition["type"], resource_type=resource_type,
                    evaluate=compile_fhirpath(expression, None),
                    targets=tuple(definition.get("target", ())),
                )
        return cls(params)

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        return self._params.get((resource_type, code))

    def for_type(self, resource_type: str) -> list[SearchParam]:
        return [p for (t, _), p in self._params.items() if t == resource_type]

    def index(self, resource: dict) -> dict[str, list]:
        """The search tokens of one resource version, stored beside it (string parameters also
        keep their text as written, under `<code>:exact`)."""
        tokens: dict[str, list] = {}
        for param in self.for_type(resource.get("resourceType", "")):
            found = param.evaluate(resource)
            values = _index_values(param, found)
            if values:
                tokens[param.code] = values
            if param.type == "string" and values:
                tokens[f"{param.code}:exact"] = exact_values(param, found)
        return tokens


def _split_expression(definition: dict) -> Iterable[tuple[str, str]]:
    """`Patient.identifier | Goal.identifier` -> one expression per base type."""
    for part in definition["expression"].split(" | "):
        part = part.strip()
        resource_type = part.split(".", 1)[0]
        if resource_type in definition["base"]:
            yield resource_type, part


def _index_values(param: SearchParam, found: list) -> list:
    if param.type == "token":
        return sorted({t for value in found for t in _tokens(value)})
    if param.type == "reference":
        return sorted({r for value in found for r in _references(value)})
    if param.type == "date":
        return [r for value in found for r in _date_ranges(value)]
    if param.type == "string":
        return sorted({normal_text(t) for value in found for t in _strings(value)} - {""})
    return []


def exact_values(param: SearchParam, found: list) -> list[str]:
    """The strings of a string parameter as written, for `:exact` (stored beside the normalised)."""
    return sorted({t for value in found for t in _strings(value)} - {""})


def normal_text(text: str) -> str:
    """FHIR string matching ignores case and accents (R4 search §3.1.1.5.3 "string"): casefold,
    then drop the combining marks of the NFKD form, so 'Zoë' and 'ZOE' index alike."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c)).strip()


def _strings(value: Any) -> list[str]:
    """The text of a string, HumanName or Address (every part a client may search by)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, dict):
        return []
    parts: list[str] = []
    for key in ("text", "family", "postalCode", "city", "district", "state", "country"):
        if isinstance(value.get(key), str):
            parts.append(value[key])
    for key in ("given", "prefix", "suffix", "line"):
        parts.extend(v for v in value.get(key, []) if isinstance(v, str))
    return parts


def _tokens(value: Any) -> list[str]:
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, str):
        return [value]
    if not isinstance(value, dict):
        return []
    if "coding" in value:
        return [t for coding in value["coding"] for t in _tokens(coding)]
    code = value.get("code", value.get("value"))
    if not isinstance(code, str):
        return []
    system = value.get("system")
    return [code, f"{system}|{code}", f"{system}|"] if system else [code, f"|{code}"]


def _references(value: Any) -> list[str]:
    key = literal_key(reference_of(value))
    return [key, key.split("/", 1)[1]] if key else []


def _date_ranges(value: Any) -> list[dict]:
    try:
        if isinstance(value, str):
            lo, hi = fhir_dates.parse_range(value)
            return [{"lo": lo, "hi": hi}]
        if isinstance(value, dict) and ("start" in value or "end" in value):
            lo = fhir_dates.parse_range(value["start"])[0] if value.get("start") else fhir_dates.MIN
            hi = fhir_dates.parse_range(value["end"])[1] if value.get("end") else fhir_dates.MAX
            return [{"lo": lo, "hi": hi}]
    except fhir_dates.DateFormatError:
        return []
    return []


def parse_search(registry: SearchRegistry, resource_type: str, pairs: list[tuple[str, str]],
                 strict: bool = True) -> SearchQuery:
    """Turn the query string (or form body) of a search into a SearchQuery, or raise 400.

    An unknown parameter is refused only when `strict` (the client sent `Prefer:
    handling=strict`); otherwise it is ignored and left out of the self link, as R4 search
    §3.1.1.3.1 says a server SHOULD (fhirpy's `count()` sends `_totalMethod`)."""
    query = SearchQuery(resource_type=resource_type)
    for name, value in pairs:
        _check_name_and_value(name, value)
        if name in _RESULT_PARAMS:
            _apply_result_param(registry, query, name, value)
        elif _is_chain(name):
            query.chains.append(_chain(registry, resource_type, name, value))
        else:
            criterion = _criterion(registry, resource_type, name, value, strict)
            if criterion is None:
                continue
            query.criteria.append(criterion)
        query.echo.append((name, value))
    query.patient_filter = _patient_filter(query.criteria)
    return query


_HAS_NAME = re.compile(r"^_has:([A-Z][A-Za-z]+):([A-Za-z][A-Za-z0-9-]*):([A-Za-z_][A-Za-z0-9_-]*(?::[A-Za-z-]+)?)$")
_CHAIN_NAME = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)(?::([A-Z][A-Za-z]+))?\.([A-Za-z_][A-Za-z0-9_-]*(?::[A-Za-z-]+)?)$")


def _check_name_and_value(name: str, value: str) -> None:
    if not (_NAME.match(name) or _is_chain(name)):
        raise invalid(f"search parameter name '{name[:60]}' is not allowed", "invalid")
    stripped = value.lstrip()
    if stripped.startswith(("{", "[")) or "\x00" in value:
        raise invalid(f"the value of '{name}' looks like a query object; send a plain FHIR search value")


def _is_chain(name: str) -> bool:
    return bool(_HAS_NAME.match(name) or _CHAIN_NAME.match(name))


def _chain(registry: SearchRegistry, resource_type: str, name: str, value: str) -> Chain:
    """One level only: `subject.identifier=x`, `subject:Patient.name=x`,
    `_has:Condition:subject:code=x` (R4 search §3.1.1.4.7 and §3.1.1.4.8)."""
    has = _HAS_NAME.match(name)
    if has:
        inner_type, back, inner_name = has.groups()
        param = registry.get(inner_type, back)
        if param is None or param.type != "reference":
            raise invalid(f"_has: '{back}' is not a reference parameter of {inner_type}")
        _known_inner(registry, inner_type, inner_name)
        return Chain("_id", (inner_type,), ((inner_name, value),), back)
    match = _CHAIN_NAME.match(name)
    assert match is not None
    code, target, inner_name = match.groups()
    param = registry.get(resource_type, code)
    if param is None or param.type != "reference":
        raise invalid(f"'{code}' is not a reference parameter of {resource_type}, so it cannot be chained")
    # Without a `:Type`, every target type that has the inner parameter is searched (R4 search
    # §3.1.1.4.7 allows either that or a refusal; `subject.identifier` is the common case).
    inner_code = inner_name.partition(":")[0]
    targets = (target,) if target else tuple(
        t for t in param.targets if inner_code in ("_id", "_lastUpdated") or registry.get(t, inner_code))
    if not targets:
        raise invalid(f"no type that '{code}' refers to has the search parameter '{inner_code}'")
    for inner_type in targets:
        _known_inner(registry, inner_type, inner_name)
    return Chain(f"idx.{code}", targets, ((inner_name, value),))


def _known_inner(registry: SearchRegistry, inner_type: str, inner_name: str) -> None:
    code = inner_name.partition(":")[0]
    if "." in inner_name or inner_name.startswith("_has"):
        raise not_supported("chained and _has parameters are supported one level deep")
    if code not in ("_id", "_lastUpdated") and registry.get(inner_type, code) is None:
        raise invalid(f"'{code}' is not a search parameter of {inner_type}")


def _apply_result_param(registry: SearchRegistry, query: SearchQuery, name: str, value: str) -> None:
    if name == "_count":
        query.count = min(_non_negative_int(name, value), MAX_COUNT)
    elif name == "_offset":
        query.offset = _non_negative_int(name, value)
        if query.offset > MAX_OFFSET:
            raise too_costly(f"_offset beyond {MAX_OFFSET}; narrow the search instead")
    elif name == "_sort":
        query.sort = [_sort_key(registry, query.resource_type, key) for key in value.split(",") if key]
    elif name == "_include":
        query.includes.append(_include(registry, query.resource_type, value))
    elif name == "_revinclude":
        query.includes.append(_revinclude(registry, value))
    elif name == "_summary":
        if value not in _SUMMARIES:
            raise invalid(f"_summary must be one of {', '.join(_SUMMARIES)}, not '{value[:20]}'")
        query.summary = value
        query.summary_count = value == "count"
    elif name == "_elements":
        query.elements = tuple(e.strip() for e in value.split(",") if e.strip())
    elif name == "_total" and value not in ("none", "estimate", "accurate"):
        raise invalid(f"_total must be none, estimate or accurate, not '{value[:20]}'")
    elif name == "_format":
        check_format(value)


def check_format(value: str) -> None:
    """Only JSON is served: `_format` asking for anything else is 406 (R4 http §2.21.0.6)."""
    if value.split(";")[0].strip().lower() not in _FORMATS:
        raise not_supported("only JSON is served (_format=json)", 406)


def _non_negative_int(name: str, value: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 7:  # "²" is a digit to str.isdigit
        raise invalid(f"{name} must be a whole number, not '{value[:20]}'")
    return int(value)


def _sort_key(registry: SearchRegistry, resource_type: str, key: str) -> SortKey:
    descending = key.startswith("-")
    code = key.lstrip("-")
    if code in ("_lastUpdated", "_id"):
        return SortKey(code, descending)
    param = registry.get(resource_type, code)
    if param is None or param.type != "date":
        raise not_supported(f"sorting {resource_type} by '{code}' is not supported (use _lastUpdated, _id or a date)")
    return SortKey(f"idx.{code}", descending)


def _include(registry: SearchRegistry, resource_type: str, value: str) -> Include:
    parts = value.split(":")
    if len(parts) not in (2, 3) or parts[0] != resource_type:
        raise invalid(f"_include must be '{resource_type}:param[:Type]', not '{value[:60]}'")
    param = registry.get(resource_type, parts[1])
    if param is None or param.type != "reference":
        raise not_supported(f"_include of '{value[:60]}' is not supported")
    return Include(resource_type, parts[1], parts[2] if len(parts) == 3 else None)


def _revinclude(registry: SearchRegistry, value: str) -> Include:
    """`_revinclude=Condition:subject`: the Conditions whose subject is one of the matches."""
    parts = value.split(":")
    if len(parts) not in (2, 3):
        raise invalid(f"_revinclude must be 'Type:param[:TargetType]', not '{value[:60]}'")
    param = registry.get(parts[0], parts[1])
    if param is None or param.type != "reference":
        raise not_supported(f"_revinclude of '{value[:60]}' is not supported")
    return Include(parts[0], parts[1], parts[2] if len(parts) == 3 else None, reverse=True)


def _criterion(registry: SearchRegistry, resource_type: str, name: str, value: str,
               strict: bool = True) -> Criterion | None:
    code, _, modifier = name.partition(":")
    values = tuple(v for v in _split_values(value) if v != "")
    if code not in ("_id", "_lastUpdated") and registry.get(resource_type, code) is None:
        if strict:
            raise invalid(f"'{code}' is not a search parameter of {resource_type}")
        return None
    if not values:
        raise invalid(f"search parameter '{name}' has no value")
    if code == "_id":
        return Criterion("_id", "id", values)
    if code == "_lastUpdated":
        return Criterion("_lastUpdated", "date", tuple(_date_value(code, v) for v in values))
    param = registry.get(resource_type, code)
    assert param is not None
    return _typed_criterion(param, modifier, values)


def _split_values(value: str) -> list[str]:
    """Comma separates OR-ed values; `\\,` is a literal comma (R4 search §3.1.1.4.2 escaping)."""
    parts = re.split(r"(?<!\\),", value)
    return [p.replace("\\,", ",") for p in parts]


def _typed_criterion(param: SearchParam, modifier: str, values: tuple[str, ...]) -> Criterion:
    field_name = f"idx.{param.code}"
    if param.type == "date":
        if modifier:
            raise not_supported(f"modifier ':{modifier}' is not supported on date parameters")
        return Criterion(field_name, "date", tuple(_date_value(param.code, v) for v in values))
    if param.type == "string":
        if modifier not in _STRING_MODIFIERS:
            raise not_supported(f"modifier ':{modifier}' is not supported on '{param.code}' (use :exact or :contains)")
        if modifier == "exact":
            return Criterion(f"idx.{param.code}:exact", "string", values, mode="exact")
        return Criterion(field_name, "string", tuple(normal_text(v) for v in values), mode=modifier)
    if modifier not in ("", "not") or (modifier == "not" and param.type != "token"):
        raise not_supported(f"modifier ':{modifier}' is not supported on '{param.code}'")
    if param.type == "reference":
        return Criterion(field_name, "reference", tuple(_reference_value(param, v) for v in values))
    return Criterion(field_name, "token", values, negate=modifier == "not")


def _reference_value(param: SearchParam, value: str) -> str:
    key = ref_key(value)
    if "/" not in key and len(param.targets) == 1:
        return f"{param.targets[0]}/{key}"
    return key


def _date_value(code: str, value: str) -> tuple[str, datetime, datetime]:
    prefix = value[:2] if value[:2] in _DATE_PREFIXES else "eq"
    text = value[2:] if value[:2] in _DATE_PREFIXES else value
    try:
        lo, hi = fhir_dates.parse_range(text)
    except fhir_dates.DateFormatError as exc:
        raise invalid(f"{code}: {exc}") from None
    return prefix, lo, hi


def patient_filter(query: SearchQuery) -> tuple[str, ...]:
    """Record ids a search is limited to (patient=/subject=), so consent is decided per record."""
    return _patient_filter(query.criteria)


def _patient_filter(criteria: list[Criterion]) -> tuple[str, ...]:
    for criterion in criteria:
        if criterion.field in ("idx.patient", "idx.subject") and criterion.kind == "reference":
            ids = [v.split("/", 1)[1] for v in criterion.values if v.startswith("Patient/")]
            if len(ids) == len(criterion.values):
                return tuple(ids)
    return ()
