"""The cyclic garbage collector held off while a long piece of work builds many small objects.

Used by the audit verifier (ehcp_record.audit.verify) and the store's reading for it
(ehcp_record.store.verify_reader): a check of a long record builds millions of small objects
that live until it ends, and each run of the collector walks every object the process holds.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_resume = False


@contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector held off while many small documents are decoded: each of
    its runs walks every object the process holds, and decoding 100,000 entries would start
    hundreds of them (it halves the time of a long check). Nothing here makes reference
    cycles, reference counting still frees everything, and the collector runs again as soon as
    the last check in this process (threads may check records at once) is done."""
    global _gc_pauses, _gc_resume
    with _gc_lock:
        _gc_pauses += 1
        if _gc_pauses == 1:
            _gc_resume = gc.isenabled()
            gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_resume:
                gc.enable()
