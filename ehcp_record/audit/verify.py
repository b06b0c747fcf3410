"""Verify audit chains against the database: `$verify-audit` and `ehcp-record audit verify`.

One record is checked as a whole, and the first fault is reported with the resource, the
version and what differs:

1. every stored version (history and current) is re-hashed from its stored content: an edited
   `res` is found even when the stored `hash` field was left alone;
2. each current document equals the newest history version of its resource;
3. every stored `$document` holds, for the version it renders, exactly that Composition (and
   only resource contents that are stored versions of the record);
4. the chain: entry by entry (hashes, sequence, signed checkpoints), every version named with
   its recomputed hash by some entry, and the heads kept outside the database reached exactly
   (the high-water mark, the newest signed checkpoint of the anchor log, and a signed head the
   family kept and handed back). Entries cut from the tail after any of them are found.

The re-hashing of stored documents is the store's (`version_digests`, `hashed_entries`;
ehcp_record/store/verify_reader.py hashes a long record in worker processes and does not
decode again a document whose bytes it hashed before); every check here is made every time.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ehcp_record.audit import chain as audit_chain
from ehcp_record.audit.anchor import AnchorLog, NoAnchor
from ehcp_record.config import Settings
from ehcp_record.audit.signing import key_id, load_or_create_private_key, public_key_from_pem


def trusted_keys(settings: Settings) -> dict[str, Ed25519PublicKey]:
    """This deployment's checkpoint key plus the keys of deployments in the trust list
    (a transferred record's chain carries the sending deployment's checkpoints)."""
    own = load_or_create_private_key(settings.signing_key_path).public_key()
    keys = {key_id(own): own}
    for peer in settings.trust_list:
        if peer.get("public_key"):
            public = public_key_from_pem(peer["public_key"])
            keys[key_id(public)] = public
    return keys


class ChainSource(Protocol):
    """What verification reads: the store package's repository satisfies it."""

    anchor: AnchorLog

    def hashed_entries(self, chain: str) -> Iterable[dict | audit_chain.HashedEntry]: ...

    def version_digests(self, record: str, current: bool = False) -> Iterable[tuple]: ...

    def documents_of_record(self, record: str) -> dict[str, bytes]: ...

    def latest_checkpoint(self, record: str) -> dict | None: ...

    def has_record(self, record: str) -> bool: ...

    def chains(self) -> list[str]: ...


class HeadError(ValueError):
    """A head handed back for checking is not one this deployment (or a trusted one) signed."""


@dataclass(frozen=True)
class RecordVerdict:
    """What verifying one record found. `first_invalid` as in `chain.ChainVerdict` (0: the
    chain links up but a stored version or document is at fault); `resource` and `differs`
    say which stored thing and what about it; `head` is the newest signed head."""

    valid: bool
    entries: int
    first_invalid: int | None
    reason: str
    resource: str | None = None
    differs: str | None = None
    head: dict | None = None
    faults: int = 0
    erasure: dict | None = None  # who erased the record, when and why (crypto-shredded)


@dataclass
class _Fault:
    resource: str
    differs: str
    reason: str


@dataclass
class _Versions:
    hashes: dict[str, dict[int, str]] = field(default_factory=dict)  # "Type/id" -> vid -> sha256
    pairs: list[tuple[str, str]] = field(default_factory=list)

    def newest(self, key: str) -> tuple[int, str] | None:
        versions = self.hashes.get(key)
        if not versions:
            return None
        vid = max(versions)
        return vid, versions[vid]


def head_token(head: dict) -> str:
    """A signed head as one URL-safe string the family can keep and hand back."""
    return base64.urlsafe_b64encode(audit_chain.canonical_json(head)).decode().rstrip("=")


def parse_head_token(token: str, record: str, keys: dict[str, Ed25519PublicKey]) -> audit_chain.ChainHead:
    """The head a family kept, checked: it names this record and a trusted key signed it."""
    try:
        head = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise HeadError("the head given is not one returned by $access-log or $verify-audit") from None
    if not isinstance(head, dict) or not isinstance(head.get("seq"), int) or not isinstance(head.get("hash"), str):
        raise HeadError("the head given is not one returned by $access-log or $verify-audit")
    if head.get("record") != record:
        raise HeadError(f"the head given is for record {str(head.get('record'))[:64]!r}, not {record!r}")
    key = keys.get(str(head.get("kid")))
    if key is None or not audit_chain.verify_checkpoint(key, head):
        raise HeadError("the head given is not signed by this deployment or one it trusts")
    return audit_chain.ChainHead(head["seq"], head["hash"])


def latest_head(repo: ChainSource, record: str) -> dict | None:
    """The newest signed head: from the anchor log outside the database, else the chain."""
    anchored = repo.anchor.latest_head(record)
    stored = repo.latest_checkpoint(record)
    if anchored is None:
        return stored
    if stored is not None and stored.get("seq", -1) > anchored.get("seq", -1):
        return stored
    return anchored


def verify_record(repo: ChainSource, record: str, keys: dict[str, Ed25519PublicKey],
                  held_head: audit_chain.ChainHead | None = None) -> RecordVerdict:
    faults: list[_Fault] = []
    erasure = getattr(repo, "erasure", lambda _: None)(record)
    if erasure:
        # Crypto-shredded (docs/encryption.md): the content cannot be opened, so it cannot be
        # re-hashed; the chain still must hold every recorded version hash, and verifies as stored.
        versions = _Versions()
        versions.pairs = list(repo.version_hashes(record))  # type: ignore[attr-defined]
    else:
        versions = _check_history(repo.version_digests(record), faults)
        _check_current(repo.version_digests(record, current=True), versions, faults)
        _check_documents(repo.documents_of_record(record), versions, faults)
    anchor = getattr(repo, "anchor", None) or NoAnchor()
    known = [(anchor.high_water(record), "the sequence high-water mark kept outside the database")]
    anchored = anchor.latest_head(record)
    if anchored is not None:
        kid = keys.get(str(anchored.get("kid")))
        if kid is not None and audit_chain.verify_checkpoint(kid, anchored):
            known.append((audit_chain.ChainHead(anchored["seq"], anchored["hash"]),
                          "the signed checkpoint in the anchor log"))
        else:
            faults.append(_Fault("anchor log", "signature",
                                 f"the newest head in the anchor log for {record} is not validly signed"))
    if held_head is not None:
        known.append((held_head, "the signed head you kept"))
    verdict = audit_chain.verify_chain(repo.hashed_entries(record), record, versions.pairs, keys, known_heads=known)
    head = latest_head(repo, record)
    if faults:
        first = faults[0]
        more = f" (and {len(faults) - 1} more)" if len(faults) > 1 else ""
        return RecordVerdict(False, verdict.entries, 0, first.reason + more, first.resource, first.differs, head,
                             len(faults) + (0 if verdict.valid else 1))
    if not verdict.valid:
        return RecordVerdict(False, verdict.entries, verdict.first_invalid, verdict.reason,
                             f"AuditEvent/{record}-{verdict.first_invalid}" if verdict.first_invalid else None,
                             "audit chain", head, 1)
    if erasure:
        return RecordVerdict(True, verdict.entries, None, verdict.reason + (
            f", {len(versions.pairs)} version hashes found in the chain; the content was erased at "
            f"{erasure.get('at')} and cannot be re-hashed"), head=head, erasure=erasure)
    return RecordVerdict(True, verdict.entries, None, verdict.reason + _and_versions(versions), head=head)


def _and_versions(versions: _Versions) -> str:
    return f", {len(versions.pairs)} versions re-hashed"


def _ref(resource_type: object, rid: object, vid: object) -> str:
    return f"{resource_type}/{rid}/_history/{vid}"


def _rehash(resource: object) -> str | None:
    try:
        return audit_chain.content_hash(resource)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _check_history(digests: Iterable[tuple], faults: list[_Fault]) -> _Versions:
    """`digests`: (type, rid, vid, sha256 recomputed from the stored content or None, the
    recorded sha256) per history version, as the store's `version_digests` yields them."""
    versions = _Versions()
    for resource_type, rid, vid, digest, recorded in digests:
        ref = _ref(resource_type, rid, vid)
        if digest is None:
            faults.append(_Fault(ref, "content", f"history version {ref} is malformed (its content cannot be hashed)"))
            continue
        if digest != recorded:
            faults.append(_Fault(ref, "content", (
                f"history version {ref} was altered: its stored content hashes to {digest}, "
                f"not to its recorded sha256 {recorded}")))
        versions.pairs.append((ref, digest))
        versions.hashes.setdefault(f"{resource_type}/{rid}", {})[vid] = digest
    return versions


def _check_current(digests: Iterable[tuple], versions: _Versions, faults: list[_Fault]) -> None:
    for resource_type, rid, vid, digest, recorded in digests:
        key = f"{resource_type}/{rid}"
        label = f"{key}/_history/{vid}"
        if digest is None or digest != recorded:
            faults.append(_Fault(label, "content", (
                f"the current document of {key} (version {vid}) was altered: its stored content hashes to "
                f"{digest}, not to its recorded sha256 {recorded}")))
            continue
        newest = versions.newest(key)
        if newest is None:
            faults.append(_Fault(label, "history", f"the current document of {key} (version {vid}) has no history version"))
        elif newest[0] != vid:
            faults.append(_Fault(label, "version", (
                f"the current document of {key} is version {vid}, but its newest history version is {newest[0]}")))
        elif newest[1] != digest:
            faults.append(_Fault(label, "content", (
                f"the current document of {key} (version {vid}) differs from its newest history version "
                f"(sha256 {digest} against {newest[1]})")))


def _check_documents(documents: dict[str, bytes], versions: _Versions, faults: list[_Fault]) -> None:
    for key in sorted(documents):
        resource_type, _, rest = key.partition("/")
        rid, _, vid_text = rest.partition("/")
        label = f"$document of {resource_type}/{rid}/_history/{vid_text}"
        try:
            bundle = json.loads(documents[key])
            entries = [e["resource"] for e in bundle["entry"]]
            plan = entries[0]
        except (ValueError, KeyError, TypeError, IndexError):
            faults.append(_Fault(label, "document", f"the stored {label} cannot be read as a FHIR document"))
            continue
        expected = versions.hashes.get(f"{resource_type}/{rid}", {}).get(int(vid_text) if vid_text.isdigit() else -1)
        if expected is None:
            faults.append(_Fault(label, "version", f"the stored {label} renders a version that is not stored"))
            continue
        if plan.get("resourceType") != resource_type or plan.get("id") != rid or _rehash(plan) != expected:
            faults.append(_Fault(label, "content", (
                f"the stored {label} does not match that version: its Composition hashes to {_rehash(plan)}, "
                f"the stored version to {expected}")))
            continue
        for resource in entries[1:]:
            if not isinstance(resource, dict):
                continue
            known = versions.hashes.get(f"{resource.get('resourceType')}/{resource.get('id')}")
            if known is not None and _rehash(resource) not in known.values():
                faults.append(_Fault(label, "content", (
                    f"the stored {label} holds {resource.get('resourceType')}/{resource.get('id')} content that is "
                    "no stored version of it")))
                break


def verify_all(repo: ChainSource, settings: Settings, record: str | None = None) -> tuple[bool, list[str]]:
    """Every chain (or one); raises LookupError for a record that is not stored here."""
    keys = trusted_keys(settings)
    if record and not repo.has_record(record):
        raise LookupError(f"no record {record!r} is stored here")
    chains = [record] if record else repo.chains()
    ok, lines = True, []
    for chain in chains:
        verdict = verify_record(repo, chain, keys)
        ok = ok and verdict.valid
        status = "ok" if verdict.valid else f"INVALID at entry {verdict.first_invalid}: {verdict.reason}"
        lines.append(f"{chain}: {verdict.entries} entries, {status}")
    if not chains:
        lines.append("no audit chains yet")
    return ok, lines
