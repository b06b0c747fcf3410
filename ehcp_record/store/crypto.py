"""Client-side field-level encryption: MongoDB's own explicit encryption (`ClientEncryption`).

Not a hand-made AES layer: every seal and open is libmongocrypt (pymongocrypt) through
pymongo's `ClientEncryption`, AEAD_AES_256_CBC_HMAC_SHA_512 (MongoDB CSFLE, "Random" for content).

Keys (docs/encryption.md):
- one **data key per child's record**, `keyAltNames=[record id]`, created on the record's first
  write. It seals everything of that record: resource content (`res` of current and history),
  issued documents, GridFS media chunks and the sealed part of its audit entries. Deleting it
  (`destroy`) is crypto-shredding: every copy of the record, backups included, becomes noise.
- a **deployment key** for the directory (Organizations, Practitioners, Subscriptions: no child's
  record; `DIRECTORY_KEY`), never destroyed.
- a **search key** (`SEARCH_KEY`) sealing the secret of the keyed blind index (HMAC-SHA256, stdlib
  `hmac`), so identifier and name search work on tokens, never on clear text.
- the **master key** (customer master key) wraps every data key: a local key file in the data
  dir for the embedded default, or a KMS (aws, azure, gcp, kmip) from configuration.
  `rewrap` re-wraps every data key under a new master key (`rewrap_many_data_key`).

Only this package imports it (import-linter: pymongo only in ehcp_record/store).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import bson
from bson.binary import STANDARD, Binary
from bson.codec_options import CodecOptions
from pymongo import MongoClient
from pymongo.encryption import Algorithm, ClientEncryption
from pymongo.errors import DuplicateKeyError, EncryptionError
from ehcp_record.secret_files import create_once
from ehcp_record.store.memo import Memo

RANDOM = Algorithm.AEAD_AES_256_CBC_HMAC_SHA_512_Random
#: Key names no record can take: a FHIR id has no ':' (R4 datatypes "id").
DIRECTORY_KEY = "ehcp:directory"
SEARCH_KEY = "ehcp:search"
LOCAL_KEY_BYTES = 96   # a local master key is 96 bytes (libmongocrypt)
BLIND_BYTES = 16       # blind index tokens: HMAC-SHA256 truncated to 128 bits
#: How long libmongocrypt keeps a decrypted data key (its default is 60 s). Longer means a
#: record's first read after a quiet spell needs no key-vault round trip; erasure does not rely
#: on it (erased documents are refused before anything is opened) and rotation leaves the data
#: keys themselves unchanged.
KEY_CACHE_MS = 30 * 60 * 1000
#: Opened documents remembered per process, keyed by the SHA-256 of their ciphertext (so a
#: changed ciphertext is opened again); the Python side of libmongocrypt costs ~0.3 ms per value.
OPENED_LIMIT = 20_000
_CODEC = CodecOptions(uuid_representation=STANDARD, tz_aware=True)


class KeyDestroyed(Exception):
    """The data key that sealed this value is gone (the record was erased)."""


@dataclass(frozen=True)
class MasterKeys:
    """What `ClientEncryption` needs: every KMS provider it may unwrap with, and which provider
    (and master key) wraps new data keys."""

    providers: dict[str, Any]
    provider: str
    master_key: dict | None = None
    version: object = None  # changes when the local key files change (a rotation happened)


# ----------------------------------------------------------------------- local master keys

def local_master_keys(directory: Path, create: bool = True) -> MasterKeys:
    """Every local master key file (`local-0001.key`, ...); the newest wraps new data keys.

    The embedded default only (config refuses it in production): the key sits beside the data,
    so it protects a copied database or backup, not a copied data dir."""
    files = _key_files(directory)
    if not files:
        if not create:
            raise FileNotFoundError(f"no local master key in {directory}")
        create_once(directory / "local-0001.key", _new_local_key)  # workers starting together agree on one
        files = _key_files(directory)
    providers = {_provider(f): {"key": f.read_bytes()} for f in files}
    return MasterKeys(providers, _provider(files[-1]), None, tuple(f.name for f in files))


def _key_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("local-*.key")) if directory.is_dir() else []


def _provider(path: Path) -> str:
    """`local-0002.key` -> the named KMS provider `local:k0002` (libmongocrypt names: [A-Za-z0-9_])."""
    return f"local:k{path.stem.split('-')[1]}"


def new_local_master_key(directory: Path) -> Path:
    """Write the next local master key file (`ehcp-record keys rotate`)."""
    while True:
        existing = _key_files(directory)
        number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 1
        path = directory / f"local-{number:04d}.key"
        if create_once(path, _new_local_key):
            return path




def retire_local_keys(directory: Path, keep: set[str]) -> list[str]:
    """Delete local master key files no data key is wrapped under any more."""
    retired = []
    for path in sorted(directory.glob("local-*.key")):
        if _provider(path) not in keep:
            path.unlink()
            retired.append(path.name)
    return retired


# ----------------------------------------------------------------------- the cipher

class FieldCipher:
    """Seal and open values with per-record data keys; blind tokens for search."""

    def __init__(self, client: MongoClient, database: str, master_keys: Callable[[], MasterKeys],
                 may_create: Callable[[str], bool] = lambda name: True) -> None:
        """`may_create(name)`: whether a data key of that name may be made (never again for an
        erased record: what would be sealed under it is refused instead, KeyDestroyed)."""
        self._source = master_keys
        self._may_create = may_create
        self._lock = threading.Lock()
        self._keys = master_keys()
        self.namespace = f"{database}.keyvault"
        self.vault = client[database]["keyvault"]
        self._client = client
        self.vault.create_index("keyAltNames", unique=True,
                                partialFilterExpression={"keyAltNames": {"$exists": True}})
        self._ce = self._encryption(self._keys)
        self._opened = Memo(OPENED_LIMIT)
        self._blind_secret = self._load_blind_secret(client[database]["keyring"])

    def _encryption(self, keys: MasterKeys) -> ClientEncryption:
        return ClientEncryption(keys.providers, self.namespace, self._client, _CODEC, key_expiration_ms=KEY_CACHE_MS)

    # --- sealing ---------------------------------------------------------------------------

    def seal(self, key_name: str, value: Any) -> Binary:
        """`value` (a document, bytes, a string) encrypted with the random algorithm under the
        data key named `key_name`, created on first use. Tried first: libmongocrypt finds the
        key by name in its cache or the key vault, so a known key costs no extra round trip."""
        def encrypt(ce: ClientEncryption) -> Binary:
            return ce.encrypt(value, RANDOM, key_alt_name=key_name)

        try:
            return self._call(encrypt)
        except EncryptionError as error:
            if not _missing_key(error):
                raise
        self._create_key(key_name)
        return self._call(encrypt)

    def open(self, sealed: Binary) -> Any:
        """The value inside `sealed`; KeyDestroyed when its data key no longer exists."""
        digest = hashlib.sha256(sealed).digest()
        known = self._opened.get(digest)
        if known is not None:
            return bson.decode(known, _CODEC)["v"]
        try:
            value = self._call(lambda ce: ce.decrypt(sealed))
        except EncryptionError as error:
            if _missing_key(error):
                raise KeyDestroyed() from None
            raise
        if isinstance(value, dict):
            self._opened.put(digest, bson.encode({"v": value}, codec_options=_CODEC))
        return value

    def blind(self, domain: str, value: str) -> Binary:
        """A keyed blind index token (HMAC-SHA256 under the sealed search secret): equal values
        give equal tokens, so an index lookup finds them, and the token reveals nothing else."""
        digest = hmac.digest(self._blind_secret, f"{domain}\0{value}".encode(), "sha256")  # one-shot, in C
        return Binary(digest[:BLIND_BYTES])

    def _call(self, work: Callable[[ClientEncryption], Any]) -> Any:
        """Run `work`; when it fails because the master keys changed (a rotation in another
        process), reload them once and retry."""
        ce = self._ce
        try:
            return work(ce)
        except EncryptionError as error:
            if _missing_key(error) or not self._reload():
                raise
            return work(self._ce)

    def _reload(self) -> bool:
        with self._lock:
            fresh = self._source()
            if fresh.version == self._keys.version and fresh.providers == self._keys.providers:
                return False
            self._keys, self._ce = fresh, self._encryption(fresh)
            return True

    def _create_key(self, key_name: str) -> None:
        """A new data key named `key_name`, wrapped under the newest master key (another writer
        creating it at the same moment is fine: the unique index keeps one)."""
        if not self._may_create(key_name):
            raise KeyDestroyed()
        self._reload()
        try:
            self._ce.create_data_key(self._keys.provider, self._keys.master_key, key_alt_names=[key_name])
        except (DuplicateKeyError, EncryptionError) as error:
            if self.vault.find_one({"keyAltNames": key_name}, {"_id": 1}) is None:
                raise error  # not a race with another writer

    def _load_blind_secret(self, keyring: Any) -> bytes:
        """The blind index secret, kept sealed under the search key (created once)."""
        found = keyring.find_one({"_id": "blind-index"})
        if found is None:
            try:
                keyring.insert_one({"_id": "blind-index", "sealed": self.seal(SEARCH_KEY, secrets.token_bytes(32))})
            except DuplicateKeyError:
                pass
            found = keyring.find_one({"_id": "blind-index"})
        return bytes(self.open(found["sealed"]))

    # --- keys ------------------------------------------------------------------------------

    def destroy(self, key_name: str) -> bool:
        """Delete the data key named `key_name`: what it sealed can never be opened again."""
        found = self.vault.find_one({"keyAltNames": key_name}, {"_id": 1})
        self._opened.clear()  # nothing opened under it stays in this process
        if found is None:
            return False
        self._ce.delete_key(found["_id"])
        return True

    def rewrap(self, target: MasterKeys) -> int:
        """Re-wrap every data key not yet under `target`'s master key; the number re-wrapped.
        The data keys themselves (and so every ciphertext) are unchanged."""
        providers = dict(self._keys.providers, **target.providers)
        both = self._encryption(MasterKeys(providers, target.provider, target.master_key))
        try:
            result = both.rewrap_many_data_key(self._not_under(target), provider=target.provider,
                                               master_key=target.master_key)
        finally:
            both.close()
        self._reload()
        return result.bulk_write_result.modified_count if result.bulk_write_result else 0

    def _not_under(self, target: MasterKeys) -> dict:
        if target.master_key is None:
            return {"masterKey.provider": {"$ne": target.provider}}
        return {"$or": [{"masterKey.provider": {"$ne": target.provider}},
                        *({f"masterKey.{k}": {"$ne": v}} for k, v in target.master_key.items())]}

    def providers_in_use(self) -> set[str]:
        return set(self.vault.distinct("masterKey.provider"))

    def close(self) -> None:
        self._ce.close()




def _missing_key(error: EncryptionError) -> bool:
    """libmongocrypt's answer when a data key (by id or by name) is not in the key vault."""
    return "not all keys requested were satisfied" in str(error)


def _new_local_key() -> bytes:
    """A fresh random local master key (the embedded default's, never production's)."""
    return secrets.token_bytes(LOCAL_KEY_BYTES)
