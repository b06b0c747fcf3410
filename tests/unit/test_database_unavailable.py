"""What counts as the database being unavailable (answered 503 with Retry-After, never 500)."""

from __future__ import annotations

from pymongo.errors import AutoReconnect, EncryptionError, NotPrimaryError, OperationFailure

from ehcp_record.store.health import database_unavailable


def test_an_election_seen_through_client_side_encryption_is_unavailability():
    # a data key lookup in the key vault during a failover: pymongo wraps the driver's error
    assert database_unavailable(EncryptionError(NotPrimaryError("not primary")))
    assert database_unavailable(EncryptionError(AutoReconnect("connection closed")))
    assert database_unavailable(AutoReconnect("connection closed"))


def test_an_encryption_fault_of_its_own_is_not():
    assert not database_unavailable(EncryptionError(ValueError("bad ciphertext")))
    assert not database_unavailable(OperationFailure("bad query", code=2))
