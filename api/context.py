"""Per-request accessors: the services hung off the app, and the authenticated caller."""

from __future__ import annotations

import re
import uuid

from flask import current_app, g, request

from ehcp_record.access.caller import Caller
from ehcp_record.access.scoped import ScopedStore
from ehcp_record.wiring import Services

#: A client's X-Request-ID is echoed and audited only if it is this plain; otherwise one is made.
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def services() -> Services:
    return current_app.extensions["ehcp"]


def caller() -> Caller:
    """The verified caller; 401 with WWW-Authenticate when the token is missing or bad."""
    if "caller" not in g:
        g.caller = services().verifier.caller(
            request.headers.get("Authorization"), request.remote_addr or "",
            request.headers.get("User-Agent", ""), request_id(),
        )
    return g.caller


def store() -> ScopedStore:
    """The caller-scoped store, made once per request: the only door to a child's record."""
    if "store" not in g:
        g.store = services().records.for_caller(caller())
    return g.store


def current_store() -> ScopedStore | None:
    """The request's store if one was made (the error handler settles refusals with it)."""
    return g.get("store")


def request_id() -> str:
    if "request_id" not in g:
        supplied = request.headers.get("X-Request-ID", "")
        g.request_id = supplied if SAFE_REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex
    return g.request_id
