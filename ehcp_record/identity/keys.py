"""The authorization server's token-signing key (ES256, RFC 7518 §3.4) and its public JWKS.

ES256 rather than the Ed25519 used for audit signatures because every SMART client library
and JWT verifier accepts it. Created once in the data dir and shared by every worker: written
to a temporary file and hard-linked into place, so two processes starting together agree.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

ALGORITHM = "ES256"


def _create_once(path: Path, make: Callable[[], bytes]) -> None:
    """Write `make()` to `path` (mode 0600) unless it exists: a temporary file hard-linked
    into place, so of two processes starting together the first wins and both read it."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(make())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def load_or_create(path: Path) -> ec.EllipticCurvePrivateKey:
    _create_once(path, lambda: ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} does not hold an EC private key")
    return key


def private_jwk(key: ec.EllipticCurvePrivateKey) -> dict:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    jwk = ECKey.import_key(pem).as_dict(private=True)
    return {**jwk, "alg": ALGORITHM, "use": "sig", "kid": kid(key)}


def public_jwks(key: ec.EllipticCurvePrivateKey) -> dict:
    public = {k: v for k, v in private_jwk(key).items() if k != "d"}
    return {"keys": [public]}


def kid(key: ec.EllipticCurvePrivateKey) -> str:
    """RFC 7638 thumbprint: the same key always has the same id."""
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return ECKey.import_key(pem).thumbprint()


def secret_bytes(path: Path) -> bytes:
    """A random secret kept in the data dir (signs the sign-in session cookie)."""
    _create_once(path, lambda: os.urandom(32))
    return path.read_bytes()
