"""Events: what happened to an object, told by the component that saw it.

One recorder for every component (client-go's record.EventRecorder and EventCorrelator):

    recorder = EventRecorder(client, "kubelet", host=node_name)   # once, in the component's main
    recorder.start()
    recorder.event(pod, WARNING, "BackOff", "Back-off restarting failed container web")
    ...
    await recorder.close()

`event` never waits for the API: it puts a small record on a bounded queue and returns (a full
queue drops the record, with a log line at most every few seconds). One task drains the queue
through the pure `Correlator`, which

- aggregates repeats: the same object, type, reason, message and source as an event already
  written updates that event (count + 1, lastTimestamp) instead of making a new one (client-go's
  eventLogger; its key cache is an LRU of `max_keys`);
- rate-limits per object and source, a token bucket of `burst` tokens refilled one per
  `refill_seconds` (client-go's EventSourceObjectSpamFilter: 25, one per 5 minutes). A repeat
  held back still counts: the next write carries the whole count.

and writes what it decides (Create, or Update of the aggregated event; an Update that finds the
event gone, expired after the API server's --event-ttl, creates it again).

Validation of the kind (the API server's, through its strategy) is here too: what an Event must
say, and what an update may not change.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import grpc
from google.protobuf.message import Message

from kybernetes.v1 import event_pb2, meta_pb2, pod_pb2

from .log import get_logger
from .resources import DEFAULT_NAMESPACE, EVENTS, NODES, PODS, kind_of_message
from .timestamps import timestamp_at
from .validation import FieldError, invalid, not_supported, required, validate_object_meta

NORMAL, WARNING = "Normal", "Warning"
EVENT_TYPES = (NORMAL, WARNING)

# Kubernetes' limits for the new events API; the recorder cuts a longer message to fit.
MAX_REASON_LENGTH = 128
MAX_MESSAGE_BYTES = 4096
MAX_COMPONENT_LENGTH = 128
_MAX_NAME = 253
_NAME_SUFFIX = 17  # "." and a nanosecond clock in hex

# client-go's defaults (tools/record/events_cache.go).
DEFAULT_MAX_KEYS = 4096
DEFAULT_BURST = 25
DEFAULT_REFILL_SECONDS = 300.0
DEFAULT_QUEUE_SIZE = 1000
_DROP_LOG_INTERVAL = 10.0
_WRITE_TRIES = 3
_RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED)

log = get_logger()


# -- validation ----------------------------------------------------------------------------------


def validate_event(event: event_pb2.Event) -> list[FieldError]:
    """Kubernetes' ValidateEventCreate (legacy core/v1), and what an event must name: the object
    it is about (involvedObject.kind and .name), a known type, limits on reason and message."""
    errors: list[FieldError] = []
    if event.api_version not in ("", EVENTS.api_version):
        errors.append(not_supported("apiVersion", event.api_version, [EVENTS.api_version]))
    if event.kind not in ("", EVENTS.name):
        errors.append(not_supported("kind", event.kind, [EVENTS.name]))
    errors += validate_object_meta(event.metadata, namespaced=True)
    if not event.HasField("involved_object"):
        errors.append(required("involvedObject", "the object the event is about"))
    else:
        ref = event.involved_object
        if not ref.kind:
            errors.append(required("involvedObject.kind"))
        if not ref.name:
            errors.append(required("involvedObject.name"))
        namespace = event.metadata.namespace
        # A cluster-scoped object's events live in "default" (or no namespace), others in its own.
        if ref.namespace and namespace and ref.namespace != namespace:
            errors.append(invalid("involvedObject.namespace", ref.namespace, "does not match event.namespace"))
        if not ref.namespace and namespace not in ("", DEFAULT_NAMESPACE):
            errors.append(invalid("involvedObject.namespace", ref.namespace, "does not match event.namespace"))
    if event.type and event.type not in EVENT_TYPES:
        errors.append(not_supported("type", event.type, EVENT_TYPES))
    if len(event.reason) > MAX_REASON_LENGTH:
        errors.append(invalid("reason", event.reason, f"must be no more than {MAX_REASON_LENGTH} characters"))
    if len(event.message.encode()) > MAX_MESSAGE_BYTES:
        errors.append(invalid("message", event.message, f"must be no more than {MAX_MESSAGE_BYTES} bytes"))
    for path, value in (
        ("source.component", event.source.component),
        ("source.host", event.source.host),
        ("reportingComponent", event.reporting_component),
        ("reportingInstance", event.reporting_instance),
    ):
        if len(value) > MAX_COMPONENT_LENGTH:
            errors.append(invalid(path, value, f"must be no more than {MAX_COMPONENT_LENGTH} characters"))
    if event.count < 0:
        errors.append(invalid("count", event.count, "must be greater than or equal to 0"))
    return errors


# What an update may not change (Kubernetes' ValidateEventUpdate): only count, lastTimestamp and
# metadata move as an event repeats.
_IMMUTABLE = (
    ("involved_object", "involvedObject"),
    ("reason", "reason"),
    ("message", "message"),
    ("source", "source"),
    ("first_timestamp", "firstTimestamp"),
    ("type", "type"),
)


def validate_event_update(event: event_pb2.Event, old: event_pb2.Event) -> list[FieldError]:
    errors = validate_event(event)
    for name, path in _IMMUTABLE:
        if getattr(event, name) != getattr(old, name):
            errors.append(FieldError(path, "Invalid value: field is immutable"))
    return errors


# -- references ---------------------------------------------------------------------------------


def reference(obj: Message) -> pod_pb2.ObjectReference:
    """The ObjectReference of an API object, as client-go's reference.GetReference. A node's uid
    is its name, as the kubelet and node controller record it (kubectl describe node asks so)."""
    kind = kind_of_message(obj)
    meta: meta_pb2.ObjectMeta = obj.metadata  # type: ignore[attr-defined]
    return pod_pb2.ObjectReference(
        kind=kind.name,
        api_version=kind.api_version,
        namespace=meta.namespace if kind.namespaced else "",
        name=meta.name,
        uid=meta.name if kind is NODES else meta.uid,
        resource_version=meta.resource_version,
    )


def node_reference(name: str) -> pod_pb2.ObjectReference:
    return pod_pb2.ObjectReference(kind=NODES.name, api_version=NODES.api_version, name=name, uid=name)


def pod_reference(namespace: str, name: str, uid: str) -> pod_pb2.ObjectReference:
    return pod_pb2.ObjectReference(
        kind=PODS.name, api_version=PODS.api_version, namespace=namespace, name=name, uid=uid
    )


# -- the pure core ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One call of EventRecorder.event: what happened, to what, seen by whom, when."""

    ref: pod_pb2.ObjectReference
    type: str
    reason: str
    message: str
    component: str
    host: str
    at: float  # epoch seconds


# The fields of an occurrence that make two of them "the same event" (client-go's getEventKey).
EventKey = tuple[str, ...]
# ...and those that make them about the same object from the same source (getSpamKey).
SpamKey = tuple[str, ...]


def event_key(o: Occurrence) -> EventKey:
    ref = o.ref
    return (
        o.component, o.host, ref.kind, ref.namespace, ref.name, ref.uid, ref.api_version, ref.field_path,
        o.type, o.reason, o.message,
    )


def spam_key(o: Occurrence) -> SpamKey:
    ref = o.ref
    return (o.component, o.host, ref.kind, ref.namespace, ref.name, ref.uid, ref.api_version)


@dataclass(slots=True)
class TokenBucket:
    """`burst` tokens, refilled at one per refill_seconds (client-go's flowcontrol token bucket)."""

    tokens: float
    updated: float

    def take(self, now: float, burst: int, refill_seconds: float) -> bool:
        if now > self.updated:
            self.tokens = min(float(burst), self.tokens + (now - self.updated) / refill_seconds)
            self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(frozen=True, slots=True)
class Write:
    """What the correlator decided: create `event`, or update the stored one (create False)."""

    key: EventKey
    event: event_pb2.Event
    create: bool


def _truncate(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "..."


def event_name(ref: pod_pb2.ObjectReference, at: float) -> str:
    """client-go's "<object name>.<nanoseconds in hex>", cut to fit a name."""
    return f"{ref.name[: _MAX_NAME - _NAME_SUFFIX]}.{int(at * 1e9):x}"


def new_event(o: Occurrence) -> event_pb2.Event:
    stamp = timestamp_at(o.at)
    ref = pod_pb2.ObjectReference()
    ref.CopyFrom(o.ref)
    return event_pb2.Event(
        metadata=meta_pb2.ObjectMeta(name=event_name(o.ref, o.at), namespace=o.ref.namespace or DEFAULT_NAMESPACE),
        involved_object=ref,
        reason=_truncate(o.reason, MAX_REASON_LENGTH),
        message=_truncate(o.message, MAX_MESSAGE_BYTES),
        source=event_pb2.EventSource(component=o.component, host=o.host),
        first_timestamp=stamp,
        last_timestamp=stamp,
        count=1,
        type=o.type,
        reporting_component=o.component,
        reporting_instance=o.host,
    )


@dataclass
class Correlator:
    """Decides, for each occurrence in turn, what to write (pure: no I/O, the clock is the
    occurrence's own time). Both caches are LRUs bounded by max_keys."""

    max_keys: int = DEFAULT_MAX_KEYS
    burst: int = DEFAULT_BURST
    refill_seconds: float = DEFAULT_REFILL_SECONDS
    # key -> the event as last decided (name, count, timestamps)
    seen: collections.OrderedDict[EventKey, event_pb2.Event] = field(default_factory=collections.OrderedDict)
    # key -> whether the event as seen has been written (an update needs one to exist)
    written: dict[EventKey, bool] = field(default_factory=dict)
    buckets: collections.OrderedDict[SpamKey, TokenBucket] = field(default_factory=collections.OrderedDict)

    def observe(self, o: Occurrence) -> Write | None:
        """The write for o, or None when the object's rate limit holds it back (counted still)."""
        key = event_key(o)
        previous = self.seen.get(key)
        if previous is None:
            event = new_event(o)
        else:
            event = event_pb2.Event()
            event.CopyFrom(previous)
            event.count += 1
            event.last_timestamp.CopyFrom(timestamp_at(o.at))
        self._remember(key, event)
        if not self._allowed(o):
            return None
        return Write(key, event, create=not self.written.get(key, False))

    def done(self, write: Write, stored: bool) -> None:
        """The outcome of a write: stored (the event exists now), or not (the next occurrence
        creates it afresh, under a new name)."""
        if write.key not in self.seen:
            return
        if stored:
            self.written[write.key] = True
        else:
            self.seen.pop(write.key, None)
            self.written.pop(write.key, None)

    def _remember(self, key: EventKey, event: event_pb2.Event) -> None:
        self.seen[key] = event
        self.seen.move_to_end(key)
        while len(self.seen) > self.max_keys:
            old, _ = self.seen.popitem(last=False)
            self.written.pop(old, None)

    def _allowed(self, o: Occurrence) -> bool:
        key = spam_key(o)
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(float(self.burst), o.at)
        self.buckets.move_to_end(key)
        while len(self.buckets) > self.max_keys:
            self.buckets.popitem(last=False)
        return bucket.take(o.at, self.burst, self.refill_seconds)


# -- the recorder -------------------------------------------------------------------------------


class Recorder(Protocol):
    def event(self, obj: Message, type: str, reason: str, message: str) -> None: ...

    def event_on(self, ref: pod_pb2.ObjectReference, type: str, reason: str, message: str) -> None: ...


class NullRecorder:
    """Records nothing (a controller built without a recorder: unit tests, tools)."""

    def event(self, obj: Message, type: str, reason: str, message: str) -> None:
        pass

    def event_on(self, ref: pod_pb2.ObjectReference, type: str, reason: str, message: str) -> None:
        pass


class EventSink:
    """The queue, the correlator and the one task that writes: shared by every recorder of a
    process (EventRecorder.for_component)."""

    def __init__(
        self,
        client: Any,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        correlator: Correlator | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.correlator = correlator or Correlator()
        self.clock = clock
        self.queue: asyncio.Queue[Occurrence] = asyncio.Queue(maxsize=queue_size)
        self.task: asyncio.Task[None] | None = None
        self.dropped = 0  # occurrences lost to a full queue
        self.written = 0  # creates and updates that succeeded
        self._last_drop_log = float("-inf")

    def put(self, occurrence: Occurrence) -> None:
        try:
            self.queue.put_nowait(occurrence)
        except asyncio.QueueFull:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log >= _DROP_LOG_INTERVAL:
                self._last_drop_log = now
                log.warning(
                    "event_dropped", reason=occurrence.reason, object=f"{occurrence.ref.kind}/{occurrence.ref.name}",
                    queue=self.queue.maxsize, dropped_total=self.dropped,
                )

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.run(), name="event-recorder")

    async def close(self, drain: float = 1.0) -> None:
        """Writes what is queued for up to `drain` seconds, then stops."""
        if self.task is None:
            return
        if drain > 0 and not self.queue.empty():
            try:
                await asyncio.wait_for(self.queue.join(), drain)
            except asyncio.TimeoutError:
                pass
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        self.task = None

    async def run(self) -> None:
        while True:
            occurrence = await self.queue.get()
            try:
                write = self.correlator.observe(occurrence)
                if write is not None:
                    self.correlator.done(write, await self._write(write))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event_write_failed", reason=occurrence.reason)
            finally:
                self.queue.task_done()

    async def _write(self, write: Write) -> bool:
        """Create or update, a few tries; False when it could not be stored."""
        create = write.create
        for attempt in range(_WRITE_TRIES):
            try:
                if create:
                    await self.client.create(write.event)
                else:
                    await self.client.update(write.event)
                self.written += 1
                return True
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if not create and code == grpc.StatusCode.NOT_FOUND:
                    create = True  # expired or deleted: write it again
                    continue
                if create and code == grpc.StatusCode.ALREADY_EXISTS:
                    create = False
                    continue
                if code not in _RETRIED:
                    log.warning(
                        "event_rejected", reason=write.event.reason, event_name=write.event.metadata.name,
                        code=code.name, detail=error.details(),
                    )
                    return False
                await asyncio.sleep(0.5 * 2**attempt)
        log.warning("event_write_gave_up", reason=write.event.reason, event_name=write.event.metadata.name)
        return False


class EventRecorder:
    """Records events of one component (source.component, and source.host: its node)."""

    def __init__(self, client: Any, component: str, host: str = "", *, sink: EventSink | None = None,
                 queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.component = component
        self.host = host
        self.sink = sink if sink is not None else EventSink(client, queue_size=queue_size)

    def for_component(self, component: str, host: str | None = None) -> EventRecorder:
        """A recorder for another component of this process, sharing this one's queue and task."""
        return EventRecorder(None, component, self.host if host is None else host, sink=self.sink)

    def start(self) -> None:
        """Starts the writing task (on the running loop)."""
        self.sink.start()

    async def close(self, drain: float = 1.0) -> None:
        await self.sink.close(drain)

    def event(self, obj: Message, type: str, reason: str, message: str) -> None:
        """Records that `reason` happened to obj. Never blocks nor raises for the API's sake."""
        self.event_on(reference(obj), type, reason, message)

    def event_on(self, ref: pod_pb2.ObjectReference, type: str, reason: str, message: str) -> None:
        """As event, for an object known by reference (a node by name, a container's field path)."""
        self.sink.put(Occurrence(ref, type, reason, message, self.component, self.host, self.sink.clock()))
