"""What changed between two versions of a plan, section by section, for a parent app to show.

Pure: takes the two document Bundles (already redacted to what the caller may see) and returns
a FHIR `Parameters` resource: one `section` part per plan section (A-K) with its change
(added, removed, changed, unchanged) and one `entry` part per need, outcome or provision that
was added, removed or changed, with the fields that changed (before and after).
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any, Iterator

from consent.codes import SECTIONS
from consent.sections import composition_section_code
from ehcp_record.fhir.model import ref_key

MAX_FIELDS = 40
_IGNORED = ("meta", "text")


def diff_documents(before: dict, after: dict, from_vid: int, to_vid: int | str) -> dict:
    """`to_vid` is a version number, or "Task/<id>" when `after` is what a proposal would make."""
    old, new = _index(before), _index(after)
    old_plan, new_plan = _composition(before), _composition(after)
    old_sections, new_sections = _sections(old_plan), _sections(new_plan)
    parts = []
    for code in _ordered(set(old_sections) | set(new_sections)):
        parts.append(_section_part(code, old_sections.get(code), new_sections.get(code), old, new))
    to = {"name": "to", "valueReference": {"reference": to_vid}} if isinstance(to_vid, str) else \
        {"name": "to", "valueInteger": to_vid}
    parameters = [{"name": "from", "valueInteger": from_vid}, to,
                  {"name": "status", "valueCode": _change(old_plan.get("status"), new_plan.get("status"))}]
    return {"resourceType": "Parameters", "parameter": parameters + parts}


def _section_part(code: str, old: dict | None, new: dict | None, old_index: dict, new_index: dict) -> dict:
    old_refs, new_refs = _entries(old), _entries(new)
    entries = [_entry_part(ref, "added", None, new_index.get(ref)) for ref in new_refs if ref not in old_refs]
    entries += [_entry_part(ref, "removed", old_index.get(ref), None) for ref in old_refs if ref not in new_refs]
    for ref in (r for r in new_refs if r in old_refs):
        fields = list(_changed_fields(old_index.get(ref) or {}, new_index.get(ref) or {}))
        if fields:
            entries.append(_entry_part(ref, "changed", old_index.get(ref), new_index.get(ref), fields))
    text_changed = _text(old) != _text(new)
    if old is None:
        change = "added"
    elif new is None:
        change = "removed"
    else:
        change = "changed" if entries or text_changed else "unchanged"
    part = [{"name": "code", "valueCode": code}, {"name": "title", "valueString": (new or old or {}).get("title", code)},
            {"name": "change", "valueCode": change}]
    if text_changed and old is not None and new is not None:
        part.append({"name": "narrative", "part": [{"name": "before", "valueString": plain_text(_text(old))},
                                                   {"name": "after", "valueString": plain_text(_text(new))}]})
    return {"name": "section", "part": part + entries}


def _entry_part(ref: str, change: str, old: dict | None, new: dict | None, fields: list | None = None) -> dict:
    part = [{"name": "reference", "valueString": ref}, {"name": "change", "valueCode": change},
            {"name": "summary", "valueString": _summary(new or old or {})}]
    for path, before, after in (fields or [])[:MAX_FIELDS]:
        field = [{"name": "path", "valueString": path}]
        if before is not None:
            field.append({"name": "before", "valueString": str(before)})
        if after is not None:
            field.append({"name": "after", "valueString": str(after)})
        part.append({"name": "field", "part": field})
    return {"name": "entry", "part": part}


def _changed_fields(old: dict, new: dict) -> Iterator[tuple[str, Any, Any]]:
    flat_old = dict(_flatten({k: v for k, v in old.items() if k not in _IGNORED}))
    flat_new = dict(_flatten({k: v for k, v in new.items() if k not in _IGNORED}))
    for path in sorted(set(flat_old) | set(flat_new)):
        if flat_old.get(path) != flat_new.get(path):
            yield path, flat_old.get(path), flat_new.get(path)


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _flatten(item, f"{prefix}[{index}]")
    else:
        yield prefix, value


def _summary(resource: dict) -> str:
    """A line a parent recognises: the description, the need's code text, or the type."""
    for getter in (lambda r: r.get("description", {}).get("text"), lambda r: r.get("code", {}).get("text"),
                   lambda r: next((c.get("display") or c.get("code") for c in r.get("code", {}).get("coding", [])), None),
                   lambda r: next((a.get("detail", {}).get("description") for a in r.get("activity", [])), None),
                   lambda r: r.get("description") if isinstance(r.get("description"), str) else None):
        try:
            text = getter(resource)
        except AttributeError:
            text = None
        if text:
            return str(text)[:200]
    return resource.get("resourceType", "resource")


def _index(bundle: dict) -> dict[str, dict]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"] for e in bundle.get("entry", [])}


def _composition(bundle: dict) -> dict:
    entries = bundle.get("entry", [])
    return entries[0]["resource"] if entries else {}


def _sections(plan: dict) -> dict[str, dict]:
    found = {}
    for section in plan.get("section", []) or []:
        code = composition_section_code(section)
        if code:
            found[code] = section
    return found


def _entries(section: dict | None) -> list[str]:
    if not section:
        return []
    refs = []
    for entry in section.get("entry", []) or []:
        reference = entry.get("reference", "")
        refs.append(ref_key(reference))
    for child in section.get("section", []) or []:
        refs.extend(_entries(child))
    return refs


def _text(section: dict | None) -> str | None:
    return ((section or {}).get("text") or {}).get("div")


class _Text(HTMLParser):
    """The words of a narrative's XHTML (R4 narrative.html: a limited XHTML div), paragraphs
    and list items on their own lines, for a parent app to show before and after."""

    _BLOCKS = {"p", "div", "li", "br", "tr", "h1", "h2", "h3", "h4", "h5", "h6"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def plain_text(xhtml: str | None) -> str:
    if not xhtml:
        return ""
    reader = _Text()
    reader.feed(xhtml)
    reader.close()
    lines = (" ".join(line.split()) for line in "".join(reader.parts).splitlines())
    return "\n".join(line for line in lines if line)


def _change(old: Any, new: Any) -> str:
    return "unchanged" if old == new else "changed"


def _ordered(codes: set[str]) -> list[str]:
    return [c for c in SECTIONS if c in codes] + sorted(c for c in codes if c not in SECTIONS)
