"""A sealed value as stored, and the digest the audit chain names it by.

Apart from store/crypto.py (which imports libmongocrypt) so that what reads versions for the
verifier in a process of its own (store/versions_apart.py) imports only bson for it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from bson.binary import Binary

ENCRYPTED_SUBTYPE = 6  # BSON binary subtype of a CSFLE ciphertext


def is_sealed(value: Any) -> bool:
    return isinstance(value, Binary) and value.subtype == ENCRYPTED_SUBTYPE


def stored_digest(value: Any) -> str | None:
    """SHA-256 (hex) of a sealed value exactly as stored: the payload of its BSON binary
    (subtype 6: algorithm byte, data key id, value type, IV, AES-256-CBC ciphertext, HMAC-SHA-512
    tag). None for a value stored clear."""
    return hashlib.sha256(value).hexdigest() if is_sealed(value) else None
