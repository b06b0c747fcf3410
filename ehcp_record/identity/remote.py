"""The one door for every outbound HTTP request signing in makes: an identity provider's
discovery document and token endpoint, its JWKS, a backend client's registered `jwks_uri`.

Kept to one function so the deployment's SSRF fence can wrap it in one place. Until then it
refuses anything but the origins the caller names from configuration (a configured issuer,
a registered `jwks_uri`), never follows a redirect (a 3xx is an error, so a trusted origin
cannot bounce us elsewhere), waits at most a few seconds and reads at most 1 MiB of JSON.
"""

from __future__ import annotations

import json
from typing import Any, Iterable
from urllib.parse import urlsplit

import requests

TIMEOUT_SECONDS = 5
MAX_BYTES = 1024 * 1024


class RemoteError(ValueError):
    """The remote answer could not be used; the message is safe to show (no response body)."""


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def fetch_json(url: str, allowed: Iterable[str], form: dict[str, str] | None = None) -> Any:
    """GET `url` (or POST `form` to it) and return its JSON; `allowed` are the configured
    URLs whose origins may be asked."""
    if urlsplit(url).scheme not in ("https", "http") or origin(url) not in {origin(a) for a in allowed}:
        raise RemoteError(f"{origin(url)} is not a configured identity provider or key set")
    try:
        with requests.request("POST" if form is not None else "GET", url, data=form, timeout=TIMEOUT_SECONDS,
                              allow_redirects=False, stream=True, headers={"Accept": "application/json"}) as response:
            body = response.raw.read(MAX_BYTES + 1, decode_content=True)
            status = response.status_code
    except requests.RequestException as exc:
        raise RemoteError(f"{origin(url)} could not be reached ({type(exc).__name__})") from None
    if len(body) > MAX_BYTES:
        raise RemoteError(f"{origin(url)} answered more than {MAX_BYTES} bytes")
    try:
        document = json.loads(body)
    except ValueError:
        raise RemoteError(f"{origin(url)} answered HTTP {status} without JSON") from None
    if status >= 300 and not (status == 400 and isinstance(document, dict) and "error" in document):
        raise RemoteError(f"{origin(url)} answered HTTP {status}")
    return document
