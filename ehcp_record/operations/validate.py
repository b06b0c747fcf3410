"""`POST /fhir/{type}/$validate`: every problem with a resource, without storing anything.

Structure (FHIR R4, ehcp_record/fhir/structure.py), identifiers (NHS number, UPN, LA number) and the EHCP profile; for a
plan (Composition), the golden thread over the needs, outcomes and provision it cites as stored
now, so an LA can see what a draft still lacks before proposing it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ehcp_record.errors import FhirError, outcome_of
from ehcp_record.fhir.model import parse_resource
from ehcp_record.fhir.parameters import read_parameters
from ehcp_record.fhir.signatures import signature
from ehcp_record.plan.gate import is_plan
from ehcp_record.fhir.identifiers import identifier_problems
from ehcp_record.access.scoped import ScopedStore
from ehcp_record.plan.validation import ProfileChecks, plan_resources


@dataclass
class ValidateOperation:
    checks: ProfileChecks

    def validate(self, store: ScopedStore, resource_type: str, body: object) -> dict:
        store.access.require_scope(resource_type, "r")
        resource, profile = _unwrap(body)
        try:
            parse_resource(resource, resource_type)
        except FhirError as error:
            return outcome_of(error)
        outcome = self.checks.outcome(resource, profile)
        issues = [i for i in outcome["issue"] if i["severity"] != "information"]
        issues += [{"severity": "error", "code": "value", "diagnostics": reason, "expression": [path]}
                   for path, reason in identifier_problems(resource)]
        if resource_type == "Composition" and is_plan(resource):
            issues += self._plan_issues(store, resource)
        if not issues:
            issues = [{"severity": "information", "code": "informational", "diagnostics": "no problems found"}]
        return {"resourceType": "OperationOutcome", "issue": _unique(issues)}

    def _plan_issues(self, store: ScopedStore, composition: dict) -> list[dict]:
        """What the plan would lack if issued now: missing sections, broken golden thread
        (references resolve only to what the caller may see)."""
        def lookup(reference: str) -> dict | None:
            resource_type, _, resource_id = reference.partition("/")
            return store.shown_lookup(resource_type, resource_id)

        as_issued = dict(composition, status="final")
        return [i.as_outcome_issue() for i in self.checks.plan_issues(as_issued, plan_resources(as_issued, lookup))]


#: $validate's inputs (R4 Resource-validate): the resource, and optionally the profile to check.


def _unwrap(body: object) -> tuple[object, str | None]:
    """A bare resource, or Parameters with `resource` (and optional `profile`) per the spec.

    The Parameters' own structure is not checked by the R4 structure check here: that would refuse an
    invalid inner resource with a 400, where $validate must answer with its problems.
    """
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        inputs = signature("validate")  # a bare resource is also accepted (R4 $validate)
        values = read_parameters(body, inputs.types, required=inputs.required, check_structure=False)
        return values["resource"], values.get("profile")
    return body, None


def _unique(issues: list[dict]) -> list[dict]:
    seen: set[tuple] = set()
    out = []
    for issue in issues:
        key = (issue.get("diagnostics"), tuple(issue.get("expression", [])))
        if key not in seen:
            seen.add(key)
            out.append(issue)
    return out
