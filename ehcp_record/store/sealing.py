"""What of each stored document is sealed, what stays clear, and how search still finds it.

The one place that decides the shape at rest (docs/encryption.md), used by the repository, the
media store and transfer storage:

- versions (`current`, `history`): `res` sealed (random) under the record's data key (directory
  resources: the deployment key). Clear: `_id`, type, id, version, updated, record, section,
  custodian, hash, owner, Consent recipients, `shared` (on current documents: the recipients
  of the record's Consents, `Repository.share_within`), and the search index `idx` except as below.
- `idx`: dates, codes, status and references stay clear. Identifier tokens, and the normalised
  text of string parameters (name, family, given, address-postalcode), become keyed blind index
  tokens (HMAC-SHA256, `FieldCipher.blind`), domain-separated by parameter and use:
  every prefix of each normalised value in `idx.<code>` (FHIR's default starts-with, R4 search
  §3.1.1.5.3; indexed, so an equality lookup), every substring up to `NGRAM` characters in
  `idx.<code>:grams` (`:contains`; a longer value must hold all its `NGRAM`-character windows),
  and the text as written in `idx.<code>:exact` (`:exact`).
- `nhs_token` (Patients): the blind token of each NHS number (the same token identifier search
  uses), under a unique partial index: one record per NHS number, even when two writes race.
- audit entries: the body's `at`, `action`, `outcome`, `agent`, `resources`, `consent` and
  `checkpoint` stay clear (agent and time search, chain verification, anchoring); the rest
  (reason, source, details) is sealed into `body.sealed` as base64 text, *before* the entry is
  hashed, so the chain hashes exactly what is stored and still verifies once the key is gone.
  An erasure entry (`action` "erase") is written wholly clear: it must outlive the key.
- issued documents and media chunks: sealed bytes.

The chain also names each version's sealed bytes exactly as stored: the audit entry that
records a write lists, beside the clear content `sha256`, `stored`, the SHA-256 of the
ciphertext written as the version's `res` (`sealed_bytes.stored_digest`, `name_stored`). One sealed value is
written to both the current and the history document, so the verifier checks a version by
hashing the bytes it reads, with no key and no JSON (docs/encryption.md, "Verifying sealed
versions").
"""

from __future__ import annotations

import base64
from datetime import timezone
from typing import Any, Iterable

from bson.binary import Binary

from ehcp_record.errors import FhirError
from ehcp_record.fhir.identifiers import NHS_NUMBER_SYSTEM, nhs_numbers
from ehcp_record.store.crypto import DIRECTORY_KEY, FieldCipher, KeyDestroyed
from ehcp_record.store.sealed_bytes import is_sealed
from ehcp_record.store.versions import Version, VersionWrite

NGRAM = 8
#: idx fields of token parameters whose values are personal: identifier values (NHS number, UPN)
BLIND_TOKENS = frozenset({"identifier"})
CLEAR_BODY = ("at", "action", "outcome", "agent", "resources", "consent", "checkpoint")
ERASE_ACTION = "erase"
UNREADABLE = "sealed: not readable here (the record was erased, or the entry came with a transfer sealed by the sending deployment)"


def name_stored(body: dict, stored: dict[tuple[str, str], str]) -> dict:
    """`body` with every resource it names that this write sealed, (ref, sha256) -> the stored
    digest, also naming its stored bytes (`stored`). A new dict: the caller's is not changed."""
    resources = body.get("resources")
    if not stored or not isinstance(resources, list):
        return body
    named = []
    for item in resources:
        digest = stored.get((item.get("ref"), item.get("sha256"))) if isinstance(item, dict) else None
        named.append(dict(item, stored=digest) if digest else item)
    return dict(body, resources=named)


def key_name(record: str | None) -> str:
    """The data key of a record (its id, MongoDB keyAltNames), or the deployment key."""
    return record or DIRECTORY_KEY


def gone(what: str) -> FhirError:
    """410 Gone (R4 http §3.1.0.6.1): the record was erased by its custodian."""
    return FhirError(410, "deleted", f"{what} was erased: its record's key was destroyed and it can never be read again")


def _prefixes(values: Iterable[str]) -> set[str]:
    """Every prefix of every value: starts-with becomes an equality lookup (indexed)."""
    return {value[:end] for value in values for end in range(1, len(value) + 1)}


def _grams(values: Iterable[str]) -> set[str]:
    """Every substring of up to NGRAM characters: `:contains` (kept apart, not indexed, as the
    unanchored match in clear is not)."""
    return {value[start:start + size] for value in values
            for size in range(1, min(NGRAM, len(value)) + 1) for start in range(len(value) - size + 1)}


class Sealing:
    """Seals on the way in and opens on the way out; with no cipher, documents pass unchanged
    (the benchmark's clear baseline)."""

    def __init__(self, cipher: FieldCipher | None) -> None:
        self.cipher = cipher

    # --- versions ------------------------------------------------------------------------

    def envelope(self, write: VersionWrite) -> dict:
        """The stored document of one version (current and history share it)."""
        doc = {
            "_id": f"{write.type}/{write.id}", "type": write.type, "rid": write.id, "vid": write.vid,
            "updated": write.updated, "record": write.record, "section": write.section,
            "res": write.resource, "idx": write.index, "hash": write.hash, "custodian": write.custodian,
        }
        doc.update(write.extra)
        if write.type == "Patient":
            doc["nhs_token"] = self.nhs_tokens(write.resource)
        if self.cipher is not None:
            try:
                doc["res"] = self.cipher.seal(key_name(write.record), write.resource)
            except KeyDestroyed:
                raise gone(f"Patient/{write.record}") from None
            doc["idx"] = self.blind_index(write.index)
        return doc

    def version(self, doc: dict) -> Version:
        if doc.get("erased"):
            raise gone(f"{doc['type']}/{doc['rid']}")
        updated = doc["updated"]
        if updated.tzinfo is None:
            updated = updated.replace(tzinfo=timezone.utc)
        if doc.get("deleted"):  # a delete marker holds nothing to open
            return Version(doc["type"], doc["rid"], doc["vid"], updated, {}, None, None, "", doc.get("owner"),
                           doc.get("owner_actor"), deleted=True)
        resource = self.open(doc["res"], f"{doc['type']}/{doc['rid']}")
        return Version(doc["type"], doc["rid"], doc["vid"], updated, resource, doc.get("record"),
                       doc.get("section"), doc.get("hash", ""), doc.get("owner"), doc.get("owner_actor"))

    def open(self, value: Any, what: str) -> Any:
        if not is_sealed(value):
            return value
        if self.cipher is None:
            raise RuntimeError("sealed content found but this repository has no key")
        try:
            return self.cipher.open(value)
        except KeyDestroyed:
            raise gone(what) from None

    def bytes_in(self, record: str | None, data: bytes) -> Any:
        if self.cipher is None:
            return data
        try:
            return self.cipher.seal(key_name(record), bytes(data))
        except KeyDestroyed:
            raise gone(f"Patient/{record}") from None

    def bytes_out(self, value: Any, what: str) -> bytes:
        return bytes(self.open(value, what))

    # --- search index --------------------------------------------------------------------

    def blind_index(self, index: dict[str, list]) -> dict[str, list]:
        assert self.cipher is not None
        out: dict[str, list] = {}
        for name, values in index.items():
            if name.endswith(":exact"):
                out[name] = [self._token("x", name, v) for v in values]
            elif f"{name}:exact" in index:
                out[name] = self._distinct(self._token("p", name, p) for p in _prefixes(values))
                out[f"{name}:grams"] = self._distinct(self._token("c", name, g) for g in _grams(values))
            elif name in BLIND_TOKENS:
                out[name] = [self._token("t", name, v) for v in values]
            else:
                out[name] = values
        return out

    def nhs_tokens(self, patient: dict) -> list[Binary] | None:
        """What the unique index on `nhs_token` holds for a Patient (None: it has no NHS number,
        and is not in that index). With no cipher (the clear baseline) the `system|value` bytes."""
        keys = [f"{NHS_NUMBER_SYSTEM}|{value}" for value in nhs_numbers(patient)]
        if not keys:
            return None
        if self.cipher is None:
            return [Binary(key.encode("utf-8")) for key in keys]
        return self._distinct(self.token_values("idx.identifier", keys))

    @staticmethod
    def _distinct(tokens: Iterable[Binary]) -> list[Binary]:
        return sorted(set(tokens))

    def _token(self, use: str, name: str, value: str) -> Binary:
        assert self.cipher is not None
        return self.cipher.blind(f"{use}:{name}", value)

    def is_blind(self, field: str, kind: str) -> bool:
        name = field.removeprefix("idx.")
        return self.cipher is not None and field.startswith("idx.") and (
            kind == "string" or (kind == "token" and name in BLIND_TOKENS))

    def token_values(self, field: str, values: Iterable[str]) -> list[Binary]:
        return [self._token("t", field.removeprefix("idx."), v) for v in values]

    def string_clause(self, field: str, mode: str, values: list[str]) -> dict:
        """A string criterion over blind tokens: equality lookups, never a pattern."""
        name = field.removeprefix("idx.")
        if mode == "exact":
            return {field: {"$in": [self._token("x", name, v) for v in values]}}
        if mode != "contains":
            return {field: {"$in": [self._token("p", name, v) for v in values]}}
        return {"$or": [self._contains(f"{field}:grams", name, v) for v in values]}

    def _contains(self, field: str, name: str, value: str) -> dict:
        if len(value) <= NGRAM:
            return {field: self._token("c", name, value)}
        windows = {value[i:i + NGRAM] for i in range(len(value) - NGRAM + 1)}
        return {field: {"$all": [self._token("c", name, w) for w in sorted(windows)]}}

    # --- audit bodies --------------------------------------------------------------------

    def body_in(self, chain: str, body: dict) -> dict:
        """The body as stored (and hashed): clear fields, the rest sealed as base64 text."""
        if self.cipher is None or body.get("action") == ERASE_ACTION:
            return body
        clear = {k: body[k] for k in CLEAR_BODY if k in body}
        rest = {k: v for k, v in body.items() if k not in CLEAR_BODY}
        if not rest:
            return clear
        try:
            sealed = self.cipher.seal(key_name(None if chain == "ehcp-directory" else chain), rest)
        except KeyDestroyed:  # an erased record's chain goes on (who looked since): deployment key
            sealed = self.cipher.seal(key_name(None), rest)
        return dict(clear, sealed=base64.b64encode(bytes(sealed)).decode("ascii"))

    def entry_out(self, entry: dict) -> dict:
        """A stored entry with its body whole again (or, once erased, its clear part)."""
        body = entry.get("body")
        if not isinstance(body, dict) or not isinstance(body.get("sealed"), str) or self.cipher is None:
            return entry
        clear = {k: v for k, v in body.items() if k != "sealed"}
        try:
            rest = self.cipher.open(Binary(base64.b64decode(body["sealed"]), 6))
        except KeyDestroyed:
            return dict(entry, body=dict(clear, sealed=UNREADABLE))
        return dict(entry, body={**rest, **clear})
