"""How every MongoClient of this deployment is opened: every wait bounded, so an unreachable
database fails fast (the API answers 503) rather than hanging (Repository.connect says why
each bound). One place, as two clients use it: the repository's and the one a verifier's
version reader opens in a process of its own (store/versions_apart.py)."""

from __future__ import annotations

from typing import Any

CLIENT_OPTIONS: dict[str, Any] = {
    "w": "majority", "tz_aware": True, "maxPoolSize": 50, "serverSelectionTimeoutMS": 3000,
    "connectTimeoutMS": 3000, "socketTimeoutMS": 60000, "waitQueueTimeoutMS": 10000,
    "retryWrites": True, "retryReads": True,
}
