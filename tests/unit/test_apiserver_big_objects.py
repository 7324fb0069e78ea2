"""A big object's CPU work runs off the API server's event loop, with the same results (issue 14, D10).

The registry decodes, defaults, validates and encodes an object of OFFLOAD_BYTES or more in
its one worker thread (registry.off_loop); admission stays on the loop. These tests hold no
timing bound (bench/bigobjects.py measures latencies): they show where the work runs, that
the loop keeps serving while it does, and that the answers and the stored bytes are those of
the inline path, which every object below the threshold still takes.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
import pytest

from kybernetes.v1 import meta_pb2, pod_pb2
from services.apiserver import registry as registry_module
from services.apiserver.errors import ApiError
from services.apiserver.registry import OFFLOAD_BYTES, RECEIVED, Registry, encoded_size, off_loop
from services.apiserver.storage import KeyValue, RangeResult, WatchEvent
from services.apiserver.strategies import PodStrategy
from services.apiserver.watchcache import ADDED, DELETED, MODIFIED, CachedObject
from services.common.resources import PODS

NAMESPACE = "big"


def big_pod(name: str, labels: int = 5_000, *, valid: bool = True) -> pod_pb2.Pod:
    """~170 KiB of labels: well past OFFLOAD_BYTES, quick to build (bench/bigobjects.py uses 1.4 MiB)."""
    key = "k{}.example.com/key" if valid else "K_{}!/bad key"
    pod = pod_pb2.Pod(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=NAMESPACE, labels={"app": "big"}),
        spec=pod_pb2.PodSpec(containers=[pod_pb2.Container(name="main", image="busybox")]),
    )
    pod.metadata.labels.update({key.format(i): "v" for i in range(labels)})
    return pod


class FakeStorage:
    """The handful of Storage calls the registry's writes and List make, over a dict."""

    def __init__(self) -> None:
        self.revision = 1
        self.values: dict[bytes, KeyValue] = {}

    def _put(self, key: bytes, value: bytes) -> int:
        self.revision += 1
        old = self.values.get(key)
        self.values[key] = KeyValue(key, value, self.revision, old.create_revision if old else self.revision)
        return self.revision

    async def get(self, key: bytes) -> KeyValue | None:
        return self.values.get(key)

    async def create(self, key: bytes, value: bytes) -> int | None:
        return None if key in self.values else self._put(key, value)

    async def update(self, key: bytes, value: bytes, expected: int) -> int | None:
        old = self.values.get(key)
        return self._put(key, value) if old is not None and old.mod_revision == expected else None

    async def delete(self, key: bytes, expected: int) -> int | None:
        old = self.values.get(key)
        if old is None or old.mod_revision != expected:
            return None
        del self.values[key]
        self.revision += 1
        return self.revision

    async def range(
        self, key: bytes, range_end: bytes | None = None, *, limit: int = 0, revision: int = 0, count_only: bool = False
    ) -> RangeResult:
        kvs = [kv for k, kv in sorted(self.values.items()) if key <= k < (range_end or key + b"\0")]
        more = bool(limit) and len(kvs) > limit
        return RangeResult(kvs[:limit] if limit else kvs, self.revision, more)


class Recorder:
    """An admission plugin noting the thread it runs in."""

    name = "recorder"

    def __init__(self) -> None:
        self.threads: list[int] = []

    def admit(self, request: Any) -> None:
        self.threads.append(threading.get_ident())


class RecordingPodStrategy(PodStrategy):
    def __init__(self) -> None:
        super().__init__(PODS)
        self.threads: list[int] = []

    def validate(self, obj: pod_pb2.Pod) -> list:
        self.threads.append(threading.get_ident())
        return super().validate(obj)


def pod_registry(strategy: PodStrategy | None = None) -> tuple[Registry, Recorder]:
    registry = Registry(strategy or PodStrategy(PODS), FakeStorage())  # type: ignore[arg-type]
    recorder = Recorder()
    registry.admission.plugins = [recorder]
    return registry, recorder


# -- where the work runs ---------------------------------------------------------------------------


async def test_small_work_runs_on_the_loop_and_big_work_in_the_worker_thread():
    here = threading.get_ident()
    assert await off_loop(OFFLOAD_BYTES - 1, threading.get_ident) == here
    assert await off_loop(OFFLOAD_BYTES, threading.get_ident) != here
    # Two big jobs share the one worker: big objects are worked on one at a time.
    first, second = await asyncio.gather(
        off_loop(OFFLOAD_BYTES, threading.get_ident), off_loop(OFFLOAD_BYTES, threading.get_ident)
    )
    assert first == second != here


async def test_the_worker_sees_the_callers_context():
    RECEIVED.set(("request", 7))
    assert await off_loop(OFFLOAD_BYTES, RECEIVED.get) == ("request", 7)


def test_the_size_of_the_request_being_served_is_the_size_received():
    pod = big_pod("p", labels=10)
    assert encoded_size(pod) == pod.ByteSize()  # not the request: measured
    RECEIVED.set((pod, 123_456))
    assert encoded_size(pod) == 123_456
    assert encoded_size(big_pod("other", labels=10)) == big_pod("other", labels=10).ByteSize()


async def test_a_big_object_is_validated_off_the_loop_and_admitted_on_it():
    strategy = RecordingPodStrategy()
    registry, recorder = pod_registry(strategy)
    here = threading.get_ident()
    await registry.create(big_pod("small", labels=1))
    assert strategy.threads == [here] and recorder.threads == [here]
    strategy.threads.clear()
    recorder.threads.clear()
    await registry.create(big_pod("big"))
    assert strategy.threads and strategy.threads[0] != here
    assert recorder.threads == [here]  # admission reads the watch caches: only the loop may


async def test_the_loop_serves_others_while_a_big_object_is_validated():
    """The validation below can finish only once another coroutine has run after it began:
    had it run on the loop, it would wait out its timeout and the create would fail."""
    started, answered = threading.Event(), threading.Event()

    class WaitingStrategy(PodStrategy):
        def validate(self, obj: pod_pb2.Pod) -> list:
            started.set()
            assert answered.wait(30), "nothing else ran on the loop while a big object was validated"
            return super().validate(obj)

    registry, _ = pod_registry(WaitingStrategy(PODS))

    async def another_client() -> None:
        assert await asyncio.to_thread(started.wait, 30)
        answered.set()  # from the loop

    created, _ = await asyncio.gather(registry.create(big_pod("big")), another_client())
    assert created.metadata.resource_version > 0


# -- the same answers and the same stored bytes as the inline path ------------------------------


def without_times(pod: Any) -> Any:
    """pod without what differs from one run to the next (uid, creation and deletion times)."""
    for name in ("uid", "creation_timestamp", "deletion_timestamp"):
        pod.metadata.ClearField(name)
    return pod


def normalized(value: bytes) -> bytes:
    return bytes(without_times(pod_pb2.Pod.FromString(value)).SerializeToString(deterministic=True))


async def writes(registry: Registry) -> tuple[list[bytes], list[Any]]:
    """A create, an update, a status update, a graceful delete and a List of big pods: what
    etcd holds after each, and every answer (an object, or an error's code and message)."""
    storage: FakeStorage = registry.storage  # type: ignore[assignment]
    stored: list[bytes] = []
    answers: list[Any] = []

    async def call(awaitable: Any) -> None:
        try:
            answer = await awaitable
        except ApiError as error:
            answers.append((error.code, error.message))
            return
        if isinstance(answer, bytes):  # a List
            listing = pod_pb2.PodList.FromString(answer)
            for item in listing.items:
                without_times(item)
            answers.append(listing)
        else:
            answers.append(without_times(type(answer).FromString(answer.SerializeToString())))
        stored.append(b"".join(normalized(kv.value) for _, kv in sorted(storage.values.items())))

    key = PODS.key(NAMESPACE, "big").encode()
    await call(registry.create(big_pod("big")))
    await call(registry.create(big_pod("other")))
    await call(registry.create(big_pod("bad", valid=False)))
    current = registry.decode(storage.values[key].value, storage.values[key].mod_revision)
    current.metadata.annotations["changed"] = "yes"
    await call(registry.update(current))
    current = registry.decode(storage.values[key].value, storage.values[key].mod_revision)
    await call(registry.update(current))  # unchanged: keeps its resource_version
    current.spec.containers[0].command.append("forbidden")  # a pod's spec may not change
    await call(registry.update(current))
    status = pod_pb2.Pod(metadata=meta_pb2.ObjectMeta(name="big", namespace=NAMESPACE))
    status.status.phase = "Running"
    await call(registry.subresources["UpdateStatus"].handle(status))
    listed = meta_pb2.ListOptions(namespace=NAMESPACE)
    await call(registry.list(listed))
    listed.label_selector = "app=big,k7.example.com/key=v"
    listed.limit = 1
    await call(registry.list(listed))
    await call(registry.delete(meta_pb2.DeleteRequest(namespace=NAMESPACE, name="other")))
    node_bound = storage.values[key]
    bound = registry.decode(node_bound.value, 0)
    bound.spec.node_name = "node-1"  # a bound pod is deleted gracefully: marked, kept
    storage.values[key] = KeyValue(key, registry.encode(bound), node_bound.mod_revision, node_bound.create_revision)
    await call(registry.delete(meta_pb2.DeleteRequest(namespace=NAMESPACE, name="big")))
    return stored, answers


async def test_big_objects_are_stored_and_answered_as_inline(monkeypatch: pytest.MonkeyPatch):
    offloaded = await writes(pod_registry()[0])
    monkeypatch.setattr(registry_module, "OFFLOAD_BYTES", 2**40)
    reference = await writes(pod_registry()[0])
    assert offloaded[0] == reference[0]
    assert offloaded[1] == reference[1]
    codes = [answer[0] for answer in offloaded[1] if isinstance(answer, tuple)]
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT]


async def test_a_big_invalid_object_gets_the_inline_error(monkeypatch: pytest.MonkeyPatch):
    registry, _ = pod_registry()
    with pytest.raises(ApiError) as offloaded:
        await registry.create(big_pod("bad", valid=False))
    monkeypatch.setattr(registry_module, "OFFLOAD_BYTES", 2**40)
    with pytest.raises(ApiError) as reference:
        await registry.create(big_pod("bad", valid=False))
    assert offloaded.value.code == reference.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert offloaded.value.message == reference.value.message
    assert offloaded.value.message.startswith('Pod "bad" is invalid: metadata.labels: Invalid value: ')
    assert offloaded.value.message.endswith(" more errors")


# -- the watch cache ------------------------------------------------------------------------------------


@pytest.mark.parametrize("labels", [0, 1, 5_000])
def test_a_cached_event_is_the_event_message_encoded(labels: int):
    pod = big_pod("p", labels=labels)
    pod.metadata.resource_version = 42
    cached = CachedObject(PODS, pod)
    for event_type in (ADDED, MODIFIED, DELETED):
        expected = PODS.event_message(type=event_type, object=pod)
        data = cached.encode(PODS, event_type)
        assert PODS.event_message.FromString(data) == expected
        if labels == 0:  # the pod's one label, one map entry: protobuf's own encoding, byte for byte
            assert data == expected.SerializeToString()
        if labels == 5_000:  # ENCODE_AHEAD_BYTES or more: encoded once, one copy for every watcher
            assert cached.encode(PODS, event_type) is data


async def test_the_watch_cache_applies_big_events_as_small_ones(monkeypatch: pytest.MonkeyPatch):
    """Puts, an update and deletions (with and without etcd's previous value) of big pods,
    applied through the worker thread and inline: the same objects, the same events."""
    registry, _ = pod_registry()

    def stored(pod: pod_pb2.Pod) -> bytes:
        return registry.encode(pod)

    first, second = big_pod("a"), big_pod("b")
    changed = big_pod("a")
    changed.metadata.annotations["v"] = "2"
    key_a, key_b = PODS.key(NAMESPACE, "a").encode(), PODS.key(NAMESPACE, "b").encode()
    batches = [
        [WatchEvent(False, key_a, stored(first), None, 2), WatchEvent(False, key_b, stored(second), None, 3)],
        [WatchEvent(False, key_a, stored(changed), stored(first), 4)],
        [WatchEvent(True, key_a, stored(changed), stored(changed), 5), WatchEvent(True, key_b, b"", None, 6)],
    ]

    async def apply_all() -> list[tuple[str, bytes]]:
        cache = registry.cache
        cache._objects.clear()
        cache._events.clear()
        seen = []
        for batch in batches:
            decoded = await cache._offload(
                sum(len(e.value) for e in batch), cache._decode_events, batch, True
            )
            cache._apply(batch, decoded)
            objects = sorted((k, c.obj.SerializeToString(deterministic=True)) for k, c in cache._objects.items())
            seen.append(("objects", b"".join(k + v for k, v in objects)))
        for event in cache._events:
            kind = DELETED if event.deleted else (MODIFIED if event.previous is not None else ADDED)
            seen.append((kind, event.current.obj.SerializeToString(deterministic=True)))
        return seen

    offloaded = await apply_all()
    monkeypatch.setattr(registry_module, "OFFLOAD_BYTES", 2**40)
    assert offloaded == await apply_all()
    assert [kind for kind, _ in offloaded[3:]] == [ADDED, ADDED, MODIFIED, DELETED, DELETED]


async def test_list_selects_big_objects_as_inline(monkeypatch: pytest.MonkeyPatch):
    registry, _ = pod_registry()
    for index in range(3):
        pod = big_pod(f"p{index}")
        pod.metadata.labels["index"] = str(index)
        await registry.create(pod)
    options = meta_pb2.ListOptions(namespace=NAMESPACE, label_selector="index!=1", limit=1)
    first = await registry.list(options)
    page = pod_pb2.PodList.FromString(first)
    assert [p.metadata.name for p in page.items] == ["p0"] and page.metadata.continue_token
    options.continue_token = page.metadata.continue_token
    rest = await registry.list(options)
    assert [p.metadata.name for p in pod_pb2.PodList.FromString(rest).items] == ["p2"]
    monkeypatch.setattr(registry_module, "OFFLOAD_BYTES", 2**40)
    assert await registry.list(options) == rest
    options.continue_token = ""
    assert await registry.list(options) == first
