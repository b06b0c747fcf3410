"""`$document`: the plan as a FHIR document Bundle, and the signed copy kept for each issued version.

FHIR R4 documents (documents.html): a Bundle of type `document`, the Composition first, then
every resource it references (here: transitively, within the record and the directory), each
exactly once, with fullUrls that make every reference resolvable inside the Bundle. Rendering
is deterministic (ids, timestamps and order come from the stored versions), and the document
of each issued version is stored once, signed with Ed25519, and served from store, so the
document issued on a date is reproduced byte for byte later.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Callable

from ehcp_record.audit import chain as audit_chain
from ehcp_record.audit import signing
from ehcp_record.access.scoped import ScopedStore
from ehcp_record.errors import invalid, not_found
from ehcp_record.fhir import bundles
from ehcp_record.fhir.dates import instant
from ehcp_record.fhir.model import literal_references, ref_key
from ehcp_record.plan.gate import is_issued
from ehcp_record.plan.diff import diff_documents
from ehcp_record.plan.proposed import ProposedPlan
from ehcp_record.plan.provenance import KEY_ID_SYSTEM
from ehcp_record.store.versions import Version

MAX_DOCUMENT_RESOURCES = 2000
_SIGNATURE_TYPE = "urn:iso-astm:E1762-95:2013"
_DOCUMENT_NAMESPACE = uuid.UUID("6f1f3e55-2d0c-4b8e-9a53-2f0c5d6b9e11")


@dataclass
class DocumentService:
    base_url: str

    def document(self, store: ScopedStore, composition_id: str, vid: str | None = None) -> bytes:
        """The document as the caller may see it; the stored signed bytes when nothing is hidden."""
        plan, decision = store.resource("Composition", composition_id, "read", vid)
        if plan.record is None:
            raise not_found(f"Composition/{composition_id}" + (f"/_history/{vid}" if vid else ""))
        stored = self.issued_bytes(store, plan) if is_issued(plan.resource) else None
        bundle = json.loads(stored) if stored is not None else self.render(store, plan)
        resources = [e["resource"] for e in bundle["entry"]]
        shown = _exported(store, resources, decision, plan.record, "$document")
        if len(shown) == len(resources) and shown == resources:
            return stored if stored is not None else _encode(bundle)
        bundle.pop("signature", None)
        bundle["entry"] = [_entry_for(self.base_url, r) for r in shown]
        return _encode(bundle)

    def diff(self, store: ScopedStore, composition_id: str, from_vid: str | None, to_vid: str | None,
             proposal: Callable[[str], ProposedPlan] | None = None) -> dict:
        """`$diff?from=&to=`: both versions rendered and redacted exactly as `$document` would.
        `to=Task/<id>` compares with what that proposal would make of the plan (`proposal`
        renders it as `Task/{id}/$proposal` does); `from` may then be left out: the version
        the proposal was made against."""
        if to_vid and to_vid.startswith("Task/") and proposal is not None:
            if from_vid is not None and not from_vid.isdigit():
                raise invalid("from is a version number, e.g. ?from=1&to=Task/<review id>", "value")
            proposed = proposal(to_vid.removeprefix("Task/"))  # reads the plan it was made against
            if proposed.plan_id != composition_id:
                store.resource("Composition", composition_id, "read")  # a plan the caller cannot see is missing
                raise invalid(f"{to_vid} is a proposal for another plan, not Composition/{composition_id}", "value")
            since = int(from_vid) if from_vid else proposed.against
            before = json.loads(self.document(store, composition_id, str(since)))
            return diff_documents(before, proposed.document, since, to_vid)
        if not from_vid or not to_vid or not from_vid.isdigit() or not to_vid.isdigit():
            raise invalid("$diff needs from and to version numbers (?from=1&to=3), or a proposal to compare "
                          "with (?to=Task/<review id>)", "required")
        before = json.loads(self.document(store, composition_id, from_vid))
        after = json.loads(self.document(store, composition_id, to_vid))
        return diff_documents(before, after, int(from_vid), int(to_vid))

    def issued_bytes(self, store: ScopedStore, plan: Version) -> bytes:
        """The signed document of an issued version: stored at issue, or rendered once now."""
        stored = store.stored_document(plan)
        if stored is not None:
            return stored
        bundle = self.render(store, plan)
        bundle["signature"] = self._signature(store.signing_key, bundle)
        return store.keep_document(plan, _encode(bundle))

    def render(self, store: ScopedStore, plan: Version, proposed: dict[str, dict] | None = None) -> dict:
        """Composition first, then everything it references as it stood at that version.

        With `proposed` ("Type/id" -> resource, plan.proposed), the document as a proposal would
        make it: those resources stand in for the stored ones (the Composition too), and the
        rest is as it stood at `plan`. Such a document is for reading, never signed or kept."""
        proposed = proposed or {}
        key = f"Composition/{plan.id}"
        included: dict[str, dict] = {key: proposed.get(key, plan.resource)}
        order: list[str] = [key]
        level = [included[key]]
        while level and len(order) < MAX_DOCUMENT_RESOURCES:
            wanted = list(dict.fromkeys(r for resource in level for r in literal_references(resource)
                                        if ref_key(r) not in included))
            level = []
            found = [(r, proposed[ref_key(r)]) for r in wanted if ref_key(r) in proposed]
            found += store.as_of([r for r in wanted if ref_key(r) not in proposed], plan)
            for reference, target in found:
                key = f"{target['resourceType']}/{target['id']}"
                if key not in included:
                    included[key] = target
                    order.append(key)
                    level.append(target)
        name = f"{plan.id}/{plan.vid}" + ("/proposed" if proposed else "")
        identifier = {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid5(_DOCUMENT_NAMESPACE, name)}"}
        return bundles.document(f"{plan.id}-{plan.vid}" + ("-proposed" if proposed else ""), identifier,
                                instant(plan.updated), [_entry_for(self.base_url, included[k]) for k in order],
                                instant(plan.updated))

    def shown(self, store: ScopedStore, bundle: dict, decision, record: str, purpose: str) -> dict:
        """A rendered (unsigned) document as the caller may see it, its export audited."""
        shown = _exported(store, [e["resource"] for e in bundle["entry"]], decision, record, purpose)
        bundle["entry"] = [_entry_for(self.base_url, r) for r in shown]
        return bundle

    def _signature(self, key, bundle: dict) -> dict:
        raw = signing.sign(key, audit_chain.canonical_json(bundle))
        data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        return {
            "type": [{"system": _SIGNATURE_TYPE, "code": "1.2.840.10065.1.12.1.5", "display": "Verification Signature"}],
            "when": bundle["timestamp"],
            "who": {"identifier": {"system": KEY_ID_SYSTEM, "value": signing.key_id(key.public_key())}},
            "sigFormat": "application/octet-stream", "targetFormat": "application/fhir+json",
            "data": base64.b64encode(data).decode(),
        }


def _exported(store: ScopedStore, resources: list[dict], decision, record: str, purpose: str) -> list[dict]:
    """What of a document's resources the caller may see, that export audited once (each
    resource named at its version when it has one; a proposed resource has none yet)."""
    shown = store.view_all(resources, decision)
    refs = [(_versioned_ref(r), None) for r in shown]
    store.audit_record(record, "export", purpose, refs, decision.consent_ids)
    return shown


def _versioned_ref(resource: dict) -> str:
    ref = f"{resource['resourceType']}/{resource['id']}"
    vid = (resource.get("meta") or {}).get("versionId")
    return f"{ref}/_history/{vid}" if vid else ref


def verify_document(public_key, document: dict) -> bool:
    """Check a stored document's Ed25519 signature (over the Bundle without `signature`)."""
    signature = document.get("signature") or {}
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    raw = base64.b64decode(signature.get("data", ""))
    encoded = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return signing.verify(public_key, audit_chain.canonical_json(unsigned), encoded)


def _entry_for(base_url: str, resource: dict) -> dict:
    """fullUrl is the resource's absolute URL here, so every reference resolves inside the document."""
    return bundles.entry(resource, base_url)


def _encode(bundle: dict) -> bytes:
    return json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode()
