"""The generic profile validator: each kind of rule in the shipped profiles bites, with a message
that names the rule, and nothing in the validator is specific to one profile."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum.gb import upn as stdnum_upn

from ehcp_record.fhir.validator import (
    CANONICAL_BASE,
    DEFAULT_PROFILES_DIR,
    Issue,
    ProfileLoadError,
    ProfileValidator,
    UnknownProfileError,
    default_validator,
    has_errors,
    matches_pattern,
)

EXAMPLES = DEFAULT_PROFILES_DIR / "examples"
SD = f"{CANONICAL_BASE}/StructureDefinition"
UPN_SYSTEM = f"{CANONICAL_BASE}/NamingSystem/upn"
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"


@pytest.fixture(scope="module")
def validator() -> ProfileValidator:
    return default_validator()


@pytest.fixture(scope="module")
def plan_bundle() -> dict:
    return json.loads((EXAMPLES / "plan-bundle.json").read_text(encoding="utf-8"))


def resource(bundle: dict, resource_id: str) -> dict:
    """A deep copy of one example resource, ready to break."""
    return copy.deepcopy(next(e["resource"] for e in bundle["entry"] if e["resource"].get("id") == resource_id))


def example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))


def only(issues: list[Issue], **fields) -> Issue:
    found = [i for i in issues if all(getattr(i, k) == v for k, v in fields.items())]
    assert len(found) == 1, f"expected one issue with {fields}, got {issues}"
    return found[0]


# ------------------------------------------------------------------ clean resources


@pytest.mark.parametrize("resource_id", [
    "plan-jamie-morgan", "jamie-morgan", "rachel-morgan", "need-slcn", "need-health", "outcome-communication",
    "provision-salt", "provision-outreach", "advice-ep", "all-about-me",
])
def test_example_resources_validate_clean(validator, plan_bundle, resource_id):
    assert validator.validate(resource(plan_bundle, resource_id)) == []


@pytest.mark.parametrize("name", ["parental-review-task", "transfer-task", "consent-school"])
def test_standalone_examples_validate_clean(validator, name):
    assert validator.validate(example(name)) == []


def without_display(value):
    if isinstance(value, dict):
        return {k: without_display(v) for k, v in value.items() if k != "display"}
    return [without_display(v) for v in value] if isinstance(value, list) else value


def test_codings_without_display_still_match_patterns_and_slices(validator, plan_bundle):
    plan = without_display(resource(plan_bundle, "plan-jamie-morgan"))
    assert "display" not in json.dumps(plan)
    assert validator.validate(plan) == []


def test_validation_does_not_change_the_resource(validator, plan_bundle):
    bundle = copy.deepcopy(plan_bundle)
    validator.validate(bundle, f"{SD}/ehcp-plan-document")
    assert bundle == plan_bundle


# ------------------------------------------------------------------ cardinality


def test_too_few_missing_birth_date(validator, plan_bundle):
    child = resource(plan_bundle, "jamie-morgan")
    del child["birthDate"]
    issue = only(validator.validate(child), code="required")
    assert issue.path == "Patient.birthDate"
    assert "Patient.birthDate is required by profile EHCP child or young person (at least 1, found 0)" in issue.message
    assert issue.severity == "error" and issue.rule == "Patient.birthDate"


def test_too_few_counts_per_parent_instance(validator, plan_bundle):
    provision = resource(plan_bundle, "provision-salt")
    del provision["activity"][1]["detail"]["performer"]
    issue = only(validator.validate(provision), code="required")
    assert issue.path == "CarePlan.activity[1].detail.performer"
    assert "CarePlan.activity.detail.performer is required" in issue.message


def test_too_many_sections_of_one_kind(validator, plan_bundle):
    plan = resource(plan_bundle, "plan-jamie-morgan")
    plan["section"].append(copy.deepcopy(plan["section"][1]))
    issue = only(validator.validate(plan), code="structure")
    assert issue.path == "Composition.section:B"
    assert "Composition.section:B appears too often for profile EHCP plan (at most 1, found 2)" in issue.message


def test_max_zero_forbids_an_element(validator, plan_bundle):
    provision = resource(plan_bundle, "provision-ta")
    provision["activity"][0]["reference"] = {"reference": "ServiceRequest/x"}
    issue = only(validator.validate(provision), code="structure")
    assert issue.path == "CarePlan.activity[0].reference"
    assert "at most 0, found 1" in issue.message


# ------------------------------------------------------------------ fixed and pattern values


def test_wrong_fixed_value(validator, plan_bundle):
    provision = resource(plan_bundle, "provision-salt")
    provision["intent"] = "proposal"
    issue = only(validator.validate(provision), code="value")
    assert issue.path == "CarePlan.intent"
    assert issue.message == 'CarePlan.intent must be exactly "plan" (fixed by profile EHCP provision); found "proposal"'


def test_wrong_pattern_value(validator, plan_bundle):
    plan = resource(plan_bundle, "plan-jamie-morgan")
    plan["type"] = {"coding": [{"system": "http://loinc.org", "code": "11503-0"}]}
    issue = only(validator.validate(plan), code="value")
    assert issue.path == "Composition.type"
    assert "ehcp-document-type#ehcp" in issue.message and "found http://loinc.org#11503-0" in issue.message


def test_pattern_allows_extra_content():
    pattern = {"coding": [{"system": "s", "code": "A"}]}
    instance = {"coding": [{"system": "x", "code": "1"}, {"system": "s", "code": "A", "display": "d"}], "text": "t"}
    assert matches_pattern(instance, pattern)
    assert not matches_pattern({"coding": [{"system": "s", "code": "B"}]}, pattern)


# ------------------------------------------------------------------ terminology


def test_unknown_need_code(validator, plan_bundle):
    need = resource(plan_bundle, "need-slcn")
    need["code"]["coding"][0]["code"] = "XYZ"
    issues = validator.validate(need)
    unknown = only(issues, code="code-invalid")
    assert unknown.path == "Condition.code.coding[0]"
    assert "Code 'XYZ' is not defined in CodeSystem SEN primary-need types" in unknown.message
    rule = only(issues, rule="ehcp-need-1")
    assert "section B" in rule.message and "(rule ehcp-need-1)" in rule.message


def test_section_b_need_without_a_sen_code(validator, plan_bundle):
    need = resource(plan_bundle, "need-asd")
    need["code"] = {"text": "Autism"}
    issue = only(validator.validate(need), rule="ehcp-need-1")
    assert issue.code == "invariant" and issue.path == "Condition"


def test_required_binding_rejects_a_code_outside_the_value_set(validator, plan_bundle):
    need = resource(plan_bundle, "need-health")
    need["category"][0]["coding"][0].update(code="F", display="Special educational provision")
    issue = only(validator.validate(need), code="code-invalid")
    assert issue.path == "Condition.category[0]"
    assert "must use a code from ValueSet EHCP need sections" in issue.message


def test_required_binding_on_a_plain_code_and_consent_actions(validator):
    consent = example("consent-school")
    coding = consent["provision"]["action"][0]["coding"][0]
    coding.update(system="http://terminology.hl7.org/CodeSystem/consentaction", code="access")
    issue = only(validator.validate(consent), code="code-invalid")
    assert issue.path == "Consent.provision.action[0]"


def test_wrong_display_is_only_a_warning(validator, plan_bundle):
    need = resource(plan_bundle, "need-slcn")
    need["code"]["coding"][0]["display"] = "Speech"
    issue = only(validator.validate(need), code="code-invalid")
    assert issue.severity == "warning"
    assert not has_errors([issue])


# ------------------------------------------------------------------ types, slices


def test_choice_type_restricted(validator, plan_bundle):
    outcome = resource(plan_bundle, "outcome-regulation")
    outcome["target"] = [{"dueDuration": {"value": 1, "unit": "year"}}]
    issue = only(validator.validate(outcome), code="structure")
    assert issue.path == "Goal.target[0].dueDuration"
    assert "allows only date" in issue.message


def test_reference_to_a_wrong_resource_type(validator, plan_bundle):
    outcome = resource(plan_bundle, "outcome-regulation")
    outcome["addresses"] = [{"reference": "Observation/o1"}]
    issue = only(validator.validate(outcome), code="structure")
    assert issue.path == "Goal.addresses[0]"
    assert "refers to a Observation" in issue.message and "Condition" in issue.message


def test_section_slice_entry_types_apply_only_to_their_slice(validator, plan_bundle):
    plan = resource(plan_bundle, "plan-jamie-morgan")
    section_b = next(s for s in plan["section"] if s["code"]["coding"][0]["code"] == "B")
    section_b["entry"].append({"reference": "Goal/outcome-regulation"})
    issue = only(validator.validate(plan), code="structure")
    assert issue.path.startswith("Composition.section[1].entry[")
    assert "refers to a Goal" in issue.message


def test_closed_slicing_rejects_an_unknown_section(validator, plan_bundle):
    plan = resource(plan_bundle, "plan-jamie-morgan")
    plan["status"] = "preliminary"
    loinc = {"coding": [{"system": "http://loinc.org", "code": "42348-3"}]}
    plan["section"].append({"code": loinc, "text": plan["section"][0]["text"]})
    issues = validator.validate(plan)
    slice_issue = only(issues, code="structure")
    assert slice_issue.path == "Composition.section[12]"
    assert "matches none of the slices profile EHCP plan allows (A, B, C, D, E, F, G, H1, H2, I, J, K)" in slice_issue.message


# ------------------------------------------------------------------ invariants


def test_missing_section_on_an_issued_plan(validator, plan_bundle):
    plan = resource(plan_bundle, "plan-jamie-morgan")
    plan["status"] = "final"  # the shipped example is a draft; issued, it must hold every section
    plan["section"] = [s for s in plan["section"] if s["code"]["coding"][0]["code"] not in ("D", "J")]
    issue = only(validator.validate(plan), rule="ehcp-plan-1")
    assert issue.severity == "error" and issue.code == "invariant" and issue.path == "Composition"
    assert issue.message == ("A plan with status final must include every section A to K "
                             "(SEND Regulations 2014, reg 12); missing: D, J (rule ehcp-plan-1)")


def test_missing_section_is_allowed_on_a_draft(validator, plan_bundle):
    plan = resource(plan_bundle, "plan-jamie-morgan")
    plan["status"] = "preliminary"
    plan["section"] = plan["section"][:3]
    assert validator.validate(plan) == []


def test_empty_section_needs_a_reason(validator, plan_bundle):
    plan = resource(plan_bundle, "plan-jamie-morgan")
    del plan["section"][9]["text"]
    del plan["section"][9]["entry"]
    issue = only(validator.validate(plan), rule="ehcp-plan-2")
    assert issue.path == "Composition.section[9]"


@pytest.mark.parametrize("wording", ["Regular speech therapy", "Access to a speech and language therapist",
                                     "Speech therapy as required", "Support as needed"])
def test_unquantified_provision(validator, plan_bundle, wording):
    provision = resource(plan_bundle, "provision-salt")
    provision["activity"][1]["detail"]["scheduledString"] = wording
    issue = only(validator.validate(provision), rule="ehcp-prov-3")
    assert issue.path == "CarePlan.activity[1].detail"
    assert issue.message.startswith(f'Provision "{wording}" is not quantified: wording such as "access to", "regular"')
    assert "needs a numeric frequency" in issue.message


def test_provision_without_a_period_is_not_quantified(validator, plan_bundle):
    provision = resource(plan_bundle, "provision-salt")
    provision["activity"][0]["detail"]["scheduledString"] = "Speech therapy sessions with a specialist"
    issue = only(validator.validate(provision), rule="ehcp-prov-3")
    assert "say how often with a number and a period" in issue.message


@pytest.mark.parametrize("wording", ["2 x 30 minutes per week", "Once a fortnight", "Regular sessions: 3 a week",
                                     "15 hours weekly", "1 review every 6 months", "twice termly"])
def test_quantified_provision_passes(validator, plan_bundle, wording):
    provision = resource(plan_bundle, "provision-salt")
    provision["activity"][1]["detail"]["scheduledString"] = wording
    assert validator.validate(provision) == []


def test_timing_without_frequency(validator, plan_bundle):
    provision = resource(plan_bundle, "provision-outreach")
    provision["activity"][0]["detail"]["scheduledTiming"] = {"repeat": {"boundsPeriod": {"start": "2025-04-01"}}}
    issue = only(validator.validate(provision), rule="ehcp-prov-2")
    assert issue.path == "CarePlan.activity[0].detail"


def test_provision_activity_without_outcome(validator, plan_bundle):
    provision = resource(plan_bundle, "provision-club")
    del provision["goal"]
    del provision["activity"][0]["detail"]["goal"]
    issue = only(validator.validate(provision), rule="ehcp-prov-1")
    assert issue.path == "CarePlan.activity[0]"
    assert "names the outcome(s) it serves" in issue.message


def test_child_needs_nhs_number_or_upn(validator, plan_bundle):
    child = resource(plan_bundle, "jamie-morgan")
    child["identifier"] = [{"system": "https://example.org/local-id", "value": "42"}]
    issue = only(validator.validate(child), rule="ehcp-child-1")
    assert "NHS number or a UPN" in issue.message


def test_task_code_selects_its_profile(validator):
    task = example("transfer-task")
    task["input"] = task["input"][:1]
    issues = validator.validate(task)
    assert only(issues, rule="ehcp-transfer-1").message == (
        "A transfer task is missing its inputs: move-date, notified-date (rule ehcp-transfer-1)")
    assert only(issues, code="required").path == "Task.input"
    review = example("parental-review-task")
    review["input"][0]["valueString"] = "not-a-hash"
    assert only(validator.validate(review), rule="ehcp-review-1").path == "Task"


def test_completed_review_needs_a_response(validator):
    review = example("parental-review-task")
    review["status"] = "completed"
    assert only(validator.validate(review), rule="ehcp-review-2").severity == "error"
    response_type = {"coding": [{"system": f"{CANONICAL_BASE}/CodeSystem/ehcp-task-input", "code": "parental-response"}]}
    disagree = {"coding": [{"system": f"{CANONICAL_BASE}/CodeSystem/parental-response", "code": "disagree"}]}
    review["output"] = [{"type": response_type, "valueCodeableConcept": disagree}]
    assert validator.validate(review) == []


# ------------------------------------------------------------------ identifiers as FHIRPath (property tests)


def nhs_check_digit(nine: str) -> int:
    """NHS number modulus 11 (weights 10..2); 10 means no valid number."""
    check = 11 - sum(int(d) * w for d, w in zip(nine, range(10, 1, -1), strict=True)) % 11
    return 0 if check == 11 else check


def child_with(validator, plan_bundle, system, value) -> list[Issue]:
    child = resource(plan_bundle, "jamie-morgan")
    child["identifier"] = [{"system": system, "value": value}]
    return [i for i in validator.validate(child) if i.rule in ("ehcp-child-2", "ehcp-child-3")]


@settings(max_examples=60, deadline=None)
@given(nine=st.text(alphabet="0123456789", min_size=9, max_size=9), last=st.integers(0, 9))
def test_nhs_number_rule_matches_modulus_11(validator, plan_bundle, nine, last):
    expected_valid = nhs_check_digit(nine) == last
    assert (child_with(validator, plan_bundle, NHS_SYSTEM, f"{nine}{last}") == []) == expected_valid


@settings(max_examples=60, deadline=None)
@given(body=st.text(alphabet="0123456789", min_size=11, max_size=11),
       tail=st.sampled_from("0123456789ABCDEFGHJKLMNPQRTUVWXYZ"),
       letter=st.sampled_from("ABCDEFGHJKLMNPQRTUVWXYZ"))
def test_upn_rule_matches_stdnum_check_letter(validator, plan_bundle, body, tail, letter):
    number = f"{letter}{body}{tail}"
    expected_valid = stdnum_upn.calc_check_digit(number[1:]) == letter
    assert (child_with(validator, plan_bundle, UPN_SYSTEM, number) == []) == expected_valid


# ------------------------------------------------------------------ selection and API


def test_explicit_profile_and_unknown_profile(validator, plan_bundle):
    need = resource(plan_bundle, "need-slcn")
    issue = only(validator.validate(need, f"{SD}/ehcp-outcome"), code="structure")
    assert "Profile EHCP outcome is for Goal resources, not Condition" in issue.message
    with pytest.raises(UnknownProfileError):
        validator.validate(need, f"{SD}/no-such-profile")


def test_unknown_claimed_profile_is_a_warning_and_defaults_apply(validator, plan_bundle):
    child = resource(plan_bundle, "jamie-morgan")
    child["meta"] = {"profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"]}
    del child["birthDate"]
    issues = validator.validate(child)
    assert only(issues, code="not-supported").severity == "warning"
    assert only(issues, code="required").path == "Patient.birthDate"


def test_unprofiled_types_and_non_resources(validator):
    assert validator.validate({"resourceType": "Organization", "name": "Any"}) == []
    assert only(validator.validate({"name": "x"}), code="structure").severity == "error"
    assert {"Composition", "Condition", "Goal", "CarePlan", "Patient", "Task", "Consent"} <= validator.profiled_types()


def test_issue_becomes_an_operation_outcome_issue():
    issue = Issue("error", "required", "Patient.birthDate", "Patient.birthDate is required")
    assert issue.as_outcome_issue() == {"severity": "error", "code": "required",
                                        "diagnostics": "Patient.birthDate is required", "expression": ["Patient.birthDate"]}


@pytest.mark.parametrize("broken", ["category.where(", "category..code", "category.noSuchFunction()", "category.where()"])
def test_a_rule_that_does_not_compile_fails_at_load(tmp_path: Path, broken):
    profiles = tmp_path / "profiles"
    shutil.copytree(DEFAULT_PROFILES_DIR, profiles, ignore=shutil.ignore_patterns("examples", "SearchParameter"))
    path = profiles / "StructureDefinition" / "ehcp-need.json"
    sd = json.loads(path.read_text(encoding="utf-8"))
    sd["differential"]["element"][0]["constraint"][0]["expression"] = broken
    path.write_text(json.dumps(sd), encoding="utf-8")
    with pytest.raises(ProfileLoadError, match="ehcp-need-1"):
        ProfileValidator.load(profiles)


def test_rules_are_data_a_new_profile_rule_applies_without_code(tmp_path: Path, plan_bundle):
    profiles = tmp_path / "profiles"
    shutil.copytree(DEFAULT_PROFILES_DIR, profiles, ignore=shutil.ignore_patterns("examples", "SearchParameter"))
    path = profiles / "StructureDefinition" / "ehcp-outcome.json"
    sd = json.loads(path.read_text(encoding="utf-8"))
    sd["differential"]["element"].append({"id": "Goal.note", "path": "Goal.note", "min": 1})
    path.write_text(json.dumps(sd), encoding="utf-8")
    issue = only(ProfileValidator.load(profiles).validate(resource(plan_bundle, "outcome-community")), code="required")
    assert issue.path == "Goal.note"


# ------------------------------------------------------------------ SEN2 placement and personal budget


def _plan_sections(plan_bundle: dict) -> tuple[dict, dict, dict]:
    plan = resource(plan_bundle, "plan-jamie-morgan")
    by_code = {s["code"]["coding"][0]["code"]: s for s in plan["section"]}
    return plan, by_code["I"], by_code["J"]


def test_a_placement_that_ends_before_it_starts_or_repeats_a_part_is_refused(validator, plan_bundle):
    plan, section_i, _ = _plan_sections(plan_bundle)
    parts = section_i["entry"][0]["extension"][0]["extension"]
    parts.append({"url": "end", "valueDate": "2025-09-01"})  # the placement starts on 3 September 2025
    only(validator.validate(plan), rule="ehcp-placement-2")
    parts.append({"url": "start", "valueDate": "2025-09-04"})
    assert {"ehcp-placement-2", "ehcp-placement-3"} <= {i.rule for i in validator.validate(plan)}


def test_a_placement_attendance_pattern_must_be_a_dfe_code(validator, plan_bundle):
    plan, section_i, _ = _plan_sections(plan_bundle)
    pattern = next(p for p in section_i["entry"][0]["extension"][0]["extension"] if p["url"] == "attendancePattern")
    pattern["valueCoding"]["code"] = "HALF"
    issue = only(validator.validate(plan), code="code-invalid")
    assert "sen2-attendance-pattern" in issue.message


def test_a_section_i_entry_names_an_establishment_or_a_dfe_setting(validator, plan_bundle):
    plan, section_i, _ = _plan_sections(plan_bundle)
    section_i["entry"].append({"display": "Tuition at home"})
    only(validator.validate(plan), rule="ehcp-placement-1")
    section_i["entry"][-1]["extension"] = [{"url": f"{SD}/ehcp-placement", "extension": [
        {"url": "setting", "valueCoding": {"system": f"{CANONICAL_BASE}/CodeSystem/sen2-setting", "code": "OLA"}}]}]
    assert validator.validate(plan) == []


def test_a_personal_budget_not_taken_up_is_not_paid_directly(validator, plan_bundle):
    plan, _, section_j = _plan_sections(plan_bundle)
    taken = next(p for p in section_j["extension"][0]["extension"] if p["url"] == "takenUp")
    taken["valueBoolean"] = False  # directPayments stays true
    only(validator.validate(plan), rule="ehcp-personal-budget-1")
