"""The active Subscriptions, kept in memory so a commit costs no query when none can match.

Loaded once, then kept in step by a MongoDB change stream on `current` filtered to
Subscription documents (a replica set has one), so every API process learns of a new, changed
or switched-off subscription within moments of its commit. A process also refreshes at once
after it writes a Subscription itself. If the change stream fails (a failover, a driver
error), the cache says it is stale and answers from the database until the stream is back:
correctness never rests on the stream, only the saving does.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from ehcp_record.store.versions import Version

log = logging.getLogger("ehcp_record.subscriptions")
#: `idx.status` (clear) rather than `res.status`: the content is sealed at rest (store/sealing.py)
_ACTIVE = {"type": "Subscription", "idx.status": "active"}


class SubscriptionCache:
    def __init__(self, current: Collection, to_version: Callable[[dict], Version]) -> None:
        self._current = current
        self._to_version = to_version
        self._lock = threading.Lock()
        self._active: list[Version] | None = None  # None: stale, ask the database
        self._watcher: threading.Thread | None = None
        self._stopped = threading.Event()

    def active(self, resource_types: set[str]) -> list[Version]:
        """Active subscriptions whose criteria name one of these types."""
        self._ensure_watching()
        with self._lock:
            known = self._active
        if known is None:
            known = self._load()
        return [v for v in known if v.resource.get("criteria", "").split("?")[0] in resource_types]

    def refresh(self) -> None:
        """This process wrote a Subscription: reload now rather than wait for the stream."""
        with self._lock:
            self._active = None

    def close(self) -> None:
        self._stopped.set()

    def _load(self) -> list[Version]:
        loaded = [self._to_version(d) for d in self._current.find(_ACTIVE)]
        with self._lock:
            if self._watcher is not None and self._watcher.is_alive():
                self._active = loaded
        return loaded

    def _ensure_watching(self) -> None:
        if self._watcher is not None and self._watcher.is_alive():
            return
        with self._lock:
            if self._watcher is not None and self._watcher.is_alive():
                return
            self._watcher = threading.Thread(target=self._watch, name="subscription-cache", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        pipeline = [{"$match": {"$or": [{"fullDocument.type": "Subscription"},
                                        {"documentKey._id": {"$regex": "^Subscription/"}}]}}]
        while not self._stopped.is_set():
            try:
                with self._current.watch(pipeline, max_await_time_ms=1000) as stream:
                    self._load()  # from here on every change arrives on the stream
                    while not self._stopped.is_set() and stream.alive:
                        if stream.try_next() is not None:
                            self._load()
            except PyMongoError as error:
                if self._stopped.is_set():
                    return  # the repository was closed
                log.warning("subscription change stream interrupted (%s); answering from the database", error)
                with self._lock:
                    self._active = None
                time.sleep(1)
