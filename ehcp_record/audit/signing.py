"""Ed25519 keys and signatures for audit checkpoints, issued plans and transfer bundles.

Ed25519 (RFC 8032) because it has one parameter set, deterministic signatures (no nonce to get
wrong) and small keys that fit in a FHIR Signature or a JWKS entry. Signatures travel as
base64url without padding (RFC 4648 §5), the form JWS uses (RFC 7515 §2), so they sit in JSON
and URLs unchanged.

Verification answers only True or False: a verifier that raises on a malformed signature can be
turned into a denial of service by whoever can write that signature into the database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ehcp_record.secret_files import create_once

__all__ = [
    "key_id",
    "load_or_create_private_key",
    "public_key_from_pem",
    "public_key_pem",
    "sign",
    "verify",
]

_KEY_DIR_MODE = 0o700
_SIGNATURE_BYTES = 64
# Unpadded or correctly padded base64url; anything else is refused, so one signature has one
# spelling (a lenient decoder would skip stray characters and accept many).
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """Return the Ed25519 key stored at `path`, creating it first when there is none.

    The key is written as unencrypted PKCS#8 PEM with mode 0600 to a temporary file in the same
    directory and then hard-linked into place, so no reader ever sees a half-written key and
    two processes starting at once end up sharing one key (the loser of the race reads the
    winner's file) instead of each signing with its own.
    """
    path = Path(path)
    if path.exists():
        return _load_private_key(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=_KEY_DIR_MODE)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    create_once(path, lambda: pem)
    return _load_private_key(path)




def _load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def _public(key: Ed25519PrivateKey | Ed25519PublicKey) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    if isinstance(key, Ed25519PublicKey):
        return key
    raise TypeError(f"expected an Ed25519 key, got {type(key).__name__}")


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public half as SubjectPublicKeyInfo PEM (RFC 8410), the form a trust list holds."""
    return (
        _public(key)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def public_key_from_pem(pem: str | bytes) -> Ed25519PublicKey:
    """Parse a SubjectPublicKeyInfo PEM; ValueError unless it is an Ed25519 public key."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"expected an Ed25519 public key, got {type(key).__name__}")
    return key


def key_id(public_key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """A short stable name for a key: the first 16 hex digits of SHA-256 of its 32 raw bytes.

    64 bits is ample to pick a key out of a trust list; it is a label, not a security boundary
    (the signature check is).
    """
    raw = _public(public_key).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, payload: bytes) -> str:
    """Sign `payload` and return the 64-byte signature as unpadded base64url."""
    return _b64url(key.sign(payload))


def verify(public_key: Ed25519PublicKey, payload: bytes, signature_b64: str) -> bool:
    """True only when `signature_b64` is a valid Ed25519 signature of `payload` by the key.

    Never raises: a wrong type, bad base64, wrong length or a private key where a public one
    belongs all answer False (a private key is accepted and its public half used).
    """
    try:
        signature = _decode_signature(signature_b64)
        if signature is None or not isinstance(payload, (bytes, bytearray)):
            return False
        _public(public_key).verify(signature, bytes(payload))
    except (InvalidSignature, TypeError, ValueError):
        return False
    return True


def _decode_signature(text: object) -> bytes | None:
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        return None
    unpadded = text.rstrip("=")
    if len(text) != len(unpadded) and len(text) % 4:
        return None  # padding present but wrong
    try:
        raw = base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) != _SIGNATURE_BYTES:
        return None
    # Non-canonical trailing bits would give a second spelling of the same signature.
    if _b64url(raw) != unpadded:
        return None
    return raw


def _b64url(raw: bytes) -> str:
    """Unpadded base64url of `raw`: the one spelling `sign` produces and `verify` accepts."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
