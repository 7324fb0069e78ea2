"""The event recorder's pure core (aggregation, per-object rate limit, bounded caches), its
non-blocking queue, the API server's lease reuse for events, validation and printing."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import event_pb2, meta_pb2, node_pb2, pod_pb2
from services.apiserver.storage import LeaseReuse
from services.common import events, printing
from services.common.events import (
    NORMAL,
    WARNING,
    Correlator,
    EventRecorder,
    EventSink,
    Occurrence,
    TokenBucket,
    reference,
    validate_event,
    validate_event_update,
)
from services.common.resources import EVENTS

T0 = 1_800_000_000.0


def pod(name: str = "web", uid: str = "uid-web", namespace: str = "default") -> pod_pb2.Pod:
    return pod_pb2.Pod(metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace, uid=uid, resource_version=7))


def occurrence(
    at: float, *, name: str = "web", reason: str = "BackOff", message: str = "Back-off restarting",
    component: str = "kubelet", host: str = "node-1", type: str = WARNING,
) -> Occurrence:
    return Occurrence(reference(pod(name, f"uid-{name}")), type, reason, message, component, host, at)


# -- references ---------------------------------------------------------------------------------


def test_reference_of_a_pod_and_of_a_node() -> None:
    ref = reference(pod())
    assert (ref.kind, ref.api_version, ref.namespace, ref.name, ref.uid, ref.resource_version) == (
        "Pod", "v1", "default", "web", "uid-web", 7
    )
    node = reference(node_pb2.Node(metadata=meta_pb2.ObjectMeta(name="node-1", uid="real-uid")))
    # kubectl describe node looks its events up by uid = the node's name, as the kubelet records them.
    assert (node.kind, node.namespace, node.name, node.uid) == ("Node", "", "node-1", "node-1")


# -- aggregation ----------------------------------------------------------------------------------


def test_the_first_occurrence_creates_an_event_in_the_objects_namespace() -> None:
    write = Correlator().observe(occurrence(T0))
    assert write is not None and write.create
    event = write.event
    assert event.metadata.namespace == "default" and event.metadata.name == f"web.{int(T0 * 1e9):x}"
    assert (event.count, event.type, event.reason) == (1, WARNING, "BackOff")
    assert (event.source.component, event.source.host) == ("kubelet", "node-1")
    assert event.first_timestamp == event.last_timestamp == Timestamp(seconds=int(T0))
    assert validate_event(event) == []


@pytest.mark.parametrize(
    ("second", "aggregated"),
    [
        pytest.param({}, True, id="same everything"),
        pytest.param({"message": "other"}, False, id="another message"),
        pytest.param({"reason": "Failed"}, False, id="another reason"),
        pytest.param({"name": "db"}, False, id="another object"),
        pytest.param({"component": "scheduler"}, False, id="another component"),
        pytest.param({"host": "node-2"}, False, id="another host"),
        pytest.param({"type": NORMAL}, False, id="another type"),
    ],
)
def test_a_repeat_updates_the_event_and_anything_else_is_new(second: dict, aggregated: bool) -> None:
    correlator = Correlator()
    first = correlator.observe(occurrence(T0))
    assert first is not None
    correlator.done(first, True)
    write = correlator.observe(occurrence(T0 + 30, **second))
    assert write is not None
    if aggregated:
        assert not write.create
        assert write.event.metadata.name == first.event.metadata.name
        assert write.event.count == 2
        assert write.event.first_timestamp.seconds == int(T0) and write.event.last_timestamp.seconds == int(T0 + 30)
        assert validate_event_update(write.event, first.event) == []
    else:
        assert write.create and write.event.count == 1
        assert write.event.metadata.name != first.event.metadata.name


def test_an_event_whose_write_failed_is_made_afresh() -> None:
    correlator = Correlator()
    first = correlator.observe(occurrence(T0))
    assert first is not None
    correlator.done(first, False)
    again = correlator.observe(occurrence(T0 + 1))
    assert again is not None and again.create and again.event.count == 1


def test_a_repeat_before_the_first_write_stored_still_creates() -> None:
    correlator = Correlator(burst=1, refill_seconds=300)
    assert correlator.observe(occurrence(T0)) is not None  # never marked done (say, rejected)
    held = correlator.observe(occurrence(T0 + 1))
    assert held is None  # the bucket is empty
    write = correlator.observe(occurrence(T0 + 301))
    assert write is not None and write.create  # nothing was stored: create, with the whole count
    assert write.event.count == 3


# -- rate limit -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("times", "allowed"),
    [
        pytest.param([0.0] * 3, [True, True, False], id="burst of 2 then held"),
        pytest.param([0.0, 0.0, 10.0], [True, True, True], id="one token back after refill_seconds"),
        pytest.param([0.0, 0.0, 9.9], [True, True, False], id="not before"),
        pytest.param([0.0, 0.0, 100.0, 100.0, 100.0], [True, True, True, True, False], id="refill capped at burst"),
    ],
)
def test_token_bucket(times: list[float], allowed: list[bool]) -> None:
    bucket = TokenBucket(2.0, 0.0)
    assert [bucket.take(t, 2, 10.0) for t in times] == allowed


def test_the_rate_limit_is_per_object_and_source_and_held_repeats_count() -> None:
    correlator = Correlator(burst=25, refill_seconds=300)
    writes = [correlator.observe(occurrence(T0 + i * 0.001, message=f"m{i}")) for i in range(30)]
    assert sum(w is not None for w in writes) == 25  # client-go's burst
    # Another object, and the same object seen by another component, have buckets of their own.
    assert correlator.observe(occurrence(T0, name="db")) is not None
    assert correlator.observe(occurrence(T0, component="scheduler")) is not None
    # A repeat of a held-back message is counted: written once a token is back, with count 2.
    correlator.observe(occurrence(T0 + 1, message="m29"))
    later = correlator.observe(occurrence(T0 + 301, message="m29"))
    assert later is not None and later.create and later.event.count == 3


def test_caches_are_bounded_lrus() -> None:
    correlator = Correlator(max_keys=3)
    for i in range(10):
        write = correlator.observe(occurrence(T0 + i, name=f"p{i}"))
        assert write is not None
        correlator.done(write, True)
    assert len(correlator.seen) == 3 and len(correlator.written) <= 3 and len(correlator.buckets) == 3
    assert [key[4] for key in correlator.seen] == ["p7", "p8", "p9"]
    # A key evicted is new again: created, not updated.
    again = correlator.observe(occurrence(T0 + 20, name="p0"))
    assert again is not None and again.create and again.event.count == 1


def test_long_reasons_and_messages_are_cut_to_what_validation_takes() -> None:
    write = Correlator().observe(occurrence(T0, reason="R" * 500, message="é" * 5000))
    assert write is not None
    assert validate_event(write.event) == []
    assert write.event.message.endswith("...")


# -- the queue: never blocks, bounded ---------------------------------------------------------------


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, event_pb2.Event]] = []
        self.stored: dict[str, event_pb2.Event] = {}
        self.release = asyncio.Event()
        self.release.set()

    async def create(self, event: event_pb2.Event) -> event_pb2.Event:
        await self.release.wait()
        self.calls.append(("create", event))
        self.stored[event.metadata.name] = event
        return event

    async def update(self, event: event_pb2.Event) -> event_pb2.Event:
        await self.release.wait()
        self.calls.append(("update", event))
        if event.metadata.name not in self.stored:
            raise grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone")
        self.stored[event.metadata.name] = event
        return event


async def test_event_never_waits_and_a_full_queue_drops() -> None:
    client = FakeClient()
    client.release.clear()  # the API hangs
    recorder = EventRecorder(client, "kubelet", host="node-1", queue_size=3)
    recorder.start()
    for i in range(10):
        recorder.event(pod(), WARNING, "BackOff", f"m{i}")  # returns at once, API or not
    # Nothing ran meanwhile (event() never yields): three queued, the rest dropped.
    assert recorder.sink.dropped == 7
    await asyncio.sleep(0.01)  # the writer takes one and waits on the API: room for one more
    recorder.event(pod(), WARNING, "BackOff", "m10")
    recorder.event(pod(), WARNING, "BackOff", "m11")
    assert recorder.sink.dropped == 8
    client.release.set()
    await recorder.close(drain=5)
    assert [call[1].message for call in client.calls] == ["m0", "m1", "m2", "m10"]


async def test_repeats_are_written_as_updates_and_an_expired_one_is_created_again() -> None:
    client = FakeClient()
    clock = iter([T0, T0 + 1, T0 + 2])
    sink = EventSink(client, clock=lambda: next(clock))
    scheduler = EventRecorder(None, "default-scheduler", sink=sink)
    sink.start()
    scheduler.event(pod(), NORMAL, "Scheduled", "Successfully assigned default/web to node-1")
    scheduler.event(pod(), NORMAL, "Scheduled", "Successfully assigned default/web to node-1")
    await sink.close(drain=5)
    assert [(verb, e.count) for verb, e in client.calls] == [("create", 1), ("update", 2)]
    # The stored event expired (its lease ran out): the update finds nothing, and creates it.
    client.stored.clear()
    sink.start()
    scheduler.for_component("default-scheduler").event(
        pod(), NORMAL, "Scheduled", "Successfully assigned default/web to node-1"
    )
    await sink.close(drain=5)
    assert [(verb, e.count) for verb, e in client.calls][2:] == [("update", 3), ("create", 3)]
    assert client.stored[client.calls[-1][1].metadata.name].source.component == "default-scheduler"


# -- the API server's lease reuse -----------------------------------------------------------------


def test_lease_reuse_shares_one_lease_per_window() -> None:
    leases = LeaseReuse()
    assert leases.reuse(3600, 0.0) is None  # none yet: grant one of 3600 + 60 s
    assert leases.reuse_window(3600) == 60
    leases.granted(11, 3600, 0.0)
    assert leases.reuse(3600, 30.0) == 11
    assert leases.reuse(3600, 59.0) == 11
    assert leases.reuse(3600, 60.0) is None  # the lease would end before this key's ttl: a new one
    assert leases.reuse(60, 1.0) is None  # another ttl
    leases.granted(12, 3600, 100.0)
    leases.attached = leases.max_objects
    assert leases.reuse(3600, 101.0) is None  # full
    # A short ttl (tests' --event-ttl) has no window: a lease per write.
    assert leases.reuse_window(5) == 0
    leases.granted(13, 5, 200.0)
    assert leases.reuse(5, 200.0) is None
    leases.granted(14, 3600, 300.0)
    leases.forget()
    assert leases.reuse(3600, 300.0) is None


# -- validation ------------------------------------------------------------------------------------


def event(**fields: object) -> event_pb2.Event:
    base = event_pb2.Event(
        metadata=meta_pb2.ObjectMeta(name="web.1", namespace="default"),
        involved_object=pod_pb2.ObjectReference(kind="Pod", name="web", namespace="default"),
        reason="Scheduled", message="m", type=NORMAL, count=1,
    )
    for name, value in fields.items():
        if value is None:
            base.ClearField(name)
        else:
            setattr(base, name, value)
    return base


@pytest.mark.parametrize(
    ("changed", "path"),
    [
        pytest.param({"involved_object": None}, "involvedObject", id="no involvedObject"),
        pytest.param({"type": "Bad"}, "type", id="type"),
        pytest.param({"reason": "R" * 129}, "reason", id="long reason"),
        pytest.param({"count": -1}, "count", id="negative count"),
        pytest.param({"api_version": "v2"}, "apiVersion", id="apiVersion"),
    ],
)
def test_validation_names_the_field(changed: dict, path: str) -> None:
    errors = validate_event(event(**changed))
    assert [e.path for e in errors] == [path]


def test_validation_of_the_reference() -> None:
    e = event()
    e.involved_object.Clear()
    e.involved_object.namespace = "default"
    assert [x.path for x in validate_event(e)] == ["involvedObject.kind", "involvedObject.name"]
    e = event()
    e.involved_object.namespace = "other"
    assert [x.path for x in validate_event(e)] == ["involvedObject.namespace"]
    node = event()
    node.involved_object.CopyFrom(events.node_reference("node-1"))
    assert validate_event(node) == []  # a cluster-scoped object's events live in default


def test_an_update_may_change_count_and_last_timestamp_only() -> None:
    old = event()
    assert validate_event_update(event(count=5), old) == []
    assert [e.path for e in validate_event_update(event(message="other"), old)] == ["message"]
    assert [e.path for e in validate_event_update(event(reason="Other"), old)] == ["reason"]


# -- printing --------------------------------------------------------------------------------------


def test_printing_cells_as_kubectl() -> None:
    now = dt.datetime.fromtimestamp(T0 + 600, dt.timezone.utc)
    e = event(count=3)
    e.first_timestamp.FromSeconds(int(T0))
    e.last_timestamp.FromSeconds(int(T0 + 540))
    e.source.component, e.source.host = "kubelet", "node-1"
    assert printing.event_last_seen(e, now) == "60s"
    assert printing.event_first_seen(e, now) == "10m"
    assert printing.event_object(e) == "pod/web"
    assert printing.event_source(e) == "kubelet, node-1"
    assert printing.event_interval(e, now) == "60s (x3 over 10m)"
    assert printing.event_count(event(count=0)) == 1
    assert printing.event_source(event()) == "<unknown>"
    assert EVENTS.fields(e)["involvedObject.name"] == "web"


def test_kubecfg_tables_and_describe_as_kubectl() -> None:
    from services.kubecfg.describe import describe_events
    from services.kubecfg.printers import TableOptions, format_objects

    now = dt.datetime.fromtimestamp(T0 + 600, dt.timezone.utc)
    e = event(count=3)
    e.first_timestamp.FromSeconds(int(T0))
    e.last_timestamp.FromSeconds(int(T0 + 540))
    e.source.component = "default-scheduler"
    lines = format_objects(EVENTS, [e], now, TableOptions())
    assert lines[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert lines[1].split() == ["60s", "Normal", "Scheduled", "pod/web", "m"]
    wide = format_objects(EVENTS, [e], now, TableOptions(wide=True, all_namespaces=True))
    assert wide[0].split() == [
        "NAMESPACE", "LAST", "SEEN", "TYPE", "REASON", "OBJECT", "SUBOBJECT", "SOURCE", "MESSAGE", "FIRST", "SEEN",
        "COUNT", "NAME",
    ]
    assert wide[1].split() == ["default", "60s", "Normal", "Scheduled", "pod/web", "default-scheduler", "m", "10m",
                               "3", "web.1"]
    text = describe_events([e], now)
    assert text.splitlines() == [
        "Events:",
        "  Type    Reason     Age                From               Message",
        "  ----    ------     ----               ----               -------",
        "  Normal  Scheduled  60s (x3 over 10m)  default-scheduler  m",
    ]
    assert describe_events([], now) == "Events:  <none>\n"


class Recording:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str, str]] = []

    def event(self, obj: Any, type: str, reason: str, message: str) -> None:
        self.event_on(reference(obj), type, reason, message)

    def event_on(self, ref: pod_pb2.ObjectReference, type: str, reason: str, message: str) -> None:
        self.events.append((ref.kind, ref.name, type, reason, message))


class WritesEverything:
    async def update_status(self, obj: Any) -> Any:
        return obj

    async def delete(self, *args: Any, **kwargs: Any) -> None:
        return None


class NoLeases:
    def get(self, namespace: str, name: str) -> None:
        return None


async def test_node_lifecycle_records_not_ready_and_evictions() -> None:
    from services.apiserver.nodelifecycle import EvictPod, MarkNodeUnknown, MarkPodNotReady, NodeLifecycleController

    recorder = Recording()
    controller = NodeLifecycleController(recorder=recorder)
    controller.client = WritesEverything()  # type: ignore[assignment]
    controller.leases = NoLeases()  # type: ignore[assignment]
    node = node_pb2.Node(metadata=meta_pb2.ObjectMeta(name="node-1"))
    bound = pod()
    bound.spec.node_name = "node-1"
    await controller.apply(
        [MarkNodeUnknown(node), MarkPodNotReady(bound, "node-1"), EvictPod(bound, "node node-1 is gone")], T0
    )
    assert sorted(recorder.events) == sorted([
        ("Node", "node-1", NORMAL, "NodeNotReady", "Node node-1 status is now: NodeNotReady"),
        ("Pod", "web", WARNING, "NodeNotReady", "Node is not ready"),
        ("Pod", "web", NORMAL, "NodeControllerEviction", "Marking for deletion Pod default/web: node node-1 is gone"),
        ("Node", "node-1", NORMAL, "DeletingAllPods", "Deleting all Pods from Node node-1."),
    ])
