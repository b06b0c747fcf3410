"""Verify audit chains against the database: `$verify-audit` and `ehcp-record audit verify`.

One record is checked as a whole, and the first fault is reported with the resource, the
version and what differs:

1. every stored history version is checked against what the chain recorded when it was
   written: a sealed one by its bytes as stored (the entry of the write names the SHA-256 of
   the exact ciphertext beside the content `sha256`, `sealing.name_stored`), with no key and no
   JSON; a clear one, or a sealed one no entry names by its bytes (written before entries did,
   or transferred in and sealed here again), is re-hashed from its content, opened with the
   record's key. An edited `res` is found even when the stored `hash` field was left alone;
2. each current document equals the newest history version of its resource: the same stored
   bytes (one sealed value is written to both), else its content is opened and compared;
3. every stored `$document` holds, for the version it renders, exactly that Composition (and
   only resource contents that are stored versions of the record);
4. the chain: entry by entry (hashes, sequence, signed checkpoints), every version named with
   its content hash (and, sealed, its stored bytes) by some entry, and the heads kept outside
   the database reached exactly (the high-water mark, the newest signed checkpoint of the
   anchor log, and a signed head the family kept and handed back). Entries cut from the tail
   after any of them are found.

Why naming the stored bytes is as strong as re-hashing the content: docs/encryption.md,
"Verifying sealed versions". The reading and hashing is the store's (`version_digests`,
`opened_digests`, `hashed_entries`; ehcp_record/store/verify_reader.py hashes a long chain in
worker processes and does not decode again a document whose bytes it hashed before); every
check here is made every time.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ehcp_record.audit import chain as audit_chain
from ehcp_record.audit.anchor import AnchorLog, NoAnchor
from ehcp_record.config import Settings
from ehcp_record.gc_pause import paused_gc
from ehcp_record.audit.signing import key_id, load_or_create_private_key, public_key_from_pem


#: Reads the chain beside the versions (`verify_record`); waits on the database, not the CPU.
_BESIDE = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ehcp-verify-read")


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

    def record_reading(self, record: str) -> tuple[Iterable[tuple], Iterable[tuple], Iterable]: ...

    def opened_digests(self, record: str, ids: list[str], current: bool = False) -> Iterable[tuple]: ...

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
    """The history versions found sound, each with its content sha256: recorded and named
    with its stored bytes by the chain, or re-hashed from its content."""

    hashes: dict[str, dict[int, str]] = field(default_factory=dict)  # "Type/id" -> vid -> sha256
    stored: dict[str, dict[int, str]] = field(default_factory=dict)  # "Type/id" -> vid -> sha256 of sealed bytes
    by_bytes: int = 0      # sealed, named by the chain with exactly the bytes stored
    rehashed: int = 0      # re-hashed from content (clear, or sealed but not named by its bytes)
    unopened: int = 0      # erased: neither named by its bytes nor openable; its recorded hash is in the chain
    unrecorded: list[tuple[str, str]] = field(default_factory=list)  # (ref, sha256) no entry names

    def add(self, resource_type: object, rid: object, vid: int, digest: str) -> None:
        self.found(f"{resource_type}/{rid}", vid, digest)

    def found(self, key: str, vid: int, digest: str) -> None:
        self.hashes.setdefault(key, {})[vid] = digest

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
    """Checks 1 to 4 of the module docstring, every one every time; the first fault found is
    the verdict's. The garbage collector is held off meanwhile (`paused_gc`): a long record
    is millions of small objects alive until the end, which each of its runs would walk."""
    with paused_gc():
        return _verify_record(repo, record, keys, held_head)


def _verify_record(repo: ChainSource, record: str, keys: dict[str, Ed25519PublicKey],
                   held_head: audit_chain.ChainHead | None) -> RecordVerdict:
    erasure = getattr(repo, "erasure", lambda _: None)(record)
    faults: list[_Fault] = []
    known = _known_heads(repo, record, keys, held_head, faults)
    # The chain is read, hashed and walked beside the versions: the database serves both at
    # once, and a long sealed record's versions, with the last part of its chain, are read by
    # a process of their own (the store's `record_reading`) while this one hashes the rest.
    # The walk collects what the entries name (`ChainNames`) and the versions are settled
    # against it afterwards, so it need not wait for them. The thread runs in this request's
    # context (its database deadline, `pymongo.timeout`).
    names = audit_chain.ChainNames()
    history_read, current_read, entries = repo.record_reading(record)
    walking = _BESIDE.submit(contextvars.copy_context().run, _walked_chain, entries, record, keys, known, names)
    try:
        history = list(history_read)
        current = list(current_read)
    finally:
        verdict = walking.result()
    refs = [_ref(t, rid, vid) for t, rid, vid, _, _, _ in history]
    stored = names.settle([(ref, row[4], row[5]) for ref, row in zip(refs, history) if row[5] is not None])
    unrecorded = {(ref, row[3]) for ref, row in zip(refs, history)
                  if row[5] is None and row[3] is not None and not names.records(ref, row[3])}
    if verdict.valid and unrecorded:
        verdict = audit_chain.unrecorded_verdict(verdict.entries, unrecorded)
    content_faults: list[_Fault] = []
    versions = _check_history(repo, record, history, refs, stored, erasure, content_faults)
    _check_current(repo, record, current, versions, erasure, content_faults)
    if not erasure:  # an erased record's documents cannot be opened
        _check_documents(repo.documents_of_record(record), versions, content_faults)
    faults = content_faults + faults
    head = latest_head(repo, record)
    if faults:
        first = faults[0]
        more = f" (and {len(faults) - 1} more)" if len(faults) > 1 else ""
        return RecordVerdict(False, verdict.entries, 0, first.reason + more, first.resource, first.differs, head,
                             len(faults) + (0 if verdict.valid and not versions.unrecorded else 1))
    if verdict.valid and versions.unrecorded:
        verdict = audit_chain.unrecorded_verdict(verdict.entries, versions.unrecorded)
    if not verdict.valid:
        return RecordVerdict(False, verdict.entries, verdict.first_invalid, verdict.reason,
                             f"AuditEvent/{record}-{verdict.first_invalid}" if verdict.first_invalid else None,
                             "audit chain", head, 1)
    if erasure:
        return RecordVerdict(True, verdict.entries, None, verdict.reason + _and_versions(versions) + (
            f"; the content was erased at {erasure.get('at')} and cannot be opened"), head=head, erasure=erasure)
    return RecordVerdict(True, verdict.entries, None, verdict.reason + _and_versions(versions), head=head)


def _walked_chain(entries: Iterable, record: str, keys: dict[str, Ed25519PublicKey], known: list,
                  names: audit_chain.ChainNames) -> audit_chain.ChainVerdict:
    """The chain walked as it is read, every entry's hash recomputed (the store's
    `hashed_entries`), what it names collected in `names`."""
    return audit_chain.verify_chain(entries, record, (), keys, known_heads=known, names=names)


def _known_heads(repo: ChainSource, record: str, keys: dict[str, Ed25519PublicKey],
                 held_head: audit_chain.ChainHead | None, faults: list[_Fault]) -> list:
    """The heads kept outside the database that the chain must reach exactly."""
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
    return known


def _and_versions(versions: _Versions) -> str:
    checked = versions.by_bytes + versions.rehashed + versions.unopened
    text = (f", {checked} versions checked: {versions.by_bytes} by their sealed bytes as stored, "
            f"{versions.rehashed} re-hashed from their content")
    if versions.unopened:
        text += f", {versions.unopened} by the recorded hash the chain holds (neither named by its bytes nor openable)"
    return text


def _ref(resource_type: object, rid: object, vid: object) -> str:
    return f"{resource_type}/{rid}/_history/{vid}"


def _rehash(resource: object) -> str | None:
    try:
        return audit_chain.content_hash(resource)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _opened(repo: ChainSource, record: str, ids: list[str], current: bool = False) -> dict[str, str | None]:
    """`_id` -> content sha256 (None: could not be opened) of the sealed documents `ids`."""
    if not ids:
        return {}
    found = {}
    for resource_type, rid, vid, digest, _, _ in repo.opened_digests(record, ids, current):
        found[f"{resource_type}/{rid}" if current else f"{resource_type}/{rid}/{vid}"] = digest
    return found


def _check_history(repo: ChainSource, record: str, history: list[tuple], refs: list[str],
                   stored: audit_chain.StoredVersions, erasure: dict | None, faults: list[_Fault]) -> _Versions:
    """Check 1. `history`: (type, rid, vid, sha256 re-hashed from clear content or None, recorded
    sha256, sha256 of the sealed bytes or None) per version, as the store's `version_digests`
    yields them. A sealed version the chain named with exactly its stored bytes is sound with
    its recorded sha256 (no key needed); one it did not is opened and re-hashed, as before
    entries named stored bytes (or, erased, can only have its recorded sha256 found)."""
    versions = _Versions()
    still = stored.waiting
    waiting = [f"{t}/{rid}/{vid}" for ref, (t, rid, vid, _, _, sealed) in zip(refs, history)
               if sealed is not None and ref in still] if still else []
    opened = {} if erasure else _opened(repo, record, waiting)
    by_stored = versions.stored
    for ref, (resource_type, rid, vid, digest, recorded, sealed) in zip(refs, history):
        if sealed is not None:
            key = f"{resource_type}/{rid}"
            by_stored.setdefault(key, {})[vid] = sealed
            if ref not in still:  # the common case, kept short: found by its stored bytes
                versions.by_bytes += 1
                versions.found(key, vid, recorded)
                continue
            named = stored.named.get(ref, set())
            if erasure:
                _erased_version(versions, faults, ref, (resource_type, rid, vid), recorded, sealed, named,
                                received=bool(erasure.get("received_by_transfer")))
                continue
            digest = opened.get(f"{resource_type}/{rid}/{vid}")
            if digest is None:
                faults.append(_Fault(ref, "content", (
                    f"history version {ref} was altered: its stored sealed content cannot be opened "
                    f"(its stored bytes hash to {sealed}{_named_bytes(named)})")))
                continue
        elif digest is None:
            faults.append(_Fault(ref, "content", f"history version {ref} is malformed (its content cannot be hashed)"))
            continue
        if digest != recorded:
            faults.append(_Fault(ref, "content", (
                f"history version {ref} was altered: its stored content hashes to {digest}, "
                f"not to its recorded sha256 {recorded}")))
        versions.rehashed += 1
        versions.add(resource_type, rid, vid, digest)
        if sealed is not None and digest not in {sha for sha, _ in stored.named.get(ref, ())}:
            versions.unrecorded.append((ref, digest))
    return versions


def _erased_version(versions: _Versions, faults: list[_Fault], ref: str, key: tuple, recorded: str, sealed: str,
                    named: set, received: bool) -> None:
    """An erased record's sealed version the chain does not name by its bytes as stored. Its
    key is gone, so it cannot be opened: when the chain names other bytes for it, they were
    changed (a fault); when it names none (an entry written before entries named stored
    bytes), only its recorded sha256 can be found in the chain. A record received by transfer
    is the exception: its versions from before the transfer are named by the sending
    deployment's sealed bytes, and this deployment sealed them again under its own key, so for
    them too only the recorded sha256 can be found (docs/encryption.md)."""
    versions.add(*key, recorded)
    if any(stored for _, stored in named) and not received:
        faults.append(_Fault(ref, "content", (
            f"history version {ref} was altered: its stored sealed bytes hash to {sealed}{_named_bytes(named)} "
            "(the record was erased, so they cannot be opened)")))
    elif recorded in {sha for sha, _ in named}:
        versions.unopened += 1
    else:
        versions.unrecorded.append((ref, recorded))


def _named_bytes(named: set) -> str:
    recorded = sorted(str(s) for _, s in named if s)
    return f"; the audit chain records {recorded[0]}" if recorded else ""


def _same_bytes(versions: _Versions, key: str, vid: int, sealed: str) -> str | None:
    """The content sha256 of history version `vid` of `key` when it was found sound and holds
    exactly the stored bytes `sealed`; else None."""
    if versions.stored.get(key, {}).get(vid) != sealed:
        return None
    return versions.hashes.get(key, {}).get(vid)


def _check_current(repo: ChainSource, record: str, current: list[tuple], versions: _Versions,
                   erasure: dict | None, faults: list[_Fault]) -> None:
    """Check 2: each current document equals its resource's newest history version. Sealed,
    the same stored bytes (one value is written to both); where they differ, the current one
    is opened and its content compared (an erased record's cannot be opened: a fault)."""
    differing = [f"{t}/{rid}" for t, rid, vid, _, _, sealed in current
                 if sealed is not None and _same_bytes(versions, f"{t}/{rid}", vid, sealed) is None]
    opened = {} if erasure else _opened(repo, record, differing, current=True)
    for resource_type, rid, vid, digest, recorded, sealed in current:
        key = f"{resource_type}/{rid}"
        label = f"{key}/_history/{vid}"
        newest = versions.newest(key)
        if sealed is not None:
            digest = _same_bytes(versions, key, vid, sealed)
            if digest is not None:
                pass  # the very bytes of that history version: its content sha256
            elif erasure:
                faults.append(_Fault(label, "content", (
                    f"the current document of {key} (version {vid}) differs from its newest history version: "
                    "its stored sealed bytes are others, and the record was erased, so they cannot be opened")))
                continue
            else:
                digest = opened.get(key)
                if digest is None:
                    faults.append(_Fault(label, "content", (
                        f"the current document of {key} (version {vid}) was altered: its stored sealed content "
                        f"cannot be opened (its stored bytes hash to {sealed}, not to those of its newest history "
                        "version)")))
                    continue
        if digest is None or digest != recorded:
            faults.append(_Fault(label, "content", (
                f"the current document of {key} (version {vid}) was altered: its stored content hashes to "
                f"{digest}, not to its recorded sha256 {recorded}")))
            continue
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
