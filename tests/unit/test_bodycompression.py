"""The watch cache keeps its objects deflated against a dictionary of their kind (issue 16):
what a watcher or a Get reads back is the very encoding, a kind's dictionary follows its
objects, and a cached pod costs less than its encoding."""

from __future__ import annotations

import os
import tracemalloc
import uuid

from google.protobuf.timestamp_pb2 import Timestamp

from kybernetes.v1 import meta_pb2, pod_pb2
from services.apiserver.bodycompression import CHECK_EVERY, KindDictionary, inflate
from services.apiserver.storage import WatchEvent
from services.apiserver.watchcache import CachedObject, WatchCache, _dictionary
from services.common.resources import PODS


def running_pod(index: int, controller: str = "web") -> pod_pb2.Pod:
    """A pod as a cluster holds it once it runs: what is unique to it (name, uid, IP,
    container id) beside what its controller's pods share."""
    pod = pod_pb2.Pod(metadata=meta_pb2.ObjectMeta(
        name=f"{controller}-{index:05d}", namespace="default", uid=str(uuid.uuid4()), resource_version=100 + index,
        labels={"app": controller}, annotations={"kybernetes.io/created-by": controller},
        owner_references=[meta_pb2.OwnerReference(api_version="v1", kind="ReplicationController", name=controller,
                                                  uid="6f1c1b0e-9d55-4f0c-8a39-5b0f3f7d7c11", controller=True)],
    ))
    pod.spec.containers.add(name="main", image="registry.local/web:1.4.2", command=["/bin/server", "--port=8080"])
    pod.spec.node_name = f"node-{index % 50}"
    pod.status.phase = "Running"
    now = Timestamp(seconds=1_780_000_000 + index)
    for condition in ("Initialized", "Ready", "ContainersReady", "PodScheduled"):
        pod.status.conditions.add(type=condition, status="True", last_transition_time=now)
    pod.status.pod_ip = f"10.244.{index // 256 % 256}.{index % 256}"
    pod.status.container_statuses.add(name="main", ready=True, image="registry.local/web:1.4.2",
                                      container_id=f"docker://{uuid.uuid4().hex}{uuid.uuid4().hex}")
    return pod


def test_a_pod_deflates_against_another_and_inflates_to_its_bytes() -> None:
    dictionary = KindDictionary()
    first, second = (running_pod(i).SerializeToString() for i in (1, 2))
    dictionary.compress(first)
    assert dictionary.zdict == first  # the kind's first object is its dictionary
    deflated = dictionary.compress(second)
    assert deflated is not None
    packed, zdict = deflated
    assert zdict is dictionary.zdict and len(packed) < len(second) / 2
    assert inflate(packed, zdict) == second


def test_what_deflates_too_little_is_kept_as_it_is() -> None:
    dictionary = KindDictionary()
    dictionary.compress(running_pod(1).SerializeToString())
    assert dictionary.compress(os.urandom(600)) is None  # nothing to share
    assert dictionary.compress(b"\x0a\x03abc") is None  # too short to save anything


def test_the_dictionary_follows_a_kind_whose_first_object_was_unlike_the_rest() -> None:
    dictionary = KindDictionary()
    dictionary.compress(os.urandom(400))  # the first object: nothing like what follows
    pods = [running_pod(i).SerializeToString() for i in range(CHECK_EVERY + 1)]
    early = dictionary.compress(pods[0])
    for body in pods[1:]:
        dictionary.compress(body)
    late = dictionary.compress(running_pod(CHECK_EVERY + 1).SerializeToString())
    assert early is not None and late is not None
    assert len(late[0]) < 0.6 * len(early[0])


def test_a_kind_whose_objects_keep_changing_makes_few_dictionaries() -> None:
    dictionary = KindDictionary()
    dictionaries = set()
    shapes = [os.urandom(150).hex() for _ in range(CHECK_EVERY * 16 // 100 + 1)]  # each controller's own
    for index in range(CHECK_EVERY * 16):
        shape = index // 100  # another controller every 100 objects
        pod = running_pod(index, f"rc-{shape}")
        pod.metadata.annotations["config"] = shapes[shape]
        dictionary.compress(pod.SerializeToString())
        dictionaries.add(dictionary.zdict)
    assert len(dictionaries) <= 5  # the first, then one at most at 256, 768, 1,792 and 3,840 objects


def test_a_cached_pod_reads_back_its_encoding_whatever_its_dictionary_became() -> None:
    pods = [running_pod(i) for i in range(3)]
    cached = [CachedObject(PODS, pod) for pod in pods]
    replaced = _dictionary(PODS)
    kept = replaced.zdict
    try:
        replaced.zdict = running_pod(9, "other").SerializeToString()  # as a check replaces it
        cached.append(CachedObject(PODS, pods[0]))
    finally:
        replaced.zdict = kept
    assert [c.obj for c in cached] == [*pods, pods[0]]
    for c, pod in zip(cached, [*pods, pods[0]], strict=True):
        assert c.encode(PODS, "MODIFIED") == PODS.event_message(type="MODIFIED", object=pod).SerializeToString()
        assert c.fields["spec.nodeName"] == pod.spec.node_name
    assert type(cached[3]) is not type(cached[1])  # each dictionary on a class of its own
    assert isinstance(cached[3], CachedObject) and type(cached[3])._kind is PODS


def test_a_cached_pod_costs_less_memory_than_its_encoding() -> None:
    count = 2_000
    pods = [running_pod(i, f"rc-{i // 100}") for i in range(count)]
    encoded = sum(len(pod.SerializeToString()) for pod in pods)
    cache = WatchCache(PODS, storage=None, decode=None, history_age=0.0)  # type: ignore[arg-type]
    events = [WatchEvent(deleted=False, key=PODS.key("default", pod.metadata.name).encode(), value=b"",
                         prev_value=None, revision=100 + i) for i, pod in enumerate(pods)]
    tracemalloc.start()
    try:
        for raw, pod in zip(events, pods, strict=True):
            cache._apply([raw], [(CachedObject(PODS, pod), None)])
        cache._events.clear()  # the history ages out: what the pods cost while they run
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Its bytes, its key, the object, the cache's dict entry and the node index: 1.44x the
    # encoding kept as it is, ~0.8x deflated.
    assert held < encoded, f"{held / count:.0f} B held per pod against {encoded / count:.0f} B encoded"
    assert cache.get("default", "rc-3-00345") == pods[345]

