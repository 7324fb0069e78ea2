"""List (selectors, pagination) and Watch (ordering, resume, compaction) against real etcd."""

from __future__ import annotations

import asyncio
import os
import signal

import grpc

from kybernetes.v1 import meta_pb2
from services.apiserver.registry import LIST_PAGE
from services.common.client import ApiClient
from services.common.transport import aio_channel
from services.common.resources import INITIAL_EVENTS_END_ANNOTATION, PODS
from tools.processes import ApiServerProcess, dev_pki

from .apihelpers import collect_events, compact_etcd, expect_error, make_pod


def names(listing) -> list[str]:
    return [item.metadata.name for item in listing.items]


async def test_label_selectors(api, namespace):
    pods = {
        "front-prod": {"tier": "frontend", "stack": "prod"},
        "front-canary": {"tier": "frontend", "stack": "prod", "canary": "yes"},
        "front-dev": {"tier": "frontend", "stack": "dev"},
        "back-prod": {"tier": "backend", "stack": "prod"},
    }
    await asyncio.gather(*(api.create(make_pod(n, namespace, labels)) for n, labels in pods.items()))

    async def select(selector: str) -> set[str]:
        return set(names(await api.list(PODS, namespace, label_selector=selector)))

    assert await select("tier in (frontend), stack in (prod)") == {"front-prod", "front-canary"}
    assert await select("tier=frontend,stack!=prod") == {"front-dev"}
    assert await select("canary") == {"front-canary"}
    assert await select("!canary,stack==prod") == {"front-prod", "back-prod"}
    assert await select("tier notin (frontend)") == {"back-prod"}
    assert await select("") == set(pods)
    message = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, api.list(PODS, namespace, label_selector="tier in (")
    )
    assert "labelSelector" in message


async def test_field_selectors(api, namespace):
    await api.create(make_pod("a", namespace, node="node-1"))
    await api.create(make_pod("b", namespace, node="node-2"))
    await api.create(make_pod("c", namespace))
    assert names(await api.list(PODS, namespace, field_selector="spec.nodeName=node-1")) == ["a"]
    assert names(await api.list(PODS, namespace, field_selector="spec.nodeName=")) == ["c"]
    assert names(await api.list(PODS, namespace, field_selector="metadata.name!=a")) == ["b", "c"]
    message = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT, api.list(PODS, namespace, field_selector="spec.color=red")
    )
    assert "spec.color" in message


async def test_pagination_is_a_consistent_snapshot(api, namespace):
    await asyncio.gather(*(api.create(make_pod(f"p-{i:02d}", namespace)) for i in range(25)))
    first = await api.list(PODS, namespace, limit=10)
    assert len(first.items) == 10 and first.metadata.continue_token
    # Writes after the first page do not show up in later pages.
    await api.create(make_pod("p-99", namespace))
    await api.delete(PODS, "p-24", namespace)
    seen = names(first)
    token = first.metadata.continue_token
    while token:
        page = await api.list(PODS, namespace, limit=10, continue_token=token)
        assert page.metadata.resource_version == first.metadata.resource_version
        seen += names(page)
        token = page.metadata.continue_token
    assert seen == [f"p-{i:02d}" for i in range(25)]


async def test_pagination_with_selector(api, namespace):
    await asyncio.gather(
        *(api.create(make_pod(f"p-{i:02d}", namespace, {"even": str(i % 2 == 0).lower()})) for i in range(20))
    )
    seen, token = [], ""
    while True:
        page = await api.list(PODS, namespace, label_selector="even=true", limit=3, continue_token=token)
        assert len(page.items) <= 3
        seen += names(page)
        token = page.metadata.continue_token
        if not token:
            break
    assert seen == [f"p-{i:02d}" for i in range(0, 20, 2)]


async def test_lists_longer_than_one_etcd_page(api, namespace):
    """List reads etcd LIST_PAGE objects at a time at one revision: a list, its limits and its
    selectors come out the same as from one range across the pages' edges."""
    count = LIST_PAGE + 150
    pod_names = [f"p-{i:04d}" for i in range(count)]
    in_flight = asyncio.Semaphore(50)

    async def create(index: int) -> None:
        async with in_flight:
            await api.create(make_pod(pod_names[index], namespace, {"tens": str(index // 10 % 2)}))

    async def delete(name: str) -> None:
        async with in_flight:
            await api.delete(PODS, name, namespace)

    await asyncio.gather(*(create(i) for i in range(count)))
    try:
        everything = await api.list(PODS, namespace)
        assert names(everything) == pod_names and not everything.metadata.continue_token
        for index in (0, LIST_PAGE - 1, LIST_PAGE, count - 1):  # each item's own revision, spliced in
            got = await api.get(PODS, pod_names[index], namespace)
            assert everything.items[index] == got
        crossing = await api.list(PODS, namespace, limit=LIST_PAGE + 10)
        assert names(crossing) == pod_names[: LIST_PAGE + 10] and crossing.metadata.continue_token
        rest = await api.list(PODS, namespace, limit=LIST_PAGE, continue_token=crossing.metadata.continue_token)
        assert names(rest) == pod_names[LIST_PAGE + 10 :] and not rest.metadata.continue_token
        selected = await api.list(PODS, namespace, label_selector="tens=1", limit=LIST_PAGE // 2 + 5)
        assert names(selected) == [name for i, name in enumerate(pod_names) if i // 10 % 2][: LIST_PAGE // 2 + 5]
    finally:
        await asyncio.gather(*map(delete, pod_names))


async def test_bad_continue_token(api, namespace):
    message = await expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.list(PODS, namespace, continue_token="garbage"))
    assert "continue" in message


async def test_watch_streams_every_change_in_order_under_concurrent_writers(api, namespace):
    start = (await api.list(PODS, namespace)).metadata.resource_version
    call = api.watch(PODS, meta_pb2.ListOptions(namespace=namespace, resource_version=start))
    writers, updates = 4, 20

    async def writer(index: int) -> None:
        pod = await api.create(make_pod(f"w-{index}", namespace))
        for step in range(updates):
            pod.metadata.labels["step"] = str(step)
            pod = await api.update(pod)

    await asyncio.gather(*(writer(i) for i in range(writers)))
    events = await collect_events(call, writers * (updates + 1))
    call.cancel()
    revisions = [e.object.metadata.resource_version for e in events]
    # Concurrent writes may commit together in one etcd revision; across
    # revisions, order is strict, and no change arrives twice.
    assert revisions == sorted(revisions), "events out of order"
    changes = [(e.object.metadata.name, e.object.metadata.resource_version) for e in events]
    assert len(set(changes)) == len(changes), "an event arrived twice"
    assert [e.type for e in events].count("ADDED") == writers
    for index in range(writers):
        steps = [e.object.metadata.labels.get("step") for e in events if e.object.metadata.name == f"w-{index}"]
        assert steps == [None] + [str(s) for s in range(updates)]


async def test_list_then_watch_misses_nothing(api, namespace):
    await asyncio.gather(*(api.create(make_pod(f"base-{i}", namespace)) for i in range(5)))
    stop = asyncio.Event()

    async def churn() -> int:
        count = 0
        while not stop.is_set():
            await api.create(make_pod(f"churn-{count}", namespace))
            if count % 3 == 0:
                await api.delete(PODS, f"churn-{count}", namespace)
            count += 1
        return count

    churner = asyncio.create_task(churn())
    await asyncio.sleep(0.2)
    listing = await api.list(PODS, namespace)
    state = {p.metadata.name: p.metadata.resource_version for p in listing.items}
    options = meta_pb2.ListOptions(namespace=namespace, resource_version=listing.metadata.resource_version)
    call = api.watch(PODS, options)
    await asyncio.sleep(0.3)
    stop.set()
    await churner
    final = await api.list(PODS, namespace)
    expected = {p.metadata.name: p.metadata.resource_version for p in final.items}

    async def follow() -> None:
        async for event in call:
            if event.type == "BOOKMARK":
                continue
            if event.type == "DELETED":
                state.pop(event.object.metadata.name, None)
            else:
                state[event.object.metadata.name] = event.object.metadata.resource_version
            if event.object.metadata.resource_version >= final.metadata.resource_version or state == expected:
                if state == expected:
                    return

    await asyncio.wait_for(follow(), 20)
    call.cancel()
    assert state == expected


async def test_watch_with_initial_events(api, namespace):
    await api.create(make_pod("one", namespace))
    await api.create(make_pod("two", namespace))
    call = api.watch(PODS, meta_pb2.ListOptions(namespace=namespace, send_initial_events=True))
    received = []
    async for event in call:
        received.append(event)
        if event.type == "BOOKMARK":
            break
    assert sorted(e.object.metadata.name for e in received[:-1]) == ["one", "two"]
    assert all(e.type == "ADDED" for e in received[:-1])
    bookmark = received[-1].object.metadata
    assert bookmark.annotations[INITIAL_EVENTS_END_ANNOTATION] == "true" and bookmark.resource_version > 0
    await api.create(make_pod("three", namespace))
    (live,) = await collect_events(call, 1)
    assert live.type == "ADDED" and live.object.metadata.name == "three"
    call.cancel()


async def test_field_selector_watch_sees_binding_as_added_and_unbinding_as_deleted(api, namespace, unique_name):
    call = api.watch(PODS, meta_pb2.ListOptions(field_selector=f"spec.nodeName={unique_name}"))
    await api.create(make_pod("web", namespace))
    await api.bind(namespace, "web", unique_name)
    # A bound pod's deletion is graceful: marked (MODIFIED), then removed (its kubelet's grace 0).
    await api.delete(PODS, "web", namespace)
    await api.stub(PODS).Delete(meta_pb2.DeleteRequest(namespace=namespace, name="web", grace_period_seconds=0))
    events = await collect_events(call, 3)
    call.cancel()
    assert [(e.type, e.object.spec.node_name) for e in events] == [
        ("ADDED", unique_name), ("MODIFIED", unique_name), ("DELETED", unique_name)
    ]
    assert events[1].object.metadata.HasField("deletion_timestamp")


async def test_label_change_out_of_selector_is_deleted_for_the_watcher(api, namespace):
    pod = await api.create(make_pod("web", namespace, {"app": "web"}))
    options = meta_pb2.ListOptions(namespace=namespace, label_selector="app=web", send_initial_events=True)
    call = api.watch(PODS, options)
    pod.metadata.labels["app"] = "other"
    await api.update(pod)
    events = await collect_events(call, 2)
    call.cancel()
    assert [e.type for e in events] == ["ADDED", "DELETED"]


async def test_watch_from_compacted_revision_is_out_of_range(api, namespace, etcd_endpoint):
    old = (await api.create(make_pod("a", namespace))).metadata.resource_version
    for i in range(3):
        await api.create(make_pod(f"b{i}", namespace))
    await compact_etcd(etcd_endpoint)
    call = api.watch(PODS, meta_pb2.ListOptions(namespace=namespace, resource_version=old))
    message = await expect_error(grpc.StatusCode.OUT_OF_RANGE, collect_events(call, 1))
    assert "resource_version" in message


async def test_bookmarks_carry_the_latest_revision(etcd_endpoint, namespace):
    server = ApiServerProcess(etcd_endpoint, "--controllers=", "--bookmark-interval=0.2")
    client = ApiClient(server.address)
    try:
        created = await client.create(make_pod("web", namespace))
        options = meta_pb2.ListOptions(namespace=namespace, resource_version=created.metadata.resource_version)
        call = client.watch(PODS, options)

        async def first_bookmark():
            async for event in call:
                if event.type == "BOOKMARK":
                    return event

        bookmark = await asyncio.wait_for(first_bookmark(), 10)
        assert bookmark.object.metadata.resource_version >= created.metadata.resource_version
        call.cancel()
    finally:
        await client.close()
        server.stop()


async def test_slow_watcher_is_cut_off_without_hurting_others(etcd_endpoint, namespace):
    server = ApiServerProcess(etcd_endpoint, "--controllers=", "--watch-queue=20", "--no-request-log")
    slow_client = ApiClient(server.address)
    # No BDP probing: the slow client's HTTP/2 window stays small, as a reader
    # that stopped reading would keep it.
    await slow_client.channel.close()
    slow_client.channel = aio_channel(
        server.address, dev_pki().credentials("admin"), options=[("grpc.http2.bdp_probe", 0)]
    )
    fast_client = ApiClient(server.address)
    try:
        options = meta_pb2.ListOptions(namespace=namespace)
        slow = slow_client.watch(PODS, options)
        fast = fast_client.watch(PODS, options)
        big = make_pod("x", namespace)
        big.metadata.annotations["padding"] = "x" * 60_000
        total = 60

        async def write() -> None:
            for i in range(total):
                big.metadata.name = f"big-{i}"
                await fast_client.create(big)

        fast_events, _ = await asyncio.gather(collect_events(fast, total, timeout=60), write())
        assert len(fast_events) == total
        message = await expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, collect_events(slow, total, timeout=30))
        assert "behind" in message
    finally:
        await slow_client.close()
        await fast_client.close()
        server.stop()


async def test_sigterm_ends_watches_cleanly_and_exits_zero(etcd_endpoint, namespace):
    server = ApiServerProcess(etcd_endpoint, "--controllers=")
    client = ApiClient(server.address)
    try:
        call = client.watch(PODS, meta_pb2.ListOptions(namespace=namespace, send_initial_events=True))
        async for event in call:
            if event.type == "BOOKMARK":
                break
        os.kill(server.process.pid, signal.SIGTERM)

        async def drain() -> None:
            async for _ in call:
                pass

        await asyncio.wait_for(drain(), 15)  # ends without an error status
        assert await asyncio.to_thread(server.process.wait, 15) == 0
    finally:
        await client.close()
        server.stop()


async def test_the_watch_history_is_bounded_in_bytes(etcd_endpoint, namespace):
    """A few big objects cannot make the history hold gigabytes: past its byte budget the
    oldest events go, and a watch from before them is OUT_OF_RANGE (re-list), as from a
    revision past the event count."""
    server = ApiServerProcess(etcd_endpoint, "--controllers=", "--watch-history-bytes=20000")
    client = ApiClient(server.address)
    try:
        first = await client.create(make_pod("p0", namespace))
        for index in range(1, 6):
            pod = make_pod(f"p{index}", namespace)
            pod.metadata.annotations["padding"] = "x" * 8000
            await client.create(pod)
        last = (await client.list(PODS, namespace)).metadata.resource_version
        since_first = meta_pb2.ListOptions(namespace=namespace, resource_version=first.metadata.resource_version)
        call = client.watch(PODS, since_first)
        message = await expect_error(grpc.StatusCode.OUT_OF_RANGE, collect_events(call, 1))
        assert "resource_version" in message
        # A watch from within what is kept goes on.
        call = client.watch(PODS, meta_pb2.ListOptions(namespace=namespace, resource_version=last))
        await client.create(make_pod("after", namespace))
        events = await collect_events(call, 1)
        call.cancel()
        assert events[0].type == "ADDED" and events[0].object.metadata.name == "after"
    finally:
        await client.close()
        server.stop()
