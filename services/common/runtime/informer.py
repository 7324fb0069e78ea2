"""A resuming, caching Watch: the one way components learn about objects.

An Informer opens one Watch with send_initial_events (a snapshot, then live
changes), keeps the objects in memory, and calls its handlers for every change.
After a broken stream it resumes from the last revision it saw; when that
revision is gone (OUT_OF_RANGE) it takes a fresh snapshot and reports the
difference against what it held, so handlers never miss a deletion.
"""

from __future__ import annotations

import asyncio
import builtins
from typing import Any, Awaitable, Callable

import grpc

from kybernetes.v1 import meta_pb2

from services.common.client import ApiClient
from services.common.log import get_logger
from services.common.resources import INITIAL_EVENTS_END_ANNOTATION, Kind

from .backoff import Backoff

ObjectKey = tuple[str, str]  # (namespace, name)
# handler(event_type, obj, old): event_type is ADDED, MODIFIED or DELETED;
# old is the previous version for MODIFIED, else None.
Handler = Callable[[str, Any, Any], Awaitable[None] | None]


def object_key(obj: Any) -> ObjectKey:
    return (obj.metadata.namespace, obj.metadata.name)


class Informer:
    def __init__(
        self,
        client: ApiClient,
        kind: Kind,
        *,
        namespace: str = "",
        label_selector: str = "",
        field_selector: str = "",
        retry_initial: float = 0.1,
        retry_max: float = 5.0,
    ) -> None:
        self.client = client
        self.kind = kind
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.revision = 0
        # Where a broken stream resumes. Several objects can share a revision
        # (writes committed in one etcd transaction), so after an event at R we
        # resume from R - 1 and skip what we already hold; after a bookmark at
        # B, everything up to B has arrived.
        self._resume_from = 0
        self._objects: dict[ObjectKey, Any] = {}
        self._by_namespace: dict[str, dict[str, Any]] = {}  # namespace -> name -> object
        self._handlers: list[Handler] = []
        self._synced = asyncio.Event()
        self._backoff = Backoff(retry_initial, retry_max, jitter=0.5)
        self._log = get_logger(informer=kind.plural, selector=field_selector or label_selector or None)

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._synced.wait(), timeout)

    def get(self, namespace: str, name: str) -> Any | None:
        return self._objects.get((namespace, name))

    def list(self) -> builtins.list[Any]:
        return list(self._objects.values())

    def __len__(self) -> int:
        return len(self._objects)

    def in_namespace(self, namespace: str) -> builtins.list[Any]:
        """The objects held in one namespace, without scanning the others."""
        return list(self._by_namespace.get(namespace, {}).values())

    async def run(self) -> None:
        """Watches until cancelled, reconnecting with back-off."""
        need_snapshot = True
        while True:
            try:
                await self._watch(snapshot=need_snapshot)
                # The server ended the stream cleanly (e.g. shutting down): resume.
                self._backoff.reset()
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code == grpc.StatusCode.OUT_OF_RANGE:
                    self._log.info("watch_revision_gone", revision=self.revision, detail=error.details())
                    need_snapshot = True
                    continue
                if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED):
                    self._log.error("watch_rejected", code=code.name, detail=error.details())
                    raise
                delay = self._backoff.failure()
                self._log.warning("watch_broken", code=code.name, detail=error.details(), retry_in=round(delay, 2))
                await asyncio.sleep(delay)
                continue
            need_snapshot = self.revision == 0

    async def _watch(self, *, snapshot: bool) -> None:
        options = meta_pb2.ListOptions(
            namespace=self.namespace,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            resource_version=0 if snapshot else self._resume_from,
            send_initial_events=snapshot,
        )
        call = self.client.watch(self.kind, options)
        pending: dict[ObjectKey, Any] | None = {} if snapshot else None
        try:
            async for event in call:
                if self._backoff.failures():
                    self._backoff.reset()  # the stream works again: the next break starts short
                obj = event.object
                if event.type == "BOOKMARK":
                    self.revision = max(self.revision, obj.metadata.resource_version)
                    self._resume_from = self.revision
                    if pending is not None and obj.metadata.annotations.get(INITIAL_EVENTS_END_ANNOTATION) == "true":
                        await self._replace(pending)
                        pending = None
                        self._synced.set()
                    continue
                self.revision = max(self.revision, obj.metadata.resource_version)
                self._resume_from = self.revision - 1
                if pending is not None:
                    pending[object_key(obj)] = obj
                    continue
                await self._apply(event.type, obj)
        finally:
            call.cancel()

    async def _replace(self, snapshot: dict[ObjectKey, Any]) -> None:
        """Installs a fresh snapshot, reporting how it differs from what we held."""
        old_objects = self._objects
        self._objects = snapshot
        self._by_namespace = {}
        for (namespace, name), obj in snapshot.items():
            self._by_namespace.setdefault(namespace, {})[name] = obj
        for key, old in old_objects.items():
            if key not in snapshot:
                await self._notify("DELETED", old, None)
        for key, obj in snapshot.items():
            old = old_objects.get(key)
            if old is None:
                await self._notify("ADDED", obj, None)
            elif old.metadata.resource_version != obj.metadata.resource_version:
                await self._notify("MODIFIED", obj, old)

    async def _apply(self, event_type: str, obj: Any) -> None:
        key = object_key(obj)
        old = self._objects.get(key)
        if event_type == "DELETED":
            if old is None:
                return  # replayed after a resume: already gone
            self._objects.pop(key, None)
            self._by_namespace.get(key[0], {}).pop(key[1], None)
            await self._notify("DELETED", obj, None)
            return
        if old is not None and old.metadata.resource_version >= obj.metadata.resource_version:
            return  # replayed after a resume: already applied
        self._objects[key] = obj
        self._by_namespace.setdefault(key[0], {})[key[1]] = obj
        await self._notify("MODIFIED" if old is not None else "ADDED", obj, old)

    async def _notify(self, event_type: str, obj: Any, old: Any) -> None:
        for handler in self._handlers:
            try:
                result = handler(event_type, obj, old)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # a broken handler must not stop the watch
                self._log.exception(
                    "informer_handler_failed", event_type=event_type,
                    object=f"{obj.metadata.namespace}/{obj.metadata.name}",
                )
