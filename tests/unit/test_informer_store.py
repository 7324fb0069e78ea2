"""The informer holds objects encoded (issue 16) and gives every reader a copy of its own;
handlers still see each change with the version it replaced."""

from __future__ import annotations

import asyncio
from typing import Any

from kybernetes.v1 import meta_pb2, pod_pb2
from services.common.resources import INITIAL_EVENTS_END_ANNOTATION, PODS
from services.common.runtime.informer import Informer
from services.common.selectors import LabelSelector


def a_pod(name: str, revision: int, node: str = "", namespace: str = "ns") -> pod_pb2.Pod:
    pod = pod_pb2.Pod(metadata=meta_pb2.ObjectMeta(name=name, namespace=namespace, resource_version=revision))
    pod.spec.node_name = node
    return pod


def event(event_type: str, obj: Any) -> Any:
    return PODS.event_message(type=event_type, object=obj)


def initial_events_end(revision: int) -> Any:
    bookmark = pod_pb2.Pod(metadata=meta_pb2.ObjectMeta(resource_version=revision))
    bookmark.metadata.annotations[INITIAL_EVENTS_END_ANNOTATION] = "true"
    return event("BOOKMARK", bookmark)


class OneStream:
    """A client whose one watch stream sends the given events, then stays open."""

    def __init__(self, events: list[Any]) -> None:
        self.events = events

    def watch(self, kind: Any, options: Any) -> Any:
        events = self.events

        class Call:
            def cancel(self) -> None:
                pass

            async def __aiter__(self) -> Any:
                for item in events:
                    yield item
                await asyncio.Event().wait()

        return Call()


async def test_readers_get_copies_of_what_the_informer_holds_encoded() -> None:
    seen: list[tuple[str, str, int, int | None]] = []
    stream = [
        event("ADDED", a_pod("a", 2)), event("ADDED", a_pod("b", 3)), initial_events_end(3),
        event("MODIFIED", a_pod("a", 4, "n-1")),
        event("MODIFIED", a_pod("a", 4, "n-1")),  # replayed after a resume: nothing new
        event("DELETED", a_pod("b", 5)),
        event("ADDED", a_pod("c", 6, namespace="other")),
    ]
    informer = Informer(OneStream(stream), PODS)  # type: ignore[arg-type]
    all_seen = asyncio.Event()

    def record(kind: str, obj: Any, old: Any) -> None:
        seen.append((kind, obj.metadata.name, obj.metadata.resource_version,
                     old.metadata.resource_version if old else None))
        if obj.metadata.name == "c":
            all_seen.set()

    informer.add_handler(record)
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(all_seen.wait(), 5)
    finally:
        task.cancel()
    assert seen == [("ADDED", "a", 2, None), ("ADDED", "b", 3, None), ("MODIFIED", "a", 4, 2),
                    ("DELETED", "b", 5, None), ("ADDED", "c", 6, None)]
    assert all(isinstance(body, bytes) for body, _ in informer._objects.values())
    assert informer.streams == 1
    held = informer.get("ns", "a")
    assert held == a_pod("a", 4, "n-1")
    held.spec.node_name = "changed by a reader"
    assert informer.get("ns", "a").spec.node_name == "n-1"
    assert [p.metadata.name for p in informer.in_namespace("ns")] == ["a"]
    assert sorted(p.metadata.name for p in informer.list()) == ["a", "c"]
    assert [p.metadata.name for p in informer.get_many([("ns", "a"), ("ns", "b"), ("other", "c")])] == ["a", "c"]
    assert informer.get("ns", "b") is None and ("ns", "b") not in informer and len(informer) == 2
    assert "ns" in informer._by_namespace and set(informer._by_namespace) == {"ns", "other"}


async def test_a_fresh_snapshot_reports_only_what_changed() -> None:
    informer = Informer(OneStream([]), PODS)  # type: ignore[arg-type]
    seen: list[tuple[str, str]] = []
    informer.add_handler(lambda kind, obj, old: seen.append((kind, obj.metadata.name)))
    await informer._replace({("ns", "a"): Informer._held(a_pod("a", 2)), ("ns", "b"): Informer._held(a_pod("b", 3))})
    seen.clear()
    await informer._replace({("ns", "a"): Informer._held(a_pod("a", 2)),  # the same bytes: unchanged
                             ("ns", "c"): Informer._held(a_pod("c", 7))})
    assert sorted(seen) == [("ADDED", "c"), ("DELETED", "b")]


async def test_a_read_by_selector_decodes_only_what_it_selects() -> None:
    informer = Informer(OneStream([]), PODS)  # type: ignore[arg-type]
    pods = [a_pod(name, 2) for name in ("web-1", "web-2", "db-1")]
    for p in pods:
        p.metadata.labels["app"] = p.metadata.name.split("-")[0]
    await informer._replace({("ns", p.metadata.name): Informer._held(p) for p in pods})
    decoded = []
    informer._decode = lambda body: decoded.append(body) or PODS.message.FromString(body)  # type: ignore[method-assign]
    web = informer.in_namespace("ns", LabelSelector.parse("app=web"))
    assert sorted(p.metadata.name for p in web) == ["web-1", "web-2"] and len(decoded) == 2
    held = {key: labels for key, (_, labels) in informer._objects.items()}
    assert held[("ns", "web-1")] is held[("ns", "web-2")]  # one dict for the set both have
