"""Keyed pseudonyms for the children in the extract.

A pseudonym is HMAC-SHA256 (RFC 2104; `cryptography`'s HMAC) of the record id under the
deployment's analytics key, kept in the data dir beside the other keys and never written to
the extract. Without the key a pseudonym cannot be reversed or recomputed from a known record
id, NHS number or UPN (the record id is the only input, and it is itself a random UUID).

The stored extract holds the deployment's own pseudonym. A released copy (release.py) first
gives each child a new pseudonym per table and per year, HMAC(key, table || year || own), so
rows cannot be linked across tables or years; then every recipient (an LA, a national
collector) gets its own of that, HMAC(key, recipient || release pseudonym), so two recipients
cannot join their copies on the child, and neither can join them to the record.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import hashes, hmac

from ehcp_record.identity import keys

#: 128 bits of the HMAC, hex: collisions are negligible for any number of children in England.
LENGTH = 32


class Pseudonymiser:
    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the analytics pseudonym key must be at least 32 bytes")
        self._key = key

    @classmethod
    def from_data_dir(cls, path: Path) -> "Pseudonymiser":
        """The key file is created once (mode 0600) like the session secret (identity/keys.py)."""
        return cls(keys.secret_bytes(path))

    def _mac(self, *parts: str) -> str:
        mac = hmac.HMAC(self._key, hashes.SHA256())
        mac.update("\x1f".join(parts).encode("utf-8"))
        return mac.finalize().hex()[:LENGTH]

    def own(self, record: str) -> str:
        """The deployment's pseudonym of a record (the key the stored extract uses)."""
        return self._mac("record", record)

    def for_release(self, own: str, table: str, year: int) -> str:
        """The child's pseudonym in one table-year of a release: unlinkable to any other."""
        return self._mac("release", table, str(year), own)

    def for_recipient(self, own: str, recipient: str) -> str:
        """The pseudonym a given recipient sees for the same child: differs per recipient."""
        return self._mac("recipient", recipient, own)
