"""The Informer every component watches through: snapshot, live changes, resume, resync."""

from __future__ import annotations

import asyncio

import pytest

from services.common.client import ApiClient
from services.common.runtime.informer import Informer
from tools.processes import ApiServerProcess
from services.common.resources import PODS
from tests.polling import eventually

from .apihelpers import make_pod


def record(log: list):
    def handler(event_type, obj, old):
        log.append((event_type, obj.metadata.name))

    return handler


async def test_snapshot_then_live_changes(apiserver, namespace):
    async with ApiClient(apiserver.address) as api:
        await api.create(make_pod("before", namespace))
        informer = Informer(api, PODS, namespace=namespace)
        events: list = []
        informer.add_handler(record(events))
        task = asyncio.create_task(informer.run())
        try:
            await informer.wait_synced(10)
            assert events == [("ADDED", "before")]
            await api.create(make_pod("after", namespace))
            await api.delete(PODS, "before", namespace)
            await eventually(lambda: len(events) == 3, what="3 events", timeout=20, interval=0.05)
            assert events[1:] == [("ADDED", "after"), ("DELETED", "before")]
            assert [p.metadata.name for p in informer.list()] == ["after"]
        finally:
            task.cancel()


async def test_resumes_across_an_api_server_restart_without_missing_or_repeating(etcd_endpoint, namespace):
    server = ApiServerProcess(etcd_endpoint, "--controllers=")
    port = server.port
    api = ApiClient(server.address)
    informer = Informer(api, PODS, namespace=namespace, retry_initial=0.05, retry_max=0.2)
    events: list = []
    informer.add_handler(record(events))
    task = asyncio.create_task(informer.run())
    try:
        await informer.wait_synced(10)
        # Concurrent creates may commit in one etcd transaction (one revision).
        await asyncio.gather(*(api.create(make_pod(f"a-{i}", namespace)) for i in range(20)))
        await eventually(lambda: len(events) == 20, what="20 events", timeout=20, interval=0.05)
        server.stop()
        server = ApiServerProcess(etcd_endpoint, "--controllers=", port=port)
        await asyncio.gather(*(api.create(make_pod(f"b-{i}", namespace)) for i in range(20)))
        await api.delete(PODS, "a-0", namespace)
        await eventually(lambda: ("DELETED", "a-0") in events, what="a-0 to be DELETED", timeout=20, interval=0.05)
        names = sorted(n for t, n in events if t == "ADDED")
        assert names == sorted([f"a-{i}" for i in range(20)] + [f"b-{i}" for i in range(20)])
        assert len({p.metadata.name for p in informer.list()}) == 39
    finally:
        task.cancel()
        await api.close()
        server.stop()


@pytest.mark.parametrize("history", [5])
async def test_lost_history_resyncs_and_reports_deletions(etcd_endpoint, namespace, history):
    """A watch that falls out of the server's history re-lists, and objects that
    vanished meanwhile are reported DELETED."""
    server = ApiServerProcess(etcd_endpoint, "--controllers=", f"--watch-history={history}")
    api = ApiClient(server.address)
    try:
        await api.create(make_pod("gone", namespace))
        await api.create(make_pod("stays", namespace))
        informer = Informer(api, PODS, namespace=namespace, retry_initial=0.05, retry_max=0.2)
        events: list = []
        informer.add_handler(record(events))
        task = asyncio.create_task(informer.run())
        await informer.wait_synced(10)
        port = server.port
        server.stop()  # the informer is cut off while things change
        other = ApiServerProcess(etcd_endpoint, "--controllers=", f"--watch-history={history}")
        async with ApiClient(other.address) as writer:
            await writer.delete(PODS, "gone", namespace)
            for i in range(2 * history):
                await writer.create(make_pod(f"new-{i}", namespace))
        other.stop()
        server = ApiServerProcess(etcd_endpoint, "--controllers=", f"--watch-history={history}", port=port)
        await eventually(lambda: ("DELETED", "gone") in events, what="gone to be DELETED", timeout=20, interval=0.05)
        await eventually(
            lambda: len(informer.list()) == 1 + 2 * history,
            what=f"{1 + 2 * history} pods in the informer",
            timeout=20,
            interval=0.05,
        )
        task.cancel()
    finally:
        await api.close()
        server.stop()
