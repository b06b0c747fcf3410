"""Group commit: the audit entries of requests that end at the same moment in one process go
to MongoDB in one majority-acknowledged insert, each request still answered only once its own
entry is stored.

Every read and search appends an audit entry before it answers (DESIGN "Audit"), so a busy
process sends one insert per request, each waiting for the majority on its own; with several
requests in flight the driver's work per command and mongod's majority wait are the largest
cost after the search itself. Here the first request to arrive writes at once (a request alone
waits for nothing extra); those that arrive while its insert is in flight queue, and when it
lands the first of them writes everything queued since, in one go (the write-ahead log's group
commit, as databases do it). A batch succeeds or fails as a whole: each of its requests gets
the same answer (a database error is every one's 503), and a request whose own time runs out
while it waits answers 503 like any request whose insert timed out.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

from pymongo.errors import ExecutionTimeout

T = TypeVar("T")


@dataclass
class _Waiting(Generic[T]):
    items: list[T]
    done: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # told to write the queue when the batch in flight lands
    error: BaseException | None = None


class GroupCommit(Generic[T]):
    """`submit(items)` returns once `write` has stored them, with items of other threads that
    were queued meanwhile; `write` is never run by two threads at once.

    Each batch ends within its writer's own bounds (the request's `pymongo.timeout`, the
    client's socket timeouts), so a request waits at most for the batch in flight and its own;
    `wait` only caps that for a caller with no bound of its own."""

    def __init__(self, write: Callable[[list[T]], None], wait: float = 60.0) -> None:
        self._write = write
        self._wait = wait
        self._lock = threading.Lock()
        self._queue: list[_Waiting[T]] = []
        self._writing = False

    def submit(self, items: list[T]) -> None:
        mine = _Waiting(items)
        with self._lock:
            self._queue.append(mine)
            mine.lead = not self._writing
            self._writing = True
        if not mine.lead:
            mine.done.wait(self._wait)
            with self._lock:  # `done` and `lead` only change under the lock
                if not mine.done.is_set():
                    if mine in self._queue:  # not yet taken: leave the queue
                        self._queue.remove(mine)
                    raise ExecutionTimeout("the audit entry was not stored in time")
            if not mine.lead:
                return self._outcome(mine)
        self._write_queue()
        self._outcome(mine)

    def _write_queue(self) -> None:
        """Write everything queued, then hand the next batch to the first request queued behind
        it (or stop: nothing is waiting)."""
        with self._lock:
            batch, self._queue = self._queue, []
        error: BaseException | None = None
        try:
            self._write([item for waiting in batch for item in waiting.items])
        except BaseException as exc:  # each request of the batch answers it
            error = exc
        with self._lock:
            for waiting in batch:
                waiting.error, waiting.lead = error, False
                waiting.done.set()
            if not self._queue:
                self._writing = False
                return
            following = self._queue[0]
            following.lead = True  # it writes the queue (itself first) on its own thread
            following.done.set()

    @staticmethod
    def _outcome(waiting: _Waiting[T]) -> None:
        if waiting.error is not None:
            raise waiting.error
