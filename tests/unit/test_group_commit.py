"""Group commit (store/group_commit.py): each request returns only once its own items are
written, in exactly one batch; batches never overlap; a failed batch fails each of its
requests and the next batch still goes; a request that gives up leaves the queue."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo.errors import ExecutionTimeout

from ehcp_record.store.group_commit import GroupCommit


class Log:
    """A `write` that records its batches, takes `delay` seconds, fails when told, and checks
    that no two batches ever run at once."""

    def __init__(self, delay: float = 0.0, fail_when=lambda batch: False) -> None:
        self.batches: list[list] = []
        self.delay, self.fail_when = delay, fail_when
        self.running = threading.Lock()

    def write(self, items: list) -> None:
        assert self.running.acquire(blocking=False), "two batches at once"
        try:
            time.sleep(self.delay)
            if self.fail_when(items):
                raise ConnectionError("database down")
            self.batches.append(list(items))
        finally:
            self.running.release()

    def written(self) -> list:
        return [item for batch in self.batches for item in batch]


def test_a_request_alone_is_written_at_once_and_alone():
    log = Log()
    group = GroupCommit(log.write)
    group.submit(["a", "b"])
    group.submit(["c"])
    assert log.batches == [["a", "b"], ["c"]]


def test_requests_arriving_while_a_batch_is_in_flight_go_together_in_the_next():
    log = Log(delay=0.2)
    group = GroupCommit(log.write)
    first = threading.Thread(target=group.submit, args=(["first"],))
    first.start()
    time.sleep(0.05)  # the first batch is in flight
    returned_after: dict[str, list] = {}

    def later(name: str) -> None:
        group.submit([name])
        returned_after[name] = log.written()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(later, ["w", "x", "y", "z"]))
    first.join()
    assert log.batches[0] == ["first"]
    assert sorted(log.batches[1]) == ["w", "x", "y", "z"] and len(log.batches) == 2
    assert all(name in seen for name, seen in returned_after.items())  # none returned before its write


def test_a_failed_batch_fails_each_of_its_requests_and_the_next_still_goes():
    log = Log(delay=0.1, fail_when=lambda batch: "bad" in batch)
    group = GroupCommit(log.write)
    outcomes: dict[str, str] = {}

    def run(name: str) -> None:
        try:
            group.submit([name])
            outcomes[name] = "stored"
        except ConnectionError:
            outcomes[name] = "failed"

    lead = threading.Thread(target=run, args=("lead",))
    lead.start()
    time.sleep(0.03)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(run, ["bad", "other"]))  # queued together behind the lead's batch
    lead.join()
    assert outcomes == {"lead": "stored", "bad": "failed", "other": "failed"}
    group.submit(["after"])
    assert log.batches == [["lead"], ["after"]]


def test_a_request_that_gives_up_leaves_the_queue_and_others_go_on():
    log = Log(delay=0.3)
    group = GroupCommit(log.write, wait=0.05)
    lead = threading.Thread(target=group.submit, args=(["lead"],))
    lead.start()
    time.sleep(0.05)
    with pytest.raises(ExecutionTimeout):
        group.submit(["impatient"])
    lead.join()
    group.submit(["later"])
    assert log.written() == ["lead", "later"]  # the one that gave up was never written


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=12),
       st.sampled_from([0.0, 0.001, 0.005]))
def test_every_item_is_written_once_and_only_before_its_request_returns(requests, delay):
    """Any number of concurrent requests, any batch failing: a request returns normally exactly
    when its items were written (once, in one batch), and raises exactly when its batch failed."""
    failing = {f"r{i}" for i, (_, fail) in enumerate(requests) if fail}
    log = Log(delay=delay, fail_when=lambda batch: any(item.split(".")[0] in failing for item in batch))
    group = GroupCommit(log.write)
    results: dict[str, bool] = {}

    def run(index: int) -> None:
        name, (extra, _) = f"r{index}", requests[index]
        items = [f"{name}.{k}" for k in range(extra + 1)]
        try:
            group.submit(items)
            results[name] = all(item in log.written() for item in items)
        except ConnectionError:
            results[name] = not any(item in log.written() for item in items)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(run, range(len(requests))))
    assert all(results.values()), results
    written = log.written()
    assert len(written) == len(set(written))
    assert not set(item.split(".")[0] for item in written) & failing
    assert group._writing is False and group._queue == []
