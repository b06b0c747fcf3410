"""Ed25519 keys and signatures: key files, PEM, key ids, sign/verify round trip and tampering."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from ehcp_record.audit import signing

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key()
PAYLOAD = b'{"hash":"abc","record":"r1","seq":4}'


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --- key files -------------------------------------------------------------------------------


def test_creates_a_private_key_file_readable_only_by_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit-ed25519.pem"
    key = signing.load_or_create_private_key(path)
    assert isinstance(key, Ed25519PrivateKey)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_loads_the_same_key_on_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / "audit.pem"
    first = signing.load_or_create_private_key(path)
    second = signing.load_or_create_private_key(path)
    assert _raw(first.public_key()) == _raw(second.public_key())


def test_losing_a_creation_race_uses_the_winners_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process wrote the key between our existence check and our link: keep theirs."""
    path = tmp_path / "audit.pem"
    winner = signing.load_or_create_private_key(path)
    monkeypatch.setattr(Path, "exists", lambda self: False)
    loser = signing.load_or_create_private_key(path)
    assert _raw(loser.public_key()) == _raw(winner.public_key())
    assert [p.name for p in tmp_path.iterdir()] == ["audit.pem"]


def test_refuses_a_key_file_of_another_algorithm(tmp_path: Path) -> None:
    path = tmp_path / "audit.pem"
    other = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ValueError, match="not an Ed25519"):
        signing.load_or_create_private_key(path)


# --- PEM and key ids -------------------------------------------------------------------------


def test_public_key_pem_round_trip() -> None:
    pem = signing.public_key_pem(KEY)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert signing.public_key_pem(PUBLIC) == pem
    assert _raw(signing.public_key_from_pem(pem)) == _raw(PUBLIC)
    assert _raw(signing.public_key_from_pem(pem.encode())) == _raw(PUBLIC)


@pytest.mark.parametrize(
    "pem",
    [
        "not a key",
        "",
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    ],
)
def test_public_key_from_pem_refuses_anything_but_ed25519(pem: str | bytes) -> None:
    with pytest.raises(ValueError):
        signing.public_key_from_pem(pem)


def test_key_id_is_sha256_of_the_raw_public_key() -> None:
    kid = signing.key_id(PUBLIC)
    assert kid == hashlib.sha256(_raw(PUBLIC)).hexdigest()[:16]
    assert len(kid) == 16 and int(kid, 16) >= 0
    assert signing.key_id(KEY) == kid
    assert signing.key_id(Ed25519PrivateKey.generate().public_key()) != kid


# --- sign / verify ---------------------------------------------------------------------------


def test_sign_verify_round_trip() -> None:
    signature = signing.sign(KEY, PAYLOAD)
    assert "=" not in signature and "+" not in signature and "/" not in signature
    assert len(base64.urlsafe_b64decode(signature + "==")) == 64
    assert signing.verify(PUBLIC, PAYLOAD, signature)
    assert signing.verify(KEY, PAYLOAD, signature)  # the public half of a private key
    assert signing.verify(PUBLIC, PAYLOAD, signature + "==")  # padded spelling accepted


def test_a_changed_payload_fails() -> None:
    signature = signing.sign(KEY, PAYLOAD)
    assert not signing.verify(PUBLIC, PAYLOAD.replace(b"4", b"5"), signature)
    assert not signing.verify(PUBLIC, PAYLOAD + b" ", signature)
    assert not signing.verify(PUBLIC, b"", signature)


def test_another_key_fails() -> None:
    signature = signing.sign(KEY, PAYLOAD)
    assert not signing.verify(Ed25519PrivateKey.generate().public_key(), PAYLOAD, signature)


def test_every_single_character_change_of_the_signature_fails() -> None:
    signature = signing.sign(KEY, PAYLOAD)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for index, char in enumerate(signature):
        replacement = alphabet[(alphabet.index(char) + 1) % 64]
        forged = signature[:index] + replacement + signature[index + 1 :]
        assert not signing.verify(PUBLIC, PAYLOAD, forged), index


def test_non_canonical_base64_spellings_are_refused() -> None:
    """86 base64 characters carry 516 bits; the 4 spare bits must be zero, else one signature
    would have 16 spellings."""
    signature = signing.sign(KEY, PAYLOAD)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    assert last % 16 == 0  # the low 4 bits of the last character are spare
    assert not signing.verify(PUBLIC, PAYLOAD, signature[:-1] + alphabet[last + 1])
    assert not signing.verify(PUBLIC, PAYLOAD, signature + "=")  # wrong padding
    assert not signing.verify(PUBLIC, PAYLOAD, signature[:40] + "!" + signature[41:])
    std = base64.b64encode(base64.urlsafe_b64decode(signature + "==")).decode()
    if std.rstrip("=") != signature:  # standard alphabet ('+', '/') is not base64url
        assert not signing.verify(PUBLIC, PAYLOAD, std)


@pytest.mark.parametrize(
    ("public_key", "payload", "signature"),
    [
        (PUBLIC, PAYLOAD, None),
        (PUBLIC, PAYLOAD, 12345),
        (PUBLIC, PAYLOAD, ""),
        (PUBLIC, PAYLOAD, "AAAA"),
        (PUBLIC, PAYLOAD, "A" * 86),
        (PUBLIC, PAYLOAD, "A" * 200),
        (PUBLIC, "text, not bytes", "A" * 86),
        (PUBLIC, None, "A" * 86),
        ("not a key", PAYLOAD, "A" * 86),
        (None, PAYLOAD, "A" * 86),
    ],
)
def test_verify_answers_false_instead_of_raising(
    public_key: object, payload: object, signature: object
) -> None:
    assert signing.verify(public_key, payload, signature) is False  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(signature=st.text(max_size=100), payload=st.binary(max_size=64))
def test_verify_never_raises_on_arbitrary_signatures(signature: str, payload: bytes) -> None:
    assert signing.verify(PUBLIC, payload, signature) is False


@settings(max_examples=30, deadline=None)
@given(payload=st.binary(max_size=256))
def test_round_trip_for_any_payload(payload: bytes) -> None:
    signature = signing.sign(KEY, payload)
    assert signing.verify(PUBLIC, payload, signature)
    assert not signing.verify(PUBLIC, payload + b"\x00", signature)
