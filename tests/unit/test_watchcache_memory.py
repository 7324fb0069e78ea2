"""The watch cache keeps objects encoded (issue 16): every version holds its bytes, not a
decoded message nor its selectable fields; equal label sets and trigger values are one
object; and yet a watch that resumes from the history sees exactly what a watch that was
there all along saw."""

from __future__ import annotations

import gc
import sys

from kybernetes.v1 import event_pb2, meta_pb2, pod_pb2
from services.apiserver.storage import WatchEvent
from services.apiserver.watchcache import CachedObject, CacheWatcher, WatchCache, WatchFilter
from services.common.labelsets import is_held
from services.common.resources import EVENTS, PODS, Kind
from services.common.selectors import FieldSelector, LabelSelector


def a_pod(revision: int, node: str = "", phase: str = "Pending", labels: dict[str, str] | None = None) -> pod_pb2.Pod:
    obj = pod_pb2.Pod(metadata=meta_pb2.ObjectMeta(name="p", namespace="ns", resource_version=revision,
                                                   labels={"app": "web"} if labels is None else labels))
    obj.spec.node_name = node
    obj.status.phase = phase
    return obj


def selecting(kind: Kind, fields: str = "", labels: str = "") -> WatchFilter:
    return WatchFilter(
        labels=LabelSelector.parse(labels) if labels else None,
        fields=FieldSelector.parse(fields, kind.fields(kind.message()).keys()) if fields else None,
    )


def apply(cache: WatchCache, revision: int, obj: pod_pb2.Pod | None, deleted: bool = False) -> None:
    """One etcd event, as the cache's watch loop applies it (the object decoded beforehand)."""
    key = PODS.key("ns", "p").encode()
    raw = WatchEvent(deleted=deleted, key=key, value=b"", prev_value=None, revision=revision)
    cache._apply([raw], [(CachedObject(PODS, obj) if obj is not None else None, None)])


LIFE = [  # a pod created, bound to n-a, Running, moved to n-b (as an update could), relabelled, deleted
    (2, a_pod(2)),
    (3, a_pod(3, "n-a")),
    (4, a_pod(4, "n-a", "Running")),
    (5, a_pod(5, "n-b", "Running")),
    (6, a_pod(6, "n-b", "Running", {"app": "db"})),
]

FILTERS = {
    "n-a": selecting(PODS, "spec.nodeName=n-a"),
    "n-b": selecting(PODS, "spec.nodeName=n-b"),
    "running-web": selecting(PODS, "status.phase=Running", labels="app=web"),
    "all": selecting(PODS),
}


def seen(watcher: CacheWatcher) -> list[tuple[str, str, int, str]]:
    out = []
    for event_type, cached in watcher.queue:
        obj = cached.obj
        out.append((event_type, obj.spec.node_name, obj.metadata.resource_version, obj.status.phase))
    return out


def test_a_watch_resumed_from_the_history_sees_what_a_live_watch_saw() -> None:
    cache = WatchCache(PODS, storage=None, decode=None)  # type: ignore[arg-type]
    live = {name: CacheWatcher(selector, 1, 100) for name, selector in FILTERS.items()}
    for watcher in live.values():
        cache._register(watcher)
    for revision, obj in LIFE:
        apply(cache, revision, obj)
    apply(cache, 7, None, deleted=True)
    # The live kubelets' watches match on the node the cache keeps beside each object; the
    # resumed ones below (never registered) on the fields made from the bytes: both agree.
    assert live["n-a"].filter.trigger_value == "n-a" and live["running-web"].filter.trigger_value is None
    for name, selector in FILTERS.items():
        selector = WatchFilter(selector.namespace, selector.labels, selector.fields)
        resumed = CacheWatcher(selector, 1, 100)
        for event in cache._events:  # what watch() replays for a resource_version of 1
            resumed.offer(PODS, event)
        assert seen(resumed) == seen(live[name]), name
    assert seen(live["n-a"]) == [("ADDED", "n-a", 3, "Pending"), ("MODIFIED", "n-a", 4, "Running"),
                                 ("DELETED", "n-a", 5, "Running")]
    assert seen(live["running-web"]) == [("ADDED", "n-a", 4, "Running"), ("MODIFIED", "n-b", 5, "Running"),
                                         ("DELETED", "n-b", 6, "Running")]


def test_the_cache_keeps_bytes_and_shares_unchanged_labels() -> None:
    cache = WatchCache(PODS, storage=None, decode=None)  # type: ignore[arg-type]
    for revision, obj in LIFE[:4]:
        apply(cache, revision, obj)
    assert cache.get("ns", "p") == LIFE[3][1]
    assert cache.objects() == [LIFE[3][1]]
    versions = [event.current for event in cache._events]
    assert all(not hasattr(version, "__dict__") and version._body for version in versions)
    assert all(version.labels is versions[0].labels for version in versions)  # one dict for all four
    assert [version.trigger for version in versions] == ["", "n-a", "n-a", "n-b"]
    assert versions[-1].fields["spec.nodeName"] == "n-b"
    # An encoded watch event is the event message protobuf would encode.
    expected = PODS.event_message(type="MODIFIED", object=LIFE[3][1]).SerializeToString()
    assert versions[-1].encode(PODS, "MODIFIED") == expected


def test_a_kind_without_a_trigger_field_makes_its_fields_when_a_selector_asks() -> None:
    event = event_pb2.Event(metadata=meta_pb2.ObjectMeta(name="e", namespace="ns"), reason="Scheduled")
    event.involved_object.name = "p"
    cached = CachedObject(EVENTS, event)
    assert cached.trigger is None
    assert selecting(EVENTS, "involvedObject.name=p,reason=Scheduled").matches(cached)
    assert not selecting(EVENTS, "involvedObject.name=q").matches(cached)


class _FourSlots:
    __slots__ = ("a", "b", "c", "d")


def test_a_cached_object_is_its_bytes_and_three_fields_its_kind_on_its_class() -> None:
    pod, other_pod = CachedObject(PODS, a_pod(2)), CachedObject(PODS, a_pod(3, "n-a"))
    event = CachedObject(EVENTS, event_pb2.Event(metadata=meta_pb2.ObjectMeta(name="e", namespace="ns")))
    assert type(pod)._kind is PODS and type(event)._kind is EVENTS  # the kind on the class, not the object
    assert (pod.obj, other_pod.obj.spec.node_name, event.obj.metadata.name) == (a_pod(2), "n-a", "e")
    assert isinstance(pod, CachedObject) and not hasattr(pod, "__dict__")
    assert sys.getsizeof(pod) == sys.getsizeof(_FourSlots())  # the RSS of 30,000 pods counts each slot


def test_objects_with_equal_labels_share_one_dict_until_none_has_it() -> None:
    first = CachedObject(PODS, a_pod(2, labels={"rc": "web", "tier": "x"}))
    second = CachedObject(PODS, a_pod(3, labels={"tier": "x", "rc": "web"}))
    other = CachedObject(PODS, a_pod(4, labels={"rc": "db"}))
    assert first.labels is second.labels and first.labels == {"rc": "web", "tier": "x"}
    assert other.labels is not first.labels
    web, db = {"rc": "web", "tier": "x"}, {"rc": "db"}
    assert is_held(web) and is_held(db)
    del first, second
    gc.collect()
    assert not is_held(web) and is_held(db)  # the set nobody has is forgotten
    assert other.labels == {"rc": "db"}


def test_pods_on_one_node_share_its_name() -> None:
    cache = WatchCache(PODS, storage=None, decode=None)  # type: ignore[arg-type]
    for name in ("a", "b"):
        obj = a_pod(2, "".join(["node-", "7"]))  # a new string each time, as a decoder makes
        obj.metadata.name = name
        raw = WatchEvent(deleted=False, key=PODS.key("ns", name).encode(), value=b"", prev_value=None, revision=2)
        cache._apply([raw], [(CachedObject(PODS, obj), None)])
    first, second = (cache._objects[PODS.key("ns", name).encode()] for name in ("a", "b"))
    assert first.trigger == "node-7" and first.trigger is second.trigger
    snapshot, _ = cache.snapshot(selecting(PODS, "spec.nodeName=node-7"))
    assert len(snapshot) == 2


def test_a_pod_bound_and_moved_keeps_one_copy_of_its_key() -> None:
    cache = WatchCache(PODS, storage=None, decode=None)  # type: ignore[arg-type]
    for revision, obj in LIFE:  # each event brings its own bytes of the key, as etcd's do
        apply(cache, revision, obj)
        (held,) = cache._objects  # the key as the cache holds it for the object
        (bucket,) = cache._keys_by_trigger.values()
        (indexed,) = bucket
        assert indexed is held, f"after revision {revision}"


def test_events_older_than_the_history_age_leave_but_the_last_hundred_stay() -> None:
    cache = WatchCache(PODS, storage=None, decode=None, history_age=75.0)  # type: ignore[arg-type]
    clock = [1000.0]
    cache._now = lambda: clock[0]  # type: ignore[method-assign]
    for revision in range(2, 302):  # 300 events at one per 0.5 s: the first at 1000, the last at 1149.5
        apply(cache, revision, a_pod(revision, "n-a"))
        clock[0] += 0.5
    # Those applied before the last one's time less 75 s (1149.5 - 75) are gone: from revision 151 on stay.
    assert [cache._events[0].revision, len(cache._events)] == [151, 151]
    assert cache.window_start == 150
    clock[0] += 3600.0  # an hour quiet: the bookmark loop trims too, down to the last hundred
    cache._trim_history(clock[0])
    assert [cache._events[0].revision, len(cache._events)] == [202, 100]
