"""Transfer to a local authority served by another deployment (reg 15, across deployments).

The sender builds one signed transfer Bundle: every version of every resource in the record,
the audit chain (ending at a signed checkpoint), the stored issued documents, media bytes and
the custody state. It is POSTed to the receiver's `/fhir/$receive-transfer` with retries and an
idempotency key (the transfer Task id). The request carries no bearer token: the sending
deployment is authenticated by its Ed25519 signature over the exact body bytes, checked against
the receiver's trust list, which is the only thing a deployment-to-deployment call can rely on.
The receiver verifies signature and integrity (every version's hash in the sender's chain, the
chain and its checkpoints) before storing anything, imports in one transaction, and answers a
signed acknowledgement; the same acknowledgement answers a replay. Only on a valid
acknowledgement does the sender mark the record transferred out.

A delivery that fails is tried again later with the same bytes unless the record has changed
since they were built; then a new bundle is built under the same transfer id, so the changes
travel. A receiver that already holds an earlier bundle of that transfer (its acknowledgement
was lost) answers 409 with that earlier acknowledgement inside; the sender accepts it only for
a bundle it did send, and then knows exactly which later changes stayed behind.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

import requests
from urllib3.util.retry import Retry

from ehcp_record.audit import chain as audit_chain

from ehcp_record.audit import signing
from ehcp_record.config import Settings
from ehcp_record.errors import FhirError, invalid
from ehcp_record.fhir import bundles
from ehcp_record.fhir.canonical import naming_system
from ehcp_record.fhir.dates import instant
from ehcp_record.net.outbound import Fence, OutboundRefused
from ehcp_record.store.versions import Version

SIGNATURE_HEADER = "X-EHCP-Signature"
KEY_HEADER = "X-EHCP-Key-Id"
AUDIT_URL = "urn:ehcp:audit-chain"
STATE_URL = "urn:ehcp:record-state"
DOCUMENT_PREFIX = "urn:ehcp:document:"
MEDIA_PREFIX = "urn:ehcp:media:"
CONNECT_TIMEOUT, READ_TIMEOUT = 5, 120
TRANSFER_ID_SYSTEM = naming_system("transfer")


@dataclass(frozen=True)
class Peer:
    organization: str
    base_url: str
    public_key: Any

    @property
    def key_id(self) -> str:
        return signing.key_id(self.public_key)


def peers(settings: Settings) -> list[Peer]:
    return [Peer(p["organization"], p["base_url"].rstrip("/"), signing.public_key_from_pem(p["public_key"]))
            for p in settings.trust_list if p.get("organization") and p.get("base_url") and p.get("public_key")]


def peer_for_organization(settings: Settings, organization: str) -> Peer | None:
    return next((p for p in peers(settings) if p.organization == organization), None)


def peer_for_key(settings: Settings, kid: str) -> Peer | None:
    return next((p for p in peers(settings) if p.key_id == kid), None)


# --- sender -------------------------------------------------------------------------------

def build_bundle(repo: Any, record: str, transfer_id: str, now: datetime,
                 versions: list[Version], chain: list[dict]) -> dict:
    """Everything the record is: its versions, then the chain, state, documents and files.

    `versions` must be read before `chain`: every version is committed with its audit entry,
    so a chain read afterwards names each of them (the receiver checks exactly that). `repo`
    is the custodian's transfer storage handed out by the scoped store (`TransferStorage`).
    """
    entries = [bundles.entry(v.resource, url=_version_url(v)) for v in versions]
    entries += [_directory_entry(v) for v in _directory_versions(repo, record)]
    entries.append(_json_binary(AUDIT_URL, chain))
    state = {k: v for k, v in (repo.record_state(record) or {}).items() if k in ("birth_date", "parents", "lacks_capacity", "representative")}
    entries.append(_json_binary(STATE_URL, state))
    for key, data in repo.documents_of_record(record).items():
        entries.append(bundles.entry(_binary("application/fhir+json", data), url=DOCUMENT_PREFIX + key))
    for version in versions:
        info = repo.media_info(version.type, version.id, version.vid) if version.type == "Binary" else None
        if info:
            content = _binary(version.resource.get("contentType", "application/octet-stream"), repo.read_media(info["file"]))
            entries.append(bundles.entry(content, url=MEDIA_PREFIX + _version_url(version)))
    return bundles.collection(entries, transfer_id, instant(now), {"system": TRANSFER_ID_SYSTEM, "value": transfer_id})


def _version_url(version: Version) -> str:
    """A version's relative URL, "Type/id/_history/n": how the receiver matches it to the chain."""
    return bundles.full_url("", version.type, version.id, version.vid)


def version_refs(body: bytes) -> set[str]:
    """The versions ("Type/id/_history/n") a built bundle carries."""
    return {e["fullUrl"] for e in json.loads(body)["entry"]
            if "/_history/" in e.get("fullUrl", "") and (e.get("search") or {}).get("mode") != "include"}


def _directory_versions(repo: Any, record: str) -> list[Version]:
    """Organisations and practitioners the record cites, so its documents resolve on arrival."""
    from ehcp_record.fhir.model import literal_references, ref_key

    cited = {ref_key(r) for v in repo.current_of_record(record) for r in literal_references(v.resource)}
    found = repo.read_many(sorted(cited))
    return [v for v in found.values() if v.record is None]


def _directory_entry(version: Version) -> dict:
    return bundles.entry(version.resource, mode="include", url=_version_url(version))


def _json_binary(url: str, value: object) -> dict:
    return bundles.entry(_binary("application/json", audit_chain.canonical_json(value)), url=url)


def _binary(content_type: str, data: bytes) -> dict:
    return {"resourceType": "Binary", "contentType": content_type, "data": base64.b64encode(data).decode()}


def encode_bundle(bundle: dict) -> bytes:
    return json.dumps(bundle, separators=(",", ":"), ensure_ascii=False).encode()


def signed_headers(body: bytes, key, transfer_id: str) -> dict[str, str]:
    """The detached Ed25519 signature over the exact body bytes, and who signed."""
    return {SIGNATURE_HEADER: signing.sign(key, body), KEY_HEADER: signing.key_id(key.public_key()),
            "Content-Type": "application/fhir+json", "Idempotency-Key": transfer_id}


def delivery_session(retries: int = 4, backoff: float = 0.5, fence: Fence | None = None) -> requests.Session:
    """Retries with exponential backoff (0.5, 1, 2, 4 s) on connection errors, timeouts and
    500/502/503/504 (honouring Retry-After); POST is safe to retry because the receiver is
    idempotent on the transfer id. A 4xx is the receiver's considered refusal: not retried.
    Through the outbound fence (`fence`, default: public addresses only): a peer whose address
    is internal and not allowed in EHCP_OUTBOUND_ALLOW is refused, never retried."""
    retry = Retry(total=retries, connect=retries, read=retries, status=retries, backoff_factor=backoff,
                  status_forcelist=(500, 502, 503, 504), allowed_methods=frozenset({"POST"}), raise_on_status=False)
    return (fence or Fence()).session(retry)


class DeliveryFailed(Exception):
    """The receiver could not be reached or refused the transfer; nothing changes here."""


def deliver(peer: Peer, body: bytes, headers: dict[str, str], session: requests.Session | None = None,
            earlier: Iterable[str] = ()) -> dict:
    """POST the signed Bundle; return the receiver's acknowledgement once its signature checks.

    The acknowledgement is of this body, or (409) of one of the `earlier` bundles (hashes) sent
    for the same transfer, which the receiver holds already.
    """
    session = session or delivery_session()
    try:
        response = session.post(f"{peer.base_url}/$receive-transfer", data=body, headers=headers,
                                timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
    except OutboundRefused as refused:  # an internal address not allowed in EHCP_OUTBOUND_ALLOW
        raise DeliveryFailed(f"{peer.organization} is not reachable from here: {refused}") from None
    except requests.RequestException as exc:
        raise DeliveryFailed(f"{peer.organization} could not be reached: {type(exc).__name__}") from None
    if response.status_code == 409:
        ack = _contained_ack(response)
        if ack is not None and acknowledged_hash(ack) in set(earlier) and verify_ack(peer.public_key, ack, acknowledged_hash(ack)):
            return ack
    if response.status_code not in (200, 201):
        raise DeliveryFailed(f"{peer.organization} answered {response.status_code}: {response.text[:200]}")
    try:
        ack = response.json()
    except ValueError:
        raise DeliveryFailed("the acknowledgement is not JSON") from None
    if not isinstance(ack, dict) or not verify_ack(peer.public_key, ack, hashlib.sha256(body).hexdigest()):
        raise DeliveryFailed("the acknowledgement's signature or content does not check")
    return ack


def _contained_ack(response: requests.Response) -> dict | None:
    try:
        outcome = response.json()
    except ValueError:
        return None
    contained = outcome.get("contained") if isinstance(outcome, dict) else None
    return next((c for c in contained or [] if isinstance(c, dict) and c.get("resourceType") == "Parameters"), None)


# --- acknowledgement ----------------------------------------------------------------------

def make_ack(key, transfer_id: str, bundle_sha256: str, receiver: str, at: datetime) -> dict:
    statement = {"transfer": transfer_id, "bundleSha256": bundle_sha256, "receiver": receiver, "receivedAt": instant(at)}
    signature = signing.sign(key, audit_chain.canonical_json(statement))
    return {"resourceType": "Parameters", "parameter": [
        {"name": name, "valueString": value} for name, value in statement.items()] + [
        {"name": "kid", "valueString": signing.key_id(key.public_key())}, {"name": "signature", "valueString": signature}]}


def ack_values(ack: dict) -> dict[str, str | None]:
    return {p.get("name"): p.get("valueString") for p in ack.get("parameter", []) if isinstance(p, dict)}


def acknowledged_hash(ack: dict) -> str | None:
    return ack_values(ack).get("bundleSha256")


def verify_ack(public_key, ack: dict, bundle_sha256: str | None) -> bool:
    values = ack_values(ack)
    statement = {k: values.get(k) for k in ("transfer", "bundleSha256", "receiver", "receivedAt")}
    if bundle_sha256 is None or statement["bundleSha256"] != bundle_sha256 or None in statement.values():
        return False
    return signing.verify(public_key, audit_chain.canonical_json(statement), values.get("signature") or "")


def already_received(ack: dict) -> dict:
    """The 409 a receiver answers to a different bundle under a transfer id it holds: the
    signed acknowledgement of what it holds travels inside, for the sender to check."""
    return {"resourceType": "OperationOutcome", "contained": [dict(ack, id="received")], "issue": [{
        "severity": "error", "code": "conflict",
        "diagnostics": "a different bundle of this transfer was already received; its acknowledgement is contained"}]}


# --- receiver checks ----------------------------------------------------------------------

def check_signature(settings: Settings, body: bytes, headers: dict[str, str]) -> Peer:
    """HTTP header names are case-insensitive (RFC 9110 §5.1)."""
    headers = {name.lower(): value for name, value in headers.items()}
    kid = headers.get(KEY_HEADER.lower(), "")
    peer = peer_for_key(settings, kid)
    if peer is None:
        raise FhirError(403, "security", "the sending deployment is not in this deployment's trust list")
    if not signing.verify(peer.public_key, body, headers.get(SIGNATURE_HEADER.lower(), "")):
        raise FhirError(403, "security", "the transfer's signature does not match its content")
    return peer


def parse_bundle(body: bytes) -> dict:
    try:
        bundle = json.loads(body)
    except ValueError:
        raise invalid("the transfer is not JSON", "structure") from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle" or not isinstance(bundle.get("entry"), list):
        raise invalid("the transfer must be a Bundle", "structure")
    if not isinstance(bundle.get("id"), str):
        raise invalid("the transfer Bundle has no id", "required")
    return bundle


def decode(entry: dict) -> bytes:
    try:
        return base64.b64decode(entry["resource"]["data"], validate=True)
    except (KeyError, TypeError, ValueError):
        raise invalid(f"{entry.get('fullUrl')} does not carry base64 data", "structure") from None
