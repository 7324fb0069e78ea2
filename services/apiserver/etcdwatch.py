"""Watches served straight from etcd, one etcd watch per caller, for a kind the API server keeps
no watch cache of.

Kubernetes keeps Events out of its watch cache (kube-apiserver's DefaultWatchCacheSizes:
`events#0`): they are the most numerous objects (a pod gets Scheduled, Created, Started and its
controller's SuccessfulCreate), each lives an hour (--event-ttl), and they are seldom watched
(`kubectl get events -w`), while a cache holds every one of them, decoded and indexed, with a
history of their writes, whether anybody watches or not. Without the cache, a Watch of Events
costs one etcd watch while it lasts; Get and List read etcd as they do for every kind.

The caller sees what a cached kind's Watch gives: the same initial events and bookmarks, ADDED,
MODIFIED and DELETED as the selector sees them, RESOURCE_EXHAUSTED when it falls behind, and
OUT_OF_RANGE when the revision it resumes from is compacted.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import grpc

from services.common.runtime import Backoff

from .errors import ApiError
from .storage import CompactedError, prefix_range_end
from .watchcache import ADDED, RETRY_INITIAL, RETRY_MAX, CacheEvent, CacheWatcher, WatchCache, WatchFilter


class EtcdWatches(WatchCache):
    """A WatchCache's interface with nothing cached: no list at start, no objects, no history;
    each Watch lists (for its initial events) and watches etcd itself. The bookmark loop and
    shutdown are the cache's."""

    keeps_objects = False

    async def run(self) -> None:
        self._ready.set()
        try:
            await self._bookmark_loop()
        finally:
            self.end_watches()

    async def caught_up(self, revision: int, timeout: float) -> bool:
        return True  # nothing is cached: every read of this kind is etcd's

    def get(self, namespace: str, name: str) -> Any | None:
        raise LookupError(f"{self.kind.plural} are not cached: read them from etcd")

    def objects(self) -> list[Any]:
        raise LookupError(f"{self.kind.plural} are not cached: read them from etcd")

    async def watch(
        self, filter_: WatchFilter, resource_version: int, send_initial_events: bool
    ) -> AsyncIterator[bytes]:
        initial: list[bytes] = []
        if send_initial_events:
            start, initial = await self._initial_events(filter_)
        elif resource_version == 0:
            start = await self.storage.current_revision()
        else:
            start = resource_version
            await self._wait_for_revision(start)
        # The bookmark loop offers each watcher its start_revision, which the pump moves on
        # with every event it offers: a bookmark names the last revision the caller has.
        watcher = CacheWatcher(filter_, start, self._watcher_capacity)
        self._watchers.add(watcher)
        pump = asyncio.create_task(self._pump(watcher))
        pump.add_done_callback(lambda task: _end_on_failure(task, watcher))
        try:
            async for data in self._stream(watcher, initial):
                yield data
        finally:
            pump.cancel()
            self._watchers.discard(watcher)

    async def _initial_events(self, filter_: WatchFilter) -> tuple[int, list[bytes]]:
        """The kind's objects that match, as ADDED events, and the bookmark that ends them."""
        result = await self.storage.range(self.prefix, prefix_range_end(self.prefix))
        objects = await self._offload(sum(len(kv.value) for kv in result.kvs), self._decode_all, result.kvs)
        initial = [cached.encode(self.kind, ADDED) for cached in objects.values() if filter_.matches(cached)]
        initial.append(self.encode_bookmark(result.revision, initial_events_end=True))
        return result.revision, initial

    async def _pump(self, watcher: CacheWatcher) -> None:
        """Offers the watcher every change after its start_revision, as etcd sends them; follows
        etcd again from the last one when etcd's stream breaks."""
        kind = self.kind
        backoff = Backoff(RETRY_INITIAL, RETRY_MAX)
        while watcher.closed is None:
            try:
                async for batch in self.storage.watch(self.prefix, watcher.start_revision + 1):
                    size = sum(len(raw.value) + len(raw.prev_value or b"") for raw in batch.events)
                    # Nothing is cached, so each event's previous object comes decoded from etcd's prev_kv.
                    decoded = await self._offload(size, self._decode_events, batch.events, True)
                    for raw, (current, previous) in zip(batch.events, decoded, strict=True):
                        if current is not None:  # None: a deletion etcd sent without the object it removed
                            event = CacheEvent(raw.revision, raw.deleted, current, None if raw.deleted else previous)
                            watcher.offer(kind, event)
                        watcher.start_revision = raw.revision
                    backoff.reset()
            except CompactedError:
                watcher.close(
                    ApiError(
                        grpc.StatusCode.OUT_OF_RANGE,
                        f"resource_version {watcher.start_revision} is too old; "
                        "list again and watch from the list's resource_version",
                    )
                )
            except ApiError as error:
                delay = backoff.failure()
                self._log.warning("etcd_watch_broken", detail=error.message, retry_in=delay)
                await asyncio.sleep(delay)


def _end_on_failure(pump: asyncio.Task[None], watcher: CacheWatcher) -> None:
    """A pump that failed ends its caller's stream rather than leave it waiting for ever."""
    if not pump.cancelled() and pump.exception() is not None:
        watcher.close(ApiError(grpc.StatusCode.INTERNAL, f"watch of etcd failed: {pump.exception()!r}"))
