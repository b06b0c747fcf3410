"""A proposal's content as the resources it would put in the plan, for the family to read.

`$propose` keeps the proposed content as the transaction Bundle the LA sent (pinned by its
hash, applied by `$issue`). Before answering, a parent needs to read it as a plan, section by
section: each entry's resource stands in for the stored one it replaces (a PUT to "Type/id")
or joins the plan (a POST). A POSTed resource has no server id until it is issued, so it is
shown under the id of its `urn:uuid:` fullUrl and every reference to that fullUrl is rewritten
to "Type/<that id>" (FHIR R4 http.html#trules: references to fullUrls inside a transaction).
Pure: no store, no caller.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

_UUID = "urn:uuid:"


@dataclass(frozen=True)
class ProposedPlan:
    """What a review Task proposes: for `plan_id`, made against its version `against`, the
    document (a Bundle) as the proposal would make it, as the caller may see it."""

    plan_id: str
    against: int
    document: dict


def proposed_resources(proposal: dict) -> dict[str, dict]:
    """"Type/id" -> the resource the proposal would store there."""
    renamed: dict[str, str] = {}
    placed: list[tuple[str, dict]] = []
    for entry in proposal.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(request, dict):
            continue
        kind = resource.get("resourceType")
        if request.get("method") == "PUT":
            url = str(request.get("url", "")).split("?")[0]
            resource_id = url.partition("/")[2] or resource.get("id")
        else:
            full_url = str(entry.get("fullUrl") or "")
            resource_id = full_url.removeprefix(_UUID) if full_url.startswith(_UUID) else resource.get("id")
            if full_url:
                renamed[full_url] = f"{kind}/{resource_id}"
        if kind and resource_id:
            placed.append((f"{kind}/{resource_id}", dict(copy.deepcopy(resource), id=resource_id)))
    return {key: _rewritten(resource, renamed) for key, resource in placed}


def _rewritten(value: Any, renamed: dict[str, str]) -> Any:
    """`value` with every `reference` to a POSTed entry's fullUrl pointing at its shown id."""
    if isinstance(value, dict):
        out = {k: _rewritten(v, renamed) for k, v in value.items()}
        if isinstance(out.get("reference"), str) and out["reference"] in renamed:
            out["reference"] = renamed[out["reference"]]
        return out
    if isinstance(value, list):
        return [_rewritten(v, renamed) for v in value]
    return value
