"""What the caller may see of a resource: the one redaction every read path uses.

HAPI's consent service answers "may the caller see this resource" and "what should the caller
see of it" on every path (read, vread, search, includes, history, $document, $everything);
its issue history shows leaks wherever one path skipped it. Every read path here calls
`redact` or `redact_bundle_entries`, and counts (Bundle.total) only what they return.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from consent import codes
from consent.model import Decision
from consent.references import ref_key, reference_of
from consent.sections import DIRECTORY, GOVERNANCE, PLAN, RECORD, composition_section_code, section_of

PRIVILEGED_BASES = frozenset({"custodian", "decision-maker", "family"})
REDACTED_LABEL = {"system": codes.REDACTED_SYSTEM, "code": codes.REDACTED_CODE,
                  "display": "redacted"}


def _privileged(decision: Decision, actor_is_family_or_custodian: bool | None) -> bool:
    if actor_is_family_or_custodian is not None:
        return actor_is_family_or_custodian
    return decision.basis in PRIVILEGED_BASES


def may_see(resource: Mapping, decision: Decision,
            actor_is_family_or_custodian: bool | None = None, *,
            section: str | None = None) -> bool:
    """May the caller see this resource at all, given the record's read decision.

    Sectioned content needs its section in `decision.sections`. The child and parents
    (RelatedPerson) and the plan itself are visible to anyone permitted any section;
    governance (consents, tasks, provenance, audit) only to the family and the custodian,
    except that an auditor sees AuditEvents and a recipient sees the Consents that grant it
    this access (`decision.consent_ids`: an NHS trust or school can find out what it may
    read, from when to when, and on whose word, and nothing about other recipients); the directory of organisations and practitioners
    is not record content and is visible to any authenticated caller. When the flag is
    omitted it follows from `decision.basis`. `section` overrides `section_of(resource)` when
    the caller already knows it (the section stored with the version); a Binary needs it (or
    a `_section` hint), since it carries no category of its own.
    """
    section = section or section_of(resource)
    if section == DIRECTORY:
        return True
    if not decision.permit:
        return False
    privileged = _privileged(decision, actor_is_family_or_custodian)
    if section == GOVERNANCE:
        auditing = decision.basis == "auditor" and resource.get("resourceType") == "AuditEvent"
        return privileged or auditing or grants_this_access(resource, decision)
    if section in (RECORD, PLAN):
        return privileged or bool(decision.sections)
    return section in decision.sections


def grants_this_access(resource: Mapping, decision: Decision) -> bool:
    """Is `resource` one of the Consents the decision was taken on?"""
    return resource.get("resourceType") == "Consent" and str(resource.get("id")) in decision.consent_ids


def visible_sections(decision: Decision,
                     actor_is_family_or_custodian: bool | None = None) -> frozenset[str] | None:
    """The stored section values (codes and pseudo-sections) a search may match in a record.

    None means everything in the record. The same rules as `may_see`, in the form a database
    filter needs, so Bundle.total never counts what redaction would hide. One difference,
    on the safe side: an auditor's AuditEvents are not searchable here (they are served by
    $access-log), because a section filter cannot tell AuditEvent from the rest of governance.
    The Consents that grant a recipient its access are matched by id beside the sections
    (`Visibility.consents`), for the same reason.
    """
    if not decision.permit:
        return frozenset()
    if _privileged(decision, actor_is_family_or_custodian):
        if decision.sections >= codes.ALL_SECTIONS:
            return None
        return decision.sections | {RECORD, PLAN, GOVERNANCE, DIRECTORY}
    if not decision.sections:
        return frozenset({DIRECTORY})
    return decision.sections | {RECORD, PLAN, DIRECTORY}


def redact(resource: Mapping, decision: Decision,
           actor_is_family_or_custodian: bool | None = None, *,
           removed_refs: Iterable[str] = (), section: str | None = None) -> Any:
    """The resource as this caller may see it, or None when it is hidden.

    A Composition comes back as a copy holding only permitted sections (nested ones too) and
    no section.entry pointing at a reference in `removed_refs`; when anything was removed its
    top-level narrative is dropped (it may summarise hidden sections) and meta.security gets
    the v3 REDACTED label. A caller who sees the whole record gets it unchanged, sections with
    no EHCP section code included. Any other visible resource is returned unchanged (the same
    object).
    """
    if not may_see(resource, decision, actor_is_family_or_custodian, section=section):
        return None
    if resource.get("resourceType") != "Composition":
        return resource
    privileged = _privileged(decision, actor_is_family_or_custodian)
    removed = {ref_key(r) for r in removed_refs}
    if privileged and not removed and visible_sections(decision, actor_is_family_or_custodian) is None:
        return resource  # sees the whole record: nothing to take out, whatever the coding
    return _redact_composition(resource, decision, privileged, removed)


def redact_bundle_entries(resources: Iterable[Mapping], decision: Decision,
                          actor_is_family_or_custodian: bool | None = None, *,
                          also_hidden: Iterable[str] = ()) -> list[Any]:
    """Redact a set of resources returned together, keeping order.

    Hidden resources are dropped, and a Composition among them loses its section entries
    that pointed at a dropped resource, so no reference to hidden content remains.
    `also_hidden` ("Type/id") are dropped the same way for a reason outside consent (the
    token's scopes do not cover their type).
    """
    items = list(resources)
    hidden = {ref_key(r) for r in also_hidden}
    removed = {key for r in items
               if not may_see(r, decision, actor_is_family_or_custodian) or _own_key(r) in hidden
               for key in [_own_key(r)] if key}
    items = [r for r in items if _own_key(r) not in hidden]
    kept = (redact(r, decision, actor_is_family_or_custodian, removed_refs=removed)
            for r in items)
    return [r for r in kept if r is not None]


# ---------------------------------------------------------------- references

def _own_key(resource: Mapping) -> str | None:
    kind, rid = resource.get("resourceType"), resource.get("id")
    return f"{kind}/{rid}" if kind and rid else None


def _points_at(ref_holder: Any, removed: set[str]) -> bool:
    ref = reference_of(ref_holder)
    return ref is not None and ref_key(ref) in removed


# ---------------------------------------------------------------- Composition

def _redact_composition(resource: Mapping, decision: Decision, privileged: bool,
                        removed: set[str]) -> dict:
    doc = copy.deepcopy(dict(resource))
    changed = _filter_contained(doc, decision, privileged, removed)
    if not privileged:
        changed = _drop_family_extensions(doc) or changed
    sections, pruned = _filter_sections(doc.get("section"), decision.sections, None, removed)
    changed = changed or pruned
    _set_list(doc, "section", sections)
    if changed:
        doc.pop("text", None)
        _label_redacted(doc)
    return doc


def _drop_family_extensions(doc: dict) -> bool:
    """The family's recorded view is theirs and the custodian's, not a consented reader's."""
    extensions = doc.get("extension")
    if not isinstance(extensions, list):
        return False
    kept = [e for e in extensions if not (isinstance(e, Mapping) and e.get("url") in codes.FAMILY_ONLY_EXTENSIONS)]
    _set_list(doc, "extension", kept)
    return len(kept) != len(extensions)


def _filter_contained(doc: dict, decision: Decision, privileged: bool,
                      removed: set[str]) -> bool:
    contained = doc.get("contained")
    if not isinstance(contained, list):
        return False
    kept = []
    for item in contained:
        if isinstance(item, Mapping) and may_see(item, decision, privileged):
            kept.append(item)
        elif isinstance(item, Mapping) and item.get("id"):
            removed.add(f"#{item['id']}")
    _set_list(doc, "contained", kept)
    return len(kept) != len(contained)


def _filter_sections(sections: Any, allowed: frozenset[str], inherited: str | None,
                     removed: set[str]) -> tuple[list, bool]:
    """Keep permitted sections; a nested section without its own code takes its parent's."""
    if not isinstance(sections, list):
        return [], False
    kept: list = []
    changed = False
    for section in sections:
        code = (composition_section_code(section) if isinstance(section, Mapping) else None)
        code = code or inherited
        if code is None or code not in allowed:
            changed = True
            continue
        section = dict(section)
        changed = _prune_refs(section, removed) or changed
        nested, nested_changed = _filter_sections(section.get("section"), allowed, code, removed)
        changed = changed or nested_changed
        _set_list(section, "section", nested)
        kept.append(section)
    return kept, changed


def _prune_refs(section: dict, removed: set[str]) -> bool:
    changed = False
    if _points_at(section.get("focus"), removed):
        del section["focus"]
        changed = True
    entries = section.get("entry")
    if isinstance(entries, list):
        kept = [e for e in entries if not _points_at(e, removed)]
        changed = changed or len(kept) != len(entries)
        _set_list(section, "entry", kept)
    return changed


def _set_list(holder: dict, key: str, values: list) -> None:
    """FHIR forbids empty arrays, so an emptied list is removed, not left as []."""
    if values:
        holder[key] = values
    else:
        holder.pop(key, None)


def _label_redacted(doc: dict) -> None:
    meta = doc.setdefault("meta", {})
    security = meta.setdefault("security", [])
    if not any(s.get("system") == codes.REDACTED_SYSTEM and s.get("code") == codes.REDACTED_CODE
               for s in security if isinstance(s, Mapping)):
        security.append(dict(REDACTED_LABEL))
