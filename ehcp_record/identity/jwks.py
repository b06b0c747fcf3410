"""Public key sets fetched from a `jwks_uri` (an identity provider's, or a backend service's
registered one: SMART Backend Services §"Registering a client" allows a JWKS URL instead of
an inline JWKS).

Cached per URL for `TTL_SECONDS`; a token signed with a `kid` the cached set lacks causes one
refetch (the signer rotated its keys, RFC 7517 §4.5), and no more: a second miss is refused.
Refetches of one URL are at least `REFETCH_AFTER_SECONDS` apart, so assertions naming random
`kid`s cannot make this server fetch a key set once per request.
Fetched only through `remote.fetch_json`, which allows only the URL's configured origin.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ehcp_record.identity import remote
from ehcp_record.net.outbound import Fence

TTL_SECONDS = 300
REFETCH_AFTER_SECONDS = 10.0


@dataclass(frozen=True)
class _Entry:
    jwks: dict
    fetched: float


_cache: dict[str, _Entry] = {}
_lock = threading.Lock()


def key_set(jwks_uri: str, kid: str | None = None, fence: Fence = Fence()) -> dict:
    """The JWKS at `jwks_uri`, from cache while fresh; refetched once when `kid` is not in it."""
    with _lock:
        entry = _cache.get(jwks_uri)
    if entry is None:
        return _fetch(jwks_uri, fence)
    age = time.monotonic() - entry.fetched
    fresh_enough = age < TTL_SECONDS and (kid is None or _has(entry.jwks, kid))
    if fresh_enough or age < REFETCH_AFTER_SECONDS:
        return entry.jwks
    return _fetch(jwks_uri, fence)


def _fetch(jwks_uri: str, fence: Fence) -> dict:
    document = remote.fetch_json(jwks_uri, allowed=[jwks_uri], fence=fence)
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise remote.RemoteError(f"{remote.origin(jwks_uri)} did not answer a JWKS")
    with _lock:
        _cache[jwks_uri] = _Entry(document, time.monotonic())
    return document


def _has(jwks: dict, kid: str) -> bool:
    return any(isinstance(k, dict) and k.get("kid") == kid for k in jwks.get("keys", []))


def forget(jwks_uri: str) -> None:
    """Drop a cached set (a client re-registered with new keys)."""
    with _lock:
        _cache.pop(jwks_uri, None)
