"""Expectations and the work queue: the replicator's guards against acting twice."""

from __future__ import annotations

import asyncio

from services.replicator.expectations import Expectations
from services.common.runtime.workqueue import WorkQueue, run_workers
from tests.polling import eventually

KEY = ("ns", "web")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_record_means_free_to_act():
    assert Expectations().satisfied(KEY)


def test_creations_must_all_be_observed():
    expectations = Expectations()
    expectations.expect(KEY, creations=3)
    for _ in range(2):
        expectations.creation_observed(KEY)
        assert not expectations.satisfied(KEY)
    expectations.creation_observed(KEY)
    assert expectations.satisfied(KEY)
    expectations.creation_observed(KEY)  # a late extra event does not go negative into credit
    expectations.expect(KEY, creations=1)
    assert not expectations.satisfied(KEY)


def test_deletions_are_matched_by_uid():
    expectations = Expectations()
    expectations.expect(KEY, deletions=["u1", "u2"])
    expectations.deletion_observed(KEY, "someone-else")
    assert expectations.pending(KEY) == (0, 2)
    expectations.deletion_observed(KEY, "u1")
    expectations.deletion_observed(KEY, "u1")
    assert not expectations.satisfied(KEY)
    expectations.deletion_observed(KEY, "u2")
    assert expectations.satisfied(KEY)


def test_a_lost_event_does_not_wedge_the_controller():
    clock = Clock()
    expectations = Expectations(timeout=60, clock=clock)
    expectations.expect(KEY, creations=1)
    clock.now += 59
    assert not expectations.satisfied(KEY) and not expectations.expired(KEY)
    clock.now += 2
    assert expectations.satisfied(KEY) and expectations.expired(KEY)


def test_forget_and_other_keys_are_independent():
    expectations = Expectations()
    expectations.expect(KEY, creations=1)
    expectations.expect(("ns", "db"), creations=1)
    expectations.forget(KEY)
    assert expectations.satisfied(KEY)
    assert not expectations.satisfied(("ns", "db"))


async def test_work_queue_dedupes_and_never_syncs_one_key_twice_at_once():
    queue: WorkQueue[str] = WorkQueue()
    running: set[str] = set()
    overlaps = 0
    synced: list[str] = []
    release = asyncio.Event()

    async def sync(key: str) -> None:
        nonlocal overlaps
        if key in running:
            overlaps += 1
        running.add(key)
        synced.append(key)
        if len(synced) == 1:
            await release.wait()  # hold "a" while more events for it arrive
        running.discard(key)

    for key in ("a", "a", "b", "a"):
        queue.add(key)
    workers = asyncio.create_task(run_workers(queue, sync, workers=3, name="test"))
    try:
        await eventually(lambda: len(synced) >= 2, what="two keys synced")
        queue.add("a")  # "a" is being synced: queued again for after
        queue.add("a")
        await asyncio.sleep(0.05)
        assert synced == ["a", "b"]
        release.set()
        await eventually(lambda: len(synced) >= 3, what='"a" synced again')
        await asyncio.sleep(0.05)
        assert synced == ["a", "b", "a"]
        assert overlaps == 0
    finally:
        workers.cancel()
        await asyncio.gather(workers, return_exceptions=True)


async def test_work_queue_retries_a_failed_sync_with_back_off():
    queue: WorkQueue[str] = WorkQueue(retry_initial=0.01, retry_max=0.05)
    attempts = 0

    async def sync(key: str) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 4:
            raise RuntimeError("not yet")

    queue.add("k")
    workers = asyncio.create_task(run_workers(queue, sync, workers=1, name="test"))
    try:
        for _ in range(200):
            if attempts >= 4:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert attempts == 4  # then it succeeded and was not retried again
    finally:
        workers.cancel()
        await asyncio.gather(workers, return_exceptions=True)


async def test_add_after_keeps_the_earliest_request():
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("k", 10)
    queue.add_after("k", 0.01)
    queue.add_after("k", 5)
    assert await asyncio.wait_for(queue.get(), 1) == "k"
    queue.close()
