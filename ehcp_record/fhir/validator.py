"""One generic validator for the EHCP profiles shipped as data in `profiles/`.

Every EHCP rule (cardinality, fixed and pattern values, required bindings, the slicing of
`Composition.section` by code, invariants written in FHIRPath) lives in a StructureDefinition
differential, CodeSystem or ValueSet under `profiles/`. This module knows none of those rules:
it reads the differentials once at load and walks resources element by element, the way the
FHIR validation page describes (https://hl7.org/fhir/R4/validation.html#profile), covering the
subset of ElementDefinition that the EHCP profiles use:

- `min` / `max` cardinality, counted per instance of the parent element;
- `fixed[x]` (exact equality) and `pattern[x]` (the instance contains the pattern), per
  https://hl7.org/fhir/R4/elementdefinition-definitions.html#ElementDefinition.pattern_x_;
- `binding` with strength `required` to a shipped ValueSet (codes checked against the
  CodeSystem content); any Coding in a shipped complete CodeSystem must use a defined code;
- `type`: the allowed types of a choice element (`value[x]`) and the resource types a literal
  reference may point to (`targetProfile`);
- `slicing` with `pattern`/`value` discriminators, slice cardinality and closed slicing;
- `constraint[]`: FHIRPath invariants compiled once with fhirpathpy, evaluated on each instance
  of their element with `%resource` and `%rootResource` set, plus two FHIRPath functions of
  the FHIR extension to FHIRPath: `resolve()` (within the Bundle being validated) and
  `memberOf()` (against the shipped ValueSets). https://hl7.org/fhir/R4/fhirpath.html#functions

Three extensions (defined in `profiles/StructureDefinition/`) carry what ElementDefinition
cannot say: which profile applies to a resource type by default (`default-profile-for-type`),
when it applies (`profile-applies-when`, a FHIRPath condition), and a FHIRPath expression that
writes an invariant's message from the failing instance (`constraint-message`).
"""

from __future__ import annotations

import contextvars
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import fhirpathpy
from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models as _fhirpath_models
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from ehcp_record.fhir.canonical import CANONICAL_BASE, structure_definition  # noqa: F401 (re-exported)

EXT_DEFAULT_PROFILE = structure_definition("default-profile-for-type")
EXT_APPLIES_WHEN = structure_definition("profile-applies-when")
EXT_CONSTRAINT_MESSAGE = structure_definition("constraint-message")
CORE_SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"
DEFAULT_PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"

_FHIRPATH_MODEL = _fhirpath_models["r4"]
_LITERAL_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$")

Compiled = Callable[..., list]


@dataclass(frozen=True)
class Issue:
    """One finding, shaped to become an OperationOutcome.issue without translation.

    `code` is a FHIR issue type (https://hl7.org/fhir/R4/valueset-issue-type.html): `required`
    (too few), `structure` (too many, wrong type, no matching slice, wrong profile type),
    `value` (fixed/pattern), `code-invalid` (terminology), `invariant` (FHIRPath rule),
    `processing` (a rule could not be evaluated), `not-supported` (unknown profile, warning).
    `path` is a FHIRPath-style location such as `CarePlan.activity[1].detail.scheduledString`.
    `rule` names the constraint key or element id that produced it.
    """

    severity: str
    code: str
    path: str
    message: str
    rule: str = ""

    def as_outcome_issue(self) -> dict:
        """The OperationOutcome.issue element for this finding."""
        issue = {"severity": self.severity, "code": self.code, "diagnostics": self.message}
        if self.path:
            issue["expression"] = [self.path]
        return issue


def has_errors(issues: list[Issue]) -> bool:
    """True when any issue is an error (warnings never block a write)."""
    return any(issue.severity == "error" for issue in issues)


class ProfileLoadError(ValueError):
    """The profiles directory holds something the validator cannot apply."""


class UnknownProfileError(LookupError):
    """A profile was asked for by URL and is not among the loaded profiles."""


# --------------------------------------------------------------------------- terminology


@dataclass(frozen=True)
class CodeSystemContent:
    """The codes (and displays) of one shipped CodeSystem."""

    url: str
    name: str
    complete: bool
    displays: Mapping[str, str]


@dataclass(frozen=True)
class ValueSetContent:
    """A ValueSet expanded at load: per system, the allowed codes (None = any code)."""

    url: str
    name: str
    members: Mapping[str, frozenset[str] | None]

    def contains(self, system: str | None, code: str) -> bool:
        if system is None:
            return any(codes is None or code in codes for codes in self.members.values())
        if system not in self.members:
            return False
        codes = self.members[system]
        return codes is None or code in codes


def _flatten_concepts(concepts: list[dict]) -> Iterator[dict]:
    for concept in concepts:
        yield concept
        yield from _flatten_concepts(concept.get("concept", []))


def _load_code_system(resource: dict) -> CodeSystemContent:
    displays = {c["code"]: c.get("display", "") for c in _flatten_concepts(resource.get("concept", []))}
    return CodeSystemContent(
        url=resource["url"],
        name=resource.get("title") or resource.get("name") or resource["url"],
        complete=resource.get("content") == "complete",
        displays=displays,
    )


def _expand_value_set(
    url: str, value_sets: Mapping[str, dict], code_systems: Mapping[str, CodeSystemContent], seen: frozenset = frozenset()
) -> dict[str, frozenset[str] | None]:
    """Expand compose.include/exclude (concept lists, whole systems, imported value sets).

    Filters are not supported: the EHCP value sets do not need them, and a silent partial
    expansion would accept codes it should not.
    """
    if url in seen or url not in value_sets:
        raise ProfileLoadError(f"ValueSet {url} is missing or includes itself")
    compose = value_sets[url].get("compose", {})
    members: dict[str, set[str] | None] = {}
    for include in compose.get("include", []):
        _merge(members, _expand_include(include, value_sets, code_systems, seen | {url}))
    for exclude in compose.get("exclude", []):
        for system, codes in _expand_include(exclude, value_sets, code_systems, seen | {url}).items():
            if system in members and members[system] is not None and codes is not None:
                members[system] = members[system] - codes
    return {system: (None if codes is None else frozenset(codes)) for system, codes in members.items()}


def _expand_include(include: dict, value_sets, code_systems, seen) -> dict[str, set[str] | None]:
    if include.get("filter"):
        raise ProfileLoadError("ValueSet compose filters are not supported by this validator")
    result: dict[str, set[str] | None] = {}
    for imported in include.get("valueSet", []):
        _merge(result, _expand_value_set(imported, value_sets, code_systems, seen))
    system = include.get("system")
    if system is None:
        return result
    if include.get("concept"):
        _merge(result, {system: {c["code"] for c in include["concept"]}})
    elif system in code_systems and code_systems[system].complete:
        _merge(result, {system: set(code_systems[system].displays)})
    else:
        _merge(result, {system: None})
    return result


def _merge(into: dict, more: Mapping[str, set[str] | frozenset[str] | None]) -> None:
    for system, codes in more.items():
        if codes is None or (system in into and into[system] is None):
            into[system] = None
        else:
            into[system] = set(into.get(system) or ()) | set(codes)


# --------------------------------------------------------------------------- FHIRPath


# The Bundle (or resource) being validated, so that resolve() can find what a reference
# points to. A ContextVar keeps concurrent validations in threads apart.
_RESOLUTION_INDEX: contextvars.ContextVar[Mapping[str, dict] | None] = contextvars.ContextVar("resolution_index", default=None)


def _resolution_index(root: dict) -> dict[str, dict]:
    """Map every way a reference may name a resource in `root` to that resource."""
    index: dict[str, dict] = {}
    for contained in root.get("contained", []) or []:
        if isinstance(contained, dict) and contained.get("id"):
            index[f"#{contained['id']}"] = contained
    if root.get("resourceType") != "Bundle":
        return index
    for entry in root.get("entry", []) or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        if entry.get("fullUrl"):
            index[entry["fullUrl"]] = resource
        if resource.get("id") and resource.get("resourceType"):
            index.setdefault(f"{resource['resourceType']}/{resource['id']}", resource)
    return index


def _resolve_reference(reference: str, index: Mapping[str, dict]) -> dict | None:
    if reference in index:
        return index[reference]
    match = _LITERAL_REFERENCE.search(reference)
    if match:
        tail = reference[match.start():].lstrip("/").split("/_history/")[0]
        return index.get(tail)
    return None


def _fhirpath_resolve(inputs: list) -> list:
    """FHIRPath resolve(): References (or reference strings) -> the resources they name.

    Only resources inside the resource being validated are reachable (Bundle entries by
    fullUrl or Type/id, contained resources by #id); a validator never fetches.
    """
    index = _RESOLUTION_INDEX.get() or {}
    found = []
    for item in inputs:
        reference = item.get("reference") if isinstance(item, dict) else item
        resource = _resolve_reference(reference, index) if isinstance(reference, str) else None
        if resource is not None:
            found.append(ResourceNode.create_node(resource, resource.get("resourceType")))
    return found


def _codings_of(value: Any) -> list[tuple[str | None, str]]:
    """(system, code) pairs of a code, Coding or CodeableConcept value."""
    if isinstance(value, str):
        return [(None, value)]
    if not isinstance(value, dict):
        return []
    if "coding" in value:
        return [(c.get("system"), c["code"]) for c in value.get("coding", []) if isinstance(c, dict) and "code" in c]
    if isinstance(value.get("code"), str):
        return [(value.get("system"), value["code"])]
    return []


class _Terminology:
    """Shipped CodeSystems and expanded ValueSets, consulted by bindings and memberOf()."""

    def __init__(self, code_systems: dict[str, CodeSystemContent], value_sets: dict[str, ValueSetContent]):
        self.code_systems = code_systems
        self.value_sets = value_sets

    def value_set(self, url: str) -> ValueSetContent:
        try:
            return self.value_sets[url.split("|")[0]]
        except KeyError:
            raise ProfileLoadError(f"ValueSet {url} is not shipped in profiles/") from None

    def member_of(self, inputs: list, url: str) -> list:
        """FHIRPath memberOf(): true when the (single) code/Coding/CodeableConcept is in the set."""
        if len(inputs) != 1:
            return []
        value_set = self.value_set(url)
        return [any(value_set.contains(system, code) for system, code in _codings_of(inputs[0]))]


class _RaisingErrorListener(ErrorListener):
    def syntaxError(self, recognizer, offendingSymbol, line, column, msg, e):  # noqa: N802, N803 (ANTLR's names)
        raise ValueError(f"syntax error at column {column}: {msg}")


def _check_syntax(expression: str) -> None:
    """fhirpathpy's own parser recovers from syntax errors silently; parse once more with a
    listener that raises, so a broken rule fails at load instead of passing at run time."""
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_RaisingErrorListener())
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(_RaisingErrorListener())
    parser.expression()
    if parser.getCurrentToken().type != Token.EOF:
        raise ValueError(f"unexpected {parser.getCurrentToken().text!r} after the expression")


def _compile(expression: str, terminology: _Terminology, where: str) -> Compiled:
    """Compile once; then run on an empty resource so unknown functions and wrong arities
    (which fhirpathpy reports only when evaluating) also fail at load."""
    options = {
        "userInvocationTable": {
            "resolve": {"fn": _fhirpath_resolve, "arity": {0: []}},
            "memberOf": {"fn": terminology.member_of, "arity": {1: ["String"]}},
        }
    }
    try:
        _check_syntax(expression)
        compiled = fhirpathpy.compile(expression, _FHIRPATH_MODEL, options)
        compiled({}, {"resource": {}, "rootResource": {}})
    except Exception as error:  # the parser and engine raise several unrelated types
        raise ProfileLoadError(f"{where}: FHIRPath does not compile: {expression!r}: {error}") from error
    return compiled


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class _Segment:
    name: str
    slice: str | None
    base_id: str  # the element id this segment's slices hang off (slices of previous segments kept)


def _parse_element_id(element_id: str) -> list[_Segment]:
    """`Composition.section:A.code` -> segments section(slice A), code; the root is dropped."""
    raw = element_id.split(".")
    segments = []
    for position, part in enumerate(raw[1:], start=1):
        name, _, slice_name = part.partition(":")
        base_id = ".".join(raw[:position] + [name])
        segments.append(_Segment(name, slice_name or None, base_id))
    return segments


def _choice_value(element: dict, prefix: str) -> tuple[str, Any] | None:
    for key, value in element.items():
        if key.startswith(prefix) and len(key) > len(prefix) and key[len(prefix)].isupper():
            return key, value
    return None


@dataclass
class _Constraint:
    key: str
    severity: str
    human: str
    check: Compiled
    message: Compiled | None


@dataclass
class _ElementRule:
    element_id: str
    path: str
    segments: list[_Segment]
    short: str
    min: int | None
    max: int | None
    fixed: tuple[str, Any] | None
    pattern: tuple[str, Any] | None
    required_value_set: str | None
    choice_types: list[str]
    target_types: set[str]
    constraints: list[_Constraint]
    closed_slicing: bool


@dataclass
class _Slice:
    name: str
    discriminators: list[tuple[str, Any, bool]]  # (path, expected value, exact?)


@dataclass
class Profile:
    """One StructureDefinition, compiled: its element rules and its slices."""

    url: str
    name: str
    title: str
    type: str
    is_default: bool
    applies_when: Compiled | None
    rules: list[_ElementRule]
    slices: dict[str, list[_Slice]] = field(default_factory=dict)  # base element id -> slices


def _extension_value(resource: dict, url: str, kind: str) -> Any:
    for extension in resource.get("extension", []) or []:
        if extension.get("url") == url:
            return extension.get(kind)
    return None


def _prefixed_value(element: dict, prefix: str) -> tuple[str, Any] | None:
    found = _choice_value(element, prefix)
    return (found[0][len(prefix):], found[1]) if found else None


def _parse_max(value: str | None) -> int | None:
    return None if value in (None, "*") else int(value)


class _ProfileCompiler:
    """Turns StructureDefinition JSON into a Profile; every FHIRPath compiled here, once."""

    def __init__(self, terminology: _Terminology, type_of_profile: Mapping[str, str]):
        self.terminology = terminology
        self.type_of_profile = type_of_profile

    def compile(self, sd: dict) -> Profile:
        url = sd["url"]
        applies = _extension_value(sd, EXT_APPLIES_WHEN, "valueString")
        elements = sd.get("differential", {}).get("element", [])
        profile = Profile(
            url=url,
            name=sd.get("name", url),
            title=sd.get("title") or sd.get("name", url),
            type=sd["type"],
            is_default=bool(_extension_value(sd, EXT_DEFAULT_PROFILE, "valueBoolean")),
            applies_when=_compile(applies, self.terminology, f"{url} applies-when") if applies else None,
            rules=[self._rule(url, element) for element in elements],
        )
        profile.slices = self._slices(url, elements)
        for rule in profile.rules:
            for segment in (s for s in rule.segments if s.slice):
                if segment.slice not in {s.name for s in profile.slices.get(segment.base_id, [])}:
                    raise ProfileLoadError(f"{url}: {rule.element_id} names slice {segment.slice}, which is not defined")
        return profile

    def _rule(self, url: str, element: dict) -> _ElementRule:
        element_id = element.get("id") or element["path"]
        binding = element.get("binding", {})
        required = binding.get("valueSet") if binding.get("strength") == "required" else None
        if required:
            self.terminology.value_set(required)  # fail at load, not at the first request
        types = element.get("type", [])
        return _ElementRule(
            element_id=element_id,
            path=element["path"],
            segments=_parse_element_id(element_id),
            short=element.get("short", ""),
            min=element.get("min"),
            max=_parse_max(element.get("max")),
            fixed=_prefixed_value(element, "fixed"),
            pattern=_prefixed_value(element, "pattern"),
            required_value_set=required,
            choice_types=[t["code"] for t in types] if element["path"].endswith("[x]") else [],
            target_types=self._target_types(types),
            constraints=[self._constraint(url, element_id, c) for c in element.get("constraint", [])],
            closed_slicing=element.get("slicing", {}).get("rules") == "closed",
        )

    def _target_types(self, types: list[dict]) -> set[str]:
        targets = set()
        for profile_url in (p for t in types if t.get("code") == "Reference" for p in t.get("targetProfile", [])):
            if profile_url.startswith(CORE_SD_PREFIX):
                targets.add(profile_url[len(CORE_SD_PREFIX):])
            elif profile_url in self.type_of_profile:
                targets.add(self.type_of_profile[profile_url])
            else:
                raise ProfileLoadError(f"targetProfile {profile_url} is neither core nor shipped")
        return targets

    def _constraint(self, url: str, element_id: str, constraint: dict) -> _Constraint:
        where = f"{url} {element_id} {constraint['key']}"
        message = _extension_value(constraint, EXT_CONSTRAINT_MESSAGE, "valueString")
        return _Constraint(
            key=constraint["key"],
            severity=constraint.get("severity", "error"),
            human=constraint["human"],
            check=_compile(constraint["expression"], self.terminology, where),
            message=_compile(message, self.terminology, f"{where} message") if message else None,
        )

    def _slices(self, url: str, elements: list[dict]) -> dict[str, list[_Slice]]:
        by_id = {e.get("id") or e["path"]: e for e in elements}
        slices: dict[str, list[_Slice]] = {}
        for element in elements:
            if not element.get("sliceName"):
                continue
            slice_id = element.get("id") or element["path"]
            base_id = slice_id[: -(len(element["sliceName"]) + 1)]
            slicing = by_id.get(base_id, {}).get("slicing")
            if not slicing:
                raise ProfileLoadError(f"{url}: slice {slice_id} has no slicing on {base_id}")
            slices.setdefault(base_id, []).append(
                _Slice(element["sliceName"], [self._discriminator(url, by_id, slice_id, d) for d in slicing["discriminator"]])
            )
        return slices

    @staticmethod
    def _discriminator(url: str, by_id: dict, slice_id: str, discriminator: dict) -> tuple[str, Any, bool]:
        if discriminator["type"] not in ("value", "pattern"):
            raise ProfileLoadError(f"{url}: discriminator type {discriminator['type']} is not supported")
        path = discriminator["path"]
        element = by_id.get(slice_id if path == "$this" else f"{slice_id}.{path}", {})
        fixed, pattern = _prefixed_value(element, "fixed"), _prefixed_value(element, "pattern")
        if not (fixed or pattern):
            raise ProfileLoadError(f"{url}: slice {slice_id} fixes no value for discriminator {path}")
        return path, (fixed or pattern)[1], bool(fixed)


# --------------------------------------------------------------------------- instances


@dataclass(frozen=True)
class _Instance:
    """A value found in the resource, where it is (`path`) and what it is (`type_path`)."""

    value: Any
    path: str
    type_path: str
    key: str = ""


def _child_instances(parent: _Instance, name: str) -> list[_Instance]:
    if not isinstance(parent.value, dict):
        return []
    if name.endswith("[x]"):
        found = _choice_value(parent.value, name[:-3])
        if found is None:
            return []
        key, value = found
    elif name in parent.value:
        key, value = name, parent.value[name]
    else:
        return []
    type_path = f"{parent.type_path}.{name.removesuffix('[x]')}"
    if isinstance(value, list):
        return [_Instance(item, f"{parent.path}.{key}[{i}]", type_path, key) for i, item in enumerate(value)]
    return [_Instance(value, f"{parent.path}.{key}", type_path, key)]


def _values_at(value: Any, dotted: str) -> list[Any]:
    """Plain navigation of a discriminator path (`code`, `code.coding`) from a value."""
    values = [value]
    if dotted == "$this":
        return values
    for name in dotted.split("."):
        nxt = []
        for item in values:
            child = item.get(name) if isinstance(item, dict) else None
            nxt.extend(child if isinstance(child, list) else [] if child is None else [child])
        values = nxt
    return values


def matches_pattern(value: Any, pattern: Any) -> bool:
    """FHIR pattern[x] semantics: every property of the pattern is present with that value;
    each item of a repeating pattern matches some item of the instance."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(k in value and matches_pattern(value[k], v) for k, v in pattern.items())
    if isinstance(pattern, list):
        items = value if isinstance(value, list) else [value]
        return all(any(matches_pattern(item, p) for item in items) for p in pattern)
    return value == pattern


def _in_slice(value: Any, slice_: _Slice) -> bool:
    for path, expected, exact in slice_.discriminators:
        candidates = _values_at(value, path)
        if not any((c == expected) if exact else matches_pattern(c, expected) for c in candidates):
            return False
    return True


def _discriminating_value(value: Any) -> Any:
    """What to show of an instance that fits no slice: its code when it has one."""
    return value.get("code", value) if isinstance(value, dict) else value


def _describe(value: Any) -> str:
    """A short rendering for messages: codes as system#code, anything else as compact JSON."""
    codings = _codings_of(value) if isinstance(value, dict) else []
    if codings:
        return " or ".join(code if system is None else f"{system}#{code}" for system, code in codings)
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= 120 else text[:117] + "..."


# --------------------------------------------------------------------------- validator


class ProfileValidator:
    """Validates resources against the EHCP profiles; build once with `load`, share freely.

    The object is immutable after load and holds no per-request state, so one instance can
    serve every request thread.
    """

    def __init__(self, profiles: dict[str, Profile], terminology: _Terminology):
        self.profiles = profiles
        self.terminology = terminology

    # ---- loading

    @classmethod
    def load(cls, path: str | Path | None = None) -> ProfileValidator:
        """Read every CodeSystem, ValueSet and StructureDefinition under `path` (default: the
        repository's `profiles/`), expand the value sets and compile every FHIRPath once.
        Instances under `examples/` and other resource types (SearchParameter) are skipped."""
        root = Path(path) if path is not None else DEFAULT_PROFILES_DIR
        resources = cls._read_resources(root)
        code_systems = {r["url"]: _load_code_system(r) for r in resources if r["resourceType"] == "CodeSystem"}
        vs_json = {r["url"]: r for r in resources if r["resourceType"] == "ValueSet"}
        value_sets = {
            url: ValueSetContent(url, r.get("title") or r.get("name") or url, _expand_value_set(url, vs_json, code_systems))
            for url, r in vs_json.items()
        }
        terminology = _Terminology(code_systems, value_sets)
        sds = [r for r in resources if r["resourceType"] == "StructureDefinition" and r.get("derivation") == "constraint"]
        compiler = _ProfileCompiler(terminology, {sd["url"]: sd["type"] for sd in sds})
        profiles = {sd["url"]: compiler.compile(sd) for sd in sds if sd["type"] != "Extension"}
        return cls(profiles, terminology)

    @staticmethod
    def _read_resources(root: Path) -> list[dict]:
        if not root.is_dir():
            raise ProfileLoadError(f"profiles directory {root} does not exist")
        resources = []
        for file in sorted(root.rglob("*.json")):
            if {"examples", "r4"} & set(file.relative_to(root).parts):  # r4: the R4 JSON Schema
                continue
            try:
                resource = json.loads(file.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise ProfileLoadError(f"{file} is not valid JSON: {error}") from error
            if isinstance(resource, dict) and resource.get("resourceType") in ("CodeSystem", "ValueSet", "StructureDefinition"):
                resources.append(resource)
        return resources

    # ---- selection

    def profile(self, url: str) -> Profile:
        """The loaded profile with this canonical URL (a `|version` suffix is ignored)."""
        try:
            return self.profiles[url.split("|")[0]]
        except KeyError:
            raise UnknownProfileError(f"Profile {url} is not known to this server") from None

    def default_profiles(self, resource: dict) -> list[Profile]:
        """The profiles that apply to a resource that claims none: those marked default for
        its type whose applies-when condition (if any) holds."""
        candidates = [p for p in self.profiles.values() if p.type == resource.get("resourceType") and p.is_default]
        return [p for p in candidates if p.applies_when is None or _holds(p.applies_when, resource)]

    def profiled_types(self) -> set[str]:
        """Resource types that have a default profile (the ones to validate on every write)."""
        return {p.type for p in self.profiles.values() if p.is_default}

    def _select(self, resource: dict, profile_url: str | None, path: str) -> tuple[list[Profile], list[Issue]]:
        if profile_url is not None:
            return [self.profile(profile_url)], []
        issues, claimed = [], []
        for url in (resource.get("meta") or {}).get("profile", []) or []:
            if url.split("|")[0] in self.profiles:
                claimed.append(self.profiles[url.split("|")[0]])
            else:
                issues.append(Issue("warning", "not-supported", f"{path}.meta.profile",
                                    f"Profile {url} is not known here, so the resource was not checked against it"))
        return (claimed or self.default_profiles(resource)), issues

    # ---- validation

    def validate(self, resource: dict, profile_url: str | None = None) -> list[Issue]:
        """Check a resource against `profile_url`, else the profiles in meta.profile, else the
        default profile(s) for its type; every Coding in a shipped CodeSystem is checked too.

        A Bundle's entry resources are validated as well (each by its own meta.profile or
        default), with references between entries resolvable by FHIRPath resolve().
        Raises UnknownProfileError when `profile_url` is given and not loaded.
        """
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            return [Issue("error", "structure", "", "The content is not a FHIR resource: resourceType is missing")]
        token = _RESOLUTION_INDEX.set(_resolution_index(resource))
        try:
            return self._validate(resource, profile_url, resource["resourceType"], "")
        finally:
            _RESOLUTION_INDEX.reset(token)

    def _validate(self, resource: dict, profile_url: str | None, path: str, label: str) -> list[Issue]:
        profiles, issues = self._select(resource, profile_url, path)
        for profile in profiles:
            issues += self._apply_profile(profile, resource, path)
        issues += _not_reported(self._check_codes(resource, path), issues)
        if resource.get("resourceType") == "Bundle":
            issues += self._validate_entries(resource)
        if label:
            issues = [Issue(i.severity, i.code, i.path, f"{label}: {i.message}", i.rule) for i in issues]
        return issues

    def _validate_entries(self, bundle: dict) -> list[Issue]:
        issues = []
        for position, entry in enumerate(bundle.get("entry", []) or []):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                continue
            path = f"Bundle.entry[{position}].resource"
            issues += self._validate(resource, None, path, _label(resource, entry.get("fullUrl")))
        return issues

    def _apply_profile(self, profile: Profile, resource: dict, path: str) -> list[Issue]:
        if resource.get("resourceType") != profile.type:
            return [Issue("error", "structure", path, f"Profile {profile.title} is for {profile.type} resources, "
                          f"not {resource.get('resourceType')}", profile.url)]
        root = _Instance(resource, path, profile.type)
        issues: list[Issue] = []
        for rule in profile.rules:
            issues += self._apply_rule(profile, rule, root, resource)
        return issues

    def _instances(self, profile: Profile, root: _Instance, segments: list[_Segment]) -> list[_Instance]:
        current = [root]
        for segment in segments:
            found = [child for node in current for child in _child_instances(node, segment.name)]
            if segment.slice:
                slice_ = next(s for s in profile.slices.get(segment.base_id, []) if s.name == segment.slice)
                found = [child for child in found if _in_slice(child.value, slice_)]
            current = found
        return current

    def _apply_rule(self, profile: Profile, rule: _ElementRule, root: _Instance, resource: dict) -> list[Issue]:
        if not rule.segments:
            return self._check_constraints(rule, root, resource)
        issues: list[Issue] = []
        last = rule.segments[-1]
        for parent in self._instances(profile, root, rule.segments[:-1]):
            children = self._instances(profile, parent, [last])
            issues += self._check_cardinality(profile, rule, parent, len(children))
            for child in children:
                issues += self._check_value(profile, rule, child, resource)
            if rule.closed_slicing:
                issues += self._check_closed(profile, rule, parent)
        return issues

    # ---- individual checks (each names the rule in plain English)

    def _check_cardinality(self, profile: Profile, rule: _ElementRule, parent: _Instance, count: int) -> list[Issue]:
        last = rule.segments[-1]
        where = f"{parent.path}.{last.name}" + (f":{last.slice}" if last.slice else "")
        what = _what(rule)
        about = f": {rule.short}" if rule.short else ""
        if rule.min and count < rule.min:
            return [Issue("error", "required", where, f"{what} is required by profile {profile.title} (at least "
                          f"{rule.min}, found {count}){about}", rule.element_id)]
        if rule.max is not None and count > rule.max:
            return [Issue("error", "structure", where, f"{what} appears too often for profile {profile.title} (at most "
                          f"{rule.max}, found {count}){about}", rule.element_id)]
        return []

    def _check_closed(self, profile: Profile, rule: _ElementRule, parent: _Instance) -> list[Issue]:
        slices = profile.slices.get(rule.element_id, [])
        names = ", ".join(s.name for s in slices)
        return [
            Issue("error", "structure", child.path, f"{rule.path} with {_describe(_discriminating_value(child.value))} "
                  f"matches none of the slices profile {profile.title} allows ({names})", rule.element_id)
            for child in _child_instances(parent, rule.segments[-1].name)
            if not any(_in_slice(child.value, s) for s in slices)
        ]

    def _check_value(self, profile: Profile, rule: _ElementRule, child: _Instance, resource: dict) -> list[Issue]:
        issues = []
        if rule.fixed and child.value != rule.fixed[1]:
            issues.append(Issue("error", "value", child.path, f"{rule.path} must be exactly {_describe(rule.fixed[1])} "
                                f"(fixed by profile {profile.title}); found {_describe(child.value)}", rule.element_id))
        if rule.pattern and not matches_pattern(child.value, rule.pattern[1]):
            issues.append(Issue("error", "value", child.path, f"{rule.path} must be {_describe(rule.pattern[1])} "
                                f"(required by profile {profile.title}); found {_describe(child.value)}", rule.element_id))
        issues += self._check_binding(profile, rule, child)
        issues += self._check_types(profile, rule, child)
        issues += self._check_constraints(rule, child, resource)
        return issues

    def _check_binding(self, profile: Profile, rule: _ElementRule, child: _Instance) -> list[Issue]:
        if not rule.required_value_set:
            return []
        value_set = self.terminology.value_set(rule.required_value_set)
        codings = _codings_of(child.value)
        if any(value_set.contains(system, code) for system, code in codings):
            return []
        shown = ", ".join(code if system is None else f"{system}#{code}" for system, code in codings) or "no code"
        return [Issue("error", "code-invalid", child.path, f"{rule.path} must use a code from ValueSet {value_set.name} "
                      f"({value_set.url}), a required binding of profile {profile.title}; found {shown}", rule.element_id)]

    def _check_types(self, profile: Profile, rule: _ElementRule, child: _Instance) -> list[Issue]:
        if rule.choice_types:
            suffix = child.key[len(rule.segments[-1].name) - 3:]
            allowed = {t[0].upper() + t[1:] for t in rule.choice_types}
            if suffix not in allowed:
                return [Issue("error", "structure", child.path, f"{rule.path} is given as {child.key}, but profile "
                              f"{profile.title} allows only {', '.join(rule.choice_types)}", rule.element_id)]
        reference = child.value.get("reference") if isinstance(child.value, dict) else None
        if rule.target_types and isinstance(reference, str):
            match = _LITERAL_REFERENCE.search(reference)
            if match and not reference.startswith(("urn:", "#")) and match.group(1) not in rule.target_types:
                return [Issue("error", "structure", child.path, f"{rule.path} refers to a {match.group(1)}, but profile "
                              f"{profile.title} allows only {', '.join(sorted(rule.target_types))}", rule.element_id)]
        return []

    def _check_constraints(self, rule: _ElementRule, node: _Instance, resource: dict) -> list[Issue]:
        if not rule.constraints:
            return []
        is_resource = isinstance(node.value, dict) and "resourceType" in node.value
        data = node.value if is_resource else ResourceNode.create_node(node.value, node.type_path)
        variables = {"resource": resource, "rootResource": resource}
        issues = []
        for constraint in rule.constraints:
            try:
                passed = constraint.check(data, variables) == [True]
            except Exception as error:  # a rule that cannot run must not pass silently
                issues.append(Issue("error", "processing", node.path,
                                    f"Rule {constraint.key} could not be evaluated: {error}", constraint.key))
                continue
            if not passed:
                issues.append(Issue(constraint.severity, "invariant", node.path,
                                    f"{self._message(constraint, data, variables)} (rule {constraint.key})", constraint.key))
        return issues

    @staticmethod
    def _message(constraint: _Constraint, data: Any, variables: dict) -> str:
        if constraint.message is None:
            return constraint.human
        try:
            text = constraint.message(data, variables)
        except Exception:
            return constraint.human
        return text[0] if text and isinstance(text[0], str) else constraint.human

    def _check_codes(self, resource: dict, path: str) -> list[Issue]:
        """Any Coding in a shipped, complete CodeSystem must use one of its codes (the check
        the HL7 validator makes whatever the binding); a differing display is a warning."""
        issues = []
        for coding, where in _walk_codings(resource, path):
            system = self.terminology.code_systems.get(coding["system"])
            if system is None or not system.complete:
                continue
            code = coding["code"]
            if code not in system.displays:
                issues.append(Issue("error", "code-invalid", where, f"Code '{code}' is not defined in CodeSystem "
                                    f"{system.name} ({system.url})", system.url))
            elif coding.get("display") and coding["display"] != system.displays[code]:
                issues.append(Issue("warning", "code-invalid", where, f"Display '{coding['display']}' for code '{code}' "
                                    f"should be '{system.displays[code]}' ({system.name})", system.url))
        return issues


def _not_reported(code_issues: list[Issue], issues: list[Issue]) -> list[Issue]:
    """Undefined-code errors inside an element whose required binding already failed: one
    wrong code is one problem, reported once (by the binding, which names the ValueSet)."""
    bound = [i.path for i in issues if i.code == "code-invalid" and i.severity == "error"]
    return [i for i in code_issues
            if i.severity != "error" or not any(i.path == p or i.path.startswith((p + ".", p + "[")) for p in bound)]


def _holds(condition: Compiled, resource: dict) -> bool:
    """A profile's applies-when condition; content too malformed to evaluate does not select it
    (the R4 structure check, ehcp_record/fhir/structure.py, reports such content)."""
    try:
        return condition(resource) == [True]
    except Exception:
        return False


def _walk_codings(value: Any, path: str, in_bundle_entry: bool = False) -> Iterator[tuple[dict, str]]:
    """Every dict with a string system and code inside a resource, with its path.
    A Bundle's entry resources are skipped here: they are checked as resources themselves."""
    if isinstance(value, list):
        for position, item in enumerate(value):
            yield from _walk_codings(item, f"{path}[{position}]", in_bundle_entry)
        return
    if not isinstance(value, dict):
        return
    if isinstance(value.get("system"), str) and isinstance(value.get("code"), str):
        yield value, path
    is_bundle = value.get("resourceType") == "Bundle"
    for key, child in value.items():
        if key.startswith("_") or (in_bundle_entry and key == "resource"):
            continue
        yield from _walk_codings(child, f"{path}.{key}", is_bundle and key == "entry")


def _what(rule: _ElementRule) -> str:
    slice_name = rule.segments[-1].slice if rule.segments else None
    return rule.path + (f":{slice_name}" if slice_name else "")


def _label(resource: dict, full_url: str | None) -> str:
    if resource.get("id"):
        return f"{resource['resourceType']}/{resource['id']}"
    return f"{resource['resourceType']} {full_url}" if full_url else resource["resourceType"]


@lru_cache(maxsize=1)
def default_validator() -> ProfileValidator:
    """The validator for the repository's `profiles/`, loaded on first use and shared."""
    return ProfileValidator.load(DEFAULT_PROFILES_DIR)
