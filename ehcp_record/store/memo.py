"""A bounded, thread-safe map from a digest of stored bytes to what working on them gave.

Both caches of the store package are keyed by the SHA-256 of exactly the bytes read, so an
entry can never be stale (changed bytes are another key): the verifier's re-hash of a batch of stored
documents (`verify_reader`) and the opened content of a ciphertext (`crypto`). Least recently
used entries go first once `limit` is reached; the memory is this process's only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any


class Memo:
    def __init__(self, limit: int) -> None:
        self._items: OrderedDict[bytes, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.limit = limit

    def get(self, key: bytes) -> Any:
        return self.get_many([key])[0]

    def get_many(self, keys: list[bytes]) -> list[Any]:
        with self._lock:
            found = [self._items.get(key) for key in keys]
            for key, value in zip(keys, found):
                if value is not None:
                    self._items.move_to_end(key)
            return found

    def put(self, key: bytes, value: Any) -> None:
        self.put_many([(key, value)])

    def put_many(self, pairs: Iterable[tuple[bytes, Any]]) -> None:
        with self._lock:
            for key, value in pairs:
                self._items[key] = value
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
