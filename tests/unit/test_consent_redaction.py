"""What a caller sees of a resource: sections of resources, may_see, redact, bundles."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consent import codes
from consent.model import Decision
from consent.redaction import may_see, redact, redact_bundle_entries, ref_key, visible_sections
from consent.sections import composition_section_code, section_of

SYS = codes.SECTION_SYSTEM
REDACTED = {"system": codes.REDACTED_SYSTEM, "code": "REDACTED"}

CUSTODIAN = Decision(True, codes.ALL_SECTIONS, ("custody",), (), "custodian")
FAMILY = Decision(True, codes.ALL_SECTIONS, ("own record",), (), "family")
SCHOOL_B_E = Decision(True, frozenset({"B", "E"}), ("consent c1",), ("c1",), "consent")
DENIED = Decision(False, frozenset(), ("no consent",), (), "none")
AUDITOR = Decision(True, frozenset(), ("auditor",), (), "auditor")


def categorised(kind: str, rid: str, section: str | None) -> dict:
    body = {"resourceType": kind, "id": rid}
    if section:
        body["category"] = [{"coding": [{"system": SYS, "code": section}]}]
    return body


def section(code: str | None, *entries: str, nested: list | None = None, **extra) -> dict:
    body: dict = {"title": f"Section {code}", **extra}
    if code:
        body["code"] = {"coding": [{"system": SYS, "code": code}]}
    if entries:
        body["entry"] = [{"reference": e} for e in entries]
    if nested:
        body["section"] = nested
    return body


def plan(*sections: dict) -> dict:
    return {
        "resourceType": "Composition", "id": "plan-1", "status": "final",
        "meta": {"versionId": "3"},
        "text": {"status": "generated", "div": "<div>the whole plan, every section</div>"},
        "subject": {"reference": "Patient/child-1"},
        "section": list(sections),
    }


def codes_in(sections: list | None) -> list[str | None]:
    found: list[str | None] = []
    for s in sections or []:
        found.append(composition_section_code(s))
        found += codes_in(s.get("section"))
    return found


# ---------------------------------------------------------------- section_of

@pytest.mark.parametrize("resource, expected", [
    ({"resourceType": "Patient"}, "record"),
    ({"resourceType": "RelatedPerson"}, "record"),
    *[({"resourceType": t}, "governance")
      for t in ("Consent", "Task", "Provenance", "AuditEvent", "Subscription")],
    *[({"resourceType": t}, "directory")
      for t in ("Organization", "Practitioner", "PractitionerRole")],
    ({"resourceType": "Composition"}, "plan"),
    ({"resourceType": "Goal"}, "E"),
    (categorised("Condition", "c", None), "B"),
    (categorised("Condition", "c", "C"), "C"),
    (categorised("Condition", "c", "D"), "D"),
    (categorised("Condition", "c", "F"), "B"),  # not a needs section: the default
    (categorised("CarePlan", "p", None), "F"),
    (categorised("CarePlan", "p", "H1"), "H1"),
    (categorised("CarePlan", "p", "G"), "G"),
    (categorised("ServiceRequest", "p", "H2"), "H2"),
    (categorised("DocumentReference", "d", None), "K"),
    (categorised("DocumentReference", "d", "A"), "A"),
    ({"resourceType": "Binary"}, "K"),
    ({"resourceType": "Binary", "_section": "A"}, "A"),
    ({"resourceType": "Binary", "_section": "nonsense"}, "K"),
    ({"resourceType": "Observation"}, "governance"),
    ({}, "governance"),
])
def test_section_of(resource, expected):
    assert section_of(resource) == expected


def test_section_of_ignores_other_code_systems():
    condition = {"resourceType": "Condition", "category": [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                     "code": "C"}]},
        {"coding": [{"system": SYS, "code": "D"}]}]}
    assert section_of(condition) == "D"


# ---------------------------------------------------------------- may_see

def test_school_sees_only_its_sections():
    assert may_see(categorised("Condition", "b", "B"), SCHOOL_B_E)
    assert not may_see(categorised("Condition", "c", "C"), SCHOOL_B_E)
    assert may_see({"resourceType": "Goal"}, SCHOOL_B_E)
    assert not may_see(categorised("CarePlan", "f", "F"), SCHOOL_B_E)
    assert not may_see({"resourceType": "Binary", "_section": "K"}, SCHOOL_B_E)
    assert may_see({"resourceType": "Patient"}, SCHOOL_B_E)
    assert may_see({"resourceType": "Composition"}, SCHOOL_B_E)
    assert not may_see({"resourceType": "Consent"}, SCHOOL_B_E)
    assert not may_see({"resourceType": "AuditEvent"}, SCHOOL_B_E)
    assert may_see({"resourceType": "Organization"}, SCHOOL_B_E)


def test_governance_is_for_family_and_custodian():
    for decision in (CUSTODIAN, FAMILY):
        assert may_see({"resourceType": "Task"}, decision)
    assert not may_see({"resourceType": "Task"}, SCHOOL_B_E)
    assert may_see({"resourceType": "Task"}, SCHOOL_B_E, actor_is_family_or_custodian=True)
    assert not may_see({"resourceType": "Task"}, CUSTODIAN, actor_is_family_or_custodian=False)


def test_a_recipient_sees_the_consents_that_grant_it_and_no_other():
    school = Decision(True, frozenset({"A", "B"}), ("consent c-1 permits",), ("c-1",), "consent")
    assert may_see({"resourceType": "Consent", "id": "c-1"}, school)
    assert not may_see({"resourceType": "Consent", "id": "c-2"}, school)
    assert not may_see({"resourceType": "Task", "id": "c-1"}, school)
    lapsed = Decision(False, frozenset(), ("no active consent",), (), "none")
    assert not may_see({"resourceType": "Consent", "id": "c-1"}, lapsed)
    # the search filter matches those Consents by id, not by section
    assert "governance" not in visible_sections(school)


def test_denied_sees_only_the_directory():
    for resource in ({"resourceType": "Patient"}, {"resourceType": "Composition"},
                     categorised("Condition", "b", "B"), {"resourceType": "Consent"}):
        assert not may_see(resource, DENIED)
        assert redact(resource, DENIED) is None
    assert may_see({"resourceType": "Practitioner"}, DENIED)


def test_stored_section_overrides_the_computed_one():
    photo = {"resourceType": "Binary", "id": "p"}  # an "all about me" photo: section A
    school_k = Decision(True, frozenset({"K"}), (), (), "consent")
    assert may_see(photo, school_k)  # without the hint a Binary counts as K
    assert not may_see(photo, school_k, section="A")
    assert redact(photo, school_k, section="A") is None
    assert redact(photo, SCHOOL_B_E, section="B") is photo


def test_auditor_sees_audit_events_not_content():
    assert may_see({"resourceType": "AuditEvent"}, AUDITOR)
    for kind in ("Patient", "Composition", "Consent", "Task", "Goal"):
        assert not may_see({"resourceType": kind}, AUDITOR)


# ---------------------------------------------------------------- redact

def test_non_composition_is_returned_unchanged_or_none():
    goal = {"resourceType": "Goal", "id": "g1"}
    assert redact(goal, SCHOOL_B_E) is goal
    assert redact(categorised("Condition", "c", "C"), SCHOOL_B_E) is None


def test_composition_keeps_only_permitted_sections_and_is_labelled():
    original = plan(section("A", "DocumentReference/a"), section("B", "Condition/b"),
                    section("C", "Condition/c"), section("E", "Goal/e"),
                    section(None, "Condition/x"))
    before = copy.deepcopy(original)
    result = redact(original, SCHOOL_B_E)
    assert codes_in(result["section"]) == ["B", "E"]
    assert REDACTED in [{k: s[k] for k in ("system", "code")} for s in result["meta"]["security"]]
    assert "text" not in result  # the narrative summarised hidden sections
    assert result["meta"]["versionId"] == "3"
    assert original == before  # the stored resource is never touched


def test_nested_sections_are_filtered_and_inherit_their_parent():
    original = plan(section("E", "Goal/e1", nested=[
        section(None, "Goal/e2", title="Preparing for adulthood"),
        section("F", "CarePlan/f1"),
        section("B", "Condition/b2"),
    ]))
    result = redact(original, SCHOOL_B_E)
    top = result["section"][0]
    assert [s["title"] for s in top["section"]] == ["Preparing for adulthood", "Section B"]
    assert codes_in(result["section"]) == ["E", None, "B"]
    assert REDACTED["code"] in str(result["meta"]["security"])


def test_nothing_removed_means_no_label_and_narrative_kept():
    original = plan(section("B", "Condition/b"), section("E", "Goal/e"))
    result = redact(original, SCHOOL_B_E)
    assert result == original and result is not original
    assert "security" not in result["meta"]
    assert redact(plan(section("C")), CUSTODIAN)["section"][0]["title"] == "Section C"


def test_label_is_not_duplicated():
    original = plan(section("C"))
    original["meta"]["security"] = [dict(REDACTED)]
    result = redact(plan(section("B"), section("C")) | {"meta": original["meta"]}, SCHOOL_B_E)
    assert len(result["meta"]["security"]) == 1


def test_all_sections_hidden_leaves_no_empty_array():
    result = redact(plan(section("C"), section("G")), SCHOOL_B_E)
    assert "section" not in result
    assert result["meta"]["security"]


def test_contained_resources_are_filtered_and_their_references_dropped():
    original = plan(section("B", "#hidden", "#shown", "Condition/b"))
    original["contained"] = [categorised("Condition", "hidden", "C"),
                             categorised("Condition", "shown", "B")]
    result = redact(original, SCHOOL_B_E)
    assert [c["id"] for c in result["contained"]] == ["shown"]
    assert [e["reference"] for e in result["section"][0]["entry"]] == ["#shown", "Condition/b"]


def test_removed_refs_prune_entries_and_focus():
    original = plan(section("B", "Condition/b1", "Condition/b2", focus={"reference": "Condition/b2"}))
    result = redact(original, SCHOOL_B_E, removed_refs=["http://x/fhir/Condition/b2/_history/4"])
    assert [e["reference"] for e in result["section"][0]["entry"]] == ["Condition/b1"]
    assert "focus" not in result["section"][0]
    assert result["meta"]["security"]


def test_ref_key():
    assert ref_key("Condition/1") == "Condition/1"
    assert ref_key("https://h/fhir/Condition/1/_history/2") == "Condition/1"
    assert ref_key("#x") == "#x"
    assert ref_key("urn:uuid:1234") == "urn:uuid:1234"


# ---------------------------------------------------------------- bundles

def test_bundle_keeps_order_and_drops_references_to_hidden_resources():
    composition = plan(section("B", "Condition/b", "Condition/misfiled"),
                       section("C", "Condition/c"))
    resources = [
        composition, {"resourceType": "Patient", "id": "child-1"},
        categorised("Condition", "b", "B"), categorised("Condition", "misfiled", "C"),
        categorised("Condition", "c", "C"), {"resourceType": "Goal", "id": "e"},
        {"resourceType": "Consent", "id": "c2"}, {"resourceType": "Consent", "id": "c1"},
        {"resourceType": "Organization", "id": "la"},
    ]
    out = redact_bundle_entries(resources, SCHOOL_B_E)
    assert [(r["resourceType"], r["id"]) for r in out] == [
        ("Composition", "plan-1"), ("Patient", "child-1"), ("Condition", "b"), ("Goal", "e"),
        ("Consent", "c1"), ("Organization", "la")]
    assert [e["reference"] for e in out[0]["section"][0]["entry"]] == ["Condition/b"]
    assert codes_in(out[0]["section"]) == ["B"]


def test_bundle_for_family_is_untouched():
    resources = [plan(section("C", "Condition/c")), categorised("Condition", "c", "C"),
                 {"resourceType": "Task", "id": "t"}]
    assert redact_bundle_entries(resources, FAMILY) == resources


# ---------------------------------------------------------------- visible_sections

def test_visible_sections():
    assert visible_sections(CUSTODIAN) is None
    assert visible_sections(DENIED) == frozenset()
    assert visible_sections(SCHOOL_B_E) == {"B", "E", "record", "plan", "directory"}
    assert visible_sections(AUDITOR) == {"directory"}
    partial_family = Decision(True, frozenset({"A", "K"}), (), (), "family")
    assert visible_sections(partial_family) == {"A", "K", "record", "plan", "governance",
                                                "directory"}


# ---------------------------------------------------------------- properties

# Mostly a few codes, so compositions, resources and decisions often meet; sometimes any code.
SECTION_CODES = st.one_of(st.sampled_from(["B", "C", "E"]), st.sampled_from(codes.SECTIONS))
IDS = st.sampled_from(["a", "b", "c"])  # the ids Composition entries point at
decisions = st.builds(
    Decision, permit=st.booleans(), sections=st.frozensets(SECTION_CODES),
    reasons=st.just(("r",)), consent_ids=st.just(()),
    basis=st.sampled_from(["custodian", "decision-maker", "family", "consent", "auditor",
                           "former-custodian", "none"]),
)
content = st.one_of(
    st.builds(categorised, st.just("Condition"), IDS,
              st.one_of(st.none(), SECTION_CODES)),
    st.builds(categorised, st.just("CarePlan"), IDS,
              st.one_of(st.none(), SECTION_CODES)),
    st.builds(categorised, st.just("DocumentReference"), IDS,
              st.one_of(st.none(), SECTION_CODES)),
    st.builds(lambda i: {"resourceType": "Goal", "id": i}, IDS),
    st.builds(lambda i, s: {"resourceType": "Binary", "id": i, "_section": s},
              IDS, st.one_of(st.none(), SECTION_CODES)),
)
others = st.sampled_from([{"resourceType": t, "id": "x"} for t in (
    "Patient", "RelatedPerson", "Consent", "Task", "Provenance", "AuditEvent", "Subscription",
    "Organization", "Practitioner", "PractitionerRole", "Observation")])
refs = st.sampled_from(["Condition/a", "Condition/b", "Condition/c", "CarePlan/c", "Goal/a",
                        "DocumentReference/b", "Binary/a", "#a"])
sections_st = st.recursive(
    st.builds(lambda c, e: section(c, *e), st.one_of(st.none(), SECTION_CODES),
              st.lists(refs, max_size=3)),
    lambda children: st.builds(lambda c, e, n: section(c, *e, nested=n),
                               st.one_of(st.none(), SECTION_CODES), st.lists(refs, max_size=2),
                               st.lists(children, min_size=1, max_size=3)),
    max_leaves=8,
)
compositions = st.builds(lambda s: plan(*s), st.lists(sections_st, max_size=5))


def _all_codes_reachable(sections: list | None, inherited: str | None = None) -> list[str | None]:
    found = []
    for s in sections or []:
        code = composition_section_code(s) or inherited
        found.append(code)
        found += _all_codes_reachable(s.get("section"), code)
    return found


@settings(max_examples=200, deadline=None)
@given(resource=st.one_of(content, others), decision=decisions, flag=st.sampled_from([None, True, False]))
def test_redact_never_shows_a_section_outside_the_decision(resource, decision, flag):
    shown = redact(resource, decision, flag)
    section_code = section_of(resource)
    if section_code in codes.ALL_SECTIONS and shown is not None:
        assert section_code in decision.sections
    if not decision.permit and section_code != "directory":
        assert shown is None
    # visible_sections is the same rule as a database filter over one record's resources;
    # the directory lives outside records, and an auditor's AuditEvents outside searches.
    expected = visible_sections(decision, flag)
    auditing = section_code == "governance" and decision.basis == "auditor" and not flag
    if section_code != "directory" and not auditing:
        assert may_see(resource, decision, flag) == (expected is None or section_code in expected)


@settings(max_examples=150, deadline=None)
@given(composition=compositions, decision=decisions, flag=st.sampled_from([None, True, False]))
def test_redacted_composition_holds_only_permitted_sections(composition, decision, flag):
    before = copy.deepcopy(composition)
    shown = redact(composition, decision, flag)
    assert composition == before
    if shown is None:
        return
    if visible_sections(decision, flag) is None:
        assert shown == composition  # sees the whole record: unchanged, uncoded sections included
        return
    reached = _all_codes_reachable(shown.get("section"))
    assert all(code in decision.sections for code in reached)
    if len(reached) < len(_all_codes_reachable(composition["section"])):
        assert any(s.get("code") == "REDACTED" for s in shown["meta"]["security"])
        assert "text" not in shown


@settings(max_examples=150, deadline=None)
@given(composition=compositions, items=st.lists(content, max_size=8), decision=decisions)
def test_bundle_never_references_a_removed_resource(composition, items, decision):
    out = redact_bundle_entries([composition, *items], decision)
    kept = {(r["resourceType"], r["id"]) for r in out}
    removed = {f"{r['resourceType']}/{r['id']}" for r in items
               if (r["resourceType"], r["id"]) not in kept}
    for resource in out:
        assert section_of(resource) not in codes.ALL_SECTIONS or \
            section_of(resource) in decision.sections
    if out and out[0]["resourceType"] == "Composition":
        def entry_refs(sections):
            for s in sections or []:
                yield from (e["reference"] for e in s.get("entry", []))
                yield from entry_refs(s.get("section"))
        assert not removed & set(entry_refs(out[0].get("section")))
