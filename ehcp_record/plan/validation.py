"""Profile validation at the service boundary: every write, `$validate`, and the plan at issue.

The rules themselves are data (profiles/), applied by the one generic validator
(`profile_validator`); this module only turns its issues into refusals and outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ehcp_record.errors import FhirError, invalid
from ehcp_record.fhir.model import literal_references, ref_key
from ehcp_record.plan.golden_thread import plan_bundle, validate_plan
from ehcp_record.fhir.validator import Issue, ProfileValidator, UnknownProfileError, has_errors

_MAX_LISTED = 20


@dataclass
class ProfileChecks:
    validator: ProfileValidator

    def check(self, resource: dict) -> None:
        """Refuse (422) a resource that breaks its profile; warnings do not block."""
        issues = self.validator.validate({k: v for k, v in resource.items() if k != "_section"})
        if has_errors(issues):
            raise _refusal(422, issues, "the resource does not meet its profile")

    def outcome(self, resource: dict, profile: str | None = None) -> dict:
        """`$validate`: every issue (errors and warnings) without storing anything."""
        try:
            issues = self.validator.validate(resource, profile)
        except UnknownProfileError:
            raise invalid(f"profile '{profile}' is not known here", "not-supported") from None
        listed = [i.as_outcome_issue() for i in issues] or [
            {"severity": "information", "code": "informational", "diagnostics": "no problems found"}]
        return {"resourceType": "OperationOutcome", "issue": listed}

    def plan_issues(self, composition: dict, resources: Mapping[str, dict]) -> list[Issue]:
        """The golden thread over the plan, and every cited resource against its EHCP profile,
        whether or not it claimed one when written (a plan is issued as EHCP content only)."""
        issues = list(validate_plan(plan_bundle(composition, resources), self.validator))
        for resource in [composition, *resources.values()]:
            profile = self._ehcp_profile(resource.get("resourceType", ""))
            if profile:
                issues.extend(self.validator.validate(resource, profile))
        unique: dict[tuple[str, str], Issue] = {}
        for issue in issues:
            unique.setdefault((issue.path, issue.message), issue)
        return list(unique.values())

    def _ehcp_profile(self, resource_type: str) -> str | None:
        for profile in self.validator.profiles.values():
            if profile.type == resource_type and profile.is_default:
                return profile.url
        return None

    def check_plan(self, composition: dict, resources: Mapping[str, dict]) -> None:
        """The golden thread (need -> outcome -> provision) and every section, for issue."""
        issues = self.plan_issues(composition, resources)
        if has_errors(issues):
            raise _refusal(409, issues, "the plan cannot be issued as proposed", code="business-rule")


def _refusal(status: int, issues: list[Issue], lead: str, code: str | None = None) -> FhirError:
    errors = [i for i in issues if i.severity == "error"]
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    error = FhirError(status, code or first.code, f"{lead}: {first.message}{more}", [first.path] if first.path else [])
    error.extra_issues = [i.as_outcome_issue() for i in errors[1:_MAX_LISTED]]
    return error


def plan_resources(composition: dict, lookup) -> dict[str, dict]:
    """Everything a plan cites, transitively (needs, outcomes, provision, advice), by reference.

    `lookup("Type/id")` returns the resource as it will stand (pending writes first), or None.
    """
    found: dict[str, dict] = {}
    queue = _cited(composition)
    while queue and len(found) < 2000:
        reference = queue.pop(0)
        if reference in found:
            continue
        resource = lookup(reference)
        if resource is None or resource.get("resourceType") not in _PLAN_TYPES:
            continue
        found[reference] = resource
        queue.extend(_cited(resource))
    return found


_PLAN_TYPES = frozenset({"Patient", "Condition", "Goal", "CarePlan", "DocumentReference"})


def _cited(resource: dict) -> list[str]:
    return [ref_key(r) for r in literal_references(resource)]
