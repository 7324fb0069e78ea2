"""Watches of a kind kept out of the watch cache (Events, as in Kubernetes), served straight from
etcd against a real etcd and API server: what the caller sees is what a cached kind's Watch gives."""

from __future__ import annotations

import asyncio

import grpc

from kybernetes.v1 import meta_pb2
from services.common.client import ApiClient
from services.common.resources import EVENTS, INITIAL_EVENTS_END_ANNOTATION
from tools.processes import ApiServerProcess

from .apihelpers import collect_events, compact_etcd, expect_error
from .test_events import an_event


async def test_a_watch_from_a_lists_revision_sees_each_write_once_in_order(api: ApiClient, namespace: str) -> None:
    listed = await api.list(EVENTS, namespace)
    options = meta_pb2.ListOptions(namespace=namespace, resource_version=listed.metadata.resource_version)
    call = api.watch(EVENTS, options)
    try:
        created = await api.create(an_event(namespace, involved="web"))
        created.count = 2
        updated = await api.update(created)
        await api.delete(EVENTS, created.metadata.name, namespace)
        other = await api.create(an_event(namespace, involved="db"))
        events = await collect_events(call, 4)
    finally:
        call.cancel()
    assert [(e.type, e.object.involved_object.name, e.object.count) for e in events] == [
        ("ADDED", "web", 1), ("MODIFIED", "web", 2), ("DELETED", "web", 2), ("ADDED", "db", 1),
    ]
    revisions = [e.object.metadata.resource_version for e in events]
    assert revisions[:2] == [created.metadata.resource_version, updated.metadata.resource_version]
    assert revisions[1] < revisions[2] < revisions[3] == other.metadata.resource_version


async def test_initial_events_end_with_a_bookmark_then_the_watch_goes_on(api: ApiClient, namespace: str) -> None:
    await api.create(an_event(namespace, involved="one"))
    await api.create(an_event(namespace, involved="two"))
    call = api.watch(EVENTS, meta_pb2.ListOptions(namespace=namespace, send_initial_events=True))
    try:
        received = []
        async for event in call:
            received.append(event)
            if event.type == "BOOKMARK":
                break
        await api.create(an_event(namespace, involved="three"))
        (live,) = await collect_events(call, 1)
    finally:
        call.cancel()
    initial = sorted((e.type, e.object.involved_object.name) for e in received[:-1])
    assert initial == [("ADDED", "one"), ("ADDED", "two")]
    bookmark = received[-1].object.metadata
    assert bookmark.annotations[INITIAL_EVENTS_END_ANNOTATION] == "true" and bookmark.resource_version > 0
    assert live.type == "ADDED" and live.object.involved_object.name == "three"


async def test_an_event_that_leaves_the_selector_is_deleted_for_the_watcher(api: ApiClient, namespace: str) -> None:
    event = an_event(namespace)
    event.metadata.labels["team"] = "web"
    created = await api.create(event)
    options = meta_pb2.ListOptions(namespace=namespace, label_selector="team=web", send_initial_events=True)
    call = api.watch(EVENTS, options)
    try:
        created.metadata.labels["team"] = "db"
        moved = await api.update(created)
        events = await collect_events(call, 2)
    finally:
        call.cancel()
    assert [e.type for e in events] == ["ADDED", "DELETED"]
    assert events[1].object.metadata.resource_version == moved.metadata.resource_version


async def test_a_watch_from_a_compacted_revision_is_out_of_range(
    api: ApiClient, namespace: str, etcd_endpoint: str
) -> None:
    old = (await api.create(an_event(namespace, involved="a"))).metadata.resource_version
    for name in ("b", "c"):  # etcd keeps the compaction's own revision: old + 1 must be older
        await api.create(an_event(namespace, involved=name))
    await compact_etcd(etcd_endpoint)
    call = api.watch(EVENTS, meta_pb2.ListOptions(namespace=namespace, resource_version=old))
    message = await expect_error(grpc.StatusCode.OUT_OF_RANGE, collect_events(call, 1))
    assert "resource_version" in message and "too old" in message


async def test_an_idle_watch_gets_bookmarks_of_the_last_revision_it_has(etcd_endpoint: str, namespace: str) -> None:
    server = ApiServerProcess(etcd_endpoint, "--controllers=", "--bookmark-interval=0.2")
    client = ApiClient(server.address)
    try:
        first = await client.create(an_event(namespace, involved="web"))
        options = meta_pb2.ListOptions(namespace=namespace, resource_version=first.metadata.resource_version)
        call = client.watch(EVENTS, options)
        second = await client.create(an_event(namespace, involved="db"))

        async def bookmark_after_the_event() -> int:
            seen = False
            async for event in call:
                if event.type != "BOOKMARK":
                    seen = event.object.metadata.resource_version == second.metadata.resource_version
                elif seen:
                    return event.object.metadata.resource_version
            raise AssertionError("the watch ended")

        assert await asyncio.wait_for(bookmark_after_the_event(), 10) == second.metadata.resource_version
        call.cancel()
    finally:
        await client.close()
        server.stop()
