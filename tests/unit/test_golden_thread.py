"""The golden thread over a whole plan: need -> outcome -> provision, each break named."""

from __future__ import annotations

import copy
import json

import pytest

from ehcp_record.plan.golden_thread import PLAN_DOCUMENT_PROFILE, check_golden_thread, plan_bundle, validate_plan
from ehcp_record.fhir.validator import DEFAULT_PROFILES_DIR, Issue, default_validator, has_errors


@pytest.fixture(scope="module")
def example() -> dict:
    return json.loads((DEFAULT_PROFILES_DIR / "examples" / "plan-bundle.json").read_text(encoding="utf-8"))


@pytest.fixture
def bundle(example) -> dict:
    return copy.deepcopy(example)


def find(bundle: dict, resource_id: str) -> dict:
    return next(e["resource"] for e in bundle["entry"] if e["resource"].get("id") == resource_id)


def full_url(bundle: dict, resource_id: str) -> str:
    return next(e["fullUrl"] for e in bundle["entry"] if e["resource"].get("id") == resource_id)


def by_rule(issues: list[Issue], rule: str) -> list[Issue]:
    return [i for i in issues if i.rule == rule]


def test_example_plan_is_clean(bundle):
    assert validate_plan(bundle) == []


def test_provision_with_no_outcome(bundle):
    provision = find(bundle, "provision-club")
    del provision["goal"]
    del provision["activity"][0]["detail"]["goal"]
    issues = validate_plan(bundle)
    [thread] = by_rule(issues, "ehcp-thread-1")
    assert thread.message == "Provision CarePlan/provision-club (section H1) serves no outcome in this plan (rule ehcp-thread-1)"
    assert thread.severity == "error" and thread.code == "invariant" and thread.path.startswith("Bundle.entry[")
    # the per-resource profile says so too, at the activity
    [activity] = by_rule(issues, "ehcp-prov-1")
    assert activity.path.endswith(".resource.activity[0]") and activity.message.startswith("CarePlan/provision-club: ")


def test_provision_pointing_at_an_outcome_outside_the_plan(bundle):
    provision = find(bundle, "provision-short-breaks")
    provision["goal"] = [{"reference": "Goal/not-in-this-plan"}]
    provision["activity"][0]["detail"]["goal"] = [{"reference": "Goal/not-in-this-plan"}]
    [thread] = by_rule(validate_plan(bundle), "ehcp-thread-1")
    assert "Provision CarePlan/provision-short-breaks (section H2) serves no outcome" in thread.message


def test_outcome_with_no_need(bundle):
    outcome = find(bundle, "outcome-community")
    outcome["addresses"] = [{"reference": full_url(bundle, "outcome-regulation")}]  # a Goal, not a need
    issues = validate_plan(bundle)
    [thread] = by_rule(issues, "ehcp-thread-2")
    assert thread.message == "Outcome Goal/outcome-community addresses no need in sections B, C or D (rule ehcp-thread-2)"
    # and so section D's need is no longer met by any provision
    [unmet] = by_rule(issues, "ehcp-thread-3")
    assert unmet.message.startswith("Need Condition/need-social (section D) is met by no provision")


def test_need_met_by_no_provision(bundle):
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "CarePlan":
            for key in ("goal",):
                resource[key] = [g for g in resource.get(key, []) if g["reference"] != full_url(bundle, "outcome-wellbeing")]
            for activity in resource["activity"]:
                detail = activity["detail"]
                detail["goal"] = [g for g in detail["goal"] if g["reference"] != full_url(bundle, "outcome-wellbeing")] or \
                    [{"reference": full_url(bundle, "outcome-regulation")}]
            if not resource["goal"]:
                resource["goal"] = [{"reference": full_url(bundle, "outcome-regulation")}]
    issues = validate_plan(bundle)
    [unmet] = by_rule(issues, "ehcp-thread-3")
    assert "Need Condition/need-health (section C) is met by no provision" in unmet.message
    assert not [i for i in issues if i.rule not in ("ehcp-thread-3",) and i.severity == "error"]


def test_unquantified_provision_in_a_plan(bundle):
    find(bundle, "provision-salt")["activity"][0]["detail"]["scheduledString"] = "regular speech therapy"
    [issue] = validate_plan(bundle)
    assert issue.rule == "ehcp-prov-3"
    assert issue.message.startswith('CarePlan/provision-salt: Provision "regular speech therapy" is not quantified')
    assert issue.path.endswith(".resource.activity[0].detail")


def test_section_missing_from_an_issued_plan(bundle):
    plan = find(bundle, "plan-jamie-morgan")
    plan["status"] = "final"  # the shipped example is a draft; issued, it must hold every section
    plan["section"] = [s for s in plan["section"] if s["code"]["coding"][0]["code"] != "H2"]
    issues = validate_plan(bundle)
    [missing] = by_rule(issues, "ehcp-plan-1")
    assert missing.message.endswith("missing: H2 (rule ehcp-plan-1)")
    [unlisted] = by_rule(issues, "ehcp-thread-4")
    assert unlisted.severity == "warning"
    assert unlisted.message == ("CarePlan/provision-short-breaks (section H2) is not listed in section H2 of the plan "
                                "(rule ehcp-thread-4)")


def test_outcome_that_provision_serves_not_listed_in_section_e_is_an_error(bundle):
    """Was a warning (ehcp-thread-5): an issued plan whose provision serves an outcome that
    section E does not list is incoherent, so $propose and $issue refuse it (ehcp-thread-7)."""
    plan = find(bundle, "plan-jamie-morgan")
    section_e = next(s for s in plan["section"] if s["code"]["coding"][0]["code"] == "E")
    section_e["entry"] = [e for e in section_e["entry"] if e["reference"] != full_url(bundle, "outcome-community")]
    issues = validate_plan(bundle)
    assert [i.message for i in issues] == [
        "Outcome Goal/outcome-community is served by provision but is not listed in section E of the plan "
        "(rule ehcp-thread-7)"]
    assert has_errors(issues)


def test_outcome_no_provision_serves_not_listed_in_section_e_is_a_warning(bundle):
    plan = find(bundle, "plan-jamie-morgan")
    section_e = next(s for s in plan["section"] if s["code"]["coding"][0]["code"] == "E")
    section_e["entry"] = [e for e in section_e["entry"] if e["reference"] != full_url(bundle, "outcome-community")]
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "CarePlan":
            resource["goal"] = [g for g in resource.get("goal", []) if g["reference"] != full_url(bundle, "outcome-community")]
            for activity in resource.get("activity", []):
                detail = activity.get("detail", {})
                detail["goal"] = [g for g in detail.get("goal", []) if g["reference"] != full_url(bundle, "outcome-community")]
    issues = [i for i in validate_plan(bundle) if i.rule == "ehcp-thread-5"]
    assert [i.message for i in issues] == [
        "Outcome Goal/outcome-community is not listed in section E of the plan (rule ehcp-thread-5)"]
    assert not has_errors(issues)


def test_need_an_outcome_addresses_not_listed_in_b_c_or_d_is_an_error(bundle):
    plan = find(bundle, "plan-jamie-morgan")
    goal = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Goal")
    need_url = goal["addresses"][0]["reference"]
    need = next(e["resource"] for e in bundle["entry"] if e["fullUrl"] == need_url)
    for section in plan["section"]:
        if section["code"]["coding"][0]["code"] in ("B", "C", "D"):
            section["entry"] = [e for e in section.get("entry", []) if e["reference"] != need_url]
            if not section["entry"]:
                del section["entry"]
    [issue] = by_rule(validate_plan(bundle), "ehcp-thread-8")
    assert issue.severity == "error"
    assert issue.message == (f"Need Condition/{need['id']} is addressed by an outcome but is not listed in section "
                             "B, C or D of the plan (rule ehcp-thread-8)")


def test_section_lists_a_need_that_is_not_in_the_plan(bundle):
    plan = find(bundle, "plan-jamie-morgan")
    plan["section"][1]["entry"].append({"reference": "Condition/somewhere-else"})
    [issue] = by_rule(validate_plan(bundle), "ehcp-thread-6")
    assert issue.message == "The plan lists resources that are not in the plan: Condition/somewhere-else (rule ehcp-thread-6)"
    assert issue.path == "Bundle"


def test_exactly_one_composition(bundle):
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["resourceType"] != "Composition"]
    assert [i.rule for i in validate_plan(bundle) if i.severity == "error"] == ["ehcp-thread-0"]


def test_plan_given_as_composition_and_referenced_resources(example):
    """The repository's view: the Composition and a dict reference -> resource."""
    bundle = copy.deepcopy(example)
    ids = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}
    text = json.dumps(bundle)
    for urn, literal in ids.items():
        text = text.replace(f'"{urn}"', f'"{literal}"')
    resources = {f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"] for e in json.loads(text)["entry"]}
    composition = resources.pop("Composition/plan-jamie-morgan")
    assert check_golden_thread(composition, resources) == []

    resources["Goal/outcome-regulation"]["addresses"] = [{"reference": "Condition/not-here"}]
    [issue] = by_rule(check_golden_thread(composition, resources), "ehcp-thread-2")
    assert issue.message.startswith("Outcome Goal/outcome-regulation addresses no need")


def test_plan_bundle_puts_the_composition_first():
    composition = {"resourceType": "Composition", "id": "c1"}
    bundle = plan_bundle(composition, {"Condition/n1": {"resourceType": "Condition", "id": "n1"}})
    assert [e["fullUrl"] for e in bundle["entry"]] == ["Composition/c1", "Condition/n1"]
    assert bundle["type"] == "collection"


def test_plan_document_profile_is_loaded_and_not_a_default():
    validator = default_validator()
    profile = validator.profile(PLAN_DOCUMENT_PROFILE)
    assert profile.type == "Bundle" and not profile.is_default
    # a transaction Bundle validated without the profile gets only its entries checked
    assert validator.validate({"resourceType": "Bundle", "type": "transaction", "entry": []}) == []
