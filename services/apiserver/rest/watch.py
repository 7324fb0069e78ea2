"""`GET ...?watch=1`: a chunked stream of `{"type": ..., "object": ...}` JSON lines.

The events come from the registry's Watch (the watch cache), exactly as the gRPC Watch gets
them; this module only turns each into Kubernetes' WatchEvent JSON and applies the
Kubernetes-only query semantics:

- resourceVersion unset or "0": the current objects first, as ADDED (Kubernetes' "get
  state and start at most recent"), then changes; otherwise changes after that revision.
- BOOKMARK events only with allowWatchBookmarks=true; the bookmark that closes the initial
  events (annotated k8s.io/initial-events-end) only when sendInitialEvents=true asked for it.
- A revision the cache no longer holds, or a watcher that fell behind, ends the stream with
  an ERROR event holding a Status (410 Expired / 429), as Kubernetes' watch cache does once
  the response has started; the client lists again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from typing import Any, Callable, Mapping

from aiohttp import web

from kybernetes.v1 import meta_pb2
from services.common.log import get_logger
from services.common.resources import INITIAL_EVENTS_END_ANNOTATION, Kind

from ..errors import ApiError
from ..registry import Registry, off_loop
from ..watchcache import BOOKMARK
from .jsonconv import event_to_json, object_to_json
from .status import bad_request, from_api_error
from .table import include_object, table, wants_table

log = get_logger()

_TRUE = ("true", "1")


def watch_options(namespace: str, query: Mapping[str, str]) -> tuple[meta_pb2.ListOptions, bool, bool]:
    """The registry's ListOptions for a watch request, whether to forward bookmarks, and
    whether the initial-events-end bookmark was asked for."""
    text = query.get("resourceVersion", "")
    explicit_initial = query.get("sendInitialEvents", "") in _TRUE
    initial = explicit_initial or text in ("", "0")
    revision = 0
    if not initial:
        if not text.isdigit():
            raise bad_request(f"resourceVersion: invalid value {text[:64]!r}: not a resource version")
        revision = int(text)
    options = meta_pb2.ListOptions(
        namespace=namespace,
        label_selector=query.get("labelSelector", ""),
        field_selector=query.get("fieldSelector", ""),
        resource_version=revision,
        send_initial_events=initial,
    )
    bookmarks = query.get("allowWatchBookmarks", "") in _TRUE
    return options, bookmarks, explicit_initial and bookmarks


def timeout_of(query: Mapping[str, str]) -> float | None:
    text = query.get("timeoutSeconds", "")
    if not text:
        return None
    if not text.isdigit():
        raise bad_request(f"timeoutSeconds: invalid value {text[:64]!r}: not a number of seconds")
    return float(text) or None


# The JSON lines of recent events, by the event's encoded bytes: the watch cache hands every
# watcher of an event the same bytes object, so a thousand watchers cost one conversion (its
# hash is computed once, and a hit compares by identity). Bounded by the bytes it keeps alive.
SHARED_LINES_BYTES = 32 * 2**20


class _SharedLines:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        # By (kind name, event bytes): stored objects need not carry their kind.
        self._lines: collections.OrderedDict[tuple[str, bytes], bytes] = collections.OrderedDict()

    def get(self, kind: Kind, data: bytes) -> bytes | None:
        key = (kind.name, data)
        line = self._lines.get(key)
        if line is not None:
            self._lines.move_to_end(key)
        return line

    def put(self, kind: Kind, data: bytes, line: bytes) -> None:
        cost = len(data) + len(line)
        key = (kind.name, data)
        if cost > self.limit // 4 or key in self._lines:
            return
        self._lines[key] = line
        self.size += cost
        while self.size > self.limit:
            (_, old), old_line = self._lines.popitem(last=False)
            self.size -= len(old) + len(old_line)


_shared = _SharedLines(SHARED_LINES_BYTES)


def _encode(kind: Kind, data: bytes, bookmarks: bool, initial_end: bool) -> tuple[bytes | None, bool]:
    """The event's JSON line (None: not for this watcher), and whether it may be shared (not a
    bookmark: those are made for each watcher)."""
    event: Any = kind.event_message.FromString(data)
    if event.type == BOOKMARK:
        if not bookmarks:
            return None, False
        if INITIAL_EVENTS_END_ANNOTATION in event.object.metadata.annotations and not initial_end:
            return None, False
        return json.dumps(event_to_json(kind, event), separators=(",", ":")).encode() + b"\n", False
    return json.dumps(event_to_json(kind, event), separators=(",", ":")).encode() + b"\n", True


class _TableEvents:
    """One watcher's events as Tables of one row (`kubectl get -w`): the column definitions in
    the first, as Kubernetes sends them; bookmarks as they are."""

    def __init__(self, kind: Kind, include: str, bookmarks: bool, initial_end: bool) -> None:
        self.kind = kind
        self.include = include
        self.bookmarks = bookmarks
        self.initial_end = initial_end
        self.first = True

    def encode(self, data: bytes) -> bytes | None:
        event: Any = self.kind.event_message.FromString(data)
        if event.type == BOOKMARK:
            return _encode(self.kind, data, self.bookmarks, self.initial_end)[0]
        if event.type not in ("ADDED", "MODIFIED", "DELETED"):
            return json.dumps({"type": event.type, "object": object_to_json(self.kind, event.object)}).encode() + b"\n"
        document = table(self.kind, [event.object], self.include, definitions=self.first)
        self.first = False
        return json.dumps({"type": event.type, "object": document}, separators=(",", ":")).encode() + b"\n"


async def serve_watch(
    request: web.Request, kind: Kind, registry: Registry, namespace: str, stopping: Callable[[], bool]
) -> web.StreamResponse:
    """Streams events until the client goes, timeoutSeconds passes, the stream ends, or the
    server stops (it cancels the watch, and `stopping()` is then true)."""
    options, bookmarks, initial_end = watch_options(namespace, request.query)
    timeout = timeout_of(request.query)
    tables = (_TableEvents(kind, include_object(request.query), bookmarks, initial_end)
              if wants_table(request.headers.get("Accept", "")) else None)
    # Selectors are checked here, before the response starts: a bad one is a 400 Status.
    events = registry.watch(options)
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    sent = 0
    try:
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async with asyncio.timeout(timeout):
                async for data in events:
                    if tables is not None:  # per watcher (its first event differs): not shared
                        line = await off_loop(len(data), tables.encode, data)
                        if line is not None:
                            await response.write(line)
                            sent += 1
                        continue
                    line = _shared.get(kind, data)
                    if line is None:
                        # A big object's event is turned into JSON in the big-object thread.
                        line, shareable = await off_loop(len(data), _encode, kind, data, bookmarks, initial_end)
                        if shareable and line is not None:
                            _shared.put(kind, data, line)
                    if line is not None:
                        await response.write(line)
                        sent += 1
    except TimeoutError:
        pass  # timeoutSeconds: a clean end, the client watches again from its last revision
    except ApiError as error:
        status = from_api_error(error, kind=kind.plural).body()
        await response.write(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
    except asyncio.CancelledError:
        if not stopping():
            raise  # the client went (aiohttp's handler cancellation)
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # handled: what follows may await
        # The server is stopping: end the stream properly, so that the client sees an ended watch
        # (and watches again, elsewhere) rather than a broken response.
    except ConnectionError:
        return response  # the client went
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response
