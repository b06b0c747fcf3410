"""Verify audit chains against the database: `$verify-audit` and `ehcp-record audit verify`.

A chain is checked entry by entry (hashes, sequence, signed checkpoints) and against the
history collection: every stored version must be named, with its hash, by some entry, so a
version written or edited behind the API's back is found as well as an edited audit entry.

What a chain kept in the same database cannot show by itself: entries cut from its tail after
the newest signed checkpoint (at least hourly, and at every issued plan). Detecting that needs
the signed checkpoints kept somewhere else as well; they are signed so that they can be.
"""

from __future__ import annotations

from typing import Iterable, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ehcp_record.audit import chain as audit_chain
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

    def audit_entries(self, chain: str) -> Iterable[dict]: ...

    def version_hashes(self, record: str) -> Iterable[tuple[str, str]]: ...

    def chains(self) -> list[str]: ...


def verify_record(repo: ChainSource, record: str, keys: dict[str, Ed25519PublicKey]) -> audit_chain.ChainVerdict:
    return audit_chain.verify_chain(
        repo.audit_entries(record), record, version_hashes=repo.version_hashes(record), public_keys=keys,
    )


def verify_all(repo: ChainSource, settings: Settings, record: str | None = None) -> tuple[bool, list[str]]:
    keys = trusted_keys(settings)
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
