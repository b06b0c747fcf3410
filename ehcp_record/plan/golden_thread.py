"""The golden thread of a whole plan: need -> outcome -> provision.

The SEND Code of Practice (9.61 to 9.69) asks that every outcome answers an identified need
and that provision is specified, quantified and linked to the outcomes it serves. Those rules
are FHIRPath invariants of the Bundle profile `ehcp-plan-document`
(`profiles/StructureDefinition/ehcp-plan-document.json`); this module only gathers a plan into
such a Bundle and runs the generic validator with that profile. Each entry is also checked
against its own profile (e.g. ehcp-provision: who, what, how often), so one call covers
"provision specified and quantified" too.

Rules (keys as they appear in Issue.rule):
- ehcp-thread-0  exactly one Composition;
- ehcp-thread-1  every provision (CarePlan) serves >= 1 outcome (Goal) of the plan;
- ehcp-thread-2  every outcome addresses >= 1 need (Condition) in section B, C or D;
- ehcp-thread-3  every need is met by some provision through an outcome;
- ehcp-thread-4/5 (warnings) each need, provision and outcome is listed in its section;
- ehcp-thread-6  everything sections B to H2 list is in the plan;
- ehcp-thread-7  every outcome that provision serves is listed in section E;
- ehcp-thread-8  every need that an outcome addresses is listed in section B, C or D.
7 and 8 are errors, so `$propose` and `$issue` refuse an incoherent plan; what stays a warning
(5) is an outcome no provision serves that section E does not list.
"""

from __future__ import annotations

from collections.abc import Mapping

from ehcp_record.fhir import bundles
from ehcp_record.fhir.canonical import structure_definition
from ehcp_record.fhir.validator import Issue, ProfileValidator, default_validator

PLAN_DOCUMENT_PROFILE = structure_definition("ehcp-plan-document")


def plan_bundle(composition: dict, resources: Mapping[str, dict]) -> dict:
    """A `collection` Bundle of the plan: the Composition first, then each referenced resource
    with its reference (as the Composition and its resources write it, e.g. `Condition/n1` or
    `urn:uuid:...`) as fullUrl, so that FHIRPath resolve() finds it."""
    composition_ref = f"Composition/{composition['id']}" if composition.get("id") else "Composition"
    entries = [bundles.entry(composition, url=composition_ref)]
    entries += [bundles.entry(resource, url=reference) for reference, resource in resources.items()
                if resource is not composition]
    return bundles.collection(entries)


def validate_plan(bundle: dict, validator: ProfileValidator | None = None) -> list[Issue]:
    """Validate a whole plan held in a Bundle (transaction, document or collection) against
    ehcp-plan-document: the golden-thread rules plus every entry's own profile.

    Applies whatever the Composition's status; the all-sections rule (ehcp-plan-1) applies
    only when the status is not `preliminary`, so check with the status the plan will have.
    """
    return (validator or default_validator()).validate(bundle, PLAN_DOCUMENT_PROFILE)


def check_golden_thread(composition: dict, resources: Mapping[str, dict],
                        validator: ProfileValidator | None = None) -> list[Issue]:
    """Validate a plan given as its Composition plus the resources it references, keyed by
    the reference used to reach them (`{"Condition/n1": {...}, "Goal/o1": {...}}`)."""
    return validate_plan(plan_bundle(composition, resources), validator)
