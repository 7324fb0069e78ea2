"""The Docker call scheduler: bounded, and earlier pods' calls first."""

from __future__ import annotations

import asyncio
import threading

from services.kubelet.containers import ContainerCache
from services.kubelet.runtime import DockerRuntime, call_priority


async def test_calls_are_bounded_and_queued_by_priority() -> None:
    runtime = DockerRuntime("n", ContainerCache(), concurrency=1)
    gate = threading.Event()
    order: list[int] = []
    try:
        first = asyncio.create_task(runtime.call(gate.wait, 10))
        await asyncio.sleep(0.05)

        async def queued(priority: int) -> None:
            call_priority.set(priority)
            await runtime.call(order.append, priority)

        waiting = [asyncio.create_task(queued(priority)) for priority in (5, 1, 3)]
        await asyncio.sleep(0.05)
        assert order == []  # the one slot is taken
        cancelled = asyncio.create_task(queued(0))
        await asyncio.sleep(0.01)
        cancelled.cancel()  # a queued call given up on does not hold a slot
        gate.set()
        await asyncio.gather(first, *waiting)
        assert order == [1, 3, 5]
        await runtime.call(order.append, 9)  # the slot is free again
        assert order[-1] == 9
    finally:
        await runtime.close()
