"""Database health as the API needs it: fail fast while no primary is known, bound the time
one request may spend on the database, and tell transient trouble (503 + Retry-After) from
bugs (500). pymongo stays in the store package; the API asks these three questions."""

from __future__ import annotations

from contextlib import AbstractContextManager

import pymongo
from pymongo import MongoClient
from pymongo.errors import (ConnectionFailure, EncryptionError, ExecutionTimeout, OperationFailure, PyMongoError,
                             WTimeoutError)

PROBE_SECONDS = 3.0
#: Server error codes that mean "no primary just now" (shutdown, step-down, election).
_UNAVAILABLE_CODES = frozenset({91, 189, 10107, 11600, 11602, 13435, 13436})


def probe_when_no_primary(client: MongoClient) -> None:
    """While the driver knows of no writable server, one short ping: it fails fast (a 503)
    instead of letting the request wait out server selection, and it wakes the driver's
    monitor, so recovery after an election is prompt."""
    if not client.topology_description.has_writable_server():
        with pymongo.timeout(PROBE_SECONDS):
            client.admin.command("ping")


def request_deadline(seconds: float) -> AbstractContextManager:
    """pymongo's client-side operation timeout for everything one request does."""
    return pymongo.timeout(seconds)


def database_unavailable(error: BaseException) -> bool:
    """pymongo's ways of saying the database cannot be reached or did not answer in time,
    including when it said so to client-side encryption (the key vault is read from the same
    replica set: during an election a data key lookup fails like any other read)."""
    cause = getattr(error, "cause", None)
    if isinstance(error, EncryptionError) and isinstance(cause, BaseException) and cause is not error:
        return database_unavailable(cause)
    if isinstance(error, (ConnectionFailure, ExecutionTimeout, WTimeoutError)):
        return True  # AutoReconnect, NetworkTimeout, NotPrimaryError, ServerSelectionTimeoutError, WaitQueueTimeoutError
    if isinstance(error, OperationFailure) and (error.code in _UNAVAILABLE_CODES
                                                or error.has_error_label("TransientTransactionError")):
        return True
    return isinstance(error, PyMongoError) and bool(getattr(error, "timeout", False))
