"""One etcd watch per kind, fanned out from memory to every Watch caller.

The cache lists a kind once, then follows etcd's watch of its key prefix. It
keeps the current objects (for snapshots) and a window of recent events (for
watches that resume from a revision). Each caller gets a bounded queue of
references to shared, pre-encoded events: a caller that cannot keep up is cut
off with RESOURCE_EXHAUSTED instead of slowing the others or growing memory.

A batch of big objects (etcd's values of 1.4 MiB) is decoded, and its events'
objects encoded for the watchers, through `offload` (the registry's: a worker
thread), so that the loop is not held 10-20 ms per object (issue 14, D10).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, ClassVar, Iterable, Mapping, Sequence

import grpc
from google.protobuf.message import Message

from kybernetes.v1 import meta_pb2
from services.common.labelsets import shared_labels
from services.common.log import get_logger
from services.common.resources import INITIAL_EVENTS_END_ANNOTATION, Kind
from services.common.runtime import Backoff
from services.common.selectors import FieldSelector, LabelSelector, Operator

from .bodycompression import KindDictionary, inflate
from .errors import ApiError
from .storage import CompactedError, KeyValue, Storage, WatchEvent, prefix_range_end

# Retries of etcd's list and watch while etcd is away.
RETRY_INITIAL = 0.1
RETRY_MAX = 5.0

# How long a Watch from a revision etcd has not reached waits for it, and how often it looks.
FUTURE_REVISION_WAIT = 2.0
_FUTURE_REVISION_POLL = 0.1

ADDED, MODIFIED, DELETED, BOOKMARK = "ADDED", "MODIFIED", "DELETED", "BOOKMARK"

# How the cache runs CPU work on a batch of `size` bytes: offload(size, work, *args) -> work(*args).
Offload = Callable[..., Awaitable[Any]]
# An object stored this big is encoded for the watchers as it is decoded (off the loop, with
# the registry's offload) rather than when a watcher first takes it (on the loop).
ENCODE_AHEAD_BYTES = 64 * 1024


async def _inline(size: int, work: Callable[..., Any], *args: Any) -> Any:
    return work(*args)


_event_fields: dict[type, tuple[bytes, bytes]] = {}


def _event_head(kind: Kind, event_type: str, object_size: int) -> bytes:
    """What a watch event message holds before its object's bytes: its `type` field, then
    the key and length of its `object` field (fields 1 and 2, in the order protobuf writes them)."""
    tags = _event_fields.get(kind.event_message)
    if tags is None:
        fields = kind.event_message.DESCRIPTOR.fields_by_name
        type_number, object_number = fields["type"].number, fields["object"].number
        if type_number > object_number:
            raise TypeError(f"{kind.event_message.DESCRIPTOR.full_name}: type must come before object")
        tags = _event_fields[kind.event_message] = (_varint(type_number << 3 | 2), _varint(object_number << 3 | 2))
    type_tag, object_tag = tags
    name = event_type.encode()
    return b"".join((type_tag, _varint(len(name)), name, object_tag, _varint(object_size)))


# (event message, event type) -> the event's head up to its object's length (see _event_head).
_event_prefixes: dict[tuple[type, str], bytes] = {}


def _encode_event(kind: Kind, event_type: str, body: bytes) -> bytes:
    """The watch event of event_type with an object encoded as body (the fan-out calls this
    once per event and watcher: the head's fixed part is made once)."""
    prefix = _event_prefixes.get((kind.event_message, event_type))
    if prefix is None:
        head = _event_head(kind, event_type, 0)
        prefix = _event_prefixes[(kind.event_message, event_type)] = head[:-1]  # without the length 0
    size = len(body)
    return b"".join((prefix, bytes((size,)) if size < 0x80 else _varint(size), body))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class CachedObject:
    """A stored object as the cache keeps it: encoded, with what the fan-out reads at every
    event kept beside it (issue 16: the API server's memory per object within 2x of its
    encoding).

    The decoded message is not kept (a decoded pod takes ~5.4 KiB, its encoding ~0.6 KiB,
    and the history holds several versions of each pod): `obj` decodes it again when asked
    (upb decodes lazily: ~1 us for a pod). The encoding itself is kept deflated against a
    recent object of the kind when that saves enough (bodycompression: a pod's 0.6 KiB come
    to ~0.25). Kept beside the bytes: the namespace (interned), the labels (one read-only dict
    per distinct label set, shared by every object and version that has it: the pods of a
    controller share theirs), and the value of the kind's trigger field (a pod's node, shared
    with the trigger index). The other selectable fields (0.5-3 KiB as a dict) are made from
    the bytes when a field selector asks: a kubelet's `spec.nodeName=X` reads the trigger
    value; other field selectors are rare."""

    __slots__ = ("_body", "namespace", "labels", "trigger")
    # The kind, the dictionary a deflated object was deflated against, and for an object of
    # ENCODE_AHEAD_BYTES or more a slot for its encoded watch events, live on a class made per
    # kind and form (CachedObject(kind, obj) makes an instance of one): two slots on every
    # object were 16 of the ~1,100 bytes of RSS a cached pod cost.
    _kind: ClassVar[Kind]
    # The slots' types, for the checker (__new__ sets them).
    _body: bytes  # the encoding, or for a _DeflatedCachedObject the encoding deflated
    namespace: str
    labels: Mapping[str, str]
    trigger: str | None

    def __new__(cls, kind: Kind, obj: Any, deflate: bool = True) -> CachedObject:
        """deflate: False for an object read once and dropped (an uncached kind's event), which
        deflating would only cost the time to deflate and inflate it."""
        body: bytes = obj.SerializeToString()
        if len(body) >= ENCODE_AHEAD_BYTES:
            # Not deflated: its events are encoded once and kept, and deflating 1.4 MiB takes ~10 ms.
            cached_class = _cached_class(kind, _BigCachedObject)
        else:
            deflated = _dictionary(kind).compress(body) if deflate else None
            if deflated is None:
                cached_class = _cached_class(kind, CachedObject)
            else:
                body, zdict = deflated
                cached_class = _cached_class(kind, _DeflatedCachedObject, zdict)
        self: CachedObject = object.__new__(cached_class)
        self._body = body
        self.namespace = sys.intern(obj.metadata.namespace)  # one string for all the versions
        self.labels = shared_labels(obj.metadata.labels)
        trigger = _TRIGGER_VALUES.get(kind.name)
        # The trigger field's value ("" when unset), None for a kind without a trigger.
        self.trigger = trigger(obj) if trigger is not None else None
        return self

    @property
    def body(self) -> bytes:
        """The object's encoding."""
        return self._body

    @property
    def obj(self) -> Any:
        """The object, decoded anew (it is not stored)."""
        return self._kind.message.FromString(self.body)

    @property
    def fields(self) -> dict[str, str]:
        """The selectable fields, made anew from the bytes."""
        return self._kind.fields(self.obj)

    def encode(self, kind: Kind, event_type: str) -> bytes:
        """The watch event of event_type with this object: the encoded object after the event's
        head, the bytes kind.event_message(type=..., object=obj) encodes to, without copying
        the object into an event message first (10 ms for a 1.4 MiB one)."""
        return _encode_event(kind, event_type, self.body)


class _DeflatedCachedObject(CachedObject):
    """An object whose encoding is kept deflated against its class's dictionary."""

    __slots__ = ()
    _zdict: ClassVar[bytes]

    @property
    def body(self) -> bytes:
        return inflate(self._body, self._zdict)


class _BigCachedObject(CachedObject):
    """An object of ENCODE_AHEAD_BYTES or more: its watch events are encoded once, one copy
    for every watcher, and kept by type."""

    __slots__ = ("_encoded",)
    _encoded: dict[str, bytes]  # by event type; set at the first encode

    def encode(self, kind: Kind, event_type: str) -> bytes:
        try:
            encoded = self._encoded
        except AttributeError:
            encoded = self._encoded = {}
        data = encoded.get(event_type)
        if data is None:
            data = encoded[event_type] = _encode_event(kind, event_type, self._body)
        return data


# (id(kind), form, id(zdict)) -> CachedObject's class for that kind's objects of that form
# (CachedObject itself, _DeflatedCachedObject, _BigCachedObject) and dictionary. By id:
# hashing a Kind hashes all its fields, once per object decoded; the class keeps its kind and
# dictionary, so neither id is another's while the class lives. Weak: the class of a
# dictionary the kind has replaced goes with the last object deflated against it.
_cached_classes: weakref.WeakValueDictionary[tuple[int, type, int], type[CachedObject]] = (
    weakref.WeakValueDictionary()
)
# Each kind's dictionary (bodycompression), by id(kind): kinds are module constants.
_dictionaries: dict[int, KindDictionary] = {}


def _dictionary(kind: Kind) -> KindDictionary:
    dictionary = _dictionaries.get(id(kind))
    if dictionary is None:
        dictionary = _dictionaries.setdefault(id(kind), KindDictionary())
    return dictionary


def _cached_class(kind: Kind, form: type[CachedObject], zdict: bytes = b"") -> type[CachedObject]:
    key = (id(kind), form, id(zdict))
    cached_class = _cached_classes.get(key)
    if cached_class is None:
        attributes: dict[str, Any] = {"__slots__": (), "_kind": kind}
        if form is _DeflatedCachedObject:
            attributes["_zdict"] = zdict
        cached_class = type(f"{form.__name__}[{kind.name}]", (form,), attributes)
        _cached_classes[key] = cached_class
    return cached_class


class CacheEvent:
    __slots__ = ("revision", "deleted", "current", "previous", "_previous_at_revision", "size", "applied_at")

    def __init__(
        self, revision: int, deleted: bool, current: CachedObject, previous: CachedObject | None, size: int = 0,
        applied_at: float = 0.0,
    ) -> None:
        self.revision = revision
        self.applied_at = applied_at  # time.monotonic() when the cache applied it (0: unknown)
        self.deleted = deleted
        # What the history counts against its byte budget: the encoded size of the object
        # as etcd sent it (a deletion's, of the object it removed when etcd sent it).
        self.size = size
        # For a deletion, `current` is the deleted object stamped with the
        # deletion's revision.
        self.current = current
        self.previous = previous
        self._previous_at_revision: CachedObject | None = None

    def previous_at_revision(self, kind: Kind) -> CachedObject:
        """The previous object stamped with this event's revision: what a
        watcher sees as DELETED when the object stops matching its selector."""
        if self._previous_at_revision is None:
            assert self.previous is not None
            obj = self.previous.obj  # decoded anew: ours to stamp
            obj.metadata.resource_version = self.revision
            self._previous_at_revision = CachedObject(kind, obj)
        return self._previous_at_revision


@dataclass
class WatchFilter:
    namespace: str = ""
    labels: LabelSelector | None = None
    fields: FieldSelector | None = None

    # Set by the cache (use_trigger) when the field selector only requires the kind's trigger
    # field to equal one value (a kubelet's spec.nodeName=X): matched against the value the
    # cache keeps beside each object, not the object's fields made anew.
    trigger_value: str | None = field(default=None, init=False)

    def use_trigger(self, trigger_field: str | None) -> None:
        fields = self.fields
        if trigger_field is not None and fields is not None and len(fields.requirements) == 1:
            (requirement,) = fields.requirements
            if requirement.field == trigger_field and requirement.operator is Operator.EQUALS:
                self.trigger_value = requirement.value

    def matches(self, cached: CachedObject) -> bool:
        if self.namespace and cached.namespace != self.namespace:
            return False
        if self.labels is not None and not self.labels.matches(cached.labels):
            return False
        if self.trigger_value is not None:
            return cached.trigger == self.trigger_value
        if self.fields is not None and not self.fields.matches(cached.fields):
            return False
        return True


# Kubernetes' watch cache triggers (pods by spec.nodeName, nodes by metadata.name): a watch whose
# field selector requires one value of its kind's trigger field (a kubelet's pods, its own Node)
# is offered only the events of objects that have that value now or had it before, not every
# event of the kind: a pod's event costs one kubelet's filter, not a thousand (issue 16).
TRIGGER_FIELDS = {"Pod": "spec.nodeName", "Node": "metadata.name"}
# Each trigger field's value read straight from the object (kind.fields makes them all).
_TRIGGER_VALUES: dict[str, Callable[[Any], str]] = {
    "Pod": lambda pod: pod.spec.node_name,
    "Node": lambda node: node.metadata.name,
}

# How often an idle watcher gets a BOOKMARK (Kubernetes' bookmarkFrequency, a minute): each one
# is a message to every idle watcher, and a thousand nodes hold thousands of watches (issue 16:
# sent every 5 s they cost the API server 0.04 cores per 300 idle hollow nodes, and the nodes as much).
DEFAULT_BOOKMARK_INTERVAL = 60.0

# The watch history's byte budget per kind (encoded objects): a watch that falls further behind
# re-lists (OUT_OF_RANGE), as one that falls behind `history` events does.
DEFAULT_HISTORY_BYTES = 64 * 2**20
# Events older than this leave the history (Kubernetes' eventFreshDuration, 75 s): a watch
# broken for longer re-lists, as Kubernetes' does. Without it a busy hour's last 20,000 events
# stayed for good (issue 16: at 30,000 pods, 0.7 KiB of memory per pod).
DEFAULT_HISTORY_AGE = 75.0
# ... but the last events of a kind stay whatever their age, as Kubernetes keeps its cache's
# lower bound of 100: a watch of a quiet kind broken a while resumes rather than re-lists.
HISTORY_MIN_EVENTS = 100

# Ends a watch stream with status OK (the server is shutting down cleanly).
END_OF_STREAM = ApiError(grpc.StatusCode.OK, "end of stream")


@dataclass(eq=False)
class CacheWatcher:
    """One Watch caller: a filter and a bounded queue of encoded events."""

    filter: WatchFilter
    start_revision: int
    capacity: int
    queue: collections.deque = field(default_factory=collections.deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    # Why the stream ends: an error status, or END_OF_STREAM for a clean finish.
    closed: ApiError | None = None
    # The value of its kind's trigger field its selector requires (None: offered every event).
    trigger: str | None = None

    def offer(self, kind: Kind, event: CacheEvent) -> None:
        if event.revision <= self.start_revision or self.closed is not None:
            return
        match_filter = self.filter.matches
        now = match_filter(event.current)
        before = event.previous is not None and match_filter(event.previous)
        if event.deleted:
            if now:
                self._push((DELETED, event.current))
        elif now:
            self._push((MODIFIED if before else ADDED, event.current))
        elif before:
            self._push((DELETED, event.previous_at_revision(kind)))

    def offer_bookmark(self, revision: int) -> None:
        # Only when idle: a bookmark matters to a watcher with nothing to read.
        if not self.queue and self.closed is None:
            self._push((BOOKMARK, revision))

    def close(self, error: ApiError) -> None:
        if self.closed is None:
            self.closed = error
            self.wakeup.set()

    def _push(self, item: tuple[str, Any]) -> None:
        if len(self.queue) >= self.capacity:
            self.queue.clear()  # drop the references at once: the caller is cut off
            self.close(
                ApiError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"watch fell more than {self.capacity} events behind; watch again from the last "
                    "resource_version received (or re-list)",
                )
            )
            return
        self.queue.append(item)
        self.wakeup.set()


class WatchCache:
    """The in-memory view of one kind, kept current by a single etcd watch."""

    # The objects it decodes are kept (and so deflated, see CachedObject); EtcdWatches' are
    # read once and dropped.
    keeps_objects: ClassVar[bool] = True

    def __init__(
        self,
        kind: Kind,
        storage: Storage,
        decode: Callable[[bytes, int], Message],
        *,
        history: int = 20_000,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        history_age: float = DEFAULT_HISTORY_AGE,
        watcher_capacity: int = 10_000,
        bookmark_interval: float = DEFAULT_BOOKMARK_INTERVAL,
        offload: Offload = _inline,
    ) -> None:
        self.kind = kind
        self.storage = storage
        self.decode = decode
        self._offload = offload
        self.prefix = kind.key_prefix().encode()
        self.revision = 0  # everything up to this revision is applied
        self.window_start = 0  # every event after this revision is in self._events
        self._objects: dict[bytes, CachedObject] = {}
        # The events a watch can resume from: at most `history` of them and `history_bytes` of
        # objects (without the byte budget, 20,000 events of 1.4 MiB objects could hold 28 GB).
        self._events: collections.deque[CacheEvent] = collections.deque()
        self._history = history
        self._history_bytes = history_bytes
        self._history_age = history_age
        self._events_bytes = 0
        self._watchers: set[CacheWatcher] = set()
        # The same watchers for the fan-out: those offered every event, and those offered only
        # the events of their trigger value.
        self._trigger_field = TRIGGER_FIELDS.get(kind.name)
        self._untriggered: set[CacheWatcher] = set()
        self._triggered: dict[str, set[CacheWatcher]] = {}
        # The current objects' keys by their trigger value: a scoped watch's snapshot (a
        # kubelet's pods) reads its own objects, not all of them.
        self._keys_by_trigger: dict[str, dict[bytes, bytes]] = {}  # ordered sets: key -> itself
        # Each trigger value held, as one string the objects that have it share (a node's
        # name, once for its 30 pods): value -> itself.
        self._trigger_values: dict[str, str] = {}
        self._watcher_capacity = watcher_capacity
        self._bookmark_interval = bookmark_interval
        self._ready = asyncio.Event()
        self._log = get_logger(cache=kind.plural)
        self._listeners: list[Callable[[], None]] = []
        self._advanced = asyncio.Event()  # set (and replaced) whenever the cache applies a change

    def on_change(self, listener: Callable[[], None]) -> None:
        """Calls listener after every change the cache applies (the authorizers' indexes
        follow RBAC objects and nodes' pods this way, with no etcd read per call)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()
        self._advanced.set()
        self._advanced = asyncio.Event()

    async def caught_up(self, revision: int, timeout: float) -> bool:
        """Waits until the cache has applied `revision` (a write of this kind just made);
        False if it has not within `timeout` seconds (etcd's watch lagging)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.revision < revision:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._advanced.wait(), remaining)
            except asyncio.TimeoutError:
                return False
        return True

    def get(self, namespace: str, name: str) -> Any | None:
        """The cached object, or None (decoded from the cache's bytes at each call)."""
        cached = self._objects.get(self.kind.key(namespace, name).encode())
        return cached.obj if cached is not None else None

    def objects(self) -> list[Any]:
        """Every cached object (decoded from the cache's bytes at each call)."""
        return [cached.obj for cached in self._objects.values()]

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def run(self) -> None:
        """Lists, then follows etcd; re-lists when the watch's history is gone."""
        bookmarks = asyncio.create_task(self._bookmark_loop())
        try:
            await self._relist()
            backoff = Backoff(RETRY_INITIAL, RETRY_MAX)
            while True:
                try:
                    async for batch in self.storage.watch(self.prefix, self.revision + 1):
                        # Nothing else changes the cache while its objects are decoded: this task alone does.
                        size = sum(len(raw.value) + len(raw.prev_value or b"") for raw in batch.events)
                        decoded = await self._offload(size, self._decode_events, batch.events, bool(self._watchers))
                        self._apply(batch.events, decoded)
                        backoff.reset()
                except CompactedError:
                    self._log.warning("watch_cache_history_compacted", revision=self.revision)
                    await self._relist()
                except ApiError as error:
                    delay = backoff.failure()
                    self._log.warning("watch_cache_etcd_watch_broken", detail=error.message, retry_in=delay)
                    await asyncio.sleep(delay)
        finally:
            bookmarks.cancel()
            self.end_watches()

    def end_watches(self) -> None:
        """Finishes every caller's stream cleanly (server shutdown)."""
        for watcher in list(self._watchers):
            watcher.close(END_OF_STREAM)

    async def _relist(self) -> None:
        backoff = Backoff(RETRY_INITIAL, RETRY_MAX)
        while True:
            try:
                result = await self.storage.range(self.prefix, prefix_range_end(self.prefix))
                break
            except ApiError as error:
                delay = backoff.failure()
                self._log.warning("watch_cache_list_failed", detail=error.message, retry_in=delay)
                await asyncio.sleep(delay)
        objects = await self._offload(sum(len(kv.value) for kv in result.kvs), self._decode_all, result.kvs)
        had_history = self._ready.is_set()
        self._objects = objects
        self._keys_by_trigger = {}
        self._trigger_values = {}
        for key, cached in objects.items():
            self._index_key(key, None, cached)
        self._events.clear()
        self._events_bytes = 0
        self.revision = self.window_start = result.revision
        if had_history:
            # Events were lost between the old window and this list: watchers
            # must start over from a fresh snapshot.
            for watcher in list(self._watchers):
                watcher.close(ApiError(grpc.StatusCode.OUT_OF_RANGE, "watch history was compacted; re-list"))
        self._ready.set()
        self._changed()
        self._log.info("watch_cache_listed", objects=len(objects), revision=result.revision)

    def _decode_all(self, kvs: Sequence[KeyValue]) -> dict[bytes, CachedObject]:
        keep = self.keeps_objects
        return {kv.key: CachedObject(self.kind, self.decode(kv.value, kv.mod_revision), keep) for kv in kvs}

    def _decode_events(
        self, events: Sequence[WatchEvent], encode: bool
    ) -> list[tuple[CachedObject | None, CachedObject | None]]:
        """For each event, what _apply needs decoded (CPU only: run through offload, while
        this cache's one task waits): the object as of the event (a deletion's stamped with
        the deletion's revision; None for a deletion etcd sent no previous value with), and
        the previous value's object when the cache does not hold one. With `encode`
        (watchers are there), each big object is also encoded as the event most watchers get."""
        kind, objects, keep = self.kind, self._objects, self.keeps_objects
        decoded: list[tuple[CachedObject | None, CachedObject | None]] = []
        for raw in events:
            previous = None
            if raw.prev_value is not None and raw.key not in objects:
                previous = CachedObject(kind, self.decode(raw.prev_value, 0), keep)
            current = None
            if not raw.deleted or raw.prev_value is not None:  # a deletion's value is its previous one
                current = CachedObject(kind, self.decode(raw.value, raw.revision), keep)
                if encode and len(raw.value) >= ENCODE_AHEAD_BYTES:
                    known = raw.key in objects or raw.prev_value is not None
                    current.encode(kind, DELETED if raw.deleted else MODIFIED if known else ADDED)
            decoded.append((current, previous))
        return decoded

    def _apply(
        self, events: Sequence[WatchEvent], decoded: Sequence[tuple[CachedObject | None, CachedObject | None]]
    ) -> None:
        kind = self.kind
        now = self._now()
        for raw, (current, decoded_previous) in zip(events, decoded, strict=True):
            stored = self._objects.get(raw.key)
            previous = stored or decoded_previous
            self._index_key(raw.key, stored, None if raw.deleted else current)
            if raw.deleted:
                self._objects.pop(raw.key, None)
                if current is None:
                    if previous is not None:
                        obj = previous.obj  # decoded anew: ours to stamp
                        obj.metadata.resource_version = raw.revision
                        current = CachedObject(kind, obj)
                    else:
                        current = CachedObject(kind, self.decode(raw.value, raw.revision))
                event = CacheEvent(raw.revision, True, current, None, len(raw.value), now)
            else:
                assert current is not None
                self._objects[raw.key] = current
                event = CacheEvent(raw.revision, False, current, previous, len(raw.value), now)
            self._events.append(event)
            self._events_bytes += event.size
            self._trim_history(now)
            self.revision = raw.revision
            self._fan_out(event)
        # Drop cut-off watchers from the fan-out at once.
        if any(w.closed is not None for w in self._watchers):
            for watcher in [w for w in self._watchers if w.closed is not None]:
                self._unregister(watcher)
        if events:
            self._changed()

    # The history's clock (an instance attribute in a test).
    _now = staticmethod(time.monotonic)

    def _trim_history(self, now: float) -> None:
        """Drops the oldest events past the count, the byte budget or the age (keeping the
        last HISTORY_MIN_EVENTS whatever their age)."""
        events = self._events
        oldest_kept = now - self._history_age
        while len(events) > 1 and (
            len(events) > self._history
            or self._events_bytes > self._history_bytes
            or (len(events) > HISTORY_MIN_EVENTS and 0 < events[0].applied_at < oldest_kept)
        ):
            evicted = events.popleft()
            self._events_bytes -= evicted.size
            self.window_start = evicted.revision

    def _index_key(self, key: bytes, before: CachedObject | None, after: CachedObject | None) -> None:
        """Moves key between the trigger value buckets: it held `before`, now holds `after`."""
        if self._trigger_field is None:
            return
        old = before.trigger if before is not None else None
        new = after.trigger if after is not None else None
        if new is not None:
            assert after is not None
            after.trigger = self._trigger_values.setdefault(new, new)  # the one shared string
        if old == new:
            return
        if old is not None:
            keys = self._keys_by_trigger.get(old)
            if keys is not None:
                # Moved on is the key the cache already holds (the one in self._objects too),
                # not the equal bytes etcd sent with this event: one copy per object, not two.
                key = keys.pop(key, key)
                if not keys:
                    del self._keys_by_trigger[old]
                    self._trigger_values.pop(old, None)
        if new is not None:
            self._keys_by_trigger.setdefault(new, {})[key] = key

    def _fan_out(self, event: CacheEvent) -> None:
        kind = self.kind
        if self._trigger_field is None:
            for watcher in self._watchers:
                watcher.offer(kind, event)
            return
        for watcher in self._untriggered:
            watcher.offer(kind, event)
        value = event.current.trigger or ""
        for watcher in self._triggered.get(value, ()):
            watcher.offer(kind, event)
        if event.previous is not None:
            before = event.previous.trigger or ""
            if before != value:  # it leaves those watchers' selection: they see it DELETED
                for watcher in self._triggered.get(before, ()):
                    watcher.offer(kind, event)

    def _register(self, watcher: CacheWatcher) -> None:
        watcher.filter.use_trigger(self._trigger_field)
        self._watchers.add(watcher)
        fields = watcher.filter.fields
        if self._trigger_field is not None and fields is not None:
            watcher.trigger = fields.equals(self._trigger_field)
        if watcher.trigger is None:
            self._untriggered.add(watcher)
        else:
            self._triggered.setdefault(watcher.trigger, set()).add(watcher)

    def _unregister(self, watcher: CacheWatcher) -> None:
        self._watchers.discard(watcher)
        if watcher.trigger is None:
            self._untriggered.discard(watcher)
            return
        bucket = self._triggered.get(watcher.trigger)
        if bucket is not None:
            bucket.discard(watcher)
            if not bucket:
                del self._triggered[watcher.trigger]

    async def _bookmark_loop(self) -> None:
        while True:
            await asyncio.sleep(self._bookmark_interval)
            self._trim_history(self._now())  # a kind gone quiet lets its old events go too
            revision = self.revision
            for watcher in self._watchers:
                watcher.offer_bookmark(max(revision, watcher.start_revision))

    async def _wait_for_revision(self, revision: int) -> None:
        """Returns once etcd has reached `revision`; OUT_OF_RANGE naming resourceVersion
        when it does not within FUTURE_REVISION_WAIT seconds.

        The cache's own revision is the last write of this kind, while a List hands out
        etcd's revision (any kind's writes move it): a watch from a revision above the
        cache's is normal, so the check is against etcd. A revision etcd has not reached
        may be one another API server is committing right now, hence the brief wait (as
        Kubernetes' "Too large resource version", which answers 504 Timeout after waiting).
        Then OUT_OF_RANGE rather than INVALID_ARGUMENT: gRPC's code for a value past the
        valid range that may become valid as the system's state changes (the revision may
        yet exist), and clients already answer it by listing again, which is right here.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FUTURE_REVISION_WAIT
        while True:
            current = await self.storage.current_revision()
            if revision <= current:
                return
            if loop.time() >= deadline:
                raise ApiError(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"resourceVersion: Too large resource version: {revision}, current: {current}; "
                    "watch from a resourceVersion a List or Get returned",
                )
            await asyncio.sleep(_FUTURE_REVISION_POLL)

    def snapshot(self, filter_: WatchFilter) -> tuple[list[CachedObject], int]:
        field = self._trigger_field
        filter_.use_trigger(field)
        value = filter_.fields.equals(field) if field is not None and filter_.fields is not None else None
        if value is not None:
            objects = self._objects
            scoped = (objects[key] for key in self._keys_by_trigger.get(value, ()))
            return [c for c in scoped if filter_.matches(c)], self.revision
        return [c for c in self._objects.values() if filter_.matches(c)], self.revision

    def encode_bookmark(self, revision: int, initial_events_end: bool = False) -> bytes:
        meta = meta_pb2.ObjectMeta(resource_version=revision)
        if initial_events_end:
            meta.annotations[INITIAL_EVENTS_END_ANNOTATION] = "true"
        return self.kind.event_message(type=BOOKMARK, object=self.kind.message(metadata=meta)).SerializeToString()

    async def watch(
        self, filter_: WatchFilter, resource_version: int, send_initial_events: bool
    ) -> AsyncIterator[bytes]:
        """Encoded events for one caller, forever (an async generator)."""
        await self._ready.wait()
        kind = self.kind
        initial: Iterable[bytes] = ()
        if send_initial_events:
            objects, start = self.snapshot(filter_)
            # Each encoded as the stream sends it, not all before the first: the snapshot of
            # 30,000 pods held the loop 0.1 s at once (each inflated, see CachedObject) at an
            # API server restart, when every informer asks for one, and 20 MB of events.
            end = self.encode_bookmark(start, initial_events_end=True)
            initial = itertools.chain((c.encode(kind, ADDED) for c in objects), (end,))
        elif resource_version == 0:
            start = self.revision
        else:
            start = resource_version
            if start > self.revision:
                await self._wait_for_revision(start)
            if start < self.window_start or (start < self.revision and await self.storage.is_compacted(start + 1)):
                raise ApiError(
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"resource_version {start} is too old (oldest available {self.window_start}); "
                    "list again and watch from the list's resource_version",
                )
            if start < self.window_start:  # the window moved during the check above
                raise ApiError(grpc.StatusCode.OUT_OF_RANGE, f"resource_version {start} is too old; re-list")
        filter_.use_trigger(self._trigger_field)
        watcher = CacheWatcher(filter_, start, self._watcher_capacity)
        # Replay the part of the window after `start`, then register: no await
        # in between, so no event falls in a gap or arrives twice.
        replay = []
        for event in reversed(self._events):
            if event.revision <= start:
                break
            replay.append(event)
        for event in reversed(replay):
            watcher.offer(kind, event)
        self._register(watcher)
        try:
            async for data in self._stream(watcher, initial):
                yield data
        finally:
            self._unregister(watcher)

    async def _stream(self, watcher: CacheWatcher, initial: Iterable[bytes]) -> AsyncIterator[bytes]:
        """The caller's stream: `initial`, then what is offered to its watcher, until it is closed."""
        kind = self.kind
        for data in initial:
            yield data
        while True:
            while watcher.queue:
                event_type, payload = watcher.queue.popleft()
                if event_type == BOOKMARK:
                    yield self.encode_bookmark(payload)
                else:
                    yield payload.encode(kind, event_type)
            if watcher.closed is END_OF_STREAM:
                return
            if watcher.closed is not None:
                raise watcher.closed
            watcher.wakeup.clear()
            await watcher.wakeup.wait()
