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

from consent import redaction
from ehcp_record.audit import entries as audit
from ehcp_record.audit import chain as audit_chain
from ehcp_record.audit import signing
from ehcp_record.access.caller import Caller
from ehcp_record.errors import invalid, not_found
from ehcp_record.fhir.dates import instant
from ehcp_record.fhir.model import literal_references, ref_key
from ehcp_record.plan.gate import is_issued
from ehcp_record.plan.diff import diff_documents
from ehcp_record.access.scoped import RecordService
from ehcp_record.store.repository import AuditAppend, Version

MAX_DOCUMENT_RESOURCES = 2000
_SIGNATURE_TYPE = "urn:iso-astm:E1762-95:2013"
_DOCUMENT_NAMESPACE = uuid.UUID("6f1f3e55-2d0c-4b8e-9a53-2f0c5d6b9e11")
KEY_ID_SYSTEM = "http://ehcp-record.example.org/fhir/NamingSystem/signing-key"


@dataclass
class DocumentService:
    records: RecordService
    base_url: str

    def document(self, caller: Caller, composition_id: str, vid: str | None = None) -> bytes:
        """The document as the caller may see it; the stored signed bytes when nothing is hidden."""
        plan = self._plan_version(caller, composition_id, vid)
        decision = self.records.access.require(caller, "read", plan.record or "")
        stored = self.issued_bytes(plan) if is_issued(plan.resource) else None
        bundle = json.loads(stored) if stored is not None else self.render(plan)
        resources = [e["resource"] for e in bundle["entry"]]
        shown = redaction.redact_bundle_entries(resources, decision)
        if not shown or shown[0].get("resourceType") != "Composition":
            raise not_found(f"Composition/{composition_id}")
        self._audit(caller, plan, bundle, decision.consent_ids)
        if len(shown) == len(resources) and shown == resources:
            return stored if stored is not None else _encode(bundle)
        bundle.pop("signature", None)
        bundle["entry"] = [e for e in (_entry_for(self.base_url, r) for r in shown)]
        return _encode(bundle)

    def diff(self, caller: Caller, composition_id: str, from_vid: str | None, to_vid: str | None) -> dict:
        """`$diff?from=&to=`: both versions rendered and redacted exactly as `$document` would."""
        if not from_vid or not to_vid:
            raise invalid("$diff needs from and to version numbers, e.g. ?from=1&to=3", "required")
        before = json.loads(self.document(caller, composition_id, from_vid))
        after = json.loads(self.document(caller, composition_id, to_vid))
        return diff_documents(before, after, int(from_vid), int(to_vid))

    def _plan_version(self, caller: Caller, composition_id: str, vid: str | None) -> Version:
        self.records.access.require_scope(caller, "Composition", "r")
        if vid is None:
            version = self.records.repo.read("Composition", composition_id)
        elif vid.isdigit() and len(vid) < 10:
            version = self.records.repo.read_version("Composition", composition_id, int(vid))
        else:
            version = None
        if version is None or version.record is None:
            raise not_found(f"Composition/{composition_id}" + (f"/_history/{vid}" if vid else ""))
        self.records.access.confine_to_launch_patient(caller, "Composition", "r", version.record)
        return version

    def issued_bytes(self, plan: Version) -> bytes:
        """The signed document of an issued version: stored at issue, or rendered once now."""
        key = f"Composition/{plan.id}/{plan.vid}"
        stored = self.records.repo.stored_document(key)
        if stored is not None:
            return stored
        bundle = self.render(plan)
        bundle["signature"] = self._signature(bundle)
        data = _encode(bundle)
        return self.records.repo.store_document(key, plan.record or "", data, audit_chain.content_hash(bundle))

    def render(self, plan: Version) -> dict:
        """Composition first, then everything it references as it stood at that version."""
        included: dict[str, dict] = {f"Composition/{plan.id}": plan.resource}
        order: list[str] = [f"Composition/{plan.id}"]
        level = [plan.resource]
        while level and len(order) < MAX_DOCUMENT_RESOURCES:
            wanted = [r for resource in level for r in literal_references(resource) if ref_key(r) not in included]
            level = []
            for reference, target in self._as_of_many(list(dict.fromkeys(wanted)), plan):
                key = f"{target['resourceType']}/{target['id']}"
                if key not in included:
                    included[key] = target
                    order.append(key)
                    level.append(target)
        return {
            "resourceType": "Bundle", "id": f"{plan.id}-{plan.vid}",
            "meta": {"lastUpdated": instant(plan.updated)},
            "identifier": {"system": "urn:ietf:rfc:3986",
                           "value": f"urn:uuid:{uuid.uuid5(_DOCUMENT_NAMESPACE, f'{plan.id}/{plan.vid}')}"},
            "type": "document", "timestamp": instant(plan.updated),
            "entry": [_entry_for(self.base_url, included[k]) for k in order],
        }

    def _as_of_many(self, references: list[str], plan: Version) -> list[tuple[str, dict]]:
        """Each referenced resource as it stood when this plan version was written: one query
        for the current versions, and a history look-up only for those changed since."""
        current = self.records.repo.read_many([ref_key(r) for r in references if "/_history/" not in r])
        found = []
        for reference in references:
            version = self._version_for(reference, plan, current)
            if version is not None and version.record in (None, plan.record):
                found.append((reference, version.resource))
        return found

    def _version_for(self, reference: str, plan: Version, current: dict[str, Version]) -> Version | None:
        key = ref_key(reference)
        resource_type, _, resource_id = key.partition("/")
        pinned = reference.split("/_history/")
        if len(pinned) == 2 and pinned[1].isdigit():
            return self.records.repo.read_version(resource_type, resource_id, int(pinned[1]))
        latest = current.get(key)
        if latest is not None and latest.updated <= plan.updated:
            return latest
        return self.records.repo.version_at(resource_type, resource_id, plan.updated)

    def _signature(self, bundle: dict) -> dict:
        key = self.records.repo.signing_key
        raw = signing.sign(key, audit_chain.canonical_json(bundle))
        data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        return {
            "type": [{"system": _SIGNATURE_TYPE, "code": "1.2.840.10065.1.12.1.5", "display": "Verification Signature"}],
            "when": bundle["timestamp"],
            "who": {"identifier": {"system": KEY_ID_SYSTEM, "value": signing.key_id(key.public_key())}},
            "sigFormat": "application/octet-stream", "targetFormat": "application/fhir+json",
            "data": base64.b64encode(data).decode(),
        }

    def _audit(self, caller: Caller, plan: Version, bundle: dict, consent_ids: tuple[str, ...]) -> None:
        refs = [(f"{e['resource']['resourceType']}/{e['resource']['id']}/_history/{e['resource'].get('meta', {}).get('versionId', '')}", None)
                for e in bundle["entry"]]
        body = audit.body(caller, "export", "permit", self.records.clock(), "$document", refs, consent_ids)
        self.records.repo.append_audit([AuditAppend(audit.chain_of(plan.record), body)])


def verify_document(public_key, document: dict) -> bool:
    """Check a stored document's Ed25519 signature (over the Bundle without `signature`)."""
    signature = document.get("signature") or {}
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    raw = base64.b64decode(signature.get("data", ""))
    encoded = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return signing.verify(public_key, audit_chain.canonical_json(unsigned), encoded)


def _entry_for(base_url: str, resource: dict) -> dict:
    return {"fullUrl": f"{base_url}/{resource['resourceType']}/{resource['id']}", "resource": resource}


def _encode(bundle: dict) -> bytes:
    return json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode()
