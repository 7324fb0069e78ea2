"""A keyed work queue for controllers: each key queued once, synced by one worker at a time.

Event handlers only `add` keys (cheap, never blocking); workers `get` a key, sync
it from the informers' caches, and call `done`. A key added while a worker is
syncing it is queued again when that worker finishes, so the last event is
always acted on and one key is never synced twice at once. A failed sync is
retried after a per-key exponential back-off (`retry`), reset by `forget`.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Hashable, TypeVar

from services.common.log import get_logger

from .backoff import Backoff

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, *, retry_initial: float = 0.05, retry_max: float = 30.0) -> None:
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._requeue: set[K] = set()
        self._backoff = Backoff(retry_initial, retry_max)
        self._timers: dict[K, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, key: K) -> None:
        if key in self._processing:
            self._requeue.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        """Adds the key after `delay` seconds (the earliest of several requests wins)."""
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        timer = self._timers.get(key)
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def retry(self, key: K) -> float:
        """Adds the key again after its back-off; returns the delay."""
        delay = self._backoff.failure(key)
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """The key synced cleanly: its next failure starts the back-off over."""
        self._backoff.reset(key)

    async def get(self) -> K:
        key = await self._ready.get()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._requeue:
            self._requeue.discard(key)
            self.add(key)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


async def run_workers(
    queue: WorkQueue[K],
    sync: Callable[[K], Awaitable[None]],
    *,
    workers: int,
    name: str,
) -> None:
    """Runs `workers` loops that sync keys until cancelled; a sync that raises is retried with back-off."""
    log = get_logger(controller=name)

    async def worker() -> None:
        while True:
            key = await queue.get()
            try:
                await sync(key)
                queue.forget(key)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                delay = queue.retry(key)
                log.warning("sync_failed", key="/".join(map(str, key)) if isinstance(key, tuple) else str(key),
                            error=_describe(error), retry_in=round(delay, 2))
            finally:
                queue.done(key)

    try:
        await asyncio.gather(*(worker() for _ in range(workers)))
    finally:
        queue.close()


def _describe(error: Exception) -> str:
    details = getattr(error, "details", None)
    code = getattr(error, "code", None)
    if callable(details) and callable(code):
        return f"{code().name}: {details()}"
    return f"{type(error).__name__}: {error}"
