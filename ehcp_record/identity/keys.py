"""The authorization server's token-signing key (ES256, RFC 7518 §3.4) and its public JWKS.

ES256 rather than the Ed25519 used for audit signatures because every SMART client library
and JWT verifier accepts it. Created once in the data dir and shared by every worker: written
to a temporary file and hard-linked into place, so two processes starting together agree.
"""

from __future__ import annotations

import os
from pathlib import Path


from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from ehcp_record.secret_files import create_once

ALGORITHM = "ES256"


def load_or_create(path: Path) -> ec.EllipticCurvePrivateKey:
    create_once(path, lambda: ec.generate_private_key(ec.SECP256R1()).private_bytes(
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
    create_once(path, lambda: os.urandom(32))
    return path.read_bytes()
