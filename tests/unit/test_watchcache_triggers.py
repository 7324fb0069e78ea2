"""The watch cache's trigger index (pods by spec.nodeName, nodes by metadata.name): a watch
scoped to one node is offered only that node's events, and sees exactly what it would
see if every event were offered to every watch (a pod bound, moved, deleted)."""

from __future__ import annotations

from typing import Any

from kybernetes.v1 import meta_pb2, node_pb2, pod_pb2
from services.apiserver.watchcache import CachedObject, CacheEvent, CacheWatcher, WatchCache, WatchFilter
from services.common.resources import NODES, PODS, Kind
from services.common.selectors import FieldSelector, LabelSelector


def pod(name: str, node: str, revision: int, labels: dict[str, str] | None = None) -> CachedObject:
    obj = pod_pb2.Pod(metadata=meta_pb2.ObjectMeta(name=name, namespace="ns", resource_version=revision,
                                                   labels=labels or {"app": "web"}))
    obj.spec.node_name = node
    return CachedObject(PODS, obj)


def selecting(kind: Kind, fields: str = "", labels: str = "", namespace: str = "") -> WatchFilter:
    return WatchFilter(
        namespace=namespace,
        labels=LabelSelector.parse(labels) if labels else None,
        fields=FieldSelector.parse(fields, kind.fields(kind.message()).keys()) if fields else None,
    )


def seen(watcher: CacheWatcher) -> list[tuple[str, str, int]]:
    return [(kind, obj.obj.metadata.name, obj.obj.metadata.resource_version) for kind, obj in watcher.queue]


def events_of_a_pods_life() -> list[CacheEvent]:
    unbound, on_a, on_b = pod("p", "", 2), pod("p", "n-a", 3), pod("p", "n-b", 5)
    other = pod("q", "n-a", 4)
    relabelled = pod("q", "n-a", 6, {"app": "db"})
    gone = pod("p", "n-b", 7)
    return [
        CacheEvent(2, False, unbound, None),
        CacheEvent(3, False, on_a, unbound),  # bound to n-a
        CacheEvent(4, False, other, None),
        CacheEvent(5, False, on_b, on_a),  # moved (as an update could) to n-b
        CacheEvent(6, False, relabelled, other),
        CacheEvent(7, True, gone, None),  # deleted on n-b
    ]


FILTERS = {
    "n-a": selecting(PODS, "spec.nodeName=n-a"),
    "n-b": selecting(PODS, "spec.nodeName=n-b"),
    "n-c": selecting(PODS, "spec.nodeName=n-c"),
    "unbound": selecting(PODS, "spec.nodeName="),
    "n-a-web": selecting(PODS, "spec.nodeName=n-a", labels="app=web"),
    "not-n-a": selecting(PODS, "spec.nodeName!=n-a"),
    "all": selecting(PODS),
    "in-ns": selecting(PODS, namespace="ns"),
}


def test_scoped_watches_see_what_offering_every_event_to_everyone_shows() -> None:
    cache = WatchCache(PODS, storage=None, decode=None)  # type: ignore[arg-type]  # no etcd: only the fan-out
    indexed = {name: CacheWatcher(filter_, 0, 100) for name, filter_ in FILTERS.items()}
    naive = {name: CacheWatcher(filter_, 0, 100) for name, filter_ in FILTERS.items()}
    for watcher in indexed.values():
        cache._register(watcher)
    for event in events_of_a_pods_life():
        cache._fan_out(event)
        for watcher in naive.values():
            watcher.offer(PODS, event)
    for name in FILTERS:
        assert seen(indexed[name]) == seen(naive[name]), name
    assert seen(indexed["n-a"]) == [("ADDED", "p", 3), ("ADDED", "q", 4), ("DELETED", "p", 5), ("MODIFIED", "q", 6)]
    assert seen(indexed["n-a-web"])[-1] == ("DELETED", "q", 6)
    assert seen(indexed["unbound"]) == [("ADDED", "p", 2), ("DELETED", "p", 3)]
    assert seen(indexed["n-c"]) == []
    assert {w.trigger for w in indexed.values()} == {"n-a", "n-b", "n-c", "", None}


def test_a_node_scoped_watch_is_offered_only_its_nodes_events() -> None:
    cache = WatchCache(PODS, storage=None, decode=None)  # type: ignore[arg-type]
    watchers = {node: CacheWatcher(selecting(PODS, f"spec.nodeName={node}"), 0, 100) for node in ("n-a", "n-b")}
    for watcher in watchers.values():
        cache._register(watcher)
    offered: list[str] = []
    for node, watcher in watchers.items():
        original = watcher.offer

        def counting(kind: Any, event: CacheEvent, node: str = node, original: Any = original) -> None:
            offered.append(node)
            original(kind, event)

        watcher.offer = counting  # type: ignore[method-assign]
    cache._fan_out(CacheEvent(2, False, pod("p", "n-a", 2), None))
    assert offered == ["n-a"]


def test_watches_leave_the_index_when_they_end() -> None:
    cache = WatchCache(NODES, storage=None, decode=None)  # type: ignore[arg-type]
    own = CacheWatcher(selecting(NODES, "metadata.name=n-a"), 0, 100)
    every = CacheWatcher(selecting(NODES), 0, 100)
    cache._register(own)
    cache._register(every)
    node = CachedObject(NODES, node_pb2.Node(metadata=meta_pb2.ObjectMeta(name="n-a", resource_version=2)))
    cache._fan_out(CacheEvent(2, False, node, None))
    assert len(own.queue) == len(every.queue) == 1
    cache._unregister(own)
    cache._unregister(every)
    assert cache.watcher_count == 0 and not cache._triggered and not cache._untriggered


def test_a_scoped_snapshot_reads_the_objects_with_its_value_through_binds_moves_and_deletions() -> None:
    from services.apiserver.storage import WatchEvent

    cache = WatchCache(PODS, storage=None, decode=None)  # type: ignore[arg-type]
    life = events_of_a_pods_life()
    for event in life:
        name = event.current.obj.metadata.name
        key = PODS.key("ns", name).encode()
        raw = WatchEvent(deleted=event.deleted, key=key, value=b"", prev_value=None, revision=event.revision)
        cache._apply([raw], [(event.current, None)])
        for selector in FILTERS.values():
            everything = [c for c in cache._objects.values() if selector.matches(c)]
            assert cache.snapshot(selector)[0] == everything
    assert cache.snapshot(FILTERS["n-a"])[0][0].obj.metadata.name == "q"
    assert set(cache._keys_by_trigger) == {"n-a"}  # p was deleted from n-b: its bucket went with it
