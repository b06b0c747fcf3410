"""The one door for every outbound HTTP request signing in makes: an identity provider's
discovery document and token endpoint, its JWKS, a backend client's registered `jwks_uri`.

Kept to one function, through the deployment's outbound fence (ehcp_record.net.outbound:
every connection's resolved address is checked when it is made, so a configured name that
later resolves to an internal or metadata address is refused). On top of the fence it refuses
anything but the origins the caller names from configuration (a configured issuer, a
registered `jwks_uri`), never follows a redirect (a 3xx is an error, so a trusted origin
cannot bounce us elsewhere), waits at most a few seconds and reads at most 1 MiB of JSON.
"""

from __future__ import annotations

import json
from typing import Any, Iterable
from urllib.parse import urlsplit

import requests

from ehcp_record.net.outbound import Fence, OutboundRefused

TIMEOUT_SECONDS = 5
MAX_BYTES = 1024 * 1024


class RemoteError(ValueError):
    """The remote answer could not be used; the message is safe to show (no response body)."""


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def fetch_json(url: str, allowed: Iterable[str], form: dict[str, str] | None = None, *,
               fence: Fence = Fence()) -> Any:
    """GET `url` (or POST `form` to it) and return its JSON; `allowed` are the configured
    URLs whose origins may be asked, `fence` the deployment's (the default allows public
    addresses only)."""
    if urlsplit(url).scheme not in ("https", "http") or origin(url) not in {origin(a) for a in allowed}:
        raise RemoteError(f"{origin(url)} is not a configured identity provider or key set")
    try:
        with fence.session().request("POST" if form is not None else "GET", url, data=form, timeout=TIMEOUT_SECONDS,
                                     allow_redirects=False, stream=True,
                                     headers={"Accept": "application/json"}) as response:
            body = response.raw.read(MAX_BYTES + 1, decode_content=True)
            status = response.status_code
    except OutboundRefused as exc:
        raise RemoteError(f"{origin(url)} could not be reached: {exc}") from None
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
